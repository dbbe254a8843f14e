"""Predictions that know their limits: input checks, the OOD score inside the SavedModel,
temperature scaling, deep ensembles and the model card (chest_tf.serving)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf.config import RunConfig, apply_overrides  # noqa: E402
from chest_tf.data import phantom  # noqa: E402
from chest_tf.data.normalization import normalize  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.runs import resolve_model  # noqa: E402
from chest_tf.serving import calibration, input_checks, ood  # noqa: E402
from chest_tf.serving.model_card import CARD_NAME  # noqa: E402
from chest_tf.serving.outputs import run_predictions  # noqa: E402
from chest_tf.serving.predictor import load_predictor  # noqa: E402
from chest_tf.serving.release import ReleaseOptions  # noqa: E402
from chest_tf.serving.savedmodel import export_runs  # noqa: E402
from chest_tf.serving.signature import serving_tf_function  # noqa: E402

SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
FAST = {"n_bootstrap": 50, "ood_eval_images": 64, "batch_size": 64}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("release_data")
    phantom.write_phantom(data_dir / "phantom.npz", size=28, counts={"train": 256, "val": 96, "test": 96}, seed=0)
    return data_dir


def make_run(root: Path, data_dir: Path, seed: int) -> Path:
    """A run dir as training leaves it (config.json, best.keras), with an untrained tiny ResNet."""
    run = root / f"run_s{seed}"
    run.mkdir(parents=True)
    config = apply_overrides(RunConfig(), "data", {"dataset": "phantom", "size": 28, "data_dir": str(data_dir)})
    config = apply_overrides(config, "model", {"arch": "resnet18", "overrides": {"width": 8}})
    config = apply_overrides(config, "train", {"seed": seed})
    keras.utils.set_random_seed(seed)
    build_model("resnet18", (28, 28, 1), 14, width=8).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"config": config.to_dict(), "runtime": {"device": "CPU"}}))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, phantom_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("release_runs")
    return [make_run(root, phantom_dir, seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release_out") / "single"
    return export_runs(runs[:1], out, options=ReleaseOptions(**FAST))  # verify=True compares every output


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def _fired(image, size=28) -> dict[str, str]:
    return {r.check: r.level for r in input_checks.check_image(image, size)}


def test_each_input_check_fires_on_its_case(pneumonia_npz):
    radiograph = np.load(pneumonia_npz)["test_images"][0]
    rng = np.random.default_rng(0)
    assert _fired(np.full((1, 1), 200, np.uint8))["too_small"] == "error"  # (and blank: one pixel)
    assert _fired(np.full((256, 256), 128, np.uint8)) == {"blank": "error"}
    assert _fired(rng.integers(0, 256, (40, 3000), dtype=np.uint8))["aspect_ratio"] == "error"
    assert _fired(np.kron(radiograph, np.ones((1, 2), np.uint8)))["aspect_ratio"] == "warning"  # 1:2
    assert _fired(255 - radiograph) == {"inverted": "warning"}
    assert _fired(radiograph, size=224) == {"too_small": "warning"}  # upsampled 8x
    low = np.tile(np.linspace(100, 112, 64), (64, 1)).astype(np.uint8)  # std ~3.5, 1-99% range 12
    assert _fired(low) == {"blank": "warning"}
    colour = np.stack([radiograph, np.zeros_like(radiograph), 255 - radiograph], axis=-1)
    assert _fired(colour)["colour"] == "warning"


def test_checks_stay_quiet_on_real_and_phantom_radiographs(pneumonia_npz):
    real = np.load(pneumonia_npz)["test_images"]
    made, _, _ = phantom.generate_split(64, 50, 0, "test", 0)
    fired = [(i, input_checks.check_image(image, 28)) for i, image in enumerate(real)]
    assert sum(bool(found) for _, found in fired) <= 2, [f for f in fired if f[1]][:3]  # of 624 real images
    assert not any(input_checks.check_image(image, 64) for image in made)
    gray_as_rgb = np.repeat(real[0][..., None], 3, axis=-1)
    assert input_checks.check_image(gray_as_rgb, 28) == []


def test_check_levels_can_be_changed_and_are_validated():
    policy = input_checks.DEFAULT_POLICY.with_levels(input_checks.parse_check_levels(["inverted=error",
                                                                                      "blank=off"]))
    assert input_checks.check_image(np.full((64, 64), 9, np.uint8), 28, policy) == []
    with pytest.raises(ValueError, match="unknown input check 'invert'"):
        input_checks.parse_check_levels(["invert=error"])
    with pytest.raises(ValueError, match="level must be one of"):
        input_checks.parse_check_levels(["inverted=loud"])


# ----------------------------------------------------------------------------------------------
# Calibration and the OOD scorer
# ----------------------------------------------------------------------------------------------
def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    labels = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(np.float64)
    overconfident = 3.0 * true_logits
    (t,) = calibration.fit_temperatures(overconfident, labels, "sigmoid", "global")
    assert 2.7 < t < 3.3
    per_label = calibration.fit_temperatures(overconfident * np.array([1.0, 0.5, 1.0]), labels, "sigmoid",
                                             "per-label")
    assert per_label.shape == (3,) and 1.3 < per_label[1] < 1.7 and 2.7 < per_label[0] < 3.3


def test_mahalanobis_scores_agree_in_numpy_and_tensorflow():
    rng = np.random.default_rng(1)
    train = [rng.normal(size=(300, 5)), rng.normal(size=(300, 3))]
    val = [rng.normal(size=(50, 5)), rng.normal(size=(50, 3))]
    logits = rng.normal(size=(50, 2))
    scorer = ood.fit_scorer("mahalanobis", "sigmoid", train, logits, val, percentile=90)
    assert np.mean(scorer.scores(logits, val) <= scorer.threshold) == pytest.approx(0.9, abs=0.02)
    far = [v + 6.0 for v in val]
    assert ood.ood_auroc(scorer.scores(logits, val), scorer.scores(logits, far)) > 0.99
    tf_scores = scorer.tf_scores(tf.constant(logits, tf.float32), [tf.constant(v, tf.float32) for v in val])
    np.testing.assert_allclose(tf_scores.numpy(), scorer.scores(logits, val), rtol=1e-4)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_vit_ood_features_take_each_block_that_outputs_every_token(pool):
    """A thumbnail, the patch embedding, the token mean after each block, the penultimate features; a class-token
    ViT's last block outputs the class token only (what the penultimate features normalise), so
    its tokens are the block before's."""
    model = build_model("vit_tiny", (28, 28, 1), 14, depth=3, pool=pool)
    features = ood.features_and_logits_model(model).outputs[1:]
    blocks = 2 if pool == "cls" else 3
    # thumbnail, the patch embedding (a 4-D map), the blocks, the penultimate features
    assert [tuple(f.shape) for f in features] == [(None, 49)] + [(None, 192)] * (1 + blocks + 1)


