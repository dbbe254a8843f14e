"""Evaluation reports: report.md, PNG figures, metrics.json and predictions.npz in one folder.

``report_from_predictions`` is the entry point for anything holding predictions (the evaluate
CLI, training's final step): plain arrays in, a folder out, the result dict of
``chest_tf.evaluation.metrics.evaluate_splits`` back. ``write_report`` renders an existing result.

Folder contents::

    report.md             headline, comparison with published rows, per-label table, figures
    metrics.json          the result (NaN -> null) plus dataset, size, model and compared rows
    predictions.npz       val_true, val_score, test_true, test_score (as given)
    roc_curves.png  pr_curves.png  calibration.png  operating_points.png
    confusion_matrix.png  (binary / multi-class)      training_curves.png  (with a history CSV)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chest_tf.evaluation import benchmarks, metrics, plots
from chest_tf.files import write_text_atomic

REFERENCE_DOC = "reference/benchmarks.md"
DISPLAY_NAMES = {"chestmnist": "ChestMNIST", "pneumoniamnist": "PneumoniaMNIST", "phantom": "phantom"}
THRESHOLD_WORDS = {
    "youden": "Youden's J (max sensitivity + specificity - 1)",
    "sensitivity": "the highest threshold reaching sensitivity >= {target:g}",
    "specificity": "the lowest threshold keeping specificity >= {target:g}",
    "fixed": "a fixed threshold of {target:g}",
}


def report_from_predictions(
    out_dir: str | Path,
    val_true: np.ndarray,
    val_score: np.ndarray,
    test_true: np.ndarray,
    test_score: np.ndarray,
    task: str,
    label_names: Sequence[str] | None,
    dataset: str,
    size: int,
    model_name: str,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold_method: str = "youden",
    target: float = 0.9,
    history_csv: str | Path | None = None,
    run_info: dict | None = None,
) -> dict[str, Any]:
    """Evaluate val/test predictions (probabilities; see ``chest_tf.evaluation.metrics`` for shapes), save
    them to predictions.npz and write the full report folder. Thresholds come from val only.
    Returns the ``evaluate_splits`` result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "predictions.npz", val_true=np.asarray(val_true), val_score=np.asarray(val_score),
                        test_true=np.asarray(test_true), test_score=np.asarray(test_score))
    result = metrics.evaluate_splits((val_true, val_score), (test_true, test_score), task, label_names,
                                     n_bootstrap=n_bootstrap, seed=seed, threshold_method=threshold_method,
                                     target=target)
    predictions = {"val_true": val_true, "val_score": val_score, "test_true": test_true, "test_score": test_score}
    write_report(out_dir, result, dataset, size, label_names, model_name, predictions=predictions,
                 history_csv=history_csv, run_info=run_info)
    return result


def write_report(
    out_dir: str | Path,
    result: dict[str, Any],
    dataset: str,
    size: int,
    label_names: Sequence[str] | None,
    model_name: str,
    predictions: dict[str, np.ndarray] | None = None,
    history_csv: str | Path | None = None,
    run_info: dict | None = None,
) -> Path:
    """Write report.md, metrics.json and the figures for ``result`` into ``out_dir``.

    ``predictions`` (val_true, val_score, test_true, test_score) is needed for the ROC, PR,
    calibration and confusion figures; without it only the figures drawn from the result are made.
    Returns the path of report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, compared_to = comparison_rows(dataset, size)
    figures = write_figures(out_dir, result, label_names, predictions, history_csv)
    payload = {"dataset": dataset, "size": int(size), "model_name": model_name, "run_info": run_info or {},
               "published_rows_compared": rows, "published_rows_dataset": compared_to, **result}
    write_text_atomic(out_dir / "metrics.json", metrics.dumps_json(payload) + "\n")
    text = render_markdown(result, dataset, size, model_name, rows, compared_to, figures, run_info)
    return write_text_atomic(out_dir / "report.md", text)


def comparison_rows(dataset: str, size: int) -> tuple[list[dict], str | None]:
    """Published rows for the dataset and size, and which dataset they are from. chest_tf's
    generated phantom set has none of its own: ChestMNIST's are returned for orientation."""
    key = benchmarks.normalise_dataset(dataset)
    rows = benchmarks.published_rows(key, size)
    if rows:
        return rows, key
    if key == "phantom":
        return benchmarks.published_rows("chestmnist", size), "chestmnist"
    return [], None


