"""The TF fused BatchNorm training kernel matches keras.layers.BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chest_tf.models.layers import BatchNorm
from chest_tf.models.registry import build_model
from chest_tf.training import fused_batchnorm


@pytest.fixture
def fused():
    fused_batchnorm.install()
    yield
    fused_batchnorm.uninstall()


def _train_step(dtype: str, seed: int = 0):
    """One training-mode forward and backward of a BatchNorm on a fixed batch."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(1.0, 2.0, (8, 5, 5, 3)).astype("float32"))
    weights = tf.constant(rng.normal(size=(8, 5, 5, 3)).astype("float32"))
    layer = BatchNorm(dtype=dtype)
    layer.build(x.shape)
    layer.gamma.assign([1.5, 0.5, 2.0])
    layer.beta.assign([0.1, -0.2, 0.3])

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), "float32")
            loss = tf.reduce_sum(y * weights * y)
        return [y, *tape.gradient(loss, [x, layer.gamma, layer.beta])]

    outputs = [t.numpy() for t in step(x)]
    return outputs, layer.moving_mean.numpy(), layer.moving_variance.numpy()


def test_fused_kernel_matches_keras_forward_gradients_and_moving_mean(fused):
    fused_batchnorm.uninstall()
    (keras_out, keras_mean, keras_var) = _train_step("float32")
    fused_batchnorm.install()
    (fused_out, fused_mean, fused_var) = _train_step("float32")
    for name, a, b in zip(["outputs", "d/dx", "d/dgamma", "d/dbeta"], keras_out, fused_out):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(fused_mean, keras_mean, rtol=1e-6, atol=1e-7)
    # Documented difference: the fused kernel's moving variance uses the unbiased batch variance.
    n = 8 * 5 * 5
    batch_var_biased = (keras_var - 0.9) / 0.1
    np.testing.assert_allclose(fused_var, 0.9 + 0.1 * batch_var_biased * n / (n - 1), rtol=1e-5)


def test_fused_kernel_runs_in_mixed_precision(fused):
    (reference, _, _) = _train_step("float32")
    for policy, tolerance in [("mixed_float16", 0.05), ("mixed_bfloat16", 0.3)]:
        (outputs, _, _) = _train_step(policy)
        assert outputs[0].dtype == np.float32
        scale = np.abs(reference[0]).max()
        assert np.abs(outputs[0] - reference[0]).max() < tolerance * scale, policy


def test_inference_and_saved_model_ignore_the_kernel(fused, tmp_path):
    model = build_model("resnet18", (28, 28, 1), 3, width=8)
    x = np.random.default_rng(1).normal(size=(4, 28, 28, 1)).astype("float32")
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, np.ones((4, 3), "float32"), epochs=2, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    fused_batchnorm.uninstall()
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.get_layer("conv1_bn"), BatchNorm)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_fused_kernel_compiles_with_xla_and_learns(fused):
    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (16, 16, 1), 1, width=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (64, 1)).astype("float32")
    images = (rng.normal(size=(64, 16, 16, 1)) + 2.0 * labels[:, :, None, None]).astype("float32")
    history = model.fit(images, labels, batch_size=32, epochs=4, verbose=0)
    assert model.jit_compile is True
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    moving_means = model.get_layer("conv1_bn").moving_mean.numpy()
    assert np.abs(moving_means).max() > 0  # the moving statistics were updated