# ----------------------------------------------------------------------------------------------
# Export: metadata, card, report, the TF-only SavedModel
# ----------------------------------------------------------------------------------------------
def test_export_writes_calibration_ood_report_and_card(exported):
    meta = json.loads((exported / "assets" / "metadata.json").read_text())
    assert meta["calibration"]["method"] == "temperature" and len(meta["calibration"]["temperatures"]) == 1
    assert meta["thresholds"]["chosen_after_calibration"] is True
    assert meta["ood"]["method"] == "mahalanobis" and (exported / meta["ood"]["statistics"]).is_file()
    assert len(meta["ood"]["feature_dims"]) == 6  # the thumbnail, four ResNet stages, the penultimate features
    sets = meta["ood"]["evaluation"]
    assert {"uniform noise", "inverted", "rotated 90 degrees", "cropped to the central half"} <= set(sets)
    assert all(row["auroc"] is None or 0.0 <= row["auroc"] <= 1.0 for row in sets.values())
    assert set(meta["signature"]["outputs"]) == {"logits", "probs", "ood_score", "in_distribution"}
    card = (exported / CARD_NAME).read_text()
    assert "report/metrics.json" in card and "Not for clinical use" in card and "python -m chest_tf.export" in card
    assert (exported / "report" / "metrics.json").is_file() and (exported / "report" / "report.md").is_file()
    assert (exported / "report" / "calibration_uncalibrated.png").is_file()


TF_ONLY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    out = m.serve(tf.constant(np.load(sys.argv[2])["images"]))
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
    print(any(k.split(".")[0] == "chest_tf" for k in sys.modules))
