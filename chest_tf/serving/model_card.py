"""MODEL_CARD.md for an export, after the Hugging Face model-card layout (YAML front matter with
``model-index`` results, then prose sections) and Keras' (intended use, data, metrics, limitations,
how to reproduce), written from the export's own metadata and report so every number in it comes
from the export's files."""
from __future__ import annotations

from pathlib import Path

from chest_tf.evaluation.benchmarks import published_rows
from chest_tf.files import write_text_atomic
from chest_tf.serving.metadata import METADATA_PATH

CARD_NAME = "MODEL_CARD.md"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci or any(v is None for v in ci) else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def _yaml_results(meta: dict) -> list[str]:
    head = (meta.get("metrics") or {}).get("headline") or {}
    lines = ["model-index:", f"- name: {meta.get('name')}", "  results:", "  - task:",
             "      type: image-classification", "    dataset:", f"      name: {meta['dataset']}",
             f"      type: medmnist/{meta['dataset']}", "      split: test", "    metrics:"]
    for key in ("auc", "acc"):
        if head.get(key) is not None:
            lines += [f"    - type: {key}", f"      value: {head[key]:.4f}"]
    return lines


def _published(meta: dict) -> list[str]:
    rows = published_rows(meta["dataset"], int(meta["input"]["height"]))
    if not rows:
        return ["No published rows for this dataset and size in `../shared/reference/benchmarks.md`."]
    lines = ["| published model | AUC | ACC |", "|---|---|---|"]
    lines += [f"| {r['method']} ({r['source']}) | {_num(r['auc'])} | {_num(r['acc'])} |" for r in rows]
    return lines


def render(meta: dict, report_dir: str | None, commands: list[str]) -> str:
    head = (meta.get("metrics") or {}).get("headline") or {}
    test = (meta.get("metrics") or {}).get("test") or {}
    thresholds = meta["thresholds"]
    calibration = meta.get("calibration") or {}
    ood = meta.get("ood") or {}
    lines = ["---", "license: apache-2.0", "library_name: keras", "tags:", "- medical-imaging", "- chest-x-ray",
             "- medmnist", "- research-only", *_yaml_results(meta), "---", "",
             f"# {meta.get('name')}: {meta.get('arch')} on {meta['dataset']} at {meta['input']['height']} px", "",
             "**Research use only. Not for clinical use.** This model has not been validated for diagnosis, "
             "triage or any decision about a patient, and it was trained on down-sampled public data.", "",
             "## Intended use", "",
             f"- Research on {meta['dataset']}-style images: benchmarking, interpretability and robustness studies.",
             "- Input: frontal chest radiographs as uint8 images of any size (resized inside to "
             f"{meta['input']['height']} x {meta['input']['width']}, {meta['input']['channels']} channel(s)).",
             f"- Output: {meta['activation']} probabilities for {len(meta['output_names'])} output(s): "
             f"{', '.join(meta['output_names'])}.",
             "- Out of scope: clinical use; lateral views, other body parts, photographs of films, CT or MRI "
             "(the input checks and the OOD score are there to catch these, not to make them safe).", "",
             "## Data and splits", "",
             f"- Dataset: {meta['dataset']} (MedMNIST v2; Yang et al., Scientific Data 2023), "
             f"{meta['input']['height']} px, the dataset's own train / val / test split.",
             "- ChestMNIST's split is MedMNIST's 7:1:2 split of NIH ChestX-ray14 (78,468 / 11,219 / 22,433 "
             "images), not NIH's official train_val / test lists." if meta["dataset"] == "chestmnist" else
             "- Training used the train split; thresholds, calibration and the OOD threshold used val only; "
             "every number below is on test.",
             f"- Source: `{(meta.get('source') or {}).get('data', 'the run config')}`.", "",
             "## Metrics (test, 95% bootstrap CIs)", "",
             "| metric | value |", "|---|---|",
             f"| AUC (official MedMNIST: mean per-label ROC-AUC) | {_num(head.get('auc'))}{_ci(head.get('auc_ci'))} |",
             f"| ACC (official MedMNIST: at 0.5) | {_num(head.get('acc'))}{_ci(head.get('acc_ci'))} |",
             f"| test images | {test.get('n', 'n/a')} |", "", *_published(meta), ""]
    per_label = test.get("per_label") or []
    if per_label:
        lines += ["### Operating points (thresholds chosen on val)", "",
                  "| output | AUC | sensitivity | specificity | threshold |", "|---|---|---|---|---|"]
        lines += [f"| {r.get('label')} | {_num(r.get('auc'))} | {_num(r.get('sensitivity'))} | "
                  f"{_num(r.get('specificity'))} | {_num(r.get('threshold'))} |" for r in per_label]
        lines.append("")
    lines += ["## Calibration", ""]
    if calibration.get("method") == "temperature":
        ece = calibration["ece"]
        temps = calibration["temperatures"]
        lines += [f"Temperature scaling ({calibration['scope']}, fitted on val): temperature "
                  f"{', '.join(f'{t:.3f}' for t in temps[:14])}{' ...' if len(temps) > 14 else ''}. Thresholds "
                  f"({thresholds.get('method')}) were chosen after calibration.", "",
                  "| mean ECE (15 bins) | before | after |", "|---|---|---|",
                  f"| val | {_num(ece['val_before'], 4)} | {_num(ece['val_after'], 4)} |",
                  f"| test | {_num(ece['test_before'], 4)} | {_num(ece['test_after'], 4)} |", ""]
    else:
        lines += ["Not calibrated: the probabilities are the model's own.", ""]
    lines += ["## Out-of-distribution behaviour", ""]
    if ood.get("method", "none") != "none":
        lines += [f"`serve` returns `ood_score` ({ood['method']}) and `in_distribution` (score <= "
                  f"{ood['threshold']:.4g}, the {ood['percentile']:g}th percentile of val scores). AUROC of telling "
                  "test images from each set (1 = perfect), and the share of each set flagged:", "",
                  "| set | kind | images | AUROC | flagged |", "|---|---|---|---|---|"]
        for name, row in (ood.get("evaluation") or {}).items():
            lines.append(f"| {name} | {row['kind']} | {row['n']} | {_num(row['auroc'])} | {row['flagged']:.1%} |")
        lines.append("")
    else:
        lines += ["No OOD score: this export cannot say when an image is unlike its training data.", ""]
    lines += ["## Limitations", "",
              "- Trained and tested on low-resolution MedMNIST images from one source; performance on other "
              "hospitals, scanners, views or resolutions is unknown.",
              "- Labels of NIH ChestX-ray14 (ChestMNIST) were mined from reports by NLP and are noisy.",
              "- The OOD score flags images unlike the training set; it does not guarantee that in-distribution "
              "predictions are correct, and near-distribution shifts (e.g. a different scanner) may pass it.",
              "- Input checks (too small, aspect ratio, blank, colour, inverted) are heuristics "
              "(`chest_tf.serving.input_checks`).", "",
              "## Files", "",
              f"- Metadata: `{METADATA_PATH}`; Keras model: `model.keras`; SavedModel: this folder (`serve`)."]
    if report_dir:
        lines.append(f"- Metrics file: `{report_dir}/metrics.json`; report: `{report_dir}/report.md` "
                     f"(figures: ROC, PR, calibration, operating points).")
    lines += ["", "## Reproduce", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def write_model_card(directory: Path, meta: dict, report_dir: str | None, commands: list[str]) -> Path:
    return write_text_atomic(Path(directory) / CARD_NAME, render(meta, report_dir, commands))
