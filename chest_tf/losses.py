"""Losses on logits, written with keras.ops (backend-agnostic) and serialisable.

- ``bce``: binary cross-entropy per label (multi-label, binary); categorical for multi-class.
- ``bce_weighted``: the same with each label's positives weighted by negatives/positives of the
  training split (the classic ``pos_weight``), so a rare finding counts as much as a common one;
  for multi-class, classes weighted by inverse frequency.
- ``focal``: Lin et al. 2017, gamma 2 by default (Keras' own focal losses).
- ``asymmetric``: Ridnik et al. 2021 (ASL) for multi-label: positives keep a plain log loss
  (gamma+ = 0); easy negatives are down-weighted (gamma- = 4) and shifted by a margin (0.05).

Multi-class sets take ``bce`` (categorical cross-entropy) or ``focal``.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from chest_tf.data.info import MULTI_CLASS, ORDINAL
from chest_tf.errors import ConfigError


def _smooth(labels, smoothing: float):
    """Binary label smoothing: y -> y (1 - s) + s / 2."""
    return labels * (1.0 - smoothing) + 0.5 * smoothing if smoothing else labels


@keras.saving.register_keras_serializable(package="chest_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """-[w y log s(z) + (1 - y) log(1 - s(z))], averaged over labels; ``w`` per label."""

    def __init__(self, pos_weight, label_smoothing: float = 0.0, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in np.ravel(pos_weight)]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = _smooth(ops.cast(y_true, "float32"), self.label_smoothing)
        weight = ops.convert_to_tensor(self.pos_weight, dtype="float32")
        # log s(z) = -softplus(-z), log(1 - s(z)) = -softplus(z): stable for any logit
        per_label = weight * labels * ops.softplus(-logits) + (1.0 - labels) * ops.softplus(logits)
        return ops.mean(per_label, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="chest_tf")
class AsymmetricLoss(keras.losses.Loss):
    """ASL for multi-label classification (Ridnik et al., ICCV 2021)."""

    def __init__(self, gamma_pos=0.0, gamma_neg=4.0, margin=0.05, label_smoothing=0.0, name="asymmetric", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma_pos, self.gamma_neg, self.margin = float(gamma_pos), float(gamma_neg), float(margin)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = _smooth(ops.cast(y_true, "float32"), self.label_smoothing)
        prob = ops.sigmoid(logits)
        shifted = ops.maximum(prob - self.margin, 0.0)  # negatives below the margin cost nothing
        eps = 1e-8
        positive = labels * ops.power(1.0 - prob, self.gamma_pos) * ops.log(ops.maximum(prob, eps))
        negative = (1.0 - labels) * ops.power(shifted, self.gamma_neg) * ops.log(ops.maximum(1.0 - shifted, eps))
        return -ops.mean(positive + negative, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "gamma_pos": self.gamma_pos,
            "gamma_neg": self.gamma_neg,
            "margin": self.margin,
            "label_smoothing": self.label_smoothing,
        }


def positive_weights(positives: np.ndarray, total: int, max_weight: float = 100.0) -> np.ndarray:
    """negatives / positives per label, clipped to [1/max_weight, max_weight] (a label with no
    positives in the training split gets the cap rather than infinity)."""
    positives = np.asarray(positives, dtype=np.float64)
    negatives = total - positives
    with np.errstate(divide="ignore"):
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), max_weight)
    return np.clip(weights, 1.0 / max_weight, max_weight)


def build_loss(
    name: str, task: str, positives: np.ndarray, total: int, *, label_smoothing: float = 0.0, focal_gamma: float = 2.0
) -> keras.losses.Loss:
    """The loss ``name`` for ``task``, weighted from the training split's label counts."""
    if task in (MULTI_CLASS, ORDINAL):
        if name == "bce":
            return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        if name == "focal":
            return keras.losses.CategoricalFocalCrossentropy(
                from_logits=True, gamma=focal_gamma, label_smoothing=label_smoothing
            )
        raise ConfigError(f"loss '{name}' is for binary and multi-label sets; use bce or focal for {task}")
    if name == "bce":
        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    if name == "bce_weighted":
        return WeightedBinaryCrossentropy(positive_weights(positives, total), label_smoothing=label_smoothing)
    if name == "focal":
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=focal_gamma, label_smoothing=label_smoothing)
    if name == "asymmetric":
        return AsymmetricLoss(label_smoothing=label_smoothing)
    raise ConfigError(f"unknown loss '{name}'")
