"""The serving computation: uint8 images of any size -> the model's input -> logits and probs.

This is what the exported SavedModel's ``serve`` signature runs, and what predict, explain and the
app run for a ``.keras`` model, so every path gives the same numbers. The rank is left open so
that a batch of grayscale arrays ``[N, H, W]`` (what TF Serving's REST API makes of
``{"instances": [[[...]]]}`` for 2-D images) and of channel-last images both work; the function
checks the rank and channels at run time and fails with a clear message otherwise. Inside it
(``preprocess``): channels are converted to the model's (RGB -> gray by BT.601 luminance
0.299 R + 0.587 G + 0.114 B; gray -> RGB by repeating; RGBA composited over black first), the
image is resized to the model's input size with antialiased bilinear interpolation (exactly the
identity at the model's own size), and normalised as in training
(``chest_tf.data.normalization``: ``(x / 255 - 0.5) / 0.5``). No augmentation is inside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from chest_tf.data.info import BINARY, MULTI_LABEL
from chest_tf.data.normalization import normalize
from chest_tf.errors import ConfigError
from chest_tf.models.ensemble import ensemble_members, mean_layer
from chest_tf.serving.ood import OODScorer, features_and_logits_model

ENDPOINT = "serve"
INPUT_NAME = "images"
SERVE_SIGNATURE = [tf.TensorSpec(shape=None, dtype=tf.uint8, name=INPUT_NAME)]
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion
RESIZE = {"method": "bilinear", "antialias": True}


def preprocess(images, height: int, width: int, channels: int) -> tf.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` (C in 1, 3, 4) -> float32 ``[N, height, width,
    channels]`` in the model's range: channel conversion, antialiased bilinear resize, training's
    normalisation (see the module docstring)."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype.name}")
    rank = tf.rank(images)
    rank_ok = tf.debugging.Assert(tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4)),
                                  ["images must be uint8 [N, H, W] or [N, H, W, C]; got rank", rank])
    with tf.control_dependencies([rank_ok]):
        shape4 = tf.concat([tf.shape(images), [1]], axis=0)[:4]  # [N, H, W] -> [N, H, W, 1]
        x = tf.reshape(images, shape4)
    x = tf.ensure_shape(x, [None, None, None, None])
    c = shape4[3]
    checks = [
        tf.debugging.Assert(tf.reduce_any(tf.equal(c, [1, 3, 4])),
                            ["images must have 1 (gray), 3 (RGB) or 4 (RGBA) channels; got", c]),
        tf.debugging.Assert(tf.logical_and(shape4[1] > 0, shape4[2] > 0),
                            ["images must have at least one pixel; got height and width", shape4[1:3]]),
    ]
    with tf.control_dependencies(checks):
        x = tf.cast(x, tf.float32)
    x = _convert_channels(x, c, channels)
    if tf.compat.dimension_value(x.shape[1]) != height or tf.compat.dimension_value(x.shape[2]) != width:
        x = tf.image.resize(x, (height, width), **RESIZE)
    return normalize(x, ops=tf)


def _convert_channels(x: tf.Tensor, c: tf.Tensor, channels: int) -> tf.Tensor:
    """float32 [N, H, W, c] (c dynamic: 1, 3 or 4) -> [N, H, W, channels]."""
    if channels not in (1, 3):
        raise ConfigError(f"models with {channels} input channels are not supported (1 or 3)")
    weights = tf.constant(LUMA_WEIGHTS, tf.float32)

    def rgb():
        return x[..., :3]

    def rgba():
        return x[..., :3] * (x[..., 3:4] / 255.0)

    def luma(v):
        return tf.reduce_sum(v * weights, axis=-1, keepdims=True)

    if channels == 1:
        branches = [lambda: x[..., :1], lambda: luma(rgb()), lambda: luma(rgba())]
    else:
        branches = [lambda: tf.tile(x[..., :1], [1, 1, 1, 3]), rgb, rgba]
    index = tf.where(tf.equal(c, 1), 0, tf.where(tf.equal(c, 3), 1, 2))
    out = tf.switch_case(index, branches)
    out.set_shape([None, None, None, channels])
    return out


def output_activation(task: str, num_outputs: int) -> str:
    """``chest_tf.evaluation.metrics.scores_from_logits``' rule: sigmoid for multi-label and one-logit binary
    models, softmax otherwise."""
    if task == MULTI_LABEL or (task == BINARY and num_outputs == 1):
        return "sigmoid"
    return "softmax"


def model_input_spec(model) -> tuple[int, int, int]:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ConfigError(f"the model's input shape {shape} must be (None, H, W, C) with H, W, C fixed")
    return int(shape[1]), int(shape[2]), int(shape[3])


@dataclass
class ServingExtras:
    """What the serving computation adds to the model: temperatures for calibrated probabilities
    (``chest_tf.serving.calibration``) and an OOD scorer (``chest_tf.serving.ood``)."""

    temperatures: np.ndarray | None = None
    ood: OODScorer | None = None

    @property
    def outputs(self) -> list[str]:
        return ["ood_score", "in_distribution"] if self.ood is not None else []


def serve_function(model, task: str, extras: ServingExtras | None = None) -> Callable:
    """The serving computation for ``model``: uint8 images -> {"logits", "probs"} (plain Python;
    wrap it with ``tf.function(input_signature=SERVE_SIGNATURE)``). ``logits`` are the model's;
    ``probs`` are calibrated when ``extras`` has temperatures. With an OOD scorer it adds
    ``ood_score`` (N,) and ``in_distribution`` (N,) bool; an ensemble adds ``uncertainty`` (N, K),
    the standard deviation of its members' probabilities."""
    extras = extras or ServingExtras()
    height, width, channels = model_input_spec(model)
    num_outputs = int(model.output_shape[-1])
    activation = output_activation(task, num_outputs)
    average = mean_layer(model)
    members = ensemble_members(model)
    with_features = extras.ood is not None and extras.ood.uses_features
    depths = with_features and extras.ood.method == "mahalanobis"
    member_models = [features_and_logits_model(m, depths) if with_features else m for m in members]
    temperatures = None if extras.temperatures is None else tf.constant(extras.temperatures, tf.float32)

    def serve(images):
        x = preprocess(images, height, width, channels)
        features = None
        if average is None and not with_features:
            logits = tf.cast(model(x, training=False), tf.float32)
        else:
            outputs = [m(x, training=False) for m in member_models]
            member_logits = [tf.cast(o[0] if with_features else o, tf.float32) for o in outputs]
            if with_features:  # every member's features at every depth, member by member
                features = [tf.cast(f, tf.float32) for o in outputs for f in o[1:]]
            logits = average(member_logits) if average is not None else member_logits[0]
        scaled = logits if temperatures is None else logits / temperatures
        probs = tf.sigmoid(scaled) if activation == "sigmoid" else tf.nn.softmax(scaled, axis=-1)
        result = {"logits": logits, "probs": probs}
        if extras.ood is not None:
            score = extras.ood.tf_scores(logits, features)
            result["ood_score"] = score
            result["in_distribution"] = score <= extras.ood.threshold
        if average is not None:
            result["uncertainty"] = tf.math.reduce_std(average.member_probabilities(member_logits), axis=0)
        return result

    return serve


def serving_tf_function(model, task: str, extras: ServingExtras | None = None):
    """``serve_function`` as a tf.function with the exported signature."""
    return tf.function(serve_function(model, task, extras), input_signature=SERVE_SIGNATURE, autograph=False)
