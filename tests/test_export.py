"""Export: the SavedModel, read back by a process that imports TensorFlow only, matches the Keras
model; saved_model_cli shows the uint8 signature; metadata travels; writing is atomic."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from chest_tf.cli import export as export_cli  # noqa: E402
from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data.info import get_info  # noqa: E402
from chest_tf.errors import ConfigError  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.runs import load_keras_model, resolve_model  # noqa: E402
from chest_tf.serving import metadata as export_metadata  # noqa: E402
from chest_tf.serving import savedmodel, signature  # noqa: E402
from chest_tf.serving.release import ReleaseOptions  # noqa: E402

LABELS = get_info("chestmnist").labels
THRESHOLDS = [round(0.3 + 0.03 * k, 3) for k in range(14)]
THRESHOLDS[5] = None  # an undefined label (NaN in metrics.py, null in JSON)
SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def make_run_dir(root: Path) -> Path:
    """A fake finished run: config.json, best.keras (untrained tiny ViT), eval/metrics.json."""
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    model = build_model("vit_tiny", (28, 28, 1), 14, dim=32, depth=2, heads=2)
    model.save(run / "best.keras")
    config = {"data": {"dataset": "chestmnist", "size": 28}, "model": {"arch": "vit_tiny", "weights": None,
              "overrides": {"dim": 32, "depth": 2, "heads": 2}}, "train": {"epochs": 1}}
    (run / "config.json").write_text(json.dumps({"config": config, "runtime": {"device": "CPU"},
                                                 "versions": {"tensorflow": tf.__version__}}))
    (run / "best.json").write_text(json.dumps({"epoch": 3, "val_auc": 0.61}))
    metrics = {
        "task": "multi-label, binary-class", "label_names": list(LABELS),
        "thresholds": {"method": "youden", "target": None, "chosen_on": "val",
                       "rule": "positive when score >= threshold", "values": THRESHOLDS},
        "headline": {"split": "test", "auc": 0.612, "acc": 0.947, "auc_ci": [0.6, 0.62], "acc_ci": None},
        "val": {"n": 11, "auc": 0.63, "acc": 0.95, "per_label": [{"label": "atelectasis", "auc": 0.6}]},
        "test": {"n": 22, "auc": 0.612, "acc": 0.947},
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def model(run_dir):
    return load_keras_model(run_dir / "best.keras")


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    # The signature mechanics on a fake run without data: no calibration or OOD score (test_release.py has them).
    return savedmodel.export_run(run_dir, run_dir.parent / "saved" / "vit", options=ReleaseOptions.plain())


def keras_probs(model, images_float_0_255: np.ndarray) -> np.ndarray:
    """The reference: training's normalisation, the Keras model, sigmoid (multi-label)."""
    x = (np.asarray(images_float_0_255, np.float32) / 255.0 - 0.5) / 0.5
    return np.asarray(tf.sigmoid(model(x, training=False)))


TF_ONLY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    keras_with_tf = {k for k in sys.modules if k.split(".")[0] in ("keras", "tf_keras")}  # TF's own imports
    path, inputs, outputs = sys.argv[1:4]
    m = tf.saved_model.load(path)
    cases = dict(np.load(inputs))
    out = {}
    for name, images in cases.items():
        result = m.serve(tf.constant(images))
        out[name + ".probs"] = result["probs"].numpy()
        out[name + ".logits"] = result["logits"].numpy()
    sig = m.signatures["serving_default"]
    out["default.probs"] = sig(images=tf.constant(cases["gray"]))["probs"].numpy()
    np.savez(outputs, **out)
    meta = json.load(open(path + "/assets/metadata.json"))
    more_keras = {k for k in sys.modules if k.split(".")[0] in ("keras", "tf_keras")} - keras_with_tf
    print(json.dumps({"chest_tf": any(k.split(".")[0] == "chest_tf" for k in sys.modules),
                      "more_keras": sorted(more_keras), "thresholds": meta["thresholds"]["values"],
                      "labels": meta["output_names"]}))
