"""Matplotlib figures for evaluation reports: ROC and PR curves per label, reliability diagrams,
sensitivity / specificity at the chosen thresholds, confusion matrices, training curves.

Every function takes arrays (or a CSV path) and an output path, writes one PNG and returns the path.
Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas rather than pyplot, so nothing
is left open, no global backend is switched and it works headless. All numbers come from
``chest_tf.evaluation.metrics``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from chest_tf.evaluation import metrics

DPI = 110
PANEL_INCHES = 2.9  # one small-multiple panel; keeps 14 labels legible on one page


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    fig.clear()  # free the artists now; the Figure has no pyplot manager to close
    return out_path


def _grid_shape(n_panels: int) -> tuple[int, int]:
    cols = min(n_panels, 5 if n_panels > 12 else 4)
    return math.ceil(n_panels / cols), cols


def _small_multiples(n_panels: int, title: str) -> tuple[Figure, list]:
    """A grid of square panels sharing axes; unused cells hidden."""
    rows, cols = _grid_shape(n_panels)
    fig = _new_figure(max(PANEL_INCHES * cols, 5.0), PANEL_INCHES * rows + 0.5 + 0.2 * title.count("\n"))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig, list(axes[:n_panels])


def _label_outer(axes: list, n_cols: int, xlabel: str, ylabel: str) -> None:
    """Axis labels on the left column and on the lowest panel of each column."""
    n = len(axes)
    for i, ax in enumerate(axes):
        if i % n_cols == 0:
            ax.set_ylabel(ylabel)
        if i + n_cols >= n:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def plot_roc_curves(
    y_true: np.ndarray,
    y_score: np.ndarray,
    label_names: Sequence[str] | None,
    out_path: str | Path,
    task: str = metrics.MULTI_LABEL,
    thresholds: np.ndarray | None = None,
    title: str = "ROC curves (test)",
) -> Path:
    """One ROC panel per label column, AUC in each title; the operating point at ``thresholds``
    (chosen on validation) marked when given."""
    Y, S = metrics.to_label_matrix(y_true, y_score, task)
    names = metrics.column_names(label_names, task, Y.shape[1])
    auc = metrics.roc_auc_columns(Y, S)
    fig, axes = _small_multiples(len(names), title)
    for k, ax in enumerate(axes):
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
        if np.isfinite(auc[k]):
            fpr, tpr, _ = metrics.roc_curve_points(Y[:, k], S[:, k])
            ax.plot(fpr, tpr, color="C0", lw=1.4)
            if thresholds is not None and np.isfinite(thresholds[k]):
                pred = S[:, k] >= thresholds[k]
                pos = Y[:, k] == 1
                ax.plot(np.mean(pred[~pos]), np.mean(pred[pos]), "o", color="C3", ms=5,
                        label="val-chosen threshold")
        else:
            ax.text(0.5, 0.5, "undefined\n(one class only)", ha="center", va="center", color="C3")
        ax.set_title(f"{names[k]}\nAUC {_fmt(auc[k])}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
    _label_outer(axes, _grid_shape(len(names))[1], "1 - specificity (FPR)", "sensitivity (TPR)")
    for ax in axes:  # one legend, in the empty lower-right corner of the first drawn panel
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8, handletextpad=0.2)
            break
    return _save(fig, out_path)


def plot_pr_curves(
    y_true: np.ndarray,
    y_score: np.ndarray,
    label_names: Sequence[str] | None,
    out_path: str | Path,
    task: str = metrics.MULTI_LABEL,
    title: str = "Precision-recall curves (test)",
) -> Path:
    """One precision-recall panel per label column, average precision and prevalence (the
    no-skill precision, dashed) in each title."""
    Y, S = metrics.to_label_matrix(y_true, y_score, task)
    names = metrics.column_names(label_names, task, Y.shape[1])
    ap = metrics.average_precision_columns(Y, S)
    prevalence = Y.mean(axis=0) if Y.shape[0] else np.full(Y.shape[1], np.nan)
    fig, axes = _small_multiples(len(names), title)
    for k, ax in enumerate(axes):
        if np.isfinite(ap[k]):
            precision, recall, _ = metrics.precision_recall_points(Y[:, k], S[:, k])
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color="C0", lw=1.4)
            ax.axhline(prevalence[k], color="0.6", lw=0.8, ls="--")
        else:
            ax.text(0.5, 0.5, "undefined\n(no positives)", ha="center", va="center", color="C3")
        ax.set_title(f"{names[k]}\nAP {_fmt(ap[k])}, prev. {_fmt(prevalence[k])}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    _label_outer(axes, _grid_shape(len(names))[1], "recall (sensitivity)", "precision (PPV)")
    return _save(fig, out_path)


def plot_reliability(
    y_true: np.ndarray,
    y_score: np.ndarray,
    label_names: Sequence[str] | None,
    out_path: str | Path,
    task: str = metrics.MULTI_LABEL,
    n_bins: int = metrics.ECE_BINS,
    title: str = "Calibration (test)",
    min_bin_count: int = 20,
) -> Path:
    """Reliability diagram per label column: observed fraction positive against mean predicted
    probability in equal-width bins (marker area ~ cases in the bin; hollow markers, left off the
    line: bins with fewer than ``min_bin_count`` cases, too noisy to read), the diagonal is perfect
    calibration; ECE and Brier score in each title."""
    Y, S = metrics.to_label_matrix(y_true, y_score, task)
    names = metrics.column_names(label_names, task, Y.shape[1])
    table = metrics.reliability_table(Y, S, n_bins)
    ece = metrics.expected_calibration_error(Y, S, n_bins)
    brier = metrics.brier_score(Y, S)
    fig, axes = _small_multiples(
        len(names), f"{title}\n{n_bins} equal-width bins, area ~ cases, hollow < {min_bin_count}")
    for k, ax in enumerate(axes):
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
        count = table["count"][k]
        x, y = table["mean_score"][k], table["fraction_positive"][k]
        solid = count >= min_bin_count
        sparse = (count > 0) & ~solid
        share = count / max(count.sum(), 1)
        ax.plot(x[solid], y[solid], color="C0", lw=1.0)
        ax.scatter(x[solid], y[solid], s=10 + 200 * share[solid], color="C0", alpha=0.85, zorder=3)
        ax.scatter(x[sparse], y[sparse], s=14, facecolors="none", edgecolors="C0", lw=0.8, zorder=3)
        ax.set_title(f"{names[k]}\nECE {_fmt(ece[k])}, Brier {_fmt(brier[k])}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
    _label_outer(axes, _grid_shape(len(names))[1], "mean predicted probability", "observed fraction positive")
    return _save(fig, out_path)


def plot_operating_points(
    label_names: Sequence[str],
    sensitivity: np.ndarray,
    specificity: np.ndarray,
    out_path: str | Path,
    sensitivity_ci: np.ndarray | None = None,
    specificity_ci: np.ndarray | None = None,
    title: str = "Sensitivity and specificity at validation-chosen thresholds (test)",
) -> Path:
    """Paired horizontal bars per label; 95% CIs as whiskers when given ((K, 2) arrays).
    Undefined values (NaN) are left blank and marked "n/a"."""
    names = list(label_names)
    k = len(names)
    sens = np.asarray(sensitivity, dtype=float)
    spec = np.asarray(specificity, dtype=float)
    fig = _new_figure(9.5, 1.2 + 0.42 * k)
    ax = fig.subplots()
    pos = np.arange(k)
    height = 0.38
    for offset, values, ci, label, color in (
        (-height / 2, sens, sensitivity_ci, "sensitivity", "C3"),
        (height / 2, spec, specificity_ci, "specificity", "C0"),
    ):
        shown = np.nan_to_num(values)
        err = None
        if ci is not None:
            ci = np.asarray(ci, dtype=float)
            err = np.nan_to_num(np.abs(np.vstack([values - ci[:, 0], ci[:, 1] - values])))
        ax.barh(pos + offset, shown, height, xerr=err, color=color, label=label, capsize=2,
                error_kw={"lw": 0.8})
        right_end = values if ci is None else np.fmax(values, ci[:, 1])  # text clears the whisker
        for y, value, end in zip(pos + offset, values, right_end):
            ax.text(0.005 if not np.isfinite(value) else end + 0.012, y, _fmt(value, 2), va="center", fontsize=8)
    ax.set_yticks(pos, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xticks(np.linspace(0, 1, 11))
    ax.set_xlabel("rate on test" + ("  (whiskers: 95% bootstrap CI)" if sensitivity_ci is not None else ""))
    ax.set_title(title, fontsize=11)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=9, frameon=False)
    ax.grid(axis="x", color="0.9")
    return _save(fig, out_path)


def plot_confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    out_path: str | Path,
    title: str = "Confusion matrix (test)",
    predicted_label: str = "predicted",
) -> Path:
    """Counts with row-normalised shading (each true class sums to 1): for binary and
    multi-class sets. ``predicted_label`` says how predictions were made."""
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    y_pred = np.asarray(y_pred).reshape(-1).astype(int)
    c = len(class_names)
    counts = np.zeros((c, c), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    size = max(2.0 + 0.7 * c, 4.0)
    fig = _new_figure(size + 1.5, size)
    ax = fig.subplots()
    image = ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{counts[i, j]}\n{_fmt(share[i, j], 2)}", ha="center", va="center",
                    color="white" if np.nan_to_num(share[i, j]) > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(c), class_names, rotation=30, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel(predicted_label)
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11)
    fig.colorbar(image, ax=ax, label="share of true class")
    return _save(fig, out_path)


def read_history_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A Keras CSVLogger-style file -> {column: float array}; blank or non-numeric cells are NaN."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = rows[0].keys() if rows else []
    out = {}
    for name in columns:
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                values.append(float("nan"))
        out[name.strip()] = np.asarray(values)
    return out


def _metric_panels(columns: Sequence[str]) -> list[str]:
    """Base metric names with a train and/or val_ column, loss first, in first-seen order."""
    bases = []
    for name in columns:
        if name in ("epoch", "lr", "learning_rate"):
            continue
        base = name[4:] if name.startswith("val_") else name
        if base not in bases:
            bases.append(base)
    return sorted(bases, key=lambda b: b != "loss")


def plot_training_curves(history_csv: str | Path, out_path: str | Path, title: str = "Training curves") -> Path:
    """One panel per metric from a history CSV (epoch, loss, val_loss, auc, val_auc, ...): train
    solid, validation dashed, best validation epoch marked (min for loss, max otherwise); a
    learning-rate panel when an lr column exists. Missing columns are skipped."""
    history = read_history_csv(history_csv)
    n_rows = len(next(iter(history.values()))) if history else 0
    epochs = history.get("epoch", np.arange(n_rows))
    epochs = epochs + 1 if epochs.size and epochs[0] == 0 else epochs  # show 1-based epochs
    bases = _metric_panels(list(history))
    lr_name = next((c for c in ("lr", "learning_rate") if c in history), None)
    n_panels = max(len(bases) + (lr_name is not None), 1)
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for ax, base in zip(axes, bases):
        for name, style, label, color in ((base, "-", "train", "C0"), (f"val_{base}", "--", "val", "C1")):
            if name in history and np.any(np.isfinite(history[name])):
                seen = np.isfinite(history[name])  # join over gaps (e.g. validation every few epochs)
                ax.plot(epochs[seen], history[name][seen], style, label=label, lw=1.4, color=color,
                        marker="o" if seen.sum() <= 30 else None, ms=2.5)
        val = history.get(f"val_{base}")
        if val is not None and np.any(np.isfinite(val)):
            best = np.nanargmin(val) if "loss" in base else np.nanargmax(val)
            ax.plot(epochs[best], val[best], "o", color="C3", ms=5, label=f"best val: {val[best]:.4g}")
        ax.set_title(base)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(base)
        ax.grid(color="0.92")
        ax.legend(fontsize=8)
    if lr_name is not None:
        ax = axes[len(bases)]
        lr = history[lr_name]
        ax.plot(epochs, lr, color="C2", lw=1.4, marker="o" if lr.size <= 30 else None, ms=2.5)
        if np.all(lr[np.isfinite(lr)] > 0):  # a log axis would drop a schedule's final 0
            ax.set_yscale("log")
        ax.set_title("learning rate")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(lr_name)
        ax.grid(color="0.92")
    if not bases and lr_name is None:
        axes[0].text(0.5, 0.5, "no metric columns in history", ha="center", va="center")
    fig.suptitle(title, fontsize=13)
    return _save(fig, out_path)
