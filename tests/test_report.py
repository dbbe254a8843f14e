"""Reports: files written, the right published rows compared and named, figures drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from chest_tf.evaluation import benchmarks, metrics, plots, report

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "shared" / "reference" / "benchmarks.md"
CHEST_LABELS = ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chest_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Prevalences raised a little so every label has positives in a small split.
    prevalence = np.maximum(metrics.CHEST_PREVALENCE, 0.02)
    return metrics.synthetic_multilabel(n, prevalence, seed=seed)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------------------------
# Published rows
# --------------------------------------------------------------------------------------------


def test_published_rows_per_dataset_and_size():
    at_28 = {row["method"] for row in benchmarks.published_rows("ChestMNIST", 28)}
    assert {"ResNet-18 (28)", "ResNet-50 (224)", "Google AutoML Vision", "DenseNet-121 pretrained (28)",
            "CheXNet (DenseNet-121)"} <= at_28
    at_64 = benchmarks.published_rows("chestmnist", 64)
    assert {row["group"] for row in at_64} == {"MedMNIST+", "full-resolution ceiling"}
    assert {row["method"] for row in at_64 if row["group"] == "MedMNIST+"} == {
        "VGG16 pretrained (64)", "ResNet-18 pretrained (64)", "DenseNet-121 pretrained (64)",
        "EfficientNet-B4 pretrained (64)", "ViT-B/16 pretrained (64)"}
    at_224 = {row["method"]: row for row in benchmarks.published_rows("chestmnist_224", 224)}
    assert "upsampled" in at_224["ResNet-18 (224)"]["note"] and at_224["ResNet-18 (224)"]["data_size"] == 28
    assert "ResNet-18 (28)" not in at_224
    assert at_224["DenseNet-121 pretrained (224)"]["auc"] == pytest.approx(0.8222)
    assert all(row["ceiling"] for row in at_224.values() if row["group"] == "full-resolution ceiling")
    pneumonia_224 = {row["method"] for row in benchmarks.published_rows("PneumoniaMNIST", 224)}
    assert "ResNet-18 end-to-end (224)" in pneumonia_224 and "ResNet-50 (224)" in pneumonia_224
    assert not any(row["ceiling"] for row in benchmarks.published_rows("pneumoniamnist", 28))
    assert benchmarks.published_rows("phantom", 28) == []
    assert benchmarks.published_rows("dermamnist", 28) == []


@pytest.mark.skipif(not BENCHMARKS_MD.is_file(), reason="shared/reference/benchmarks.md not beside the repo")
def test_published_rows_agree_with_reference_benchmarks_md():
    text = BENCHMARKS_MD.read_text()
    rows = {(row.dataset, row.method): row for row in benchmarks.PUBLISHED}
    assert len(rows) == len(benchmarks.PUBLISHED)  # names are unique per dataset
    section = text.split("## MedMNIST v2")[1].split("##")[0]
    v2 = re.findall(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)
    assert len(v2) == 7
    for method, chest_auc, chest_acc, pneu_auc, pneu_acc in v2:
        assert (rows["chestmnist", method].auc, rows["chestmnist", method].acc) == (float(chest_auc), float(chest_acc))
        assert (rows["pneumoniamnist", method].auc, rows["pneumoniamnist", method].acc) == (float(pneu_auc), float(pneu_acc))
    plus = re.findall(r"^\| (.+?) \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \|$",
                      text.split("## MedMNIST+")[1].split("##")[0], re.M)
    assert len(plus) == 5
    for model, *aucs in plus:
        for size, auc in zip(benchmarks.ALL_SIZES, aucs):
            assert rows["chestmnist", f"{model} pretrained ({size})"].auc == pytest.approx(float(auc) / 100, abs=1e-9)
    assert "0.841" in text and "0.847" in text and "98.92" in text and "98.04" in text


# --------------------------------------------------------------------------------------------
# Whole reports
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("chest64")
    val, test = chest_like(1500, 0), chest_like(2500, 1)
    history = out / "history.csv"
    history.write_text("epoch,loss,val_loss,auc,val_auc\n0,0.4,0.38,0.6,0.62\n1,0.3,0.33,0.7,0.69\n2,0.25,0.32,0.78,0.71\n")
    result = report.report_from_predictions(out, *val, *test, metrics.MULTI_LABEL, CHEST_LABELS, "chestmnist", 64,
                                            "densenet121", n_bootstrap=100, seed=1, history_csv=history)
    return out, result, val, test


def test_report_writes_every_file(chest_report):
    out, _, _, _ = chest_report
    for name in ("report.md", "metrics.json", "predictions.npz"):
        assert (out / name).is_file()
    for name in ("roc_curves.png", "pr_curves.png", "calibration.png", "operating_points.png", "training_curves.png"):
        assert_png(out / name)
    assert not (out / "confusion_matrix.png").exists()  # multi-label: no single confusion matrix


def test_report_saves_the_predictions_given(chest_report):
    out, _, val, test = chest_report
    saved = np.load(out / "predictions.npz")
    for key, value in (("val_true", val[0]), ("val_score", val[1]), ("test_true", test[0]), ("test_score", test[1])):
        np.testing.assert_array_equal(saved[key], value)


def test_metrics_json_is_strict_and_matches_the_result(chest_report):
    out, result, _, test = chest_report
    data = json.loads((out / "metrics.json").read_text())  # json rejects nothing; the writer forbids NaN
    assert data["dataset"] == "chestmnist" and data["size"] == 64 and data["model_name"] == "densenet121"
    assert data["headline"]["auc"] == pytest.approx(metrics.official_auc(*test, metrics.MULTI_LABEL))
    assert data["thresholds"]["chosen_on"] == "val"
    assert [row["label"] for row in data["test"]["per_label"]] == CHEST_LABELS
    assert {row["method"] for row in data["published_rows_compared"]} == {
        row["method"] for row in benchmarks.published_rows("chestmnist", 64)}
    assert "NaN" not in (out / "metrics.json").read_text()
    assert result["headline"]["auc_ci"] is not None


def test_report_md_names_the_rows_it_compares_with(chest_report):
    out, result, _, _ = chest_report
    text = (out / "report.md").read_text()
    assert "densenet121 on ChestMNIST (64 px)" in text
    assert "Test AUC" in text and "ACC" in text and "95% CI" in text
    assert "reference/benchmarks.md" in text
    for row in benchmarks.published_rows("chestmnist", 64):
        assert row["method"] in text
    assert "ResNet-18 (28)" not in text  # rows for other sizes are not compared
    assert "validation" in text.lower() and "Youden" in text
    for label in CHEST_LABELS:
        assert f"| {label} |" in text
    for png in ("roc_curves.png", "pr_curves.png", "calibration.png", "operating_points.png", "training_curves.png"):
        assert f"]({png})" in text


def test_phantom_report_says_rows_are_for_orientation(tmp_path):
    val, test = chest_like(800, 2), chest_like(800, 3)
    report.report_from_predictions(tmp_path, *val, *test, metrics.MULTI_LABEL, CHEST_LABELS, "phantom", 28,
                                   "resnet18", n_bootstrap=20)
    text = (tmp_path / "report.md").read_text()
    assert "orientation only" in text and "ResNet-18 (28)" in text and "MedMNIST v2" in text


def test_binary_report_with_real_pneumonia_labels(pneumonia_npz, tmp_path):
    """A real PneumoniaMNIST run shape: a tiny logistic regression on 7x7 thumbnails."""
    from sklearn.linear_model import LogisticRegression

    data = np.load(pneumonia_npz)

    def thumbnails(split):
        images = data[f"{split}_images"].astype(float) / 255.0
        return images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), -1)

    model = LogisticRegression(max_iter=500).fit(thumbnails("train"), data["train_labels"].ravel())
    result = report.report_from_predictions(
        tmp_path, data["val_labels"], model.predict_proba(thumbnails("val")), data["test_labels"],
        model.predict_proba(thumbnails("test")), metrics.BINARY, ["normal", "pneumonia"], "pneumoniamnist", 28,
        "logreg-7x7", n_bootstrap=100)
    assert 0.5 < result["headline"]["auc"] <= 1.0
    assert result["label_names"] == ["pneumonia"]
    assert_png(tmp_path / "confusion_matrix.png")
    text = (tmp_path / "report.md").read_text()
    assert "PneumoniaMNIST (28 px)" in text and "Google AutoML Vision" in text and "upsampled" in text


def test_multiclass_report_and_undefined_label_warning(tmp_path):
    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 3, size=(300, 1))
    y_test = rng.integers(0, 2, size=(300, 1))  # class 2 absent on test
    s_val = metrics.softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y_val[:, 0]])
    s_test = metrics.softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y_test[:, 0]])
    with pytest.warns(metrics.UndefinedLabelWarning):
        result = report.report_from_predictions(tmp_path, y_val, s_val, y_test, s_test, metrics.MULTI_CLASS,
                                                ["a", "b", "c"], "bloodmnist", 28, "tiny", n_bootstrap=20)
    assert result["test"]["undefined_labels"] == ["c"]
    text = (tmp_path / "report.md").read_text()
    assert "## Warnings" in text and "No published results" in text
    assert "c (undefined: no positives)" in text
    assert_png(tmp_path / "confusion_matrix.png")


# --------------------------------------------------------------------------------------------
# Single figures
# --------------------------------------------------------------------------------------------


def test_training_curves_tolerate_missing_columns(tmp_path):
    csv = tmp_path / "history.csv"
    csv.write_text("loss,val_auc,lr\n0.5,0.6,0.001\n0.4,,0.001\n0.35,0.7,0.0001\n")
    assert_png(plots.plot_training_curves(csv, tmp_path / "curves.png"))
    only_epoch = tmp_path / "empty.csv"
    only_epoch.write_text("epoch\n0\n1\n")
    assert plots.plot_training_curves(only_epoch, tmp_path / "empty.png").is_file()


def test_operating_points_accept_nan(tmp_path):
    path = plots.plot_operating_points(["a", "b"], np.array([0.8, np.nan]), np.array([0.7, np.nan]),
                                       tmp_path / "op.png", np.array([[0.7, 0.9], [np.nan, np.nan]]),
                                       np.array([[0.6, 0.8], [np.nan, np.nan]]))
    assert_png(path)


def test_figures_leave_no_pyplot_state(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    y, s = chest_like(300, 4)
    assert_png(plots.plot_roc_curves(y[:, :2], s[:, :2], ["a", "b"], tmp_path / "roc.png"))
    assert plt.get_fignums() == before
