"""chest_tf.evaluation.metrics against scikit-learn and MedMNIST's own evaluator, plus the properties that
make its numbers trustworthy: thresholds from validation only, honest undefined labels, bootstrap
coverage, calibration."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from chest_tf.evaluation import metrics

MEDMNIST_INSTALLED = importlib.util.find_spec("medmnist") is not None  # looks, does not import
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
MEDMNIST_PROBLEM = None  # why the cross-checks against MedMNIST's evaluator cannot run, if they cannot
getAUC = getACC = None
if not MEDMNIST_INSTALLED:
    MEDMNIST_PROBLEM = "medmnist is not installed (pip install --no-deps medmnist)"
else:
    try:  # MedMNIST's evaluator prints a note about torch on import; it is harmless.
        with contextlib.redirect_stdout(io.StringIO()):
            from medmnist.evaluator import getACC, getAUC
    except Exception as exc:  # reported (as a failure) by test_medmnist_evaluator_is_importable_here
        MEDMNIST_PROBLEM = f"medmnist is installed but medmnist.evaluator.getAUC/getACC did not import: {exc!r}"

TOL = 1e-9
TASKS = [metrics.MULTI_LABEL, metrics.BINARY, metrics.MULTI_CLASS, metrics.ORDINAL]
KINDS = ["random", "tied", "all_equal", "perfect", "inverse"]


# --------------------------------------------------------------------------------------------
# Inputs in MedMNIST's shapes
# --------------------------------------------------------------------------------------------


def make_labels(task: str, n: int, rng: np.random.Generator, k: int = 5) -> np.ndarray:
    """(N, L) 0/1 for multi-label, (N, 1) for the others; every column has both classes."""
    if task == metrics.MULTI_LABEL:
        y = (rng.random((n, k)) < rng.uniform(0.05, 0.5, size=k)).astype(np.int64)
        y[0], y[1] = 1, 0
        return y
    n_classes = 2 if task == metrics.BINARY else k
    y = rng.integers(0, n_classes, size=(n, 1))
    y[:n_classes, 0] = np.arange(n_classes)
    return y


def make_scores(task: str, y: np.ndarray, kind: str, rng: np.random.Generator, k: int = 5) -> np.ndarray:
    """Probabilities in MedMNIST's shapes for one of KINDS."""
    if metrics.is_multi_class(task):
        Y = (y.reshape(-1, 1) == np.arange(k)).astype(float)  # one-hot: scores lean to the true class
    else:
        Y = y.astype(float)
    if kind == "random":
        raw = rng.random(Y.shape)
    elif kind == "tied":
        raw = np.round(rng.random(Y.shape) * 0.6 + 0.4 * Y, 1)  # few distinct values, informative
    elif kind == "all_equal":
        raw = np.full(Y.shape, 0.5)
    elif kind == "perfect":
        raw = 0.25 + 0.5 * Y
    elif kind == "inverse":
        raw = 0.75 - 0.5 * Y
    else:
        raise ValueError(kind)
    if metrics.is_multi_class(task):
        return raw / raw.sum(axis=1, keepdims=True) if kind != "all_equal" else np.full(Y.shape, 1 / Y.shape[1])
    return raw


def sklearn_auc(y: np.ndarray, s: np.ndarray, task: str) -> float:
    """Reference: the MedMNIST definition written with scikit-learn calls."""
    if task == metrics.MULTI_LABEL:
        return float(np.mean([roc_auc_score(y[:, i], s[:, i]) for i in range(y.shape[1])]))
    if task == metrics.BINARY:
        return float(roc_auc_score(y.ravel(), s.reshape(len(s), -1)[:, -1]))
    return float(np.mean([roc_auc_score(y.ravel() == c, s[:, c]) for c in range(s.shape[1])]))


def sklearn_acc(y: np.ndarray, s: np.ndarray, task: str) -> float:
    if task == metrics.MULTI_LABEL:
        return float(np.mean([accuracy_score(y[:, i], s[:, i] > 0.5) for i in range(y.shape[1])]))
    if task == metrics.BINARY:
        return float(accuracy_score(y.ravel(), s.reshape(len(s), -1)[:, -1] > 0.5))
    return float(accuracy_score(y.ravel(), np.argmax(s, axis=1)))