def write_figures(
    out_dir: Path,
    result: dict[str, Any],
    label_names: Sequence[str] | None,
    predictions: dict[str, np.ndarray] | None,
    history_csv: str | Path | None,
) -> dict[str, str]:
    """Draw every figure that the inputs allow; returns {caption: file name}."""
    task = result["task"]
    names = result["label_names"]
    test_rows = result["test"]["per_label"]
    figures: dict[str, str] = {}
    if predictions is not None:
        y, s = predictions["test_true"], predictions["test_score"]
        thresholds = np.asarray(result["thresholds"]["values"], dtype=float)
        plots.plot_roc_curves(y, s, names, out_dir / "roc_curves.png", task, thresholds)
        figures["ROC curves per label (dot: operating point at the validation-chosen threshold)"] = "roc_curves.png"
        plots.plot_pr_curves(y, s, names, out_dir / "pr_curves.png", task)
        figures["Precision-recall curves per label (dashed: prevalence)"] = "pr_curves.png"
        plots.plot_reliability(y, s, names, out_dir / "calibration.png", task,
                               result["test"]["calibration"]["n_bins"])
        figures["Reliability diagrams (calibration)"] = "calibration.png"
        if task != metrics.MULTI_LABEL:
            plots.plot_confusion_matrix(y, _predicted_classes(s, task, thresholds), _class_names(task, label_names, s),
                                        out_dir / "confusion_matrix.png",
                                        predicted_label=_confusion_rule(task, thresholds))
            figures["Confusion matrix"] = "confusion_matrix.png"
    plots.plot_operating_points(
        names, _column(test_rows, "sensitivity"), _column(test_rows, "specificity"), out_dir / "operating_points.png",
        _interval_column(test_rows, "sensitivity_ci"), _interval_column(test_rows, "specificity_ci"))
    figures["Sensitivity and specificity at the validation-chosen thresholds"] = "operating_points.png"
    if history_csv is not None and Path(history_csv).is_file():
        plots.plot_training_curves(history_csv, out_dir / "training_curves.png")
        figures["Training curves"] = "training_curves.png"
    return figures


def _predicted_classes(score: np.ndarray, task: str, thresholds: np.ndarray) -> np.ndarray:
    if task == metrics.BINARY:
        return (metrics.positive_class_score(score) >= thresholds[0]).astype(int)
    return np.argmax(np.asarray(score), axis=1)


def _confusion_rule(task: str, thresholds: np.ndarray) -> str:
    if task == metrics.BINARY:
        return f"predicted (positive when score >= {thresholds[0]:.3f}, chosen on val)"
    return "predicted (argmax)"


def _class_names(task: str, label_names: Sequence[str] | None, score: np.ndarray) -> list[str]:
    if task == metrics.BINARY:
        return list(label_names) if label_names is not None and len(label_names) == 2 else ["negative", "positive"]
    n_classes = np.asarray(score).shape[1]
    return list(label_names) if label_names is not None else metrics.default_label_names(n_classes)


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([row[key] for row in rows], dtype=float)


def _interval_column(rows: list[dict], key: str) -> np.ndarray | None:
    if not rows or rows[0].get(key) is None:
        return None
    return np.array([row[key] for row in rows], dtype=float)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _ci_text(ci: Any, digits: int = 3) -> str:
    if ci is None or not np.all(np.isfinite(np.asarray(ci, dtype=float))):
        return "n/a"
    return f"{_num(ci[0], digits)}–{_num(ci[1], digits)}"


