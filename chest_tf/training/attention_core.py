"""Self-attention's core, softmax(Q K^T / sqrt(d)) V, with every matrix product of its backward
pass in a form XLA:CPU runs fast, plugged into chest_tf's SelfAttention for TensorFlow on a CPU.

Two products of the backward pass contract their left operand over its rows: dV = P^T dO and
dK = dS^T Q (per image and head). XLA:CPU gives batched products to YNNPACK in the NN and NT
forms only; these two fall back to a path about 3x slower (384 (65 x 65) x (65 x 64) products:
5.2-5.6 ms against 1.6-2.0 ms NN, ViT-Tiny at 64 px, batch 128, 2 cores). Here the transpose is
written out, behind an optimization barrier so that XLA does not fold it back into the product,
and both become NN products (3.7 ms including the transpose). Whole ViT-Tiny steps at 64 px
(XLA, float32, one process alternating the two paths, random tensors): 64.1 -> 66.0 img/s in 4
rounds, 66.6 -> 69.5 in 6.

The gradient is the textbook one, spelled out (``tf.custom_gradient``); the forward pass is
Keras' (scaled scores, softmax, weighted values). Outside XLA the barrier is an identity. The
kernel declines what it does not cover, and the layer then runs Keras' own attention: masks
(locality self-attention), attention dropout, a sliding window, a compute dtype other than float32 (bfloat16 trains
without XLA on a CPU, where oneDNN's products are fast in every form) and explain's
``return_attention_scores`` (decided in the layer).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from chest_tf.models.layers import register_attention_kernel


def _heads_first(x):
    """(B, T, N, D) -> (B, N, T, D)."""
    return tf.transpose(x, (0, 2, 1, 3))


def _kept_transpose(x):
    """(B, N, T, S) -> (B, N, S, T), materialised: a transpose XLA may not fold into a product."""
    return xla.optimization_barrier(tf.transpose(x, (0, 1, 3, 2)))[0]


def attention_core(query, key, value, scale: float):
    """softmax(scale * Q K^T) V per image and head; query (B, T, N, D), key and value (B, S, N, D)
    -> (B, T, N, D)."""

    @tf.custom_gradient
    def attention(query, key, value):
        q, k, v = _heads_first(query), _heads_first(key), _heads_first(value)
        probabilities = tf.nn.softmax(tf.matmul(q * scale, k, transpose_b=True), axis=-1)
        output = _heads_first(tf.matmul(probabilities, v))

        def gradient(output_gradient):
            d_output = _heads_first(output_gradient)
            d_probabilities = tf.matmul(d_output, v, transpose_b=True)
            d_scores = probabilities * (d_probabilities - tf.reduce_sum(d_probabilities * probabilities, -1, keepdims=True))
            d_scores = d_scores * scale
            d_query = tf.matmul(d_scores, k)
            d_key = tf.matmul(_kept_transpose(d_scores), q)
            d_value = tf.matmul(_kept_transpose(probabilities), d_output)
            return _heads_first(d_query), _heads_first(d_key), _heads_first(d_value)

        return output, gradient

    return attention(query, key, value)


def self_attention_core(layer, query, key, value, training):
    """``layer``'s attention core by ``attention_core``, or None (the layer then runs Keras')."""
    if (layer._dropout > 0 or getattr(layer, "_sliding_window", None) is not None
            or len(query.shape) != 4 or query.dtype != tf.float32):
        return None
    return attention_core(query, key, value, layer._inverse_sqrt_key_dim)


def install() -> None:
    """Offer the core to chest_tf SelfAttention layers: TensorFlow backend, no GPU (measured on a
    CPU's XLA only)."""
    if keras.backend.backend() == "tensorflow" and not tf.config.list_logical_devices("GPU"):
        register_attention_kernel("tensorflow", self_attention_core)


def uninstall() -> None:
    register_attention_kernel("tensorflow", None)
