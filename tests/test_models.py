"""Model zoo tests: tiny inputs and batches on CPU; no network (ImageNet sources are stand-ins)."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from chest_tf.models import registry
from chest_tf.models.flops import MatrixProduct, estimate_flops, matrix_products
from chest_tf.models.layers import DropPath, ImageNetInput, PatchSplit, ShiftedImages
from chest_tf.models.registry import ARCHS, arch_family, arch_overrides, build_model, last_conv_layer_name
from chest_tf.models.resnet import build_resnet
from chest_tf.models.vit import vit_attention_layer_names, vit_attention_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = (28, 28, 1)
NUM_CLASSES = 14
# Two blocks are enough to test every ViT code path, at a fraction of the cost of twelve.
TINY_VIT = {"depth": 2}
ALL_VIT_OPTIONS = {"depth": 2, "spt": True, "lsa": True, "drop_path_rate": 0.1, "dropout": 0.1,
                   "attention_dropout": 0.1}


def images(batch, shape=SMALL, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype("float32")


def labels(batch, seed=1):
    return (np.random.default_rng(seed).uniform(size=(batch, NUM_CLASSES)) < 0.3).astype("float32")


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Same random init in every test; the global dtype policy restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy(previous)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Safety net: anything reaching keras' downloader fails instead of using the network."""
    from keras.src.utils import file_utils

    def refuse(*args, **kwargs):
        raise Exception("tests never download (keras.utils.get_file was called)")

    monkeypatch.setattr(file_utils, "get_file", refuse)


_SMALL_MODELS = {}


def small_model(name):
    """Each arch at 28 px built once for the read-only tests."""
    if name not in _SMALL_MODELS:
        _SMALL_MODELS[name] = build_model(name, SMALL, NUM_CLASSES)
    return _SMALL_MODELS[name]


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------
def test_registry_lists_the_three_families():
    assert sorted(ARCHS) == [
        "densenet121", "densenet169", "densenet201", "resnet101", "resnet152", "resnet18",
        "resnet34", "resnet50", "vit_base", "vit_small", "vit_tiny",
    ]
    assert {arch_family(n) for n in ARCHS} == {"resnet", "densenet", "vit"}
    assert arch_family("densenet169") == "densenet"
    assert "patch_size" in arch_overrides("vit_small") and "stem" in arch_overrides("resnet34")


def test_unknown_arch_error_lists_known_names():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'") as err:
        build_model("resnet9", SMALL, NUM_CLASSES)
    assert ", ".join(sorted(ARCHS)) in str(err.value)


def test_resnet_width_override_narrows_every_stage():
    model = build_model("resnet18", SMALL, NUM_CLASSES, width=16)
    assert model.get_layer("conv1_conv").filters == 16
    assert model.get_layer(last_conv_layer_name(model)).output.shape[-1] == 128
    assert tuple(model(images(2)).shape) == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="standard width=64"):
        build_model("resnet50", (64, 64, 1), NUM_CLASSES, weights="imagenet", width=32)


def test_unknown_override_is_rejected_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"resnet18 does not take \['patch_size'\]; it accepts: head_dropout"):
        build_model("resnet18", SMALL, NUM_CLASSES, patch_size=4)


@pytest.mark.parametrize("call, message", [
    (lambda: build_model("vit_tiny", (30, 30, 1), 14), "multiples of patch_size"),
    (lambda: build_model("vit_tiny", (28, 28, 1), 14, patch_size=32), "does not split"),
    (lambda: build_model("vit_tiny", SMALL, 14, heads=5), "multiple of heads"),
    (lambda: build_model("vit_tiny", SMALL, 14, pool="max"), "pool must be one of"),
    (lambda: build_model("vit_tiny", SMALL, 14, drop_path_rate=1.5), "drop_path_rate"),
    (lambda: build_model("resnet18", (4, 4, 1), 14), "too small for the 'small' stem"),
    (lambda: build_model("resnet18", SMALL, 14, stem="imagenet"), "too small for the 'imagenet' stem"),
    (lambda: build_model("densenet121", SMALL, 14, stem="tiny"), "stem must be one of"),
    (lambda: build_model("resnet18", (28, 28), 14), "input_shape must be"),
    (lambda: build_model("resnet18", SMALL, 0), "num_classes"),
    (lambda: build_resnet(20, SMALL, 14), r"known depths: \[18, 34, 50, 101, 152\]"),
    (lambda: build_model("resnet50", SMALL, 14, stride_on="conv5x5"), "stride_on"),
    (lambda: build_model("resnet50", SMALL, 14, weights="ssl"), "weights must be None or 'imagenet'"),
])
def test_arguments_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_no_tensorflow_imports_in_models():
    for path in sorted((REPO_ROOT / "chest_tf" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] == "tensorflow" for m in modules), f"{path.name} imports {modules}"