def binary_score_layouts(s: np.ndarray) -> list[np.ndarray]:
    """The binary score shapes accepted: (N,), (N, 1) sigmoid and (N, 2) softmax."""
    p = s.reshape(-1)
    return [p, p[:, None], np.stack([1 - p, p], axis=1)]


# --------------------------------------------------------------------------------------------
# Official numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", TASKS)
def test_official_auc_acc_match_sklearn_and_medmnist(task, kind):
    rng = np.random.default_rng(zlib.crc32(f"{task}/{kind}".encode()))
    y = make_labels(task, 400, rng)
    s = make_scores(task, y, kind, rng)
    layouts = binary_score_layouts(s) if task == metrics.BINARY else [s]
    for scores in layouts:
        auc = metrics.official_auc(y, scores, task)
        acc = metrics.official_acc(y, scores, task)
        assert auc == pytest.approx(sklearn_auc(y, scores, task), abs=TOL)
        assert acc == pytest.approx(sklearn_acc(y, scores, task), abs=TOL)
        if getAUC is not None:
            assert auc == pytest.approx(getAUC(y, scores, task), abs=TOL)
            assert acc == pytest.approx(getACC(y, scores, task), abs=TOL)
    if kind == "perfect":
        assert auc == pytest.approx(1.0, abs=TOL)
    if kind == "inverse":
        assert auc == pytest.approx(0.0, abs=TOL)
    if kind == "all_equal":
        assert auc == pytest.approx(0.5, abs=TOL)


def test_medmnist_evaluator_is_importable_here():
    """The cross-checks against MedMNIST's evaluator (the ``if getAUC is not None`` asserts in this
    file) really run. Fails if medmnist is installed but its evaluator no longer imports, no longer
    takes (y_true, y_score, task), or no longer gives the numbers below; fails in CI (CI=true) if
    medmnist is missing. Only outside CI is a missing medmnist a skip, and a visible one."""
    if MEDMNIST_PROBLEM is not None:
        if MEDMNIST_INSTALLED or IN_CI:
            pytest.fail(f"{MEDMNIST_PROBLEM}; the MedMNIST cross-checks cannot run")
        pytest.skip(f"{MEDMNIST_PROBLEM}: MedMNIST cross-checks skipped")
    # Hand-computed cases, one per task: MedMNIST's evaluator, ours and the hand value all agree.
    y_bin = np.array([[1], [0], [1], [0]])
    s_bin = np.array([[0.9], [0.2], [0.4], [0.6]])  # AUC: 3 of 4 (pos, neg) pairs right; ACC at > 0.5: 2/4
    y_ml = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s_ml = np.array([[0.8, 0.3], [0.3, 0.9], [0.6, 0.2], [0.1, 0.7]])  # AUC 1 and 0.5; ACC 6/8
    y_mc = np.array([[0], [1], [2], [1]])
    s_mc = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    # one-vs-rest AUC (1 + 1 + 2/3) / 3; argmax right 2/4
    cases = [
        (metrics.BINARY, y_bin, s_bin, 0.75, 0.5),
        (metrics.MULTI_LABEL, y_ml, s_ml, 0.75, 0.75),
        (metrics.MULTI_CLASS, y_mc, s_mc, 8 / 9, 0.5),
    ]
    for task, y, s, auc, acc in cases:
        theirs_auc, theirs_acc = float(getAUC(y, s, task)), float(getACC(y, s, task))
        assert theirs_auc == pytest.approx(auc, abs=TOL), task
        assert theirs_acc == pytest.approx(acc, abs=TOL), task
        assert metrics.official_auc(y, s, task) == pytest.approx(auc, abs=TOL), task
        assert metrics.official_acc(y, s, task) == pytest.approx(acc, abs=TOL), task