""")


def test_tensorflow_only_process_matches_keras(exported, model, tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (2, 28, 28, 4), dtype=np.uint8)
    big = rng.integers(0, 256, (2, 61, 45), dtype=np.uint8)  # rank 3, resized inside
    cases = {"gray": gray, "hw": gray[..., 0], "rgb": rgb, "rgba": rgba, "big": big}
    np.savez(tmp_path / "in.npz", **cases)
    script = tmp_path / "tf_only.py"
    script.write_text(TF_ONLY_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(exported), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, env=SUBPROCESS_ENV,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # Neither chest_tf nor any Keras beyond what `import tensorflow` itself loads.
    assert report["chest_tf"] is False and report["more_keras"] == []
    assert report["thresholds"] == THRESHOLDS and report["labels"] == list(LABELS)
    got = dict(np.load(tmp_path / "out.npz"))

    weights = np.array(signature.LUMA_WEIGHTS, np.float32)
    rgba_f = rgba.astype(np.float32)
    expected = {
        "gray": keras_probs(model, gray),
        "hw": keras_probs(model, gray),
        "rgb": keras_probs(model, (rgb.astype(np.float32) * weights).sum(-1, keepdims=True)),
        "rgba": keras_probs(model, (rgba_f[..., :3] * (rgba_f[..., 3:] / 255.0) * weights).sum(-1, keepdims=True)),
        "big": keras_probs(model, tf.image.resize(big[..., None].astype(np.float32), (28, 28), method="bilinear",
                                                   antialias=True).numpy()),
        "default": keras_probs(model, gray),
    }
    for name, want in expected.items():
        diff = np.max(np.abs(got[name + ".probs"] - want))
        assert got[name + ".probs"].dtype == np.float32 and got[name + ".probs"].shape == want.shape
        assert diff <= 1e-5, f"{name}: max abs diff {diff:.2e}"
    np.testing.assert_allclose(got["gray.probs"], 1 / (1 + np.exp(-got["gray.logits"].astype(np.float64))), atol=1e-6)
    # The resize really happened (the case is not trivially the identity) and the input was not cropped.
    assert np.max(np.abs(got["big.probs"] - keras_probs(model, big[:, :28, :28, None]))) > 1e-4


def test_saved_model_cli_lists_uint8_serving_signature(exported):
    tool = shutil.which("saved_model_cli")
    cmd = [tool] if tool else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    proc = subprocess.run([*cmd, "show", "--dir", str(exported), "--all"], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for name in ("serving_default", "serve"):
        block = out.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n        shape: unknown_rank" in block
        assert "outputs['probs'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 14)" in block
        assert "outputs['logits']" in block
        assert "tensorflow/serving/predict" in block


def test_metadata_travels_and_keras_file_beside(exported, run_dir):
    meta = json.loads((exported / "assets" / "metadata.json").read_text())
    assert meta["format"] == export_metadata.METADATA_FORMAT and meta["name"] == "vit"
    assert meta["output_names"] == list(LABELS) and meta["task"] == "multi-label, binary-class"
    assert meta["thresholds"]["values"] == THRESHOLDS and meta["thresholds"]["chosen_on"] == "val"
    assert meta["input"]["height"] == meta["input"]["width"] == 28 and meta["input"]["channels"] == 1
    assert meta["input"]["normalization"] == {"formula": "(x / 255 - mean) / std", "mean": 0.5, "std": 0.5,
                                              "range": [-1.0, 1.0]}
    assert meta["metrics"]["headline"]["auc"] == 0.612 and meta["metrics"]["val"]["auc"] == 0.63
    assert meta["metrics"]["test"]["n"] == 22
    assert meta["source"]["run_dir"] == str(run_dir.resolve()) and meta["source"]["best"]["epoch"] == 3
    assert meta["arch"] == "vit_tiny" and meta["activation"] == "sigmoid"
    assert set(meta["versions"]) >= {"chest_tf", "tensorflow", "keras", "python"}
    assert (exported / "model.keras").read_bytes() == (run_dir / "best.keras").read_bytes()
    assert savedmodel.default_export_name(meta) == "vit_tiny_chestmnist_28"
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")]


def test_export_refuses_to_overwrite_then_replaces_with_flag(exported, run_dir, capsys):
    before = (exported / "saved_model.pb").stat().st_mtime_ns
    plain = ["--calibration", "none", "--ood", "none"]
    assert run_cli(export_cli.main, [str(run_dir), "--out", str(exported), *plain]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert (exported / "saved_model.pb").stat().st_mtime_ns == before

    assert run_cli(export_cli.main, [str(run_dir), "--out", str(exported), "--overwrite", "--no-verify", *plain]) == 0
    assert "exported" in capsys.readouterr().out
    assert (exported / "saved_model.pb").stat().st_mtime_ns != before
    assert sorted(p.name for p in exported.iterdir()) == ["MODEL_CARD.md", "assets", "fingerprint.pb", "model.keras",
                                                          "saved_model.pb", "variables"]
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]  # no temp or old folders left


def test_interrupted_export_leaves_nothing_under_the_final_name(model, run_dir, tmp_path, monkeypatch):
    resolved = resolve_model(run_dir)
    metadata, keras_path = resolved.metadata, resolved.keras_path
    real_write_keras = savedmodel._write_keras
    seen = {}

    def fail_midway(directory, *args, **kwargs):
        seen["partial"] = directory
        seen["had_saved_model"] = (directory / "saved_model.pb").is_file()
        real_write_keras(directory, *args, **kwargs)
        raise KeyboardInterrupt  # e.g. Ctrl-C while the files are being written

    monkeypatch.setattr(savedmodel, "_write_keras", fail_midway)
    target = tmp_path / "models" / "fresh"
    with pytest.raises(KeyboardInterrupt):
        savedmodel.export_model(model, metadata, target, keras_file=keras_path)
    assert seen["had_saved_model"] and seen["partial"].parent == target.parent
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the partial folder is gone too

    # With --overwrite, a failure leaves the previous export untouched.
    monkeypatch.setattr(savedmodel, "_write_keras", real_write_keras)
    savedmodel.export_model(model, metadata, target, keras_file=keras_path, verify=False)
    files_before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    monkeypatch.setattr(savedmodel, "verify_export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        savedmodel.export_model(model, metadata, target, overwrite=True, keras_file=keras_path)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == files_before
    assert [p.name for p in target.parent.iterdir()] == ["fresh"]


def test_export_refuses_augmentation_and_bad_runs(model, run_dir, tmp_path):
    from chest_tf.augment import attach_augmentation, build_augmentation

    wrapped = attach_augmentation(model, build_augmentation("light", seed=0))
    metadata = resolve_model(run_dir).metadata
    with pytest.raises(ConfigError, match="augmentation"):
        savedmodel.export_model(wrapped, metadata, tmp_path / "aug")
    assert not (tmp_path / "aug").exists()
    with pytest.raises(ConfigError, match="not a chest_tf run dir"):
        savedmodel.export_run(tmp_path)


def test_serving_function_checks_inputs(model):
    serve = signature.serving_tf_function(model, "multi-label, binary-class")
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 \\(gray\\), 3 \\(RGB\\) or 4"):
        serve(tf.zeros((1, 28, 28, 2), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank"):
        serve(tf.zeros((28, 28), tf.uint8))
    with pytest.raises((TypeError, ValueError)):  # the signature is uint8 only
        serve(tf.zeros((1, 28, 28, 1), tf.float32))
    assert serve(tf.zeros((0, 30, 30), tf.uint8))["probs"].shape == (0, 14)


@pytest.mark.parametrize("dataset, outputs, names, activation", [
    ("pneumoniamnist", 1, ["pneumonia"], "sigmoid"),
    ("octmnist", 4, list(get_info("octmnist").labels), "softmax"),
])
def test_metadata_for_other_tasks(dataset, outputs, names, activation):
    fake = SimpleNamespace(input_shape=(None, 64, 64, 1), output_shape=(None, outputs))
    meta = export_metadata.build_metadata(fake, get_info(dataset), arch="resnet18")
    assert meta["output_names"] == names and meta["activation"] == activation
    assert meta["thresholds"]["method"] == "default" and meta["thresholds"]["values"] == [0.5] * outputs
    json.dumps(meta)  # plain JSON


def test_metadata_two_logit_binary_keeps_the_positive_class_threshold():
    fake = SimpleNamespace(input_shape=(None, 28, 28, 1), output_shape=(None, 2))
    metrics = {"thresholds": {"method": "youden", "chosen_on": "val", "values": [0.3]}}
    meta = export_metadata.build_metadata(fake, get_info("pneumoniamnist"), metrics=metrics)
    assert meta["output_names"] == ["normal", "pneumonia"] and meta["activation"] == "softmax"
    assert meta["thresholds"]["values"] == [None, 0.3]
