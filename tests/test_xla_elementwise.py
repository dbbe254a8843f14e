"""LayerNorm and GELU as XLA-compiled kernels inside a graph without XLA
(chest_tf/training/xla_elementwise.py): the same outputs and gradients as Keras', eager, in a
graph and under XLA, and Keras' path wherever they decline."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from chest_tf.models.layers import GELU, LayerNormalization, registered_kernels
from chest_tf.models.registry import build_model
from chest_tf.training import xla_elementwise


@pytest.fixture
def installed():
    xla_elementwise.install()
    yield
    xla_elementwise.uninstall()


def _outputs_and_gradients(function, weights, x, compiled: bool | None):
    """function(x) and the gradients of a fixed random projection of it with respect to x and
    ``weights``: eagerly (None), in a graph (False) or under XLA (True)."""
    projection = tf.random.stateless_normal(x.shape, seed=[1, 2])

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            output = function(x)
            loss = tf.reduce_sum(output * tf.sin(output) * projection)
        return [output, *tape.gradient(loss, [x, *weights])]

    step = step if compiled is None else tf.function(step, jit_compile=compiled)
    return [t.numpy() for t in step(x)]


@pytest.mark.parametrize("compiled", [None, False, True])
def test_the_kernels_match_keras_and_their_gradients(installed, compiled):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 7, 48)) * 3 + 1, tf.float32)
    norm = LayerNormalization(epsilon=1e-6)
    norm.build(x.shape)
    norm.gamma.assign(rng.uniform(0.5, 1.5, 48).astype("float32"))
    norm.beta.assign(rng.normal(size=48).astype("float32"))
    cases = [(norm, norm.trainable_weights), (GELU(), [])]
    plugged = [_outputs_and_gradients(lambda x, f=f: f(x, training=True), w, x, compiled) for f, w in cases]
    xla_elementwise.uninstall()
    reference = [_outputs_and_gradients(lambda x, f=f: f(x, training=True), w, x, compiled) for f, w in cases]
    for ours, keras_path in zip(plugged, reference):
        for a, b in zip(ours, keras_path):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_the_kernels_run_only_where_they_apply(installed, monkeypatch):
    assert {"layer_norm_kernel", "gelu_kernel"} <= set(registered_kernels("tensorflow"))
    calls = []
    for name in ("layer_norm_kernel", "gelu_kernel"):
        original = getattr(xla_elementwise, name)
        monkeypatch.setattr(xla_elementwise, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    xla_elementwise.install()  # register the wrapped kernels
    x = tf.random.stateless_normal((2, 5, 8), seed=[0, 1])
    norm, activation = LayerNormalization(), GELU()
    norm(x, training=True)
    activation(x, training=True)
    assert calls == ["layer_norm_kernel", "gelu_kernel"]
    calls.clear()
    # inference runs Keras' ops, bit for bit, whatever is installed
    for training in (False, None):
        assert np.array_equal(norm(x, training=training), keras.layers.LayerNormalization()(x))
        assert np.array_equal(activation(x, training=training), keras.ops.gelu(x, approximate=False))
    LayerNormalization(axis=1)(x, training=True)  # not the last axis: Keras'
    LayerNormalization(center=False)(x, training=True)  # no beta: Keras'
    assert calls == []
    # bfloat16 inputs: offered, declined, and Keras' result
    half = tf.cast(x, tf.bfloat16)
    assert xla_elementwise.gelu_kernel(half) is None
    np.testing.assert_allclose(tf.cast(GELU(dtype="bfloat16")(half, training=True), tf.float32).numpy(),
                               tf.cast(keras.ops.gelu(half, approximate=False), tf.float32).numpy())


def test_a_vit_trains_the_same_with_the_kernels(installed):
    """The ViT uses chest_tf's LayerNormalization and GELU: one step with and without the kernels
    from the same weights gives the same loss and weights (graph mode, XLA off)."""
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    y = (np.random.default_rng(1).uniform(size=(4, 14)) > 0.8).astype("float32")

    def one_step():
        keras.utils.set_random_seed(0)
        model = build_model("vit_tiny", input_shape=(28, 28, 1), num_classes=14, depth=2)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      jit_compile=False)
        loss = model.train_on_batch(x, y)
        return loss, [w.numpy() for w in model.trainable_weights]

    loss, weights = one_step()
    xla_elementwise.uninstall()
    loss_keras, weights_keras = one_step()
    np.testing.assert_allclose(loss, loss_keras, rtol=1e-5)
    for a, b in zip(weights, weights_keras):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
