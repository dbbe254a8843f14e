"""The small-map convolution kernels (dense, one-tile Winograd) equal Keras' convolution."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chest_tf.models.layers import Conv2D
from chest_tf.models.registry import build_model
from chest_tf.training import kernels, small_map_conv


@pytest.fixture
def plugged():
    small_map_conv.install()
    yield
    small_map_conv.uninstall()


def _conv_and_gradients(layer, x, weights):
    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), "float32")
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]

    return [t.numpy() for t in step(x)]


def _compare(height, width, channels, filters, kernel_size, expect, use_bias=False, dtype="float32", rtol=1e-4):
    rng = np.random.default_rng(height * 100 + width * 10 + kernel_size)
    x = tf.constant(rng.normal(size=(3, height, width, channels)).astype("float32"))
    weights = tf.constant(rng.normal(size=(3, height, width, filters)).astype("float32"))
    layer = Conv2D(filters, kernel_size, padding="same", use_bias=use_bias, activation="relu", dtype=dtype)
    layer.build(x.shape)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    assert (small_map_conv.choose_method(layer, x) or "keras") == expect
    small_map_conv.uninstall()
    reference = _conv_and_gradients(layer, x, weights)
    small_map_conv.install()
    got = _conv_and_gradients(layer, x, weights)
    for name, a, b in zip(["outputs", "d/dx", "d/dkernel", "d/dbias"], reference, got):
        assert b.shape == a.shape, name
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max(), err_msg=name)


@pytest.mark.parametrize("height,width,kernel_size", [(1, 1, 3), (1, 2, 3), (2, 1, 3), (2, 2, 3), (2, 2, 2),
                                                       (2, 2, 5), (1, 1, 1)])
def test_dense_form_equals_the_convolution(plugged, height, width, kernel_size):
    # 2x2 kernels pad asymmetrically under 'same' (nothing before, one after): the tap selection must agree.
    _compare(height, width, 6, 5, kernel_size, "dense", use_bias=True)


@pytest.mark.parametrize("height,width", [(4, 4), (3, 3), (3, 4), (4, 2)])
def test_one_tile_winograd_equals_the_convolution(plugged, height, width):
    _compare(height, width, 256, 256, 3, "winograd")


@pytest.mark.parametrize("height,width,channels,filters,kernel_size", [
    (2, 2, 8, 8, 1),       # a 1x1 kernel on 4 pixels: the dense form would do 4x the work
    (5, 5, 256, 256, 3),   # beyond one Winograd tile
    (4, 4, 128, 32, 3),    # too few channels for Winograd to pay
    (4, 4, 256, 256, 5),   # F(4x4, 3x3) is for 3x3 kernels only
])
def test_other_shapes_are_left_to_keras(plugged, height, width, channels, filters, kernel_size):
    _compare(height, width, channels, filters, kernel_size, "keras")


def test_strided_and_valid_convolutions_are_declined():
    x = tf.zeros((1, 4, 4, 256))
    for layer in (Conv2D(256, 3, strides=2, padding="same"), Conv2D(256, 3, padding="valid"),
                  Conv2D(256, 3, padding="same", dilation_rate=2)):
        layer.build(x.shape)
        assert small_map_conv.choose_method(layer, x) is None


def test_winograd_only_in_float32_dense_in_bfloat16(plugged):
    x = tf.zeros((1, 4, 4, 256))
    layer = Conv2D(256, 3, padding="same", dtype="mixed_bfloat16")
    layer.build(x.shape)
    assert small_map_conv.choose_method(layer, x) is None
    # The dense form is exact arithmetic on the kernel's values: it runs in the compute dtype.
    _compare(2, 2, 8, 8, 3, "dense", dtype="mixed_bfloat16", rtol=2e-2)


def test_winograd_matrices_reproduce_a_1d_convolution():
    """F(4, 3) in one dimension: A^T [(G g) * (B^T d)] equals the 'valid' correlation of d with g."""
    d, g = np.random.default_rng(0).normal(size=6), np.random.default_rng(1).normal(size=3)
    b_t, g_m, a_t = (small_map_conv._WINOGRAD_INPUT, small_map_conv._WINOGRAD_KERNEL,
                     small_map_conv._WINOGRAD_OUTPUT)
    np.testing.assert_allclose(a_t @ ((g_m @ g) * (b_t @ d)), np.correlate(d, g, "valid"), rtol=1e-12)


def test_a_resnet_with_tiny_last_stages_trains_and_reloads_the_same(plugged, tmp_path):
    """ResNet-18 at 64 px has a 2x2 stage 4 (dense) and a 4x4 stage 3 (Winograd at width 64 x 4 = 256)."""
    kernels.install()
    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (64, 64, 1), 3, width=64)
    methods = {}
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            methods[layer.name] = small_map_conv.choose_method(layer, tf.zeros((1, *layer.input.shape[1:])))
    assert methods["conv5_block2_2_conv"] == "dense" and methods["conv4_block2_2_conv"] == "winograd"
    assert methods["conv2_block1_1_conv"] is None
    x = np.random.default_rng(1).normal(size=(4, 64, 64, 1)).astype("float32")
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit(x, np.ones((4, 3), "float32"), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    plugged_logits = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    kernels.uninstall()
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.get_layer("conv5_block2_2_conv"), Conv2D)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), plugged_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy,jit", [("float32", True), ("mixed_bfloat16", False)])
def test_resnet_at_64px_trains_under_xla_and_in_bfloat16(plugged, policy, jit):
    """`--jit on` compiles both rewrites with XLA; under bfloat16 the dense form runs and Winograd
    steps aside (float32 only), and the logits stay those of Keras' convolution."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model("resnet18", (64, 64, 1), 3, width=64)
        x = np.random.default_rng(2).normal(size=(4, 64, 64, 1)).astype("float32")
        plugged_logits = model(x, training=False)
        small_map_conv.uninstall()
        keras_logits = model(x, training=False)
        small_map_conv.install()
        tolerance = 1e-4 if policy == "float32" else 5e-2
        np.testing.assert_allclose(plugged_logits, keras_logits, rtol=tolerance, atol=tolerance)
        model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit)
        history = model.fit(x, np.ones((4, 3), "float32"), epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert model.jit_compile == jit
    finally:
        keras.mixed_precision.set_global_policy("float32")