@pytest.mark.parametrize("n", [2, 3, 17, 1000])
def test_rank_auc_equals_sklearn_on_many_ties(n):
    rng = np.random.default_rng(n)
    Y = np.zeros((n, 3), dtype=int)
    Y[::2] = 1
    S = rng.integers(0, 3, size=(n, 3)).astype(float)
    expected = [roc_auc_score(Y[:, k], S[:, k]) for k in range(3)]
    np.testing.assert_allclose(metrics.roc_auc_columns(Y, S), expected, atol=TOL)


def test_binary_edge_cases_at_exactly_half_follow_strict_threshold():
    """ACC uses score > 0.5 as MedMNIST does: a score of exactly 0.5 is negative."""
    y = np.array([[1], [0], [1], [0]])
    s = np.array([0.5, 0.5, 0.51, 0.49])
    assert metrics.official_acc(y, s, metrics.BINARY) == 0.75
    if getACC is not None:
        assert getACC(y, s, metrics.BINARY) == 0.75


def test_multiclass_accuracy_breaks_argmax_ties_like_numpy():
    y = np.array([[0], [1]])
    s = np.array([[0.5, 0.5, 0.0], [0.4, 0.4, 0.2]])
    assert metrics.official_acc(y, s, metrics.MULTI_CLASS) == 0.5


def test_undefined_label_is_nan_and_left_out_of_the_official_mean():
    rng = np.random.default_rng(0)
    y = make_labels(metrics.MULTI_LABEL, 300, rng)
    y[:, 2] = 0  # no positives
    y[:, 4] = 1  # no negatives
    s = rng.random(y.shape)
    detail = metrics.official_metrics(y, s, metrics.MULTI_LABEL)
    assert np.isnan(detail["per_label_auc"][[2, 4]]).all()
    assert detail["auc_defined"].tolist() == [True, True, False, True, False]
    expected = np.mean([roc_auc_score(y[:, k], s[:, k]) for k in (0, 1, 3)])
    assert detail["auc"] == pytest.approx(expected, abs=TOL)
    if getAUC is not None:
        # MedMNIST's evaluator cannot give a number here: NaN (scikit-learn >= 1.6) or an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                assert math.isnan(getAUC(y, s, metrics.MULTI_LABEL))
            except ValueError:
                pass


def test_input_validation_errors_are_clear():
    with pytest.raises(ValueError, match="unknown task"):
        metrics.official_auc(np.zeros((3, 1)), np.zeros(3), "regression")
    with pytest.raises(ValueError, match="binary scores"):
        metrics.official_auc(np.zeros((3, 1)), np.zeros((3, 3)), metrics.BINARY)
    with pytest.raises(ValueError, match="class labels must lie"):
        metrics.official_auc(np.array([[0], [3]]), np.full((2, 3), 1 / 3), metrics.MULTI_CLASS)
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.official_auc(np.array([[0, 2], [1, 0]]), np.zeros((2, 2)), metrics.MULTI_LABEL)


# --------------------------------------------------------------------------------------------
# Logits -> scores
# --------------------------------------------------------------------------------------------


def test_scores_from_logits_per_task():
    logits = np.array([[-800.0, 0.0, 800.0], [1.0, 2.0, 3.0]])
    ml = metrics.scores_from_logits(logits, metrics.MULTI_LABEL)
    np.testing.assert_allclose(ml, 1 / (1 + np.exp(-np.clip(logits, -700, 700))), atol=1e-12)
    assert np.all(np.isfinite(ml))
    mc = metrics.scores_from_logits(logits, metrics.MULTI_CLASS)
    np.testing.assert_allclose(mc.sum(axis=1), 1.0)
    assert np.all(np.isfinite(mc))
    two = np.array([[0.3, 1.9], [2.0, -1.0]])
    soft = metrics.scores_from_logits(two, metrics.BINARY)
    np.testing.assert_allclose(soft[:, 1], metrics.sigmoid(two[:, 1] - two[:, 0]), atol=1e-12)
    one = metrics.scores_from_logits(two[:, :1], metrics.BINARY)
    assert one.shape == (2, 1)