# ----------------------------------------------------------------------------------------------
# Building and forward passes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_arch_builds_at_28px_and_returns_logits(name):
    model = small_model(name)
    logits = keras.ops.convert_to_numpy(model(images(2), training=False))
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert model.get_layer("predictions").activation is keras.activations.linear
    if arch_family(name) != "vit":  # the MedMNIST stem: no downsampling before stage 2
        assert model.get_layer("conv1_conv").kernel.shape[:2] == (3, 3)
        assert "pool1_pool" not in [l.name for l in model.layers]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "vit_tiny"])
def test_main_archs_build_at_224px(name):
    model = build_model(name, (224, 224, 1), NUM_CLASSES)
    logits = keras.ops.convert_to_numpy(model(images(1, (224, 224, 1)), training=False))
    assert logits.shape == (1, NUM_CLASSES) and logits.dtype == np.float32
    if arch_family(name) == "vit":  # 16 px patches: 14 x 14 tokens + class token
        assert model.get_layer("pos_embed").embedding.shape == (1, 197, 192)
    else:  # the ImageNet stem: 7x7/2 conv + max-pool
        assert model.get_layer("conv1_conv").kernel.shape[:2] == (7, 7)
        assert model.get_layer(last_conv_layer_name(model)).output.shape[1:3] == (7, 7)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("name, overrides", [
    ("resnet18", {}), ("densenet121", {}), ("vit_tiny", ALL_VIT_OPTIONS),
])
def test_forward_dtype_under_precision_policies(policy, name, overrides):
    keras.config.set_dtype_policy(policy)
    model = build_model(name, SMALL, NUM_CLASSES, **overrides)
    logits = model(images(2), training=False)
    assert tuple(logits.shape) == (2, NUM_CLASSES)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    compute = keras.config.dtype_policy().compute_dtype
    if arch_family(name) == "vit":
        body = model.get_layer("spt_projection" if overrides.get("spt") else "patch_embed_conv")
    else:
        body = model.get_layer("conv1_conv")
    assert body.compute_dtype == compute
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(logits)).all()