""")


def test_tensorflow_only_saved_model_matches_the_keras_path(exported, tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    images[:3] = phantom.generate_split(28, 3, 5, "test", 0)[0][..., None]
    np.savez(tmp_path / "in.npz", images=images)
    (tmp_path / "tf_only.py").write_text(TF_ONLY_SCRIPT)
    done = subprocess.run([sys.executable, str(tmp_path / "tf_only.py"), str(exported), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"  # no chest_tf in that process
    saved = dict(np.load(tmp_path / "out.npz"))
    resolved = resolve_model(exported)
    keras_path = serving_tf_function(resolved.model, resolved.metadata["task"], resolved.extras)
    expected = {k: v.numpy() for k, v in keras_path(tf.constant(images)).items()}
    np.testing.assert_allclose(saved["ood_score"], expected["ood_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["probs"], expected["probs"], atol=1e-5)
    np.testing.assert_array_equal(saved["in_distribution"], expected["in_distribution"])
    # the calibrated probabilities are the model's logits over the temperature
    logits = resolved.model(normalize(images.astype(np.float32)), training=False).numpy()
    temperature = resolved.metadata["calibration"]["temperatures"][0]
    np.testing.assert_allclose(saved["probs"], 1 / (1 + np.exp(-logits / temperature)), atol=1e-5)


def test_predict_outputs_carry_checks_and_ood(exported, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    made = phantom.generate_split(28, 2, 9, "test", 0)[0]
    Image.fromarray(made[0]).save(folder / "a.png")
    Image.fromarray(255 - made[1]).save(folder / "b_inverted.png")
    Image.fromarray(np.full((30, 30), 7, np.uint8)).save(folder / "c_blank.png")
    (folder / "notes.txt").write_text("not an image")
    predictor = load_predictor(exported)
    out, err = io.StringIO(), io.StringIO()
    assert run_predictions(predictor, [folder], fmt="csv", out=out, err=err) == 1  # the blank one is refused
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b_inverted.png"]
    assert all(r["ood_score"] and r["in_distribution"] in ("true", "false") for r in rows)
    assert rows[0]["checks"] == "" and rows[1]["checks"].startswith("warning inverted:")
    assert "c_blank.png: the image is blank" in err.getvalue() and "notes.txt" in err.getvalue()
    out = io.StringIO()
    run_predictions(predictor, [folder], fmt="json", out=out, err=io.StringIO())
    doc = json.loads(out.getvalue())
    assert doc["skipped"] == [str(folder / "notes.txt")] and doc["ood"]["method"] == "mahalanobis"
    assert {"checks", "ood_score", "in_distribution"} <= set(doc["results"][0])


# ----------------------------------------------------------------------------------------------
# Ensembles
# ----------------------------------------------------------------------------------------------
def test_ensemble_export_is_the_mean_of_its_members(runs, tmp_path):
    out = export_runs(runs, tmp_path / "ensemble",
                      options=ReleaseOptions(calibration="none", ood="energy", **FAST))
    meta = json.loads((out / "assets" / "metadata.json").read_text())
    assert meta["ensemble"]["members"] == 2 and meta["arch"] == "ensemble of 2 x resnet18"
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    loaded = tf.saved_model.load(str(out))  # kept alive while its function runs
    served = loaded.serve(tf.constant(images))
    x = normalize(images.astype(np.float32))
    members = [resolve_model(run).model for run in runs]
    member_probs = np.stack([tf.sigmoid(m(x, training=False)).numpy() for m in members])
    np.testing.assert_allclose(served["probs"].numpy(), member_probs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(served["uncertainty"].numpy(), member_probs.std(axis=0), atol=1e-5)
    # evaluate works on it like on any model: the Keras ensemble in the export returns logits
    ensemble = resolve_model(out).model
    np.testing.assert_allclose(tf.sigmoid(ensemble(x, training=False)).numpy(), member_probs.mean(axis=0),
                               atol=1e-5)


def test_ensemble_members_must_share_the_dataset(runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((runs[0] / "config.json").read_text())
    config["config"]["data"]["size"] = 64
    (other / "config.json").write_text(json.dumps(config))
    (other / "best.keras").write_bytes((runs[0] / "best.keras").read_bytes())
    with pytest.raises(ValueError, match="must share dataset and size"):
        export_runs([runs[0], other], tmp_path / "mixed", options=ReleaseOptions(**FAST))
    assert not (tmp_path / "mixed").exists()
