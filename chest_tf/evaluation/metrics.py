"""The one place every number chest_tf reports comes from (numpy only; tested against scikit-learn
and MedMNIST's evaluator).

No TensorFlow, Keras or even scikit-learn at import: the module loads in about 0.1 s.

Tasks and the inputs accepted
-----------------------------
Task names are MedMNIST's:

=============================  ====================  ==============================================
task                           y_true                y_score (probabilities in [0, 1])
=============================  ====================  ==============================================
"multi-label, binary-class"    (N, L) of 0/1         (N, L) sigmoid outputs
"binary-class"                 (N, 1) or (N,) 0/1    (N,), (N, 1) sigmoid of one logit, or (N, 2)
                                                     softmax (column 1 = positive class is used)
"multi-class"                  (N, 1) or (N,) ints   (N, C) softmax outputs
"ordinal-regression"           as multi-class        as multi-class (MedMNIST scores it as one)
=============================  ====================  ==============================================

``scores_from_logits`` turns model logits into these scores.

The label-matrix view
---------------------
Every task is reduced to K binary columns ``Y`` (N, K) with scores ``S`` (N, K):
multi-label: the L labels; binary: one column, the positive class; multi-class: one-vs-rest columns
for the C classes (``Y[:, c] = (y == c)``). All per-label metrics are computed on these columns.

Official MedMNIST numbers (as ``medmnist/evaluator.py`` getAUC / getACC compute them)
-------------------------------------------------------------------------------------
* AUC = mean over the K columns of the ROC-AUC of column k. For binary that is the AUC of the
  positive-class score; for multi-class the mean one-vs-rest AUC over all C score columns.
* ACC, multi-label = mean over labels of mean_i [ (S_ik > 0.5) == Y_ik ]   (strictly greater)
  ACC, binary      = mean_i [ (s_i > 0.5) == y_i ]                         (positive-class score)
  ACC, multi-class = mean_i [ argmax_c S_ic == y_i ]                       (first max on ties)

ROC-AUC is computed as the Mann-Whitney statistic with mid-ranks for ties,
``AUC = (sum of ranks of positives - n1 (n1 + 1) / 2) / (n1 n0)``, which equals the area under the
trapezoidal ROC curve (scikit-learn's ``roc_auc_score``) exactly, ties included.

Undefined labels
----------------
A column with no positives or no negatives in a split has no ROC-AUC (nor sensitivity or
specificity). MedMNIST's evaluator then returns NaN for the whole mean (scikit-learn >= 1.6 warns
and gives NaN; older versions raise). Here such a label is reported as undefined (NaN, written
``null`` in JSON, with a flag and a warning in the result) and overall means are taken over the
defined labels only, which the result says. Where every label is defined the official numbers equal
MedMNIST's to floating-point rounding.

Operating points
----------------
A label is called positive when ``score >= threshold`` (scikit-learn's ``roc_curve`` convention).
Thresholds are chosen on the validation split only (``choose_thresholds``) and then applied to
test; ``evaluate_splits`` takes the two splits apart so test data never reach the choice.

Bootstrap
---------
Percentile intervals from ``n_bootstrap`` resamples of test rows (whole images, so the labels of an
image stay together), seeded. A resample is a vector of counts; AUC under counts is computed from
one sort per label (weighted Mann-Whitney), so 1,000 resamples of 22,433 x 14 take seconds.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from statistics import NormalDist
from typing import Any, Iterator, Sequence

import numpy as np

MULTI_LABEL = "multi-label, binary-class"
BINARY = "binary-class"
MULTI_CLASS = "multi-class"
ORDINAL = "ordinal-regression"
TASKS = (MULTI_LABEL, BINARY, MULTI_CLASS, ORDINAL)

ACC_THRESHOLD = 0.5  # MedMNIST's fixed threshold for multi-label and binary ACC
ECE_BINS = 15
THRESHOLD_METHODS = ("youden", "sensitivity", "specificity", "fixed")
_BOOTSTRAP_CHUNK = 100  # resamples held in memory at once; fixed so results depend only on seed


class UndefinedLabelWarning(UserWarning):
    """A label has no positives or no negatives in a split, so its AUC is undefined."""


# --------------------------------------------------------------------------------------------
# Inputs: tasks, logits -> scores, the label-matrix view
# --------------------------------------------------------------------------------------------


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def is_multi_class(task: str) -> bool:
    """Ordinal regression is scored exactly like multi-class by MedMNIST."""
    return check_task(task) in (MULTI_CLASS, ORDINAL)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), written so that large |x| does not overflow."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum exp(x - max): the max shift keeps exp finite."""
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def scores_from_logits(logits: np.ndarray, task: str) -> np.ndarray:
    """Model logits -> the probabilities this module expects, keeping the model's output shape.

    multi-label: sigmoid per label. binary: one logit (N,) / (N, 1) -> sigmoid; two logits (N, 2)
    -> softmax. multi-class / ordinal: softmax over classes.
    """
    logits = np.asarray(logits, dtype=np.float64)
    check_task(task)
    if task == MULTI_LABEL:
        return sigmoid(logits)
    if task == BINARY:
        if logits.ndim == 1 or logits.shape[1] == 1:
            return sigmoid(logits)
        if logits.shape[1] == 2:
            return softmax(logits, axis=1)
        raise ValueError(f"binary logits must be (N,), (N, 1) or (N, 2), got {logits.shape}")
    return softmax(logits, axis=1)