# CNNs run eagerly: tracing a 600-layer DenseNet train step costs a minute on 2 CPU cores. The
# ViT (every custom layer) goes through XLA, as in training, to prove it compiles.
@pytest.mark.parametrize("name, overrides, mode", [
    ("resnet18", {}, "eager"),
    ("densenet121", {}, "eager"),
    ("vit_tiny", {"depth": 1, "spt": True, "lsa": True, "drop_path_rate": 0.1}, "xla"),
])
def test_training_steps_lower_the_loss_on_a_fixed_batch(name, overrides, mode):
    model = build_model(name, SMALL, NUM_CLASSES, **overrides)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  # (JAX runs eagerly op by op, far slower than its compiled step: compile there)
                  run_eagerly=mode == "eager" and keras.backend.backend() == "tensorflow",
                  jit_compile=mode == "xla" or keras.backend.backend() == "jax")
    x, y = images(8), labels(8)
    steps = 2 if mode == "eager" else 4
    # train_on_batch returns the loss of the forward pass before its update
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    assert losses[-1] < losses[0], losses


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides", [
    ("resnet18", {"head_dropout": 0.2}),
    ("vit_tiny", ALL_VIT_OPTIONS),
    ("vit_tiny", {**TINY_VIT, "pool": "gap", "patch_size": 7}),
])
def test_keras_file_reloads_in_safe_mode_with_identical_outputs(tmp_path, name, overrides):
    model = build_model(name, SMALL, NUM_CLASSES, **overrides)
    model(images(4), training=True)  # moves the BatchNorm statistics off their initial values
    for layer in model.layers:
        if hasattr(layer, "temperature"):
            layer.temperature.assign(3.0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    x = images(3, seed=5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-6, atol=1e-6)
    if arch_family(name) == "vit":
        before, after = vit_attention_model(model)(x), vit_attention_model(reloaded)(x)
        for a, b in zip(before, after):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Interpretability hooks
# ----------------------------------------------------------------------------------------------
def test_last_conv_layer_names_for_grad_cam():
    assert last_conv_layer_name(small_model("resnet18")) == "conv5_block2_out"
    assert last_conv_layer_name(small_model("resnet50")) == "conv5_block3_out"
    assert last_conv_layer_name(small_model("densenet121")) == "relu"
    assert small_model("resnet50").get_layer("conv5_block3_out").output.shape[1:] == (4, 4, 2048)
    with pytest.raises(ValueError, match="vit_attention_model"):
        last_conv_layer_name(small_model("vit_tiny"))


@pytest.mark.parametrize("pool, lsa, tokens", [("cls", False, 50), ("cls", True, 50), ("gap", True, 49)])
def test_vit_attention_maps_are_retrievable(pool, lsa, tokens):
    model = build_model("vit_tiny", SMALL, NUM_CLASSES, depth=3, pool=pool, lsa=lsa)
    assert vit_attention_layer_names(model) == [f"encoder_block{i}_attn" for i in (1, 2, 3)]
    maps = vit_attention_model(model)(images(2))
    assert len(maps) == 3
    for block, scores in enumerate(maps, 1):
        scores = keras.ops.convert_to_numpy(scores)
        # With a class token, the last block queries with it alone: its row of the scores.
        queries = 1 if pool == "cls" and block == 3 else tokens
        assert scores.shape == (2, 3, queries, tokens)
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
        diagonal = np.diagonal(scores, axis1=-2, axis2=-1)
        assert (np.abs(diagonal) < 1e-6).all() == lsa  # locality self-attention masks the diagonal
    with pytest.raises(ValueError, match="not a ViT"):
        vit_attention_model(small_model("resnet18"))


@pytest.mark.parametrize("overrides", [{"depth": 3}, {"depth": 2, "lsa": True, "spt": True, "dropout": 0.1}])
def test_vit_last_block_computes_the_class_token_only_with_the_same_result(overrides):
    """The head reads only the class token, so the last block computes only its row; a model
    built with full_last_block=True (every token's output) gives the same logits and gradients
    from the same weights, for fewer FLOPs."""
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = build_model("vit_tiny", SMALL, NUM_CLASSES, **overrides)
    full = build_model("vit_tiny", SMALL, NUM_CLASSES, full_last_block=True, **overrides)
    assert [w.path for w in model.weights] == [w.path for w in full.weights]
    full.set_weights(model.get_weights())
    last = overrides["depth"]
    assert tuple(model.get_layer(f"encoder_block{last}_add2").output.shape) == (None, 1, 192)
    assert tuple(full.get_layer(f"encoder_block{last}_add2").output.shape) == (None, 50, 192)
    x = images(4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(full(x)),
                               rtol=1e-5, atol=1e-5)

    def gradients(m):
        with tf.GradientTape() as tape:
            logits = m(x, training=False)
            loss = keras.ops.sum(logits * keras.ops.linspace(-1.0, 1.0, NUM_CLASSES))
        return [keras.ops.convert_to_numpy(g) for g in tape.gradient(loss, m.trainable_weights)]

    ours, reference = gradients(model), gradients(full)
    scale = max(np.abs(g).max() for g in reference)  # some are 0 up to rounding (the key bias's)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
    # The last block's query and output projections, MLP and score products for 1 row, not 50.
    saved = 49 * (2 * 192 * 192 + 2 * 192 * 768 + 2 * 3 * 50 * 64) * 2
    assert estimate_flops(full) - estimate_flops(model) == saved
    # pool="gap" reads every token: the flag changes nothing there.
    gap = build_model("vit_tiny", SMALL, NUM_CLASSES, depth=2, pool="gap")
    assert tuple(gap.get_layer("encoder_block2_add2").output.shape) == (None, 49, 192)


def test_vit_computes_attention_fused_and_explain_retraces_it_with_scores(monkeypatch):
    """Training and serving call keras.ops.dot_product_attention (the backend's fused kernel) and
    keep no attention probabilities; vit_with_attention re-traces the same weights on the unfused
    path and gives the same logits."""
    from keras.src import ops as keras_src_ops  # what MultiHeadAttention calls

    from chest_tf.models.vit import vit_with_attention

    model = build_model("vit_tiny", SMALL, NUM_CLASSES, depth=2, lsa=True)
    fused_calls = []
    original = keras_src_ops.dot_product_attention
    monkeypatch.setattr(keras_src_ops, "dot_product_attention",
                        lambda *a, **k: fused_calls.append(1) or original(*a, **k))
    x = images(2)
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert len(fused_calls) == 2  # one per block
    *scores, traced_logits = vit_with_attention(model)(x, training=False)
    assert len(fused_calls) == 2  # the explain view does not take the fused path
    assert [tuple(s.shape) for s in scores] == [(2, 3, 50, 50), (2, 3, 1, 50)]  # last: class token's row
    np.testing.assert_allclose(keras.ops.convert_to_numpy(traced_logits), logits, atol=1e-5)
    assert not any(isinstance(node_output, (list, tuple)) for node_output in
                   (model.get_layer(f"encoder_block{i}_attn").output for i in (1, 2)))


def test_vit_saved_with_attention_scores_in_its_graph_still_explains():
    """Models saved before the attention was fused call it with return_attention_scores=True."""
    from chest_tf.models.vit import vit_with_attention

    inputs = keras.Input((4, 4, 1))
    tokens = keras.layers.Reshape((16, 8))(keras.layers.Conv2D(8, 1)(inputs))
    y, _ = keras.layers.MultiHeadAttention(2, key_dim=4, name="encoder_block1_attn")(
        tokens, tokens, return_attention_scores=True)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(y)))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 1)).astype("float32")
    scores, logits = vit_with_attention(model)(x)
    assert tuple(scores.shape) == (2, 2, 16, 16)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Parameter and FLOP counts against the reference implementations
