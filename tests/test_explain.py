"""Explanations: Grad-CAM / Grad-CAM++ / rollout maths, the pointing game on the phantom set's
boxes, the Adebayo-style weight-randomisation check, the CLI on real image files and the
TensorBoard panel. One narrow ResNet-18 is trained for ~30 s and shared by the slow tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from chest_tf.cli import explain as explain_command  # noqa: E402
from chest_tf.data.normalization import normalize  # noqa: E402
from chest_tf.data.phantom import PHANTOM_LABELS  # noqa: E402
from chest_tf.errors import ConfigError  # noqa: E402
from chest_tf.explain import api as explain  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 28


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_arrays():
    from chest_tf.data import phantom

    train = phantom.generate_split(SIZE, 2048, seed=0, split="train")
    test = phantom.generate_split(SIZE, 400, seed=0, split="test")
    return train, test


@pytest.fixture(scope="module")
def trained_resnet(phantom_arrays, tmp_path_factory):
    """ResNet-18 at width 16, 5 epochs on 2,048 phantom images (about half a minute on 2 cores).
    BatchNorm momentum 0.9 instead of 0.99: 160 steps are too few for 0.99's moving statistics
    (a fifth of the initial mean 0 / variance 1 would remain), and explanations run in
    inference mode."""
    (images, labels, _), _ = phantom_arrays
    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (SIZE, SIZE, 1), 14, width=16)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = normalize(images)[..., None]
    log_dir = tmp_path_factory.mktemp("tensorboard")
    panel = explain.ExplanationPanel(model, x[:4], log_dir, every=5, label_names=PHANTOM_LABELS)
    model.fit(x, labels.astype("float32"), batch_size=64, epochs=5, verbose=0, callbacks=[panel])
    model.panel_log_dir = log_dir  # for test_tensorboard_panel_during_fit
    return model


@pytest.fixture(scope="module")
def tiny_vit():
    keras.utils.set_random_seed(1)
    return build_model("vit_tiny", (SIZE, SIZE, 1), 3, dim=16, depth=2, heads=2, patch_size=7)


def _square_images(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Dark images with one bright 6x6 square each; returns images in [-1, 1] and the boxes."""
    images = -np.ones((n, SIZE, SIZE, 1), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        x0, y0 = rng.integers(0, SIZE - 6, size=2)
        images[i, y0:y0 + 6, x0:x0 + 6] = 1.0
        boxes[i] = (x0, y0, x0 + 6, y0 + 6)
    return images, boxes


def _square_detector():
    """A CNN whose output 0 is the mean of a ReLU'd brightness detector and output 1 its negative:
    Grad-CAM for 0 must follow the bright square, and for 1 (all weights negative) be empty."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer="ones", bias_initializer="zeros",
                            name="detector_conv")(inputs)
    x = keras.layers.Activation("relu", name="detector_relu")(x)
    x = keras.layers.MaxPooling2D(2, name="detector_pool")(x)  # 14x14 map: exercises upsampling
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(2, name="predictions")(x)
    model = keras.Model(inputs, logits, name="square_detector")
    model.get_layer("predictions").set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model


# ----------------------------------------------------------------------------------------------
# Grad-CAM and rollout maths
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradcam_follows_the_evidence_and_is_empty_for_negative_evidence(method):
    images, boxes = _square_images(6, np.random.default_rng(0))
    model = _square_detector()
    explainer = explain.Explainer(model, method)
    assert explainer.layer == "detector_pool"  # the last 4-D feature map, found by name
    maps = explainer.heatmaps(images, 0)
    assert maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    scores = explain.score_heatmaps(maps, explain.box_masks(boxes, SIZE, SIZE))
    assert scores["hit"].all()
    assert (scores["energy"] > 0.5).all()
    # The negative output has only negative evidence: ReLU leaves nothing.
    assert np.all(explainer.heatmaps(images, 1) == 0.0)
    # ... unless it is explained with its sign flipped (the negative class of a binary model).
    flipped = explainer.heatmaps(images, 1, signs=-1.0)
    assert np.allclose(flipped, maps, atol=1e-5)


def test_heatmaps_are_per_image_and_per_target():
    keras.utils.set_random_seed(2)
    model = build_model("resnet18", (SIZE, SIZE, 1), 4, width=4)
    images = np.random.default_rng(0).uniform(-1, 1, (5, SIZE, SIZE, 1)).astype("float32")
    explainer = explain.Explainer(model)
    assert explainer.method == "gradcam" and explainer.layer == "conv5_block2_out"
    targets = np.array([0, 1, 2, 3, 1])
    batch = explainer.heatmaps(images, targets, batch_size=2)
    alone = np.stack([explainer.heatmaps(images[i:i + 1], int(targets[i]))[0] for i in range(5)])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    assert not np.allclose(explainer.heatmaps(images[:1], 0), explainer.heatmaps(images[:1], 1))
    with pytest.raises(ConfigError, match="output indices"):
        explainer.heatmaps(images, 4)
    with pytest.raises(ConfigError, match="one per image"):
        explainer.heatmaps(images, [0, 1])
    with pytest.raises(ConfigError, match="prepare_images"):
        explainer.heatmaps(np.zeros((1, SIZE, SIZE, 1), np.uint8))
    with pytest.raises(ConfigError, match="must be \\(B, 28, 28, 1\\)"):
        explainer.heatmaps(np.zeros((1, 32, 32, 1), np.float32))


def _rollout_reference(scores: list[np.ndarray], class_token: bool, grid: int) -> np.ndarray:
    """Abnar & Zuidema's rollout in plain numpy, straight from the paper."""
    tokens = scores[0].shape[-1]
    rollout = np.eye(tokens)
    for a in scores:
        a = a.mean(axis=1) + np.eye(tokens)
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    row = rollout[:, 0, 1:] if class_token else rollout.mean(axis=1)
    return row.reshape(-1, grid, grid)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_rollout_matches_the_paper(pool):
    from chest_tf.models.vit import vit_attention_model

    keras.utils.set_random_seed(3)
    model = build_model("vit_tiny", (SIZE, SIZE, 1), 3, dim=16, depth=3, heads=2, patch_size=7, pool=pool)
    # The reference takes every token's attention in every block: the same weights in a model
    # whose last block computes all tokens (``model``'s computes the class token's row only).
    full = build_model("vit_tiny", (SIZE, SIZE, 1), 3, dim=16, depth=3, heads=2, patch_size=7, pool=pool,
                       full_last_block=True)
    full.set_weights(model.get_weights())
    images = np.random.default_rng(1).uniform(-1, 1, (3, SIZE, SIZE, 1)).astype("float32")
    scores = [np.asarray(s, np.float64) for s in vit_attention_model(full)(images)]
    tokens = 17 if pool == "cls" else 16
    assert scores[-1].shape == (3, 2, tokens, tokens)
    expected = explain.upsample_and_normalize(_rollout_reference(scores, pool == "cls", 4), (SIZE, SIZE))
    maps = explain.attention_rollout(model, images)
    np.testing.assert_allclose(maps, np.asarray(expected), atol=1e-5)
    assert maps.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(explain.gradient_rollout(model, images, 1), explain.gradient_rollout(full, images, 1),
                               atol=1e-5)


def test_rollout_on_a_trained_vit_and_its_reloaded_file(tmp_path):
    """The ViT trains through the fused attention; explain re-traces it with the scores, and the
    maps of the trained model and of its reloaded .keras file agree."""
    keras.utils.set_random_seed(4)
    model = build_model("vit_tiny", (SIZE, SIZE, 1), 3, dim=16, depth=2, heads=2, patch_size=7, lsa=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (16, SIZE, SIZE, 1)).astype("float32")
    y = (rng.uniform(size=(16, 3)) < 0.5).astype("float32")
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    path = tmp_path / "vit.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    for method in ("rollout", "grad-rollout"):
        trained, again = explain.explain(model, x[:4], 1, method), explain.explain(reloaded, x[:4], 1, method)
        assert trained.shape == (4, SIZE, SIZE) and np.isfinite(trained).all()
        np.testing.assert_allclose(trained, again, atol=1e-5)


def test_gradient_rollout_is_class_specific(tiny_vit):
    images = np.random.default_rng(2).uniform(-1, 1, (4, SIZE, SIZE, 1)).astype("float32")
    explainer = explain.Explainer(tiny_vit)
    assert explainer.method == "grad-rollout" and explainer.grid == (4, 4)
    a, b = explainer.heatmaps(images, 0), explainer.heatmaps(images, 2)
    assert a.shape == (4, SIZE, SIZE) and 0.0 <= a.min() and a.max() <= 1.0
    assert not np.allclose(a, b)
    # Rollout itself ignores the target.
    rollout = explain.Explainer(tiny_vit, "rollout")
    np.testing.assert_allclose(rollout.heatmaps(images, 0), rollout.heatmaps(images, 2))


def test_methods_must_fit_the_family(tiny_vit):
    cnn = build_model("resnet18", (SIZE, SIZE, 1), 2, width=4)
    with pytest.raises(ConfigError, match="is a ViT"):
        explain.Explainer(tiny_vit, "gradcam")
    with pytest.raises(ConfigError, match="not a chest_tf ViT"):
        explain.Explainer(cnn, "rollout")
    with pytest.raises(ConfigError, match="unknown method"):
        explain.Explainer(cnn, "lime")
    with pytest.raises(ConfigError, match="no layer|has no"):
        explain.Explainer(cnn, "gradcam", layer="conv9_block1_out")
    assert explain.Explainer(cnn, "gradcam", layer="conv4_block2_out").layer == "conv4_block2_out"


# ----------------------------------------------------------------------------------------------
# Scoring helpers
# ----------------------------------------------------------------------------------------------
def test_box_masks_scoring_and_baselines():
    boxes = np.array([[2, 1, 5, 3], [np.nan] * 4, [0.4, 0.4, 1.6, 1.6], [0.6, 0.6, 1.4, 1.4]], np.float32)
    masks = explain.box_masks(boxes, 4, 6)
    assert masks.shape == (4, 4, 6)
    assert masks[0].sum() == 6 and masks[0, 1:3, 2:5].all()  # x 2..4, y 1..2 (x1, y1 exclusive)
    assert not masks[1].any()
    assert masks[2].sum() == 4 and masks[2, :2, :2].all()  # pixel centres 0.5 and 1.5 are inside
    assert masks[3].sum() == 1 and masks[3, 1, 1]  # no centre inside: the pixel of the box's centre
    grown = explain.box_masks(boxes[:1], 4, 6, tolerance=0.7)  # Euclidean distance of pixel centres
    assert grown.sum() == 5 * 2 + 3 * 2 and not grown[0, 0, 1]  # edge pixels (0.5 away) in, corners (0.71) out
    assert explain.box_masks(boxes[:1], 4, 6, tolerance=1.0)[0, :, 1:].all()

    heat = np.zeros((2, 4, 6), np.float32)
    heat[0, 2, 3] = 1.0  # peak inside box 0
    heat[0, 0, 0] = 0.5
    heat[1, 0, 0] = 1.0  # peak outside
    scores = explain.score_heatmaps(heat, masks[[0, 0]], reachable=np.ones((4, 6), bool))
    assert scores["hit"].tolist() == [True, False]
    np.testing.assert_allclose(scores["energy"], [1.0 / 1.5, 0.0])
    np.testing.assert_allclose(scores["area"], [6 / 24, 6 / 24])
    assert scores["ceiling"].all()
    empty = explain.score_heatmaps(np.zeros((1, 4, 6)), masks[:1])
    assert not empty["hit"][0] and empty["empty"][0] and empty["energy"][0] == 0.0
    lo, hi = explain.wilson_interval(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(0.2366, abs=1e-3)


def test_reachable_peaks_follow_the_native_grid(tiny_vit):
    explainer = explain.Explainer(tiny_vit, "rollout")  # 4x4 patches of 7 px
    reachable = explain.reachable_peaks(explainer)
    assert reachable.sum() == 16
    ys, xs = np.nonzero(reachable)
    # Interior patch centres; a border patch's map is flat out to the edge (bilinear resampling
    # clamps), and the peak of a plateau is its middle.
    assert set(ys.tolist()) == set(xs.tolist()) == {1, 10, 17, 25}
    plateau = np.zeros((1, 5, 5))
    plateau[0, :2, :4] = 1.0
    assert explain.peak_pixels(plateau)[0] == 1  # (0, 1): nearest the centroid (0.5, 1.5), first of ties


def test_spearman_and_location_prior():
    a = np.arange(12, dtype=float).reshape(1, 3, 4)
    np.testing.assert_allclose(explain.spearman(a, a * 3 + 1), [1.0])
    np.testing.assert_allclose(explain.spearman(a, -a), [-1.0])
    assert np.isnan(explain.spearman(a, np.zeros_like(a))[0])
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    boxes = np.full((3, 2, 4), np.nan, np.float32)
    boxes[0, 0] = boxes[1, 0] = (0, 0, 2, 2)
    boxes[1, 1] = (2, 2, 4, 4)
    boxes[2, 1] = (3, 3, 4, 4)
    prior = explain.location_prior(labels, boxes, 4, 4)
    assert prior[0, 0, 0] == 1.0 and prior[1, 3, 3] == 1.0 and prior[1, 2, 2] == 0.5
    result = explain.prior_pointing_game(prior, labels, boxes, label_names=["a", "b"])
    assert result["overall"]["n"] == 4 and result["overall"]["hit_rate"] == 1.0


def test_randomized_copy_cascades_from_the_top():
    keras.utils.set_random_seed(4)
    model = build_model("resnet18", (SIZE, SIZE, 1), 3, width=4)
    groups = explain.weight_groups(model)
    assert [g for g, _ in groups[:3]] == ["predictions", "conv5", "conv4"] and groups[-1][0] == "conv1"
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.weights}
    top = groups[0][1] + groups[1][1]
    copy = explain.randomized_copy(model, top, seed=7)
    for layer in model.layers:
        if not layer.weights:
            continue
        same = all(np.array_equal(a, b) for a, b in zip(before[layer.name], copy.get_layer(layer.name).get_weights()))
        kernel_or_first = layer.name.endswith("_conv") or layer.name == "predictions"
        if layer.name in top and kernel_or_first:
            assert not same, layer.name
        elif layer.name not in top:
            assert same, layer.name
        # the original is untouched
        assert all(np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
    with pytest.raises(ConfigError, match="no layer"):
        explain.randomized_copy(model, ["nope"])


# ----------------------------------------------------------------------------------------------
# On a trained model: the pointing game and the randomisation check
# ----------------------------------------------------------------------------------------------
def test_pointing_game_beats_a_random_point(trained_resnet, phantom_arrays):
    _, (images, labels, boxes) = phantom_arrays
    # Conservative bounds for a 30-second model (two seeds gave Grad-CAM 0.27 and 0.33, Grad-CAM++
    # 0.46 and 0.47, against a random point's 0.155; the reference models of
    # pipelines/pointing_game.py reach 0.38-0.54 against 0.14).
    bounds = {"gradcam": (1.4, 0.0), "gradcam++": (2.0, 0.1)}
    for method, (ratio, margin) in bounds.items():
        result = explain.pointing_game(trained_resnet, images, labels, boxes, method, label_names=PHANTOM_LABELS)
        overall = result["overall"]
        assert result["layer"] == "conv5_block2_out" and result["native_grid"] == [4, 4]
        assert overall["n"] == int(((labels > 0) & ~np.isnan(boxes[..., 0])).sum()) > 400
        assert set(result["per_finding"]) <= set(PHANTOM_LABELS)
        baseline = overall["random_baseline"]
        assert 0.1 < baseline < 0.2
        # The 95% interval of the hit rate lies above the random point's rate, by far.
        assert overall["hit_rate"] > ratio * baseline, (method, overall)
        assert overall["hit_rate_ci95"][0] > baseline + margin, (method, overall)
        assert overall["energy_in_box"] > baseline, (method, overall)
        assert overall["hit_rate"] <= overall["resolution_ceiling"] + 1e-9


def test_heatmaps_change_when_weights_are_randomized(trained_resnet, phantom_arrays):
    """Adebayo et al. 2018: an explanation that does not change with the weights explains nothing."""
    _, (images, labels, _) = phantom_arrays
    index = np.nonzero(labels[:, 1])[0][:24]  # cardiomegaly cases
    x = explain.prepare_images(images[index], trained_resnet)
    result = explain.sanity_check(trained_resnet, x, 1, "gradcam", seed=0, cascade=2)
    steps = {s["randomized"]: s for s in result["steps"]}
    assert result["n"] == len(index) and list(steps) == ["predictions", "predictions + conv5",
                                                         "all (full re-initialisation)"]
    # Re-initialising the classifier and the last stage, or everything, decorrelates the maps
    # (measured: about 0 and -0.1; re-initialising the classifier alone gave 0.2 to 0.85
    # depending on the seed: with few, redundant channels a random mix of them can still look alike).
    assert steps["predictions + conv5"]["spearman_mean"] < 0.5, result
    assert steps["all (full re-initialisation)"]["spearman_mean"] < 0.5, result
    # Control: the same weights give the same maps.
    same = explain.spearman(*(explain.explain(trained_resnet, x, 1) for _ in range(2)))
    assert np.nanmin(same) > 0.999


# ----------------------------------------------------------------------------------------------
# Files: the CLI, run folders, the TensorBoard panel
# ----------------------------------------------------------------------------------------------
def _write_images(folder: Path, images: np.ndarray) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    gray = Image.fromarray(images[0], mode="L")
    gray.save(folder / "a_native.png")
    gray.resize((200, 200), Image.BILINEAR).convert("RGB").save(folder / "b_rgb_200.png")
    rgba = gray.resize((90, 70), Image.BILINEAR).convert("RGBA")
    rgba.save(folder / "c_rgba_90x70.png")
    Image.fromarray(images[1], mode="L").resize((64, 64)).save(folder / "d.jpg", quality=95)
    for name in ("a_native.png", "b_rgb_200.png", "c_rgba_90x70.png", "d.jpg"):
        paths.append(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    return paths


def test_cli_writes_overlays_for_real_files(trained_resnet, phantom_arrays, tmp_path):
    from chest_tf.console import run_cli

    _, (images, labels, _) = phantom_arrays
    model_path = tmp_path / "model.keras"
    trained_resnet.save(model_path)
    paths = _write_images(tmp_path / "images", images[np.nonzero(labels[:, 1])[0][:2]])
    out = tmp_path / "xai"
    status = run_cli(explain_command.main, [str(model_path), *map(str, paths), "--dataset", "phantom",
                                            "--top-k", "2", "--out", str(out)])
    assert status == 0
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["method"] == "gradcam" and len(summary["results"]) == 8
    assert {r["width"] for r in summary["results"]} == {28, 200, 90, 64}
    for row in summary["results"]:
        assert Path(row["overlay"]).is_file() and Path(row["overlay"]).stat().st_size > 5000
        assert 0 <= row["peak_xy"][0] < row["width"] and 0 <= row["peak_xy"][1] < row["height"]
    assert (out / "contact_sheet.png").is_file()

    # A named label, Grad-CAM++, and an unreadable file among them: reported, the rest explained.
    out2 = tmp_path / "xai2"
    status = run_cli(explain_command.main, [str(model_path), str(tmp_path / "images"), "--dataset", "phantom",
                                            "--label", "cardiomegaly,effusion", "--method", "gradcam++",
                                            "--out", str(out2)])
    assert status == 1
    summary = json.loads((out2 / "explanations.json").read_text())
    assert [r["finding"] for r in summary["results"][:2]] == ["cardiomegaly", "effusion"]
    assert len(summary["errors"]) == 1 and "broken.png" in summary["errors"][0]["file"]
    assert sorted(p.name for p in out2.glob("a_native_*.png")) == [
        "a_native_cardiomegaly_gradcampp.png", "a_native_effusion_gradcampp.png"]
    # The same X-ray at 28 px and at 200 px (resized to the model as predict does) points at the
    # same place, up to one cell of the 4x4 feature map (50 px at 200 px).
    rows = {Path(r["file"]).name: r for r in summary["results"] if r["finding"] == "cardiomegaly"}
    small, big = rows["a_native.png"]["peak_xy"], rows["b_rgb_200.png"]["peak_xy"]
    assert all(abs((s + 0.5) * 200 / 28 - b) <= 55 for s, b in zip(small, big)), (small, big)

    for args, message in (
        (["--label", "fracture"], "unknown label 'fracture'"),
        (["--method", "rollout"], "not a chest_tf ViT"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ):
        done = run_cli(explain_command.main, [str(model_path), str(paths[0]), "--dataset", "phantom", "--out",
                                              str(tmp_path / "x"), *args])
        assert done == 2


def test_cli_module_entry_point_and_one_line_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "chest_tf.explain", str(tmp_path / "missing.keras"), "x.png"],
                          cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_binary_model_explains_either_class():
    metadata = {"output_names": ["pneumonia"], "class_names": ["normal", "pneumonia"], "activation": "sigmoid"}
    probs = explain.output_probabilities(np.array([2.0]), metadata)
    (target,) = explain.choose_targets(probs, metadata, ["Normal"])
    assert target.index == 0 and target.sign == -1.0 and target.prob == pytest.approx(1 - probs[0])
    (target,) = explain.choose_targets(probs, metadata)
    assert target.name == "pneumonia" and target.sign == 1.0
    (target,) = explain.choose_targets(1 - probs, metadata)  # below 0.5: the called class is normal
    assert target.name == "normal" and target.sign == -1.0
    assert [t.name for t in explain.choose_targets(probs, metadata, top_k=5)] == ["pneumonia", "normal"]
    meta3 = {"output_names": ["a", "b", "c"], "activation": "softmax"}
    probs3 = explain.output_probabilities(np.array([0.0, 2.0, 1.0]), meta3)
    assert probs3.sum() == pytest.approx(1.0)
    assert [t.name for t in explain.choose_targets(probs3, meta3, top_k=2)] == ["b", "c"]


def test_pointing_game_from_a_phantom_run_folder(tmp_path):
    from chest_tf.data import phantom

    npz = phantom.write_phantom(tmp_path / "data" / "phantom.npz", size=SIZE, counts={"train": 8, "test": 6}, seed=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")  # only its presence is checked here
    (run / "config.json").write_text(json.dumps({"config": {"data": {"dataset": "phantom", "size": SIZE,
                                                                      "data_dir": str(tmp_path / "data")}}}))
    assert explain.run_phantom_npz(run) == npz
    images, labels, boxes = explain.load_phantom_split(npz, "test")
    assert images.shape == (6, SIZE, SIZE) and labels.shape == (6, 14) and boxes.shape == (6, 14, 4)
    (run / "config.json").write_text(json.dumps({"config": {"data": {"dataset": "pneumoniamnist"}}}))
    with pytest.raises(ConfigError, match="phantom"):
        explain.run_phantom_npz(run)


def test_tensorboard_panel(tmp_path):
    keras.utils.set_random_seed(5)
    model = build_model("resnet18", (SIZE, SIZE, 1), 3, width=4)
    images = np.random.default_rng(3).uniform(-1, 1, (3, SIZE, SIZE, 1)).astype("float32")
    panel = explain.ExplanationPanel(model, images, tmp_path / "tb", every=2, label_names=["a", "b", "c"])
    panel.on_epoch_end(0)
    assert not (tmp_path / "tb").exists()  # every=2: nothing after the first epoch
    panel.on_epoch_end(1)
    panel.on_train_end()
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    grid = panel.render()
    assert grid.shape == (2 * SIZE * 4, 3 * SIZE * 4, 3) and 0.0 <= grid.min() and grid.max() <= 1.0


def test_tensorboard_panel_during_fit(trained_resnet):
    """The callback ran inside model.fit of the shared model (every=5: once, after the last epoch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_resnet.panel_log_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert sorted(events.Tags()["tensors"]) == ["explanations/gradcam", "explanations/gradcam_targets"]
    (image,) = events.Tensors("explanations/gradcam")
    assert image.step == 4


# ----------------------------------------------------------------------------------------------
# Every method behind one API (issue 14)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [28, 64])
def test_every_method_returns_maps_of_the_input_size(size, tiny_vit):
    """Every method on a tiny CNN and a tiny ViT at 28 px; at 64 px, one of each kind (the coarsest
    native maps: a 2x2 last stage, 4x4 patches)."""
    keras.utils.set_random_seed(6)
    cnn = build_model("resnet18", (size, size, 1), 3, width=4)
    vit = tiny_vit if size == SIZE else build_model("vit_tiny", (size, size, 1), 3, dim=16, depth=2, heads=2,
                                                      patch_size=16)
    images = np.random.default_rng(4).uniform(-1, 1, (3, size, size, 1)).astype("float32")
    for model in (cnn, vit):
        methods = explain.family_methods(model)
        assert set(methods) | set(explain.VIT_METHODS if model is cnn else explain.CNN_METHODS) == set(explain.METHODS)
        if size != SIZE:
            methods = [m for m in methods if m in ("gradcam", "layercam", "grad-rollout", "occlusion", "smoothgrad")]
        for method in methods:
            maps = explain.explain(model, images, [0, 1, 2], method, steps=4, samples=3)
            assert maps.shape == (3, size, size) and maps.dtype == np.float32, method
            assert 0.0 <= maps.min() and maps.max() <= 1.0, method
            # each map is normalised to a peak of 1, or all 0 where there is no positive evidence
            assert set(np.round(maps.max(axis=(1, 2)), 5)) <= {0.0, 1.0}, method


def test_explain_takes_uint8_images_and_method_options():
    model = _square_detector()
    images, _ = _square_images(2, np.random.default_rng(5))
    uint8 = np.clip(np.rint((images[..., 0] + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(explain.explain(model, uint8, 0, "gradcam"), explain.explain(model, images, 0, "gradcam"),
                               atol=1e-5)
    explainer = explain.Explainer(model, "occlusion", window=6, stride=3)
    assert (explainer.window, explainer.stride) == (6, 3) and explain.native_grid(explainer) == (8, 8)
    with pytest.raises(ConfigError, match="layer= applies"):
        explain.Explainer(model, "occlusion", layer="detector_pool")
    with pytest.raises(ConfigError, match="window"):
        explain.Explainer(model, "occlusion", window=0)


@pytest.mark.parametrize("method", ["hirescam", "layercam", "occlusion", "integrated-gradients", "smoothgrad"])
def test_new_methods_follow_the_evidence(method):
    """On the bright-square detector every method's map peaks on the square."""
    images, boxes = _square_images(6, np.random.default_rng(0))
    model = _square_detector()
    maps = explain.explain(model, images, 0, method, steps=8, samples=8)
    scores = explain.score_heatmaps(maps, explain.box_masks(boxes, SIZE, SIZE, tolerance=1.0))
    assert scores["hit"].all(), method
    assert (scores["energy"] > 0.2).all(), (method, scores["energy"])


def test_layercam_fuses_the_last_stages_and_smoothgrad_repeats():
    keras.utils.set_random_seed(7)
    model = build_model("resnet18", (SIZE, SIZE, 1), 2, width=4)
    assert explain.stage_layers(model) == ["conv3_block2_out", "conv4_block2_out", "conv5_block2_out"]
    assert explain.stage_layers(model, 1) == ["conv5_block2_out"]
    explainer = explain.Explainer(model, "layercam")
    assert explain.native_grid(explainer) == (14, 14) and explainer.layers[-1] == "conv5_block2_out"
    images = np.random.default_rng(8).uniform(-1, 1, (2, SIZE, SIZE, 1)).astype("float32")
    smooth = explain.Explainer(model, "smoothgrad", samples=4, seed=3)
    np.testing.assert_array_equal(smooth.heatmaps(images, 0), smooth.heatmaps(images, 0))
    assert not np.array_equal(smooth.heatmaps(images, 0), explain.Explainer(model, "smoothgrad", samples=4,
                                                                            seed=4).heatmaps(images, 0))


def test_mask_scores_iou_bootstrap_and_ssim():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    grown = explain.dilate(masks[:1], 1.5)
    assert grown.sum() == 16 and grown[0, 1:5, 1:5].all()            # 8-neighbours within 1.5 px
    assert explain.dilate(masks[:1], 1.0).sum() == 4 + 8               # edge neighbours only
    heat = np.zeros((2, 8, 8), np.float32)
    heat[0, 2, 2] = 1.0                                                 # inside
    heat[1, 5, 5] = 1.0                                                 # two pixels off the corner diagonal
    heat[1, 3, 3] = 0.5
    scores = explain.score_masks(heat, masks, tolerance=1.5)
    assert scores["hit"].tolist() == [True, False] and scores["strict_hit"].tolist() == [True, False]
    np.testing.assert_allclose(scores["energy"], [1.0, 0.5 / 1.5])
    np.testing.assert_allclose(scores["mask_area"], [4 / 64, 4 / 64])
    np.testing.assert_allclose(scores["area"], [16 / 64, 16 / 64])
    assert explain.score_masks(heat, masks, tolerance=2.9)["hit"].tolist() == [True, True]
    np.testing.assert_allclose(explain.mask_iou(heat, masks, 0.4), [1 / 4, 1 / 5])
    threshold, best = explain.best_threshold(heat, masks, (0.4, 0.9))
    assert threshold == 0.4 and best == pytest.approx((1 / 4 + 1 / 5) / 2)
    mean, lo, hi = explain.bootstrap_mean(np.r_[np.zeros(50), np.ones(50)], 500, 0)
    assert mean == 0.5 and 0.38 < lo < 0.5 < hi < 0.62
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16))
    np.testing.assert_allclose(explain.ssim(a, a), 1.0)
    assert (explain.ssim(a, rng.random((3, 16, 16))) < 0.3).all()
    prior = explain.mask_prior(np.stack([masks[0], ~masks[0]]), np.array([1, 1]), 3)
    assert prior.shape == (3, 8, 8) and not prior[0].any() and np.allclose(prior[1], 0.5)


def test_deletion_and_insertion_curves():
    """A model whose probability is the mean of the first 4 pixels: deleting those first drops it
    at once; a random order drops it slowly; insertion is the mirror image."""
    n, size = 3, 8
    images = np.ones((n, size, size, 1), np.float32)
    reference = np.zeros_like(images)

    def predict(x):
        return x.reshape(len(x), -1)[:, :4].mean(axis=1, keepdims=True)

    heat = np.zeros((n, size, size))
    heat[:, 0, :4] = 1.0
    good = explain.deletion_insertion(predict, images, [0] * n, explain.pixel_orders(heat), reference, steps=16)
    rand = explain.deletion_insertion(predict, images, [0] * n, explain.pixel_orders(heat, 1, random=True),
                                      reference, steps=16)
    assert good["deletion"].shape == (n, 17)
    np.testing.assert_allclose(good["deletion"][:, 0], 1.0)
    np.testing.assert_allclose(good["deletion"][:, 1:], 0.0)           # 4 px = the first step of 64 / 16
    np.testing.assert_allclose(good["deletion_auc"], 0.5 / 16)
    np.testing.assert_allclose(good["insertion_auc"], 1 - 0.5 / 16)
    assert (rand["deletion_auc"] > 0.3).all() and (rand["insertion_auc"] < 0.7).all()