def _class_indices(y_true: np.ndarray) -> np.ndarray:
    """(N,) or (N, 1) integer labels -> (N,) int array."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"expected labels of shape (N,) or (N, 1), got {np.asarray(y_true).shape}")
    if y.size and not np.all(y == np.round(y)):
        raise ValueError("class labels must be integers")
    return y.astype(np.int64)


def positive_class_score(y_score: np.ndarray) -> np.ndarray:
    """Binary scores (N,), (N, 1) or (N, 2) -> (N,) probability of the positive class.

    With two columns the last one is used, as MedMNIST's evaluator does (softmax column 1).
    """
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        return s
    if s.ndim == 2 and s.shape[1] in (1, 2):
        return s[:, -1]
    raise ValueError(f"binary scores must be (N,), (N, 1) or (N, 2), got {s.shape}")


def to_label_matrix(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Any task -> (Y, S): K binary indicator columns (N, K) int8 and their scores (N, K) float64.

    multi-label: K = L labels; binary: K = 1 (positive class); multi-class / ordinal: K = C
    one-vs-rest columns, ``Y[:, c] = (y == c)``.
    """
    check_task(task)
    if task == MULTI_LABEL:
        Y = np.asarray(y_true)
        S = np.asarray(y_score, dtype=np.float64)
        if Y.ndim != 2 or S.shape != Y.shape:
            raise ValueError(f"multi-label needs y_true and y_score of the same (N, L) shape, got {Y.shape} and {S.shape}")
    elif task == BINARY:
        y = _class_indices(y_true)
        s = positive_class_score(y_score)
        if s.shape[0] != y.shape[0]:
            raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
        Y, S = y[:, None], s[:, None]
    else:
        y = _class_indices(y_true)
        S = np.asarray(y_score, dtype=np.float64)
        if S.ndim != 2 or S.shape[0] != y.shape[0]:
            raise ValueError(f"multi-class needs y_score of shape (N, C) with N={y.shape[0]}, got {S.shape}")
        if y.size and (y.min() < 0 or y.max() >= S.shape[1]):
            raise ValueError(f"class labels must lie in [0, {S.shape[1]}), got [{y.min()}, {y.max()}]")
        Y = (y[:, None] == np.arange(S.shape[1])[None, :])
    Y = np.asarray(Y)
    if not np.all((Y == 0) | (Y == 1)):
        raise ValueError("labels must be 0 or 1")
    if not np.all(np.isfinite(S)):
        raise ValueError("scores must be finite")
    return Y.astype(np.int8), S


def default_label_names(k: int) -> list[str]:
    return [f"label_{i}" for i in range(k)]


def column_names(label_names: Sequence[str] | None, task: str, k: int) -> list[str]:
    """Names for the K columns of the label-matrix view.

    Binary sets list two class names (e.g. ``["normal", "pneumonia"]``): the column is the second.
    """
    if label_names is None:
        return ["positive"] if task == BINARY else default_label_names(k)
    names = [str(n) for n in label_names]
    if task == BINARY and len(names) == 2:
        names = names[1:]
    if len(names) != k:
        raise ValueError(f"{len(names)} label names for {k} columns ({task})")
    return names


# --------------------------------------------------------------------------------------------
# Official MedMNIST AUC / ACC
# --------------------------------------------------------------------------------------------