# ----------------------------------------------------------------------------------------------
def test_flop_count_of_a_known_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 64 positions x 27 x 4 MACs
    x = keras.layers.Reshape((64, 4))(x)
    x = keras.layers.MultiHeadAttention(2, key_dim=5)(x, x, return_attention_scores=True)[0]
    model = keras.Model(inputs, keras.layers.Dense(7)(x))  # 64 x 4 x 7 MACs
    attention = 64 * (3 * 4 * 10) + 64 * 10 * 4 + 2 * 64 * 64 * (5 + 5)
    assert estimate_flops(model) == 2 * (64 * 27 * 4 + attention + 64 * 4 * 7)
    attention_layer = model.layers[3].name
    assert [(p.role, p.rows, p.inner, p.cols, p.count) for p in matrix_products(model)] == [
        ("query", 64, 4, 10, 1), ("key", 64, 4, 10, 1), ("value", 64, 4, 10, 1),
        ("scores", 64, 5, 64, 2), ("weighted values", 64, 64, 5, 2), ("output", 64, 10, 4, 1),
        ("dense", 64, 4, 7, 1)]
    assert matrix_products(model)[0].layer == attention_layer
    assert MatrixProduct("x", "scores", 3, 4, 5, count=2).macs == 120


@pytest.mark.slow
def test_parameter_and_flop_counts_at_224px_match_references():
    """224 px, 3 channels, 1000 classes, ImageNet stem. Totals include BatchNorm statistics
    (keras' count); trainable counts equal the torchvision/timm parameter counts exactly."""
    expected = {  # name: (reference total, exact trainable, reference GMACs)
        "resnet50": (25_557_032, 25_557_032, 4.11),  # torchvision; v1.5 stride placement
        "densenet121": (8_062_504, 7_978_856, 2.87),  # keras total; torchvision trainable
        "vit_base": (86_567_656, 86_567_656, 17.58),  # timm vit_base_patch16_224
    }
    for name, (total, trainable, gmacs) in expected.items():
        # timm's count has the last block compute every token (ours: the class token only).
        model = build_model(name, (224, 224, 3), 1000, **({"full_last_block": True} if "vit" in name else {}))
        assert abs(model.count_params() - total) / total < 0.01, (name, model.count_params())
        n_trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert n_trainable == trainable, (name, n_trainable)
        assert abs(estimate_flops(model) / 2e9 - gmacs) / gmacs < 0.02, (name, estimate_flops(model))
        del model
        keras.backend.clear_session()


# ----------------------------------------------------------------------------------------------
# ImageNet initialisation (offline: keras.applications models without weights stand in)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, shape, overrides, message", [
    ("resnet18", (64, 64, 1), {}, "available for resnet50"),
    ("vit_base", (224, 224, 3), {}, "keras.applications has no vit_base"),
    ("resnet50", SMALL, {}, "at least 32 px"),
    ("densenet121", (64, 64, 2), {}, "1 or 3 input channels"),
    ("resnet50", (64, 64, 1), {"stem": "small"}, "needs the 7x7 ImageNet stem"),
    ("densenet121", (64, 64, 1), {"growth_rate": 12}, "standard growth_rate=32"),
])
def test_imagenet_weights_refused_where_unsupported(name, shape, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, shape, NUM_CLASSES, weights="imagenet", **overrides)