# --------------------------------------------------------------------------------------------
# Per-label rates, curves, AP
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "tied"])
def test_average_precision_matches_sklearn(kind):
    rng = np.random.default_rng(3)
    Y = make_labels(metrics.MULTI_LABEL, 500, rng)
    S = make_scores(metrics.MULTI_LABEL, Y, kind, rng)
    expected = [average_precision_score(Y[:, k], S[:, k]) for k in range(Y.shape[1])]
    np.testing.assert_allclose(metrics.average_precision_columns(Y, S), expected, atol=TOL)


def test_roc_points_match_sklearn_without_dropping():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 2)
    fpr, tpr, thr = metrics.roc_curve_points(y, s)
    ref_fpr, ref_tpr, ref_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=TOL)
    np.testing.assert_allclose(tpr, ref_tpr, atol=TOL)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])


def test_metrics_at_thresholds_match_confusion_matrix():
    rng = np.random.default_rng(5)
    Y = make_labels(metrics.MULTI_LABEL, 400, rng)
    S = make_scores(metrics.MULTI_LABEL, Y, "tied", rng)
    thresholds = np.array([0.3, 0.5, 0.5, 0.7, 0.2])
    out = metrics.metrics_at_thresholds(Y, S, thresholds)
    for k in range(Y.shape[1]):
        tn, fp, fn, tp = confusion_matrix(Y[:, k], S[:, k] >= thresholds[k], labels=[0, 1]).ravel()
        assert out["sensitivity"][k] == pytest.approx(tp / (tp + fn))
        assert out["specificity"][k] == pytest.approx(tn / (tn + fp))
        assert out["ppv"][k] == pytest.approx(tp / (tp + fp))
        assert out["npv"][k] == pytest.approx(tn / (tn + fn))
        assert out["f1"][k] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert out["prevalence"][k] == pytest.approx(Y[:, k].mean())


def test_rates_with_empty_denominators_are_nan_not_zero():
    Y = np.array([[1], [0], [0]])
    S = np.array([[0.2], [0.1], [0.3]])
    out = metrics.metrics_at_thresholds(Y, S, np.array([0.9]))  # nothing called positive
    assert np.isnan(out["ppv"][0]) and out["sensitivity"][0] == 0.0 and out["specificity"][0] == 1.0
    out = metrics.metrics_at_thresholds(Y, S, np.array([np.nan]))
    assert np.isnan(out["sensitivity"][0]) and np.isnan(out["specificity"][0])


# --------------------------------------------------------------------------------------------
# Thresholds come from validation
# --------------------------------------------------------------------------------------------