def _class_counts(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_pos = Y.sum(axis=0).astype(np.int64)
    return n_pos, Y.shape[0] - n_pos


def defined_columns(Y: np.ndarray) -> np.ndarray:
    """(K,) bool: the column has at least one positive and one negative (AUC is defined)."""
    n_pos, n_neg = _class_counts(Y)
    return (n_pos > 0) & (n_neg > 0)


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n in ascending order, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values) != 0) + 1]
    ends = np.r_[starts[1:], values.size]
    group_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc_columns(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per-column ROC-AUC (K,), NaN where a column lacks positives or negatives.

    Mann-Whitney with mid-ranks r (ties share their mean rank):
    AUC_k = (sum_{i: Y_ik = 1} r_ik - n1 (n1 + 1) / 2) / (n1 n0).
    """
    Y = np.asarray(Y)
    S = np.asarray(S, dtype=np.float64)
    if Y.shape[0] == 0:
        return np.full(Y.shape[1], np.nan)
    ranks = np.column_stack([midranks(S[:, k]) for k in range(S.shape[1])])
    n_pos, n_neg = _class_counts(Y)
    rank_sum = np.sum(ranks * (Y == 1), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(defined_columns(Y), auc, np.nan)


def correct_matrix(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = ACC_THRESHOLD) -> np.ndarray:
    """The per-cell correctness behind the official ACC: (N, L) for multi-label, (N, 1) otherwise.

    multi-label / binary: ``(score > threshold) == y`` (strict, as MedMNIST);
    multi-class / ordinal: ``argmax_c score == y``.
    """
    if is_multi_class(task):
        y = _class_indices(y_true)
        S = np.asarray(y_score, dtype=np.float64)
        to_label_matrix(y, S, task)  # validates shapes and ranges
        return (np.argmax(S, axis=1) == y)[:, None]
    Y, S = to_label_matrix(y_true, y_score, task)
    return (S > threshold) == (Y == 1)


def official_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST's AUC: mean per-column ROC-AUC (see module docstring); undefined columns are left
    out of the mean (MedMNIST would return NaN), NaN if none is defined."""
    Y, S = to_label_matrix(y_true, y_score, task)
    return _mean_or_nan(roc_auc_columns(Y, S))


def official_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = ACC_THRESHOLD) -> float:
    """MedMNIST's ACC: mean over label columns of the fraction correct (see module docstring)."""
    return float(np.mean(np.mean(correct_matrix(y_true, y_score, task, threshold), axis=0)))


def majority_baseline_acc(y_true: np.ndarray, task: str) -> float:
    """ACC of the best constant prediction, for scale: multi-label mean_k max(p_k, 1 - p_k)
    (ChestMNIST: "no finding" everywhere, about 0.947), binary max(p, 1 - p), multi-class the
    largest class share."""
    check_task(task)
    if task == MULTI_LABEL:
        prevalence = np.asarray(y_true, dtype=np.float64).mean(axis=0)
        return float(np.mean(np.maximum(prevalence, 1.0 - prevalence)))
    y = _class_indices(y_true)
    return float(np.bincount(y).max() / y.size) if y.size else float("nan")


def official_metrics(y_true: np.ndarray, y_score: np.ndarray, task: str) -> dict[str, Any]:
    """{"auc", "acc", "per_label_auc", "auc_defined"}: the two official numbers and what is behind
    the AUC. What training logs as its final numbers."""
    Y, S = to_label_matrix(y_true, y_score, task)
    per_label = roc_auc_columns(Y, S)
    return {
        "auc": _mean_or_nan(per_label),
        "acc": official_acc(y_true, y_score, task),
        "per_label_auc": per_label,
        "auc_defined": defined_columns(Y),
    }