def _with_ci(value: Any, ci: Any, digits: int = 3) -> str:
    interval = _ci_text(ci, digits)
    return _num(value, digits) if interval == "n/a" else f"{_num(value, digits)} ({interval})"


def _display(dataset: str) -> str:
    key = benchmarks.normalise_dataset(dataset)
    return DISPLAY_NAMES.get(key, dataset)


def _threshold_words(thresholds: dict) -> str:
    return THRESHOLD_WORDS[thresholds["method"]].format(target=thresholds["target"] or 0)


def render_markdown(
    result: dict[str, Any],
    dataset: str,
    size: int,
    model_name: str,
    rows: list[dict],
    compared_to: str | None,
    figures: dict[str, str],
    run_info: dict | None = None,
) -> str:
    """The report text (GitHub-flavoured markdown)."""
    lines = [f"# {model_name} on {_display(dataset)} ({size} px): evaluation", ""]
    lines += _headline_section(result)
    lines += _comparison_section(result, dataset, size, model_name, rows, compared_to)
    lines += _per_label_section(result)
    lines += _operating_point_section(result)
    lines += _calibration_section(result)
    lines += _figures_section(figures)
    lines += _notes_section(result, run_info)
    return "\n".join(lines) + "\n"


def _headline_section(result: dict) -> list[str]:
    head, test, val = result["headline"], result["test"], result["val"]
    boot = result["bootstrap"]
    ci_words = (f"95% CIs: percentile bootstrap, {boot['n_resamples']} resamples of test images, seed {boot['seed']}"
                if head["auc_ci"] is not None else "no bootstrap CIs (n_bootstrap = 0)")
    return [
        f"**Test AUC {_with_ci(head['auc'], head['auc_ci'])} · ACC {_with_ci(head['acc'], head['acc_ci'])}** "
        f"(n = {test['n']}; MedMNIST official formulas, task {result['task']!r}).",
        "",
        f"- {ci_words}.",
        f"- AUC: {test['auc_note']}.",
        f"- Validation (n = {val['n']}): AUC {_num(val['auc'])}, ACC {_num(val['acc'])}.",
        f"- For scale: the best constant prediction scores ACC {_num(test['acc_majority_baseline'])} on this test "
        "set, so AUC and the per-label rates below say more than ACC.",
        "",
    ]


def _comparison_section(result: dict, dataset: str, size: int, model_name: str, rows: list[dict],
                        compared_to: str | None) -> list[str]:
    lines = ["## Compared with published results", ""]
    key = benchmarks.normalise_dataset(dataset)
    if not rows:
        return lines + [f"No published results in {REFERENCE_DOC} apply to {_display(dataset)} at {size} px.", ""]
    groups = sorted({row["group"] for row in rows}, key=lambda g: [r["group"] for r in rows].index(g))
    if compared_to != key:
        lines += [f"{_display(dataset)} is chest_tf's generated stand-in and has no published results; the "
                  f"{_display(compared_to)} rows at {size} px are listed **for orientation only** (different data, "
                  "not a like-for-like comparison).", ""]
    lines += [f"Rows of {REFERENCE_DOC} compared with ({_display(compared_to)}, {size} px): "
              + "; ".join(f"{g}: " + ", ".join(r["method"] for r in rows if r["group"] == g) for g in groups) + ".",
              "",
              "| Method | Group | Test AUC | Test ACC | ΔAUC (this run − row) | Note |",
              "|---|---|---|---|---|---|",
              f"| **{model_name} (this run)** | chest_tf | **{_num(result['headline']['auc'])}** | "
              f"**{_num(result['headline']['acc'])}** | | AUC 95% CI {_ci_text(result['headline']['auc_ci'])} |"]
    this_auc = result["headline"]["auc"]
    comparable = compared_to == key  # no differences against another dataset's rows
    for row in rows:
        delta = this_auc - row["auc"] if comparable and row["auc"] is not None and np.isfinite(this_auc) else None
        lines.append(f"| {row['method']} | {row['group']} | {_num(row['auc'])} | "
                     f"{_num(row['acc'])} | {'' if delta is None else f'{delta:+.3f}'} | {row['note']} |")
    sources = sorted({row["source"] for row in rows})
    lines += ["", "Sources: " + "; ".join(sources) + ".", ""]
    return lines


