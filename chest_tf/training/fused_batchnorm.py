"""TensorFlow's fused BatchNorm as the training kernel of chest_tf.models.layers.BatchNorm.

The models stay keras.ops-only; this TensorFlow-side module plugs ``FusedBatchNormV3`` into their
BatchNorm layers for training (``install()``, called by chest_tf.train and the training
benchmark). One kernel computes the batch statistics, normalises and updates the moving averages,
and its registered gradient is one more kernel, where Keras runs and differentiates a handful of
separate element-wise ops. On 2 CPU cores that is worth about 15% of a ResNet-18 step at 28 px
(``python pipelines/bench_train.py --batchnorm both``). XLA compiles it too.

Identical to keras.layers.BatchNormalization in the forward pass and the gradients, with one
documented difference: the moving variance is updated with the unbiased (n - 1) batch variance,
as PyTorch and tf.keras 2 did, where Keras 3 uses the biased one. With n = batch x height x width
values per channel the two differ by under 0.1% even at ResNet's 4x4 last stage and batch 128.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from chest_tf.models.layers import register_fused_batchnorm


def fused_batchnorm_training(layer, inputs):
    """Training-mode forward of ``layer`` (a chest_tf BatchNorm over the last axis of NHWC)."""
    channels = inputs.shape[-1]
    gamma = layer.gamma if layer.scale else tf.ones((channels,), "float32")
    beta = layer.beta if layer.center else tf.zeros((channels,), "float32")
    outputs, moving_mean, moving_variance = tf.compat.v1.nn.fused_batch_norm(
        inputs,
        tf.cast(gamma, "float32"),
        tf.cast(beta, "float32"),
        mean=tf.cast(layer.moving_mean, "float32"),
        variance=tf.cast(layer.moving_variance, "float32"),
        epsilon=layer.epsilon,
        is_training=True,
        # new = (1 - factor) * old + factor * batch, i.e. Keras' momentum = 1 - factor.
        exponential_avg_factor=1.0 - layer.momentum,
    )
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)
    return outputs


def install() -> None:
    """Use the fused kernel for chest_tf BatchNorm layers in training (TensorFlow backend only)."""
    if keras.backend.backend() == "tensorflow":
        register_fused_batchnorm("tensorflow", fused_batchnorm_training)


def uninstall() -> None:
    register_fused_batchnorm("tensorflow", None)