def binormal(n_pos: int, n_neg: int, auc: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scores N(d, 1) for positives, N(0, 1) for negatives with d = sqrt(2) Phi^-1(auc), squashed
    to probabilities (monotone, so the AUC is unchanged)."""
    d = math.sqrt(2) * norm.ppf(auc)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, metrics.sigmoid(rng.normal(size=y.size) + d * y)


def test_youden_threshold_is_the_best_observed_cut():
    rng = np.random.default_rng(6)
    y, s = binormal(80, 300, 0.8, rng)
    t = metrics.choose_thresholds(y[:, None], s[:, None], "youden")[0]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    assert t in s
    best = np.max(tpr - fpr)
    sens = np.mean(s[y == 1] >= t)
    spec = np.mean(s[y == 0] < t)
    assert sens + spec - 1 == pytest.approx(best, abs=TOL)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_threshold_reaches_target_with_fewest_false_positives(target):
    rng = np.random.default_rng(7)
    y, s = binormal(100, 400, 0.8, rng)
    t = metrics.choose_thresholds(y[:, None], s[:, None], "sensitivity", target)[0]
    assert np.mean(s[y == 1] >= t) >= target
    higher = np.unique(s[s > t])
    if higher.size:  # the next higher cut no longer reaches the target
        assert np.mean(s[y == 1] >= higher[0]) < target


def test_specificity_threshold_keeps_target_with_most_sensitivity():
    rng = np.random.default_rng(8)
    y, s = binormal(100, 400, 0.8, rng)
    t = metrics.choose_thresholds(y[:, None], s[:, None], "specificity", 0.9)[0]
    assert np.mean(s[y == 0] < t) >= 0.9
    lower = np.unique(s[s < t])
    assert np.mean(s[y == 0] < lower[-1]) < 0.9


def two_splits(seed: int = 9, n_val: int = 600, n_test: int = 900):
    rng = np.random.default_rng(seed)
    y_val = make_labels(metrics.MULTI_LABEL, n_val, rng, k=4)
    y_test = make_labels(metrics.MULTI_LABEL, n_test, rng, k=4)
    s_val = np.clip(rng.random(y_val.shape) * 0.7 + 0.3 * y_val, 0, 1)
    s_test = np.clip(rng.random(y_test.shape) * 0.7 + 0.3 * y_test, 0, 1)
    return (y_val, s_val), (y_test, s_test)


@pytest.mark.parametrize("method,target", [("youden", 0.9), ("sensitivity", 0.9), ("specificity", 0.8)])
def test_thresholds_come_from_validation_only(method, target, monkeypatch):
    val, test = two_splits()
    expected = metrics.choose_thresholds(*val, method=method, target=target)
    result = metrics.evaluate_splits(val, test, metrics.MULTI_LABEL, n_bootstrap=0,
                                     threshold_method=method, target=target)
    np.testing.assert_array_equal(result["thresholds"]["values"], expected)
    assert result["thresholds"]["chosen_on"] == "val"

    # Any other test scores: the thresholds do not move.
    rng = np.random.default_rng(1)
    for other_test_scores in (rng.random(test[1].shape), 1.0 - test[1], np.zeros_like(test[1])):
        other = metrics.evaluate_splits(val, (test[0], other_test_scores), metrics.MULTI_LABEL,
                                        n_bootstrap=0, threshold_method=method, target=target)
        np.testing.assert_array_equal(other["thresholds"]["values"], expected)
        # ... and they are the ones applied to test.
        assert [row["threshold"] for row in other["test"]["per_label"]] == expected.tolist()

    # The only data the threshold choice ever sees is the validation split.
    seen = []
    original = metrics.choose_thresholds

    def spy(y_true, y_score, *args, **kwargs):
        seen.append((y_true, y_score))
        return original(y_true, y_score, *args, **kwargs)

    monkeypatch.setattr(metrics, "choose_thresholds", spy)
    metrics.evaluate_splits(val, test, metrics.MULTI_LABEL, n_bootstrap=0, threshold_method=method, target=target)
    assert len(seen) == 1 and seen[0][0] is val[0] and seen[0][1] is val[1]


def test_val_and_test_rates_use_the_same_thresholds():
    val, test = two_splits()
    result = metrics.evaluate_splits(val, test, metrics.MULTI_LABEL, n_bootstrap=0, threshold_method="sensitivity",
                                     target=0.9)
    thresholds = result["thresholds"]["values"]
    ref = metrics.metrics_at_thresholds(*test, thresholds)
    assert [row["sensitivity"] for row in result["test"]["per_label"]] == pytest.approx(ref["sensitivity"].tolist())
    assert all(row["sensitivity"] >= 0.9 for row in result["val"]["per_label"])


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def test_weighted_auc_equals_auc_of_the_resampled_rows():
    rng = np.random.default_rng(10)
    Y = make_labels(metrics.MULTI_LABEL, 250, rng)
    S = make_scores(metrics.MULTI_LABEL, Y, "tied", rng)
    counts = next(metrics.bootstrap_counts(250, 5, seed=0))
    weighted = metrics.weighted_auc_columns(Y, S, counts)
    for b in range(counts.shape[0]):
        rows = np.repeat(np.arange(250), counts[b].astype(int))
        np.testing.assert_allclose(weighted[b], metrics.roc_auc_columns(Y[rows], S[rows]), atol=TOL)
    np.testing.assert_allclose(metrics.weighted_auc_columns(Y, S, np.ones((1, 250)))[0],
                               metrics.roc_auc_columns(Y, S), atol=TOL)


def test_bootstrap_counts_are_resamples_of_n_rows_and_seeded():
    a = np.vstack(list(metrics.bootstrap_counts(50, 230, seed=3)))
    b = np.vstack(list(metrics.bootstrap_counts(50, 230, seed=3)))
    c = np.vstack(list(metrics.bootstrap_counts(50, 230, seed=4)))
    assert a.shape == (230, 50) and np.all(a.sum(axis=1) == 50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bootstrap_interval_covers_true_auc_at_about_95_percent():
    """200 datasets from binormal scores with a known AUC: the 95% percentile interval should hold
    the true AUC in roughly 95% of them (0.88-0.99 allows for Monte Carlo noise and the slight
    under-coverage of percentile intervals)."""
    true_auc = 0.8
    rng = np.random.default_rng(2024)
    covered = 0
    for i in range(200):
        y, s = binormal(100, 200, true_auc, rng)
        Y, S = y[:, None], s[:, None]
        pred = np.zeros_like(Y, dtype=bool)
        boot = metrics.bootstrap_intervals(Y, S, pred, pred, n_resamples=400, seed=i)
        lo, hi = boot["per_label_auc_ci"][0]
        covered += lo <= true_auc <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ci_brackets_the_estimate_and_is_reproducible():
    val, test = two_splits()
    r1 = metrics.evaluate_splits(val, test, metrics.MULTI_LABEL, n_bootstrap=200, seed=5)
    r2 = metrics.evaluate_splits(val, test, metrics.MULTI_LABEL, n_bootstrap=200, seed=5)
    head = r1["headline"]
    assert head["auc_ci"][0] <= head["auc"] <= head["auc_ci"][1]
    assert head["acc_ci"][0] <= head["acc"] <= head["acc_ci"][1]
    np.testing.assert_array_equal(head["auc_ci"], r2["headline"]["auc_ci"])
    for row in r1["test"]["per_label"]:
        assert row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
        assert row["sensitivity_ci"][0] <= row["sensitivity"] <= row["sensitivity_ci"][1]


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def test_ece_near_zero_when_calibrated_and_high_when_overconfident():
    rng = np.random.default_rng(11)
    p = rng.random((100_000, 1))
    y = (rng.random(p.shape) < p).astype(int)
    assert metrics.expected_calibration_error(y, p)[0] < 0.01
    overconfident = np.where(p > 0.5, 0.99, 0.01)  # says 99% where truth is 50-100%
    assert metrics.expected_calibration_error(y, overconfident)[0] > 0.2


def test_ece_by_hand_and_brier_matches_sklearn():
    # 15 bins: 0.05 and 0.06 share bin 0; 0.95 and 1.0 share the last bin.
    y = np.array([[0], [1], [1], [1]])
    p = np.array([[0.05], [0.06], [0.95], [1.0]])
    expected = 2 / 4 * abs(0.5 - 0.055) + 2 / 4 * abs(1.0 - 0.975)
    assert metrics.expected_calibration_error(y, p)[0] == pytest.approx(expected)
    assert metrics.brier_score(y, p)[0] == pytest.approx(brier_score_loss(y.ravel(), p.ravel()))
    table = metrics.reliability_table(y, p)
    assert table["count"][0, 0] == 2 and table["count"][0, -1] == 2 and table["count"].sum() == 4


def test_calibration_rejects_logits():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.brier_score(np.array([[1]]), np.array([[3.0]]))


# --------------------------------------------------------------------------------------------
# The whole result
# --------------------------------------------------------------------------------------------


def test_evaluate_splits_reports_undefined_labels_with_a_warning():
    val, test = two_splits()
    y_test = test[0].copy()
    y_test[:, 1] = 0  # no positives on test
    y_val = val[0].copy()
    y_val[:, 3] = 1  # no negatives on validation: no threshold
    with pytest.warns(metrics.UndefinedLabelWarning):
        result = metrics.evaluate_splits((y_val, val[1]), (y_test, test[1]), metrics.MULTI_LABEL,
                                         label_names=["a", "b", "c", "d"], n_bootstrap=100)
    row_b = result["test"]["per_label"][1]
    assert not row_b["defined"] and row_b["undefined_reason"] == "no positives"
    assert math.isnan(row_b["auc"]) and math.isnan(row_b["sensitivity"])
    assert np.all(np.isnan(row_b["auc_ci"]))
    assert result["test"]["undefined_labels"] == ["b"]
    assert "3 defined of 4" in result["test"]["auc_note"]
    defined_aucs = [r["auc"] for r in result["test"]["per_label"] if r["defined"]]
    assert result["headline"]["auc"] == pytest.approx(np.mean(defined_aucs))
    assert math.isnan(result["thresholds"]["values"][3])
    assert math.isnan(result["test"]["per_label"][3]["sensitivity"])
    assert any("'b'" in w for w in result["warnings"]) and any("'d'" in w for w in result["warnings"])
    text = metrics.dumps_json(result)  # strict JSON: NaN written as null
    parsed = json.loads(text)
    assert parsed["test"]["per_label"][1]["auc"] is None


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_splits_runs_for_every_task(task):
    rng = np.random.default_rng(12)
    y_val, y_test = make_labels(task, 300, rng), make_labels(task, 400, rng)
    s_val, s_test = make_scores(task, y_val, "tied", rng), make_scores(task, y_test, "random", rng)
    result = metrics.evaluate_splits((y_val, s_val), (y_test, s_test), task, n_bootstrap=50)
    assert result["headline"]["auc"] == pytest.approx(sklearn_auc(y_test, s_test, task), abs=TOL)
    assert result["headline"]["acc"] == pytest.approx(sklearn_acc(y_test, s_test, task), abs=TOL)
    n_columns = 1 if task == metrics.BINARY else 5
    assert len(result["test"]["per_label"]) == n_columns == len(result["thresholds"]["values"])
    assert ("top_label_ece" in result["test"]["calibration"]) == metrics.is_multi_class(task)
    json.loads(metrics.dumps_json(result))


def test_binary_label_names_name_the_positive_class():
    rng = np.random.default_rng(13)
    y = make_labels(metrics.BINARY, 200, rng)
    s = rng.random((200, 1))
    result = metrics.evaluate_splits((y, s), (y, s), metrics.BINARY, ["normal", "pneumonia"], n_bootstrap=0)
    assert result["label_names"] == ["pneumonia"]


def test_real_pneumonia_labels_with_simple_scores(pneumonia_npz):
    """On the real PneumoniaMNIST val/test labels, with a deterministic brightness score, our
    official numbers equal MedMNIST's."""
    data = np.load(pneumonia_npz)
    splits = {}
    for split in ("val", "test"):
        images = data[f"{split}_images"].reshape(len(data[f"{split}_images"]), -1).astype(float)
        splits[split] = (data[f"{split}_labels"], (images.mean(axis=1) / 255.0)[:, None])
    for y, s in splits.values():
        assert metrics.official_auc(y, s, metrics.BINARY) == pytest.approx(sklearn_auc(y, s, metrics.BINARY), abs=TOL)
        if getAUC is not None:
            assert metrics.official_auc(y, s, metrics.BINARY) == pytest.approx(getAUC(y, s, metrics.BINARY), abs=TOL)
            assert metrics.official_acc(y, s, metrics.BINARY) == pytest.approx(getACC(y, s, metrics.BINARY), abs=TOL)


# --------------------------------------------------------------------------------------------
# Module hygiene and the benchmark command
# --------------------------------------------------------------------------------------------


def test_metrics_report_and_plots_do_not_import_tensorflow():
    code = ("import sys, chest_tf.evaluation.metrics, chest_tf.evaluation.plots, chest_tf.evaluation.report, "
            "chest_tf.evaluation.benchmarks; "
            "bad = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_command_runs_small(capsys):
    from chest_tf.cli.metrics import main

    assert main(["bench", "--n-test", "2000", "--n-val", "1000", "--resamples", "20"]) == 0
    assert "all metrics:" in capsys.readouterr().out


def test_to_jsonable_handles_numpy_nan_and_paths():
    from pathlib import Path

    data = {"a": np.float32(np.nan), "b": np.arange(3), "c": [np.inf, 1.5], "d": Path("/x"), "e": np.bool_(True)}
    assert json.loads(metrics.dumps_json(data)) == {"a": None, "b": [0, 1, 2], "c": [None, 1.5], "d": "/x", "e": True}
