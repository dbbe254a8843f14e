"""LayerNorm and exact GELU, forward and backward, as XLA-compiled kernels inside a TensorFlow
graph that otherwise runs without XLA, plugged into the training steps of chest_tf's
LayerNormalization and GELU layers for TensorFlow on a CPU (inference keeps Keras' ops, so a
model predicts the same bits in any process).

Why: on a CPU a ViT step is ~80% matrix products, and oneDNN (TensorFlow without XLA) multiplies
the ViT's shapes ~1.25x faster than XLA:CPU (``python pipelines/bench_matmul.py``: 186 against 148
GFLOP/s over a ViT-Tiny step at 64 px, 2 cores), but without XLA every element-wise op of LayerNorm
and GELU and of their gradients is a separate pass over memory. These two kernels give each of
them one compiled function for the forward pass and one for the backward pass (a custom gradient,
the textbook formulas), so the products stay oneDNN's and the element-wise work is fused. Inside
a graph that XLA compiles whole, they are inlined like any other function.

Same outputs and gradients as Keras' (``tests/test_xla_elementwise.py``); float32 only (the kernels
decline other dtypes, and the layer runs Keras' own).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from chest_tf.models.layers import register_gelu_kernel, register_layer_norm_kernel

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@tf.function(jit_compile=True)
def _gelu_forward(x):
    return 0.5 * x * (1.0 + tf.math.erf(x * _SQRT_HALF))


@tf.function(jit_compile=True)
def _gelu_backward(x, output_gradient):
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    cdf = 0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF))
    return output_gradient * (cdf + x * _INV_SQRT_2PI * tf.exp(-0.5 * x * x))


def gelu_kernel(x):
    """Exact GELU through the compiled kernels, or None (not float32)."""
    if x.dtype != tf.float32:
        return None

    @tf.custom_gradient
    def gelu(x):
        return _gelu_forward(x), lambda output_gradient: _gelu_backward(x, output_gradient)

    return gelu(x)


@tf.function(jit_compile=True)
def _layer_norm_forward(x, gamma, beta, epsilon):
    centred = x - tf.reduce_mean(x, -1, keepdims=True)
    inverse_std = tf.math.rsqrt(tf.reduce_mean(centred * centred, -1, keepdims=True) + epsilon)
    return centred * inverse_std * gamma + beta, inverse_std


@tf.function(jit_compile=True)
def _layer_norm_backward(x, gamma, inverse_std, output_gradient):
    normalised = (x - tf.reduce_mean(x, -1, keepdims=True)) * inverse_std
    scaled = output_gradient * gamma
    x_gradient = inverse_std * (scaled - tf.reduce_mean(scaled, -1, keepdims=True)
                                - normalised * tf.reduce_mean(scaled * normalised, -1, keepdims=True))
    batch_axes = tf.range(tf.rank(x) - 1)
    return (x_gradient, tf.reduce_sum(output_gradient * normalised, batch_axes),
            tf.reduce_sum(output_gradient, batch_axes))


def layer_norm_kernel(x, gamma, beta, epsilon):
    """LayerNorm over the last axis through the compiled kernels, or None (not float32)."""
    if x.dtype != tf.float32 or gamma.dtype != tf.float32 or beta.dtype != tf.float32:
        return None
    epsilon = tf.constant(epsilon, tf.float32)

    @tf.custom_gradient
    def layer_norm(x, gamma, beta):
        output, inverse_std = _layer_norm_forward(x, gamma, beta, epsilon)
        return output, lambda output_gradient: _layer_norm_backward(x, gamma, inverse_std, output_gradient)

    return layer_norm(x, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta))


def install() -> None:
    """Offer both kernels to chest_tf's layers: TensorFlow backend, no GPU (measured on a CPU)."""
    if keras.backend.backend() == "tensorflow" and not tf.config.list_logical_devices("GPU"):
        register_layer_norm_kernel("tensorflow", layer_norm_kernel)
        register_gelu_kernel("tensorflow", gelu_kernel)


def uninstall() -> None:
    register_layer_norm_kernel("tensorflow", None)
    register_gelu_kernel("tensorflow", None)