def _mean_or_nan(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(np.mean(finite)) if finite.size else float("nan")


# --------------------------------------------------------------------------------------------
# Curves and operating points (one column at a time)
# --------------------------------------------------------------------------------------------


def operating_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score t, high to low: (t, TP(t), FP(t)) with positive = ``s >= t``.

    The last point (t = min score) calls every case positive.
    """
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_desc) != 0), s_desc.size - 1] if s.size else np.array([], int)
    tp = np.cumsum(y_desc)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return s_desc[last_of_tie], tp, fp


def roc_curve_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from (0, 0) at threshold +inf to (1, 1); NaN rates if undefined."""
    t, tp, fp = operating_points(y, s)
    n_pos, n_neg = int(np.sum(y)), int(np.size(y) - np.sum(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0, tp] / n_pos
        fpr = np.r_[0, fp] / n_neg
    return fpr, tpr, np.r_[np.inf, t]


def precision_recall_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct threshold, high to low.

    precision = TP / (TP + FP), recall = TP / P.
    """
    t, tp, fp = operating_points(y, s)
    n_pos = int(np.sum(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fp), tp / n_pos, t


def average_precision_columns(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per-column average precision (K,): AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds,
    high to low, R_0 = 0 (scikit-learn's step-wise definition). NaN for a column with no positives."""
    out = np.full(Y.shape[1], np.nan)
    for k in range(Y.shape[1]):
        if Y[:, k].sum() == 0:
            continue
        precision, recall, _ = precision_recall_points(Y[:, k], S[:, k])
        out[k] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


# --------------------------------------------------------------------------------------------
# Thresholds: chosen on validation, applied to test
# --------------------------------------------------------------------------------------------


def _threshold_for_column(y: np.ndarray, s: np.ndarray, method: str, target: float) -> float:
    """One column's threshold (positive = ``s >= threshold``), NaN if the column is undefined."""
    n_pos = int(np.sum(y))
    n_neg = int(np.size(y)) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    t, tp, fp = operating_points(y, s)
    tol = 1e-9  # so 0.9 * 10 counts 9 of 10 positives as reaching 0.90
    if method == "youden":
        # J = sensitivity + specificity - 1 = TPR - FPR; first max = highest such threshold.
        return float(t[np.argmax(tp / n_pos - fp / n_neg)])
    if method == "sensitivity":
        # Highest threshold (so fewest false positives) whose sensitivity reaches the target.
        return float(t[np.argmax(tp >= target * n_pos - tol)])
    if method == "specificity":
        # Lowest threshold (so highest sensitivity) whose specificity still reaches the target.
        ok = np.flatnonzero(fp <= (1.0 - target) * n_neg + tol)
        if ok.size == 0:  # even the top score tie holds too many negatives: call nothing positive
            return float(np.nextafter(t[0], np.inf))
        return float(t[ok[-1]])
    raise ValueError(f"unknown threshold method {method!r}; expected one of {THRESHOLD_METHODS}")


def choose_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    method: str = "youden",
    target: float = 0.9,
    task: str = MULTI_LABEL,
) -> np.ndarray:
    """One threshold per label column (K,), from the split given (meant to be validation).

    method: "youden" maximises J = sensitivity + specificity - 1 (ties: highest threshold);
    "sensitivity" takes the highest threshold with sensitivity >= target (the fewest false
    positives reaching it); "specificity" the lowest threshold with specificity >= target;
    "fixed" returns ``target`` for every label. Thresholds are observed scores and a case is
    positive when ``score >= threshold``. NaN for a label without positives or negatives.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {THRESHOLD_METHODS}")
    Y, S = to_label_matrix(y_true, y_score, task)
    if method == "fixed":
        return np.full(Y.shape[1], float(target))
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    return np.array([_threshold_for_column(Y[:, k], S[:, k], method, target) for k in range(Y.shape[1])])


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def predict_at_thresholds(S: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, K) bool: ``S >= threshold`` per column (a NaN threshold calls nothing positive)."""
    return np.asarray(S, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def metrics_at_thresholds(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray, task: str = MULTI_LABEL) -> dict[str, np.ndarray]:
    """Per column (K,) at ``score >= threshold``:

    sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), PPV = TP / (TP + FP),
    NPV = TN / (TN + FN), F1 = 2 TP / (2 TP + FP + FN), prevalence = (TP + FN) / N,
    plus the counts. A ratio with a zero denominator, or any rate at a NaN threshold, is NaN.
    """
    Y, S = to_label_matrix(y_true, y_score, task)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (Y.shape[1],):
        raise ValueError(f"need {Y.shape[1]} thresholds, got shape {thresholds.shape}")
    pred = predict_at_thresholds(S, thresholds)
    pos = Y == 1
    tp = np.sum(pred & pos, axis=0)
    fp = np.sum(pred & ~pos, axis=0)
    fn = np.sum(~pred & pos, axis=0)
    tn = np.sum(~pred & ~pos, axis=0)
    out = {
        "sensitivity": _safe_ratio(tp, tp + fn),
        "specificity": _safe_ratio(tn, tn + fp),
        "ppv": _safe_ratio(tp, tp + fp),
        "npv": _safe_ratio(tn, tn + fn),
        "f1": _safe_ratio(2 * tp, 2 * tp + fp + fn),
        "prevalence": _safe_ratio(tp + fn, np.full(tp.shape, Y.shape[0])),
    }
    no_threshold = np.isnan(thresholds)
    for key in ("sensitivity", "specificity", "ppv", "npv", "f1"):
        out[key] = np.where(no_threshold, np.nan, out[key])
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    return out


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def _check_probabilities(S: np.ndarray) -> None:
    if S.size and (S.min() < 0.0 or S.max() > 1.0):
        raise ValueError("scores must be probabilities in [0, 1]; convert logits with scores_from_logits")


def reliability_table(Y: np.ndarray, S: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins on [0, 1] per column: bin b = [b/n, (b+1)/n), the last bin closed at 1.

    Returns edges (n_bins + 1,), count, mean_score and fraction_positive, each (K, n_bins);
    the means are NaN in empty bins.
    """
    S = np.asarray(S, dtype=np.float64)
    _check_probabilities(S)
    n, k = S.shape
    bins = np.minimum((S * n_bins).astype(np.int64), n_bins - 1)  # floor; score 1.0 -> last bin
    flat = (bins + n_bins * np.arange(k)[None, :]).ravel()
    count = np.bincount(flat, minlength=k * n_bins).reshape(k, n_bins)
    score_sum = np.bincount(flat, weights=S.ravel(), minlength=k * n_bins).reshape(k, n_bins)
    pos_sum = np.bincount(flat, weights=np.asarray(Y, np.float64).ravel(), minlength=k * n_bins).reshape(k, n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "mean_score": _safe_ratio(score_sum, count),
        "fraction_positive": _safe_ratio(pos_sum, count),
    }


def expected_calibration_error(Y: np.ndarray, S: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Per column (K,): ECE = sum_b (n_b / N) |fraction positive in b - mean score in b|,
    over the equal-width bins of ``reliability_table`` (empty bins add nothing)."""
    table = reliability_table(Y, S, n_bins)
    gap = np.nan_to_num(np.abs(table["fraction_positive"] - table["mean_score"]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(table["count"] * gap, axis=1) / np.asarray(S).shape[0]


def brier_score(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per column (K,): mean_i (S_ik - Y_ik)^2."""
    S = np.asarray(S, dtype=np.float64)
    _check_probabilities(S)
    return np.mean((S - np.asarray(Y, np.float64)) ** 2, axis=0)


def top_label_ece(y_true: np.ndarray, y_score: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Multi-class confidence ECE: bins over max_c p_ic, gap between accuracy and confidence."""
    y = _class_indices(y_true)
    S = np.asarray(y_score, dtype=np.float64)
    confidence = S.max(axis=1)[:, None]
    correct = (np.argmax(S, axis=1) == y)[:, None]
    return float(expected_calibration_error(correct, confidence, n_bins)[0])


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def bootstrap_counts(n: int, n_resamples: int, seed: int, chunk: int = _BOOTSTRAP_CHUNK) -> Iterator[np.ndarray]:
    """Yield (b, n) float64 count matrices, b <= chunk: how often each row is drawn (n draws with
    replacement per resample). Same seed -> same resamples."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


class _SortedColumn:
    """One label column prepared once so AUC under any row weights costs a gather and a cumsum.

    Weighted Mann-Whitney: with negatives' cumulative weight F(j) over the first j rows in
    ascending score order, a positive in the tie group [a, b) beats F(a) of negative weight and
    ties with F(b) - F(a), so 2 x numerator = sum_pos w_p (F(a_p) + F(b_p)).
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(s, kind="stable")
        s_sorted, y_sorted = s[order], y[order] == 1
        n = s.size
        group_id = np.r_[0, np.cumsum(np.diff(s_sorted) != 0)]
        group_start = np.r_[0, np.flatnonzero(np.diff(s_sorted) != 0) + 1]
        group_end = np.r_[group_start[1:], n]
        positives = np.flatnonzero(y_sorted)
        self.order = order
        self.negative_sorted = (~y_sorted).astype(np.float64)
        self.positive_rows = order[positives]
        self.a = group_start[group_id[positives]]
        self.b = group_end[group_id[positives]]

    def auc(self, counts: np.ndarray) -> np.ndarray:
        """(b,) AUC for each row of ``counts`` (b, n); NaN where a resample lost a class."""
        neg_weight = counts[:, self.order] * self.negative_sorted
        F = np.zeros((counts.shape[0], counts.shape[1] + 1))
        np.cumsum(neg_weight, axis=1, out=F[:, 1:])
        w_pos = counts[:, self.positive_rows]
        twice_num = np.sum(w_pos * (F[:, self.a] + F[:, self.b]), axis=1)
        w1 = w_pos.sum(axis=1)
        w0 = F[:, -1]
        return _safe_ratio(twice_num, 2.0 * w1 * w0)


def weighted_auc_columns(Y: np.ndarray, S: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(b, K) AUC of each column under each row-count vector of ``counts`` (b, N)."""
    out = np.full((counts.shape[0], Y.shape[1]), np.nan)
    for k in range(Y.shape[1]):
        if Y[:, k].any():
            out[:, k] = _SortedColumn(Y[:, k], S[:, k]).auc(counts)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> np.ndarray:
    """Percentile bootstrap interval [q_(1-level)/2, q_(1+level)/2] over ``axis`` (NaNs ignored)."""
    alpha = (1.0 - level) / 2.0
    samples = np.asarray(samples, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN interval
        return np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=axis)


def bootstrap_intervals(
    Y: np.ndarray,
    S: np.ndarray,
    correct: np.ndarray,
    pred: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile CIs from resampled rows for: AUC per column and overall, official ACC, and
    sensitivity / specificity per column at fixed predictions ``pred`` (N, K).

    Overall AUC in a resample = mean over the columns defined in the full split and in that
    resample. ACC in a resample = mean over columns of sum_i w_i correct_ik / N.
    """
    n, k = Y.shape
    defined = defined_columns(Y)
    pos = Y == 1
    # One matmul per chunk gives all count-weighted sums needed besides AUC.
    stacked = np.hstack([pos, pred & pos, ~pred & ~pos, correct]).astype(np.float64)
    auc_b, overall_b, acc_b, sens_b, spec_b = [], [], [], [], []
    sorted_columns = [_SortedColumn(Y[:, j], S[:, j]) if defined[j] else None for j in range(k)]
    for counts in bootstrap_counts(n, n_resamples, seed):
        auc = np.full((counts.shape[0], k), np.nan)
        for j, column in enumerate(sorted_columns):
            if column is not None:
                auc[:, j] = column.auc(counts)
        sums = counts @ stacked
        n_pos, tp, tn = sums[:, :k], sums[:, k:2 * k], sums[:, 2 * k:3 * k]
        auc_b.append(auc)
        overall_b.append(_row_nanmean(auc))
        acc_b.append(np.mean(sums[:, 3 * k:] / n, axis=1))
        sens_b.append(_safe_ratio(tp, n_pos))
        spec_b.append(_safe_ratio(tn, n - n_pos))
    auc_b, sens_b, spec_b = np.vstack(auc_b), np.vstack(sens_b), np.vstack(spec_b)
    overall_b, acc_b = np.concatenate(overall_b), np.concatenate(acc_b)
    lost = np.sum(np.isnan(auc_b) & defined[None, :], axis=0)
    return {
        "auc_ci": percentile_interval(overall_b, level),
        "acc_ci": percentile_interval(acc_b, level),
        "per_label_auc_ci": percentile_interval(auc_b, level).T,  # (K, 2)
        "sensitivity_ci": percentile_interval(sens_b, level).T,
        "specificity_ci": percentile_interval(spec_b, level).T,
        "resamples_with_undefined_label": lost,  # (K,) resamples where a defined label lost a class
        "auc_samples": overall_b,
    }


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    finite = ~np.isnan(values)
    total = np.sum(np.where(finite, values, 0.0), axis=1)
    return _safe_ratio(total, finite.sum(axis=1))


# --------------------------------------------------------------------------------------------
# Evaluation of a split and of val + test
# --------------------------------------------------------------------------------------------


def _undefined_reason(n_pos: int, n_neg: int) -> str | None:
    if n_pos == 0 and n_neg == 0:
        return "empty split"
    if n_pos == 0:
        return "no positives"
    if n_neg == 0:
        return "no negatives"
    return None


def evaluate_split(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    thresholds: np.ndarray,
    label_names: Sequence[str] | None = None,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Everything for one split at given thresholds (no bootstrap). See ``evaluate_splits``."""
    Y, S = to_label_matrix(y_true, y_score, task)
    _check_probabilities(S)
    names = column_names(label_names, task, Y.shape[1])
    n_pos, n_neg = _class_counts(Y)
    auc = roc_auc_columns(Y, S)
    ap = average_precision_columns(Y, S)
    at_t = metrics_at_thresholds(Y, S, thresholds, MULTI_LABEL)
    ece = expected_calibration_error(Y, S, n_bins)
    brier = brier_score(Y, S)
    defined = defined_columns(Y)
    rows = []
    for k, name in enumerate(names):
        rows.append({
            "label": name,
            "defined": bool(defined[k]),
            "undefined_reason": _undefined_reason(int(n_pos[k]), int(n_neg[k])),
            "n_positive": int(n_pos[k]),
            "n_negative": int(n_neg[k]),
            "prevalence": float(at_t["prevalence"][k]),
            "auc": float(auc[k]),
            "average_precision": float(ap[k]),
            "threshold": float(thresholds[k]),
            "sensitivity": float(at_t["sensitivity"][k]),
            "specificity": float(at_t["specificity"][k]),
            "ppv": float(at_t["ppv"][k]),
            "npv": float(at_t["npv"][k]),
            "f1": float(at_t["f1"][k]),
            "tp": int(at_t["tp"][k]), "fp": int(at_t["fp"][k]),
            "fn": int(at_t["fn"][k]), "tn": int(at_t["tn"][k]),
            "ece": float(ece[k]),
            "brier": float(brier[k]),
        })
    undefined = [names[k] for k in range(len(names)) if not defined[k]]
    n_defined = int(defined.sum())
    if len(names) == 1:
        note = "AUC of the positive-class score" if defined[0] else "undefined: the split has one class only"
    elif not undefined:
        note = f"mean over all {len(names)} label columns"
    else:
        note = (f"mean over the {n_defined} defined of {len(names)} label columns; undefined (no positives "
                "or no negatives): " + ", ".join(undefined))
    calibration = {"ece": _mean_or_nan(ece), "brier": _mean_or_nan(brier), "n_bins": n_bins}
    if is_multi_class(task):
        calibration["top_label_ece"] = top_label_ece(y_true, y_score, n_bins)
    table = reliability_table(Y, S, n_bins)
    return {
        "n": int(Y.shape[0]),
        "auc": _mean_or_nan(auc),
        "acc": official_acc(y_true, y_score, task),
        "acc_majority_baseline": majority_baseline_acc(y_true, task),
        "auc_note": note,
        "n_labels_defined": n_defined,
        "undefined_labels": undefined,
        "per_label": rows,
        "mean_over_defined": _means_over_defined(defined, {"auc": auc, "average_precision": ap, **at_t}),
        "calibration": calibration,
        "reliability": {key: table[key] for key in ("edges", "count", "mean_score", "fraction_positive")},
    }


def _means_over_defined(defined: np.ndarray, per_label: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over the labels that have both classes, for the rates that need both."""
    keys = ("auc", "average_precision", "sensitivity", "specificity", "ppv", "npv", "f1")
    return {key: _mean_or_nan(np.where(defined, per_label[key], np.nan)) for key in keys}


def evaluate_splits(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    task: str,
    label_names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold_method: str = "youden",
    target: float = 0.9,
    ci_level: float = 0.95,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Evaluate a model from its validation and test predictions, each ``(y_true, y_score)``.

    Thresholds are chosen on ``val`` only (``choose_thresholds(*val, threshold_method, target,
    task)``) and applied unchanged to both splits; bootstrap CIs (``n_bootstrap`` resamples, seeded,
    percentile at ``ci_level``; 0 turns them off) are for test. Returns a dict:

    task, label_names, headline {split, auc, auc_ci, acc, acc_ci, auc_note}, thresholds {method,
    target, chosen_on, values}, val and test (each from ``evaluate_split``: n, auc, acc, auc_note,
    n_labels_defined, undefined_labels, per_label [rows], mean_over_defined, calibration,
    reliability; test rows add auc_ci, sensitivity_ci, specificity_ci), bootstrap {n_resamples,
    seed, level, method, unit, resamples_with_undefined_label}, conventions, warnings.
    NaN marks what is undefined; ``to_jsonable`` writes it as null.
    """
    check_task(task)
    val_true, val_score = val
    test_true, test_score = test
    thresholds = choose_thresholds(val_true, val_score, threshold_method, target, task)
    result: dict[str, Any] = {"task": task}
    result["val"] = evaluate_split(val_true, val_score, task, thresholds, label_names, n_bins)
    result["test"] = evaluate_split(test_true, test_score, task, thresholds, label_names, n_bins)
    result["label_names"] = [row["label"] for row in result["test"]["per_label"]]
    result["thresholds"] = {
        "method": threshold_method,
        "target": None if threshold_method == "youden" else float(target),
        "chosen_on": "val",
        "rule": "positive when score >= threshold",
        "values": thresholds,
    }
    test_split = result["test"]
    headline = {"split": "test", "auc": test_split["auc"], "acc": test_split["acc"],
                "auc_ci": None, "acc_ci": None, "auc_note": test_split["auc_note"]}
    result["bootstrap"] = {"n_resamples": int(n_bootstrap), "seed": int(seed), "level": ci_level,
                           "method": "percentile", "unit": "test rows (images), resampled with replacement"}
    if n_bootstrap > 0:
        Y, S = to_label_matrix(test_true, test_score, task)
        boot = bootstrap_intervals(Y, S, correct_matrix(test_true, test_score, task),
                                   predict_at_thresholds(S, thresholds), n_bootstrap, seed, ci_level)
        headline["auc_ci"], headline["acc_ci"] = boot["auc_ci"], boot["acc_ci"]
        for k, row in enumerate(test_split["per_label"]):
            row["auc_ci"] = boot["per_label_auc_ci"][k]
            row["sensitivity_ci"] = boot["sensitivity_ci"][k]
            row["specificity_ci"] = boot["specificity_ci"][k]
        test_split["auc_ci"], test_split["acc_ci"] = boot["auc_ci"], boot["acc_ci"]
        result["bootstrap"]["resamples_with_undefined_label"] = boot["resamples_with_undefined_label"]
    result["headline"] = headline
    result["conventions"] = conventions(n_bins)
    result["warnings"] = _undefined_label_warnings(result)
    for message in result["warnings"]:
        warnings.warn(message, UndefinedLabelWarning, stacklevel=2)
    return result


def conventions(n_bins: int = ECE_BINS) -> dict[str, str]:
    """Plain-words definitions written next to the numbers in metrics.json."""
    return {
        "auc": "MedMNIST official: mean over label columns (binary: positive class; multi-class: "
               "one-vs-rest per class) of ROC-AUC; labels without positives or negatives are left out",
        "acc": "MedMNIST official: multi-label/binary mean per-label accuracy at score > 0.5; "
               "multi-class accuracy of argmax",
        "thresholds": "chosen on validation only, applied to val and test; positive when score >= threshold",
        "ece": f"expected calibration error, {n_bins} equal-width bins on [0, 1], per label; "
               "overall = mean over labels",
        "brier": "mean squared error of the probability per label; overall = mean over labels",
        "ci": "percentile bootstrap over test images",
    }


def _undefined_label_warnings(result: dict[str, Any]) -> list[str]:
    messages = []
    for split in ("val", "test"):
        for row in result[split]["per_label"]:
            if not row["defined"]:
                extra = "; no threshold could be chosen for it" if split == "val" else ""
                messages.append(f"{split}: label {row['label']!r} has {row['undefined_reason']}: AUC, "
                                f"sensitivity and specificity are undefined and left out of the means{extra}")
    return messages


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Nested dicts / lists / numpy values -> plain JSON types; NaN and +-inf become None, any
    other object its str()."""
    if isinstance(obj, dict):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)  # paths, enums, ... in run_info: readable rather than a crash


def dumps_json(obj: Any) -> str:
    """Strict JSON (no NaN tokens), indented."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Benchmark (python -m chest_tf.metrics bench)
# --------------------------------------------------------------------------------------------

# Approximate NIH ChestX-ray14 prevalences for the 14 ChestMNIST findings, in label order.
CHEST_PREVALENCE = (0.103, 0.025, 0.119, 0.177, 0.052, 0.056, 0.013,
                    0.047, 0.042, 0.021, 0.022, 0.015, 0.030, 0.002)


def synthetic_multilabel(n: int, prevalence: Sequence[float], auc: float = 0.78, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with the given prevalences and sigmoid scores whose logits are binormal with equal
    variance, separated by d' = sqrt(2) * Phi^-1(auc) so the population AUC is ``auc``."""
    rng = np.random.default_rng(seed)
    prevalence = np.asarray(prevalence)
    y = (rng.random((n, prevalence.size)) < prevalence).astype(np.int8)
    d = math.sqrt(2.0) * NormalDist().inv_cdf(auc)
    logits = rng.normal(size=y.shape) + d * y + np.log(prevalence / (1 - prevalence)) - d / 2
    return y, sigmoid(logits)


def run_benchmark(n_test: int = 22433, n_val: int = 11219, n_resamples: int = 1000, seed: int = 0) -> float:
    """Seconds for ``evaluate_splits`` on ChestMNIST-sized synthetic val and test sets."""
    val = synthetic_multilabel(n_val, CHEST_PREVALENCE, seed=seed)
    test = synthetic_multilabel(n_test, CHEST_PREVALENCE, seed=seed + 1)
    start = time.perf_counter()
    result = evaluate_splits(val, test, MULTI_LABEL, n_bootstrap=n_resamples, seed=seed)
    seconds = time.perf_counter() - start
    head = result["headline"]
    print(f"test {n_test} x {len(CHEST_PREVALENCE)}, val {n_val}, {n_resamples} bootstrap resamples: "
          f"AUC {head['auc']:.4f} [{head['auc_ci'][0]:.4f}, {head['auc_ci'][1]:.4f}], "
          f"ACC {head['acc']:.4f} [{head['acc_ci'][0]:.4f}, {head['acc_ci'][1]:.4f}]")
    print(f"all metrics: {seconds:.2f} s")
    return seconds
