"""The self-attention core train plugs in on a CPU (chest_tf/training/attention_core.py): the same
outputs and gradients as Keras' attention, eager and under XLA, and Keras' path wherever it
declines."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from chest_tf.models.layers import SelfAttention, registered_kernels
from chest_tf.models.registry import build_model
from chest_tf.training import attention_core, kernels


@pytest.fixture
def installed():
    attention_core.install()
    yield
    attention_core.uninstall()


def _outputs_and_gradients(layer, query, value, jit: bool):
    """The layer's output and the gradients of a fixed random projection of it with respect to
    the query, the value and every weight."""
    projection = tf.random.stateless_normal(query.shape, seed=[1, 2])

    def step(query, value):
        with tf.GradientTape() as tape:
            tape.watch([query, value])
            loss = tf.reduce_sum(layer(query, value) * projection)
        return [layer(query, value), *tape.gradient(loss, [query, value, *layer.trainable_weights])]

    return [x.numpy() for x in tf.function(step, jit_compile=jit)(query, value)]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("queries", [65, 1])  # every token; the class token alone (a ViT's last block)
def test_the_core_matches_keras_attention_and_its_gradients(installed, jit, queries):
    layer = SelfAttention(num_heads=3, key_dim=16)
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=(4, queries, 48)), tf.float32)
    value = tf.constant(rng.normal(size=(4, 65, 48)), tf.float32)
    layer(query, value)
    plugged = _outputs_and_gradients(layer, query, value, jit)
    attention_core.uninstall()
    reference = _outputs_and_gradients(layer, query, value, jit)
    scale = max(np.abs(r).max() for r in reference)  # the key bias's gradient is 0 up to rounding
    for ours, keras_path in zip(plugged, reference):
        np.testing.assert_allclose(ours, keras_path, rtol=1e-4, atol=1e-6 * scale)


def test_the_core_runs_only_where_it_applies(installed, monkeypatch):
    calls = []
    original = attention_core.attention_core
    monkeypatch.setattr(attention_core, "attention_core", lambda *a: calls.append(1) or original(*a))
    x = tf.random.stateless_normal((2, 5, 8), seed=[0, 1])
    SelfAttention(num_heads=2, key_dim=4)(x, x)
    assert len(calls) == 1
    SelfAttention(num_heads=2, key_dim=4)(x, x, return_attention_scores=True)  # explain's scores
    SelfAttention(num_heads=2, key_dim=4, dropout=0.1)(x, x, training=True)  # attention dropout
    lsa = build_model("vit_tiny", (28, 28, 1), 3, dim=16, depth=1, heads=2, patch_size=7, lsa=True)
    lsa(np.zeros((1, 28, 28, 1), np.float32))  # locality self-attention: masked
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        SelfAttention(num_heads=2, key_dim=4)(x, x)  # bfloat16 compute
    finally:
        keras.config.set_dtype_policy("float32")
    assert len(calls) == 1


def test_train_plugs_it_in_on_a_cpu_and_a_vit_trains_through_it():
    kernels.install()
    try:
        assert "self_attention_core" in registered_kernels("tensorflow")
        keras.utils.set_random_seed(0)
        model = build_model("vit_tiny", (28, 28, 1), 3, dim=16, depth=2, heads=2, patch_size=7)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      jit_compile=True)
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (16, 28, 28, 1)).astype("float32")
        y = (rng.uniform(size=(16, 3)) < 0.5).astype("float32")
        losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
        assert losses[-1] < losses[0]
    finally:
        kernels.uninstall()
    assert "self_attention_core" not in registered_kernels("tensorflow")
