"""python -m chest_tf.evaluate: a .keras file or a run dir in, report + metrics + predictions out,
numbers identical to the metrics module on the model's own predictions, one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chest_tf.cli import evaluate
from chest_tf.config import RunConfig
from chest_tf.console import run_cli
from chest_tf.data.info import BINARY
from chest_tf.data.normalization import normalize
from chest_tf.errors import ConfigError
from chest_tf.evaluation import metrics
from chest_tf.evaluation.evaluator import check_model_matches

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("roc_curves.png", "pr_curves.png", "calibration.png", "operating_points.png", "confusion_matrix.png")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # tiny files differ from the published splits


def write_pneumonia_npz(path: Path, counts=(16, 40, 48), seed: int = 0) -> Path:
    """A tiny PneumoniaMNIST-format file: (N, 28, 28) uint8 images, (N, 1) labels, both classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = np.zeros((n, 1), np.uint8)
        labels[rng.permutation(n)[: n * 5 // 8], 0] = 1
        images = rng.integers(0, 200, (n, 28, 28), dtype=np.uint8)
        images[labels[:, 0] == 1, 8:20, 8:20] = 255  # something for a model to score
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez_compressed(path, **arrays)
    return path


def tiny_vit(num_outputs: int = 1, size: int = 28):
    from chest_tf.models.registry import build_model

    return build_model("vit_tiny", (size, size, 1), num_outputs, dim=32, depth=2, heads=2)


def cli(*args) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(evaluate.main, [str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A saved tiny model, a tiny npz, its expected logits and one CLI run on the .keras file."""
    root = tmp_path_factory.mktemp("evaluate")
    npz_path = write_pneumonia_npz(root / "pneumoniamnist.npz")
    model = tiny_vit()
    model_path = root / "model.keras"
    model.save(model_path)
    with np.load(npz_path) as data:
        arrays = dict(data)
    logits = {split: model.predict(normalize(arrays[f"{split}_images"])[..., None], verbose=0) for split in ("val", "test")}
    out = root / "report"
    code, stdout, stderr = cli(model_path, "--dataset", "pneumoniamnist", "--npz", npz_path, "--data-dir", root / "data",
                               "--out", out, "--bootstrap", "200")
    assert code == 0, stderr
    return {"root": root, "npz": npz_path, "arrays": arrays, "model_path": model_path, "logits": logits,
            "out": out, "stdout": stdout}


def test_cli_on_a_keras_file_writes_the_report(work):
    out = work["out"]
    for name in ("report.md", "metrics.json", "predictions.npz", *FIGURES):
        assert (out / name).is_file(), name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    text = (out / "report.md").read_text()
    assert text.startswith("# vit_tiny on PneumoniaMNIST (28 px): evaluation")
    assert "Rows of reference/benchmarks.md compared with (PneumoniaMNIST, 28 px)" in text
    lines = work["stdout"].strip().splitlines()
    headline, report_line = lines[-2], lines[-1]
    assert "test (n = 48): AUC 0." in headline and "95% CI" in headline and "ACC 0." in headline
    assert "labels defined 1 of 1" in headline and "thresholds: youden, chosen on val" in headline
    assert report_line == f"report: {out / 'report.md'}"


def test_predictions_are_the_models_sigmoid_outputs_in_file_order(work):
    with np.load(work["out"] / "predictions.npz") as saved:
        for split in ("val", "test"):
            np.testing.assert_array_equal(saved[f"{split}_true"], work["arrays"][f"{split}_labels"])
            expected = 1.0 / (1.0 + np.exp(-work["logits"][split].astype(np.float64)))
            assert saved[f"{split}_score"].shape == expected.shape == (len(expected), 1)
            np.testing.assert_allclose(saved[f"{split}_score"], expected, rtol=0, atol=1e-6)


def test_metrics_json_numbers_are_the_metrics_module_on_the_predictions(work):
    result = json.loads((work["out"] / "metrics.json").read_text())
    with np.load(work["out"] / "predictions.npz") as saved:
        p = dict(saved)
    assert result["headline"]["auc"] == pytest.approx(metrics.official_auc(p["test_true"], p["test_score"], BINARY),
                                                      abs=1e-12)
    assert result["headline"]["acc"] == pytest.approx(metrics.official_acc(p["test_true"], p["test_score"], BINARY),
                                                      abs=1e-12)
    assert result["val"]["auc"] == pytest.approx(metrics.official_auc(p["val_true"], p["val_score"], BINARY), abs=1e-12)
    chosen = metrics.choose_thresholds(p["val_true"], p["val_score"], "youden", task=BINARY)
    assert result["thresholds"]["chosen_on"] == "val"
    np.testing.assert_allclose(result["thresholds"]["values"], chosen, rtol=0, atol=0)
    assert result["bootstrap"]["n_resamples"] == 200
    assert result["published_rows_dataset"] == "pneumoniamnist" and result["published_rows_compared"]
    assert result["run_info"]["model_file"] == str(work["model_path"])


def test_run_dir_form_reads_config_model_and_history(work):
    run_dir = work["root"] / "run"
    run_dir.mkdir()
    config = RunConfig().to_dict()
    config["data"].update(dataset="pneumoniamnist", size=28, npz=str(work["npz"]), data_dir=str(work["root"] / "data"))
    config["model"].update(arch="vit_tiny", overrides={"dim": 32, "depth": 2, "heads": 2})
    config["train"].update(batch_size=32, seed=3)
    (run_dir / "config.json").write_text(json.dumps({"config": config, "runtime": {"device": "CPU"}}))
    shutil.copy(work["model_path"], run_dir / "best.keras")
    (run_dir / "best.json").write_text(json.dumps({"epoch": 2, "val_auc": 0.6}))
    (run_dir / "history.csv").write_text(
        "epoch,auc,learning_rate,loss,val_auc,val_loss\n0,0.50,0.001,0.70,0.55,0.69\n"
        "1,0.60,0.002,0.65,0.58,0.66\n2,0.70,0.001,0.60,0.60,0.64\n")
    code, stdout, stderr = cli(run_dir, "--bootstrap", "0", "--threshold", "sensitivity", "--target", "0.8")
    assert code == 0, stderr
    out = run_dir / "eval"
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'}"
    assert "thresholds: sensitivity 0.8, chosen on val" in stdout
    assert (out / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert "![Training curves](training_curves.png)" in (out / "report.md").read_text()
    result = json.loads((out / "metrics.json").read_text())
    assert result["model_name"] == "vit_tiny" and result["bootstrap"]["seed"] == 3
    assert result["headline"]["auc_ci"] is None
    assert result["run_info"]["best"]["epoch"] == 2 and result["run_info"]["run_dir"] == str(run_dir)
    with np.load(out / "predictions.npz") as saved:
        chosen = metrics.choose_thresholds(saved["val_true"], saved["val_score"], "sensitivity", 0.8, task=BINARY)
        # the same model as the .keras form: the same predictions
        with np.load(work["out"] / "predictions.npz") as first:
            np.testing.assert_array_equal(saved["test_score"], first["test_score"])
    np.testing.assert_array_equal(result["thresholds"]["values"], chosen)
    assert result["thresholds"]["method"] == "sensitivity" and result["thresholds"]["target"] == 0.8


def test_wrong_number_of_outputs_is_a_one_line_error(work):
    """A 14-output (ChestMNIST-shaped) model on PneumoniaMNIST, checked before predicting, in a fresh
    process (which also proves best.keras loads there in safe mode with chest_tf's layers)."""
    path = work["root"] / "chest14.keras"
    tiny_vit(14).save(path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "chest_tf.evaluate", str(path), "--dataset", "pneumoniamnist",
                           "--npz", str(work["npz"]), "--data-dir", str(work["root"] / "data")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: chest14.keras (vit_tiny) has 14 outputs but pneumoniamnist")
    assert "needs 1" in last
    assert not (work["root"] / "chest14_eval").exists()  # failed before anything was written


def test_wrong_input_size_is_a_one_line_error(work):
    code, _, stderr = cli(work["model_path"], "--dataset", "pneumoniamnist", "--size", "64", "--npz", work["npz"])
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: model.keras (vit_tiny) takes 28x28x1 images")
    assert "64x64x1; evaluate with --size 28" in stderr


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "does not exist"),
    ("missing_keras", "does not exist"),
    ("no_config", "is not a chest_tf run dir (no config.json)"),
    ("bad_config", "is not a chest_tf run dir"),
    ("no_best", "has no best.keras"),
    ("no_dataset", "--dataset is required with a .keras file"),
    ("unknown_dataset", "unknown dataset 'nosuchmnist'; known: "),
    ("bad_size", "has no 30 px version"),
    ("not_keras", "is neither a run dir nor a .keras file"),
    ("bad_target", "--target must be in (0, 1]"),
])
def test_argument_and_run_dir_errors_are_one_line(tmp_path, case, message):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not checked before the arguments")
    args = {
        "missing_dir": [tmp_path / "nope"],
        "missing_keras": [tmp_path / "nope.keras", "--dataset", "pneumoniamnist"],
        "no_config": [tmp_path],
        "bad_config": [tmp_path],
        "no_best": [tmp_path],
        "no_dataset": [model],
        "unknown_dataset": [model, "--dataset", "nosuchmnist"],
        "bad_size": [model, "--dataset", "pneumoniamnist", "--size", "30"],
        "not_keras": [tmp_path / "notes.txt"],
        "bad_target": [model, "--dataset", "pneumoniamnist", "--threshold", "sensitivity", "--target", "1.5"],
    }[case]
    if case == "bad_config":
        (tmp_path / "config.json").write_text("{not json")
    if case == "no_best":
        (tmp_path / "config.json").write_text(json.dumps({"config": RunConfig().to_dict()}))
    if case == "not_keras":
        (tmp_path / "notes.txt").write_text("hello")
    code, stdout, stderr = cli(*args)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr


def test_a_file_keras_cannot_read_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    code, _, stderr = cli(bad, "--dataset", "pneumoniamnist")
    assert code == 2 and stderr.startswith(f"error: could not load {bad}: ") and stderr.count("\n") == 1


def test_a_missing_model_path_is_one_line_naming_what_was_expected(tmp_path):
    # Commands import the library at the top now (tensorflow included), so this no longer checks
    # that TensorFlow stays unimported; the message is the resolver's, shared by every command.
    code, stdout, stderr = cli(tmp_path / "nope")
    assert code == 2 and stdout == ""
    assert stderr.strip() == (f"error: model not found: {tmp_path / 'nope'} does not exist "
                              "(expected a run dir, a .keras file or an export folder)")


def test_binary_models_may_have_one_or_two_logits():
    from chest_tf.data.info import get_info

    info = get_info("pneumoniamnist")
    check_model_matches(tiny_vit(1), info, 28)
    check_model_matches(tiny_vit(2), info, 28)
    with pytest.raises(ConfigError, match="has 3 outputs"):
        check_model_matches(tiny_vit(3), info, 28)


def test_real_pneumoniamnist_file_predictions_line_up(work, pneumonia_npz, tmp_path):
    """On the real file (skipped where absent): every val/test image scored, in file order."""
    out = tmp_path / "real"
    code, stdout, stderr = cli(work["model_path"], "--dataset", "pneumoniamnist", "--npz", pneumonia_npz,
                               "--data-dir", tmp_path / "data", "--out", out, "--bootstrap", "0")
    assert code == 0, stderr
    assert "test (n = 624)" in stdout
    import keras

    model = keras.models.load_model(work["model_path"], compile=False)
    with np.load(pneumonia_npz) as data, np.load(out / "predictions.npz") as saved:
        for split, n in (("val", 524), ("test", 624)):
            np.testing.assert_array_equal(saved[f"{split}_true"], data[f"{split}_labels"])
            logits = model.predict(normalize(data[f"{split}_images"])[..., None], verbose=0)
            assert saved[f"{split}_score"].shape == (n, 1)
            np.testing.assert_allclose(saved[f"{split}_score"], metrics.sigmoid(logits), rtol=0, atol=1e-6)