def _per_label_section(result: dict) -> list[str]:
    t = result["thresholds"]
    lines = ["## Per label (test)", "",
             f"Thresholds chosen on **validation** by {_threshold_words(t)}, then applied unchanged to test; "
             "positive when score ≥ threshold. Sens = sensitivity, Spec = specificity, AP = average precision.", "",
             "| Label | Prev. | AUC (95% CI) | AP | Threshold | Sens (95% CI) | Spec (95% CI) | PPV | NPV | F1 | ECE | Brier |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["test"]["per_label"]:
        label = row["label"] if row["defined"] else f"{row['label']} (undefined: {row['undefined_reason']})"
        lines.append(
            f"| {label} | {_num(row['prevalence'])} | {_with_ci(row['auc'], row.get('auc_ci'))} | "
            f"{_num(row['average_precision'])} | {_num(row['threshold'], 4)} | "
            f"{_with_ci(row['sensitivity'], row.get('sensitivity_ci'))} | "
            f"{_with_ci(row['specificity'], row.get('specificity_ci'))} | {_num(row['ppv'])} | {_num(row['npv'])} | "
            f"{_num(row['f1'])} | {_num(row['ece'])} | {_num(row['brier'])} |")
    means = result["test"]["mean_over_defined"]
    if len(result["test"]["per_label"]) > 1:
            lines.append(
            f"| **mean over defined labels** | | {_num(means['auc'])} | {_num(means['average_precision'])} | | "
            f"{_num(means['sensitivity'])} | {_num(means['specificity'])} | {_num(means['ppv'])} | "
            f"{_num(means['npv'])} | {_num(means['f1'])} | {_num(result['test']['calibration']['ece'])} | "
            f"{_num(result['test']['calibration']['brier'])} |")
    return lines + [""]


def _operating_point_section(result: dict) -> list[str]:
    lines = ["## Sensitivity and specificity at the validation-chosen thresholds", "",
             "The same thresholds on both splits: a large drop from validation to test means the operating "
             "point does not transfer.", "",
             "| Label | Threshold | Val sens | Val spec | Test sens | Test spec |", "|---|---|---|---|---|---|"]
    for val_row, test_row in zip(result["val"]["per_label"], result["test"]["per_label"]):
        lines.append(f"| {test_row['label']} | {_num(test_row['threshold'], 4)} | {_num(val_row['sensitivity'])} | "
                     f"{_num(val_row['specificity'])} | {_num(test_row['sensitivity'])} | {_num(test_row['specificity'])} |")
    return lines + ["", "![sensitivity and specificity](operating_points.png)", ""]


def _calibration_section(result: dict) -> list[str]:
    cal = result["test"]["calibration"]
    text = (f"Test ECE {_num(cal['ece'])} (mean over labels, {cal['n_bins']} equal-width bins), "
            f"Brier score {_num(cal['brier'])} (mean over labels)")
    if "top_label_ece" in cal:
        text += f"; top-label (confidence) ECE {_num(cal['top_label_ece'])}"
    return ["## Calibration", "", text + ".", ""]


def _figures_section(figures: dict[str, str]) -> list[str]:
    lines = ["## Figures", ""]
    for caption, name in figures.items():
        if name != "operating_points.png":
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    lines += ["Files: " + ", ".join(f"[{name}]({name})" for name in figures.values())
              + ", [metrics.json](metrics.json), predictions.npz.", ""]
    return lines


def _notes_section(result: dict, run_info: dict | None) -> list[str]:
    lines = []
    if result["warnings"]:
        lines += ["## Warnings", ""] + [f"- {message}" for message in result["warnings"]] + [""]
    if run_info:
        lines += ["## Run", ""] + [f"- {key}: {value}" for key, value in run_info.items()] + [""]
    return lines