def test_imagenet_weights_offline_fail_with_what_to_do(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")
    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(RuntimeError, match=r"could not load ImageNet weights for resnet50 .*weights=None"):
        build_model("resnet50", (64, 64, 1), NUM_CLASSES, weights="imagenet")


def _randomised_source(constructor, shape):
    """A keras.applications backbone with random conv biases and BatchNorm statistics, so the
    bias folding and every BN moving statistic are exercised."""
    source = constructor(include_top=False, weights=None, input_shape=shape)
    rng = np.random.default_rng(3)
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.set_weights([layer.get_weights()[0], rng.normal(0, 0.1, layer.filters)])
    return source


def _imagenet_reference_input(gray, mode):
    """Independent numpy version of keras.applications' preprocess_input for a [-1, 1] image."""
    rgb = np.repeat((gray + 1.0) * 127.5, 3, axis=-1)  # 0..255
    if mode == "caffe":
        return rgb[..., ::-1] - np.array([103.939, 116.779, 123.68])
    return (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


@pytest.mark.slow
@pytest.mark.parametrize("name, constructor, mode", [
    ("resnet50", "ResNet50", "caffe"),
    ("densenet121", "DenseNet121", "torch"),
])
def test_imagenet_transfer_reproduces_keras_applications(monkeypatch, tmp_path, name, constructor, mode):
    shape = (32, 32, 1)
    source = _randomised_source(getattr(keras.applications, constructor), (32, 32, 3))
    monkeypatch.setattr(registry, "load_imagenet_source", lambda *_: source)
    model = build_model(name, shape, NUM_CLASSES, weights="imagenet")
    assert isinstance(model.get_layer("imagenet_input"), ImageNetInput)
    features = keras.Model(model.input, model.get_layer(last_conv_layer_name(model)).output)
    x = images(2, shape)
    ours = keras.ops.convert_to_numpy(features(x, training=False))
    theirs = keras.ops.convert_to_numpy(source(_imagenet_reference_input(x, mode).astype("float32"),
                                               training=False))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * np.abs(theirs).max())
    if name == "resnet50":  # the ImageNetInput layer survives a safe-mode reload
        model.save(tmp_path / "m.keras")
        reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
        np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Custom layers
# ----------------------------------------------------------------------------------------------
def test_patch_split_is_row_major_and_shift_moves_content():
    image = np.arange(4 * 4, dtype="float32").reshape(1, 4, 4, 1)
    patches = keras.ops.convert_to_numpy(PatchSplit(2)(image))
    assert patches.shape == (1, 4, 4)
    np.testing.assert_array_equal(patches[0, 1], [2, 3, 6, 7])  # top-right patch
    shifted = keras.ops.convert_to_numpy(ShiftedImages(1)(image))
    assert shifted.shape == (1, 4, 4, 5)
    np.testing.assert_array_equal(shifted[..., 0], image[..., 0])
    # channel 4 shifts content down-right by one pixel, filling with zeros
    np.testing.assert_array_equal(shifted[0, 1:, 1:, 4], image[0, :-1, :-1, 0])
    assert (shifted[0, 0, :, 4] == 0).all() and (shifted[0, :, 0, 4] == 0).all()


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((256, 3, 4), "float32")
    layer = DropPath(0.25, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(256, -1)
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is kept or dropped whole
    assert 0.1 < (per_sample[:, 0] == 0).mean() < 0.4


# ----------------------------------------------------------------------------------------------
# Other backends and the bench command
# ----------------------------------------------------------------------------------------------
JAX_SCRIPT = textwrap.dedent("""
    import json, numpy as np, keras
    from chest_tf.models.flops import estimate_flops
    from chest_tf.models.registry import build_model, last_conv_layer_name
    from chest_tf.models.vit import vit_attention_model
    assert keras.backend.backend() == "jax"
    x = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)).astype("float32")
    y = (np.random.default_rng(1).uniform(size=(4, 14)) < 0.3).astype("float32")
    out = {}
    for name, kw in [("resnet18", {}), ("densenet121", {}),
                     ("vit_tiny", {"depth": 2, "spt": True, "lsa": True, "drop_path_rate": 0.1})]:
        model = build_model(name, (28, 28, 1), 14, **kw)
        # DenseNet-121 called eagerly on JAX dispatches its ~600 ops one by one (25 s on 2 cores);
        # predict_on_batch runs the same forward pass jitted.
        logits = model.predict_on_batch(x) if name == "densenet121" else model(x, training=False)
        model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        losses = [float(model.train_on_batch(x, y)) for _ in range(4)]
        out[name] = {"shape": list(logits.shape), "dtype": str(logits.dtype), "flops": estimate_flops(model),
                     "loss_fell": losses[-1] < losses[0]}
        if name == "vit_tiny":
            out[name]["attention"] = [list(s.shape) for s in vit_attention_model(model)(x)]
        else:
            out[name]["grad_cam_layer"] = last_conv_layer_name(model)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_models_build_and_train_on_the_jax_backend():
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": pythonpath}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[7:])
    for name, info in result.items():
        assert info["shape"] == [4, 14] and info["dtype"] == "float32" and info["loss_fell"], (name, info)
    assert result["vit_tiny"]["attention"] == [[4, 3, 50, 50], [4, 3, 1, 50]]  # last: the class token row
    assert result["resnet18"]["grad_cam_layer"] == "conv5_block2_out"


def test_bench_command_prints_a_table(capsys, tmp_path):
    """Params and FLOPs only: the timed path is model.compile + train_on_batch, tested above."""
    from chest_tf.cli.models import main

    assert main(["bench", "--archs", "vit_tiny", "--no-train", "--flops-sizes", "28",
                 "--json", str(tmp_path / "bench.json")]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| vit_tiny")]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[1] == "5,354,510" and 0.5 < float(cells[2]) < 0.6
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["params_28"] == 5_354_510


@pytest.mark.parametrize("use_bias", [True, False])
def test_self_attention_equals_keras_multi_head_attention(use_bias):
    """The ViT's SelfAttention (2-D projections) gives keras.layers.MultiHeadAttention's outputs,
    scores and gradients from the same weights; masks take Keras' own path."""
    from chest_tf.models.layers import SelfAttention

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 12)).astype("float32")
    ours = SelfAttention(num_heads=3, key_dim=4, use_bias=use_bias)
    theirs = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, use_bias=use_bias)
    ours(x, x), theirs(x, x)
    weights = [rng.normal(size=w.shape).astype("float32") for w in theirs.get_weights()]
    ours.set_weights(weights), theirs.set_weights(weights)
    for a, b in zip(ours(x, x, return_attention_scores=True), theirs(x, x, return_attention_scores=True)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours(x, x)), np.asarray(theirs(x, x)), rtol=1e-5, atol=1e-5)
    mask = np.tril(np.ones((3, 7, 7), bool))
    np.testing.assert_allclose(np.asarray(ours(x, x, attention_mask=mask)),
                               np.asarray(theirs(x, x, attention_mask=mask)), rtol=1e-5, atol=1e-5)

    import tensorflow as tf

    def gradients(layer):
        tx = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tx)
            loss = tf.reduce_sum(layer(tx, tx) ** 2)
        return tape.gradient(loss, [tx, *layer.trainable_weights])

    for a, b in zip(gradients(ours), gradients(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_a_vit_holds_self_attention_and_reloads_with_the_same_logits(tmp_path):
    from chest_tf.models.layers import SelfAttention

    model = build_model("vit", (28, 28, 1), 3, dim=16, depth=2, heads=2)
    assert all(isinstance(model.get_layer(f"encoder_block{i}_attn"), SelfAttention) for i in (1, 2))
    x = np.random.default_rng(1).normal(size=(2, 28, 28, 1)).astype("float32")
    path = tmp_path / "vit.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.get_layer("encoder_block1_attn"), SelfAttention)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_self_attention_over_image_axes_takes_keras_path():
    """Rank-4 inputs (attention over two axes) are not (batch, tokens, width) rows: Keras' own path."""
    from chest_tf.models.layers import SelfAttention

    x = np.random.default_rng(3).normal(size=(2, 3, 4, 8)).astype("float32")
    ours = SelfAttention(num_heads=2, key_dim=4, attention_axes=(1, 2))
    theirs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, attention_axes=(1, 2))
    ours(x, x), theirs(x, x)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(np.asarray(ours(x, x)), np.asarray(theirs(x, x)), rtol=1e-5, atol=1e-5)
