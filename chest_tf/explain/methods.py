"""Heatmaps of where a classifier looks: Grad-CAM / Grad-CAM++ for the CNNs, attention rollout
for the ViTs.

    explainer = Explainer(model)                      # gradcam / grad-rollout by family
    maps = explainer.heatmaps(images, targets=2)      # (B, H, W) float32 in [0, 1]
    maps = explain(model, images, 2, "gradcam++")     # the same, in one call

Methods (default ``gradcam`` for CNNs and ``grad-rollout`` for ViTs):

- ``gradcam`` (Selvaraju et al. 2017): the last convolutional stage, found by layer name
  (``chest_tf.models.registry.last_conv_layer_name``: ``conv5_block{N}_out`` for ResNets,
  ``relu`` for DenseNets), weighted by the spatial mean of the gradient of the finding's logit;
  ReLU.
- ``gradcam++`` (Chattopadhay et al. 2018): per-position weights
  ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` on the positive gradients (the closed form for an
  exponentiated score, which only rescales each image's map).
- ``rollout`` (Abnar & Zuidema 2020): per block, the attention averaged over heads, plus the
  identity (the residual path), rows renormalised; multiplied through the blocks,
  ``R = A_L ... A_1``; the class token's row over the patches, or (``pool="gap"`` ViTs) the mean
  of the rows. Class-agnostic: the same map for every finding.
- ``grad-rollout`` (Chefer et al. 2021, "Generic attention-model explainability"): per block
  ``A_bar = mean_heads(relu(dS/dA * A))`` for the finding's logit S, and ``R <- R + A_bar R``
  from ``R = I``; read out as above. Class-specific.

Every heatmap is upsampled (bilinear, half-pixel centres) to the model's input size and min-max
normalised per image to [0, 1] (a constant map becomes all 0: Grad-CAM's "no positive evidence").
The class score is the finding's logit (pre-sigmoid / pre-softmax); a one-logit binary model's
negative class is explained with the negated logit. ``layer=`` explains another feature map (e.g.
``conv4_block2_out``): at 28 px the last stage is only 4x4 (ResNet) or 3x3 (DenseNet) cells,
which bounds how finely it can point.

Numerics are keras.ops; gradients use ``tf.GradientTape`` (this is TensorFlow glue, like serving).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from chest_tf.errors import ConfigError
from chest_tf.models.registry import last_conv_layer_name
from chest_tf.models.vit import vit_attention_layer_names, vit_attention_model
from chest_tf.serving.signature import model_input_spec, preprocess

METHODS = ("gradcam", "gradcam++", "rollout", "grad-rollout")
CNN_METHODS = ("gradcam", "gradcam++")
VIT_METHODS = ("rollout", "grad-rollout")
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "rollout": "attention rollout",
                 "grad-rollout": "gradient-weighted rollout"}
DEFAULT_BATCH_SIZE = 64


# ----------------------------------------------------------------------------------------------
# Model introspection
# ----------------------------------------------------------------------------------------------
def is_vit(model) -> bool:
    """True for a chest_tf ViT (it has ``encoder_block1_attn``)."""
    try:
        vit_attention_layer_names(model)
    except ValueError:
        return False
    return True


def default_method(model) -> str:
    """``grad-rollout`` for ViTs (class-specific), ``gradcam`` otherwise."""
    return "grad-rollout" if is_vit(model) else "gradcam"


def resolve_method(model, method: str | None) -> str:
    """``method`` checked against the model's family (None or "auto": the default)."""
    if method in (None, "auto"):
        return default_method(model)
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    vit = is_vit(model)
    if vit and method in CNN_METHODS:
        raise ConfigError(f"{method} needs a convolutional feature map and {model.name} is a ViT; "
                          f"use {' or '.join(VIT_METHODS)}")
    if not vit and method in VIT_METHODS:
        raise ConfigError(f"{method} needs a ViT's attention maps and {model.name} is not a chest_tf ViT; "
                          f"use {' or '.join(CNN_METHODS)}")
    return method


def _input_hwc(model) -> tuple[int, int, int]:
    return model_input_spec(model)


def _has_class_token(model) -> bool:
    try:
        model.get_layer("class_token")
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# The explainer
# ----------------------------------------------------------------------------------------------
class Explainer:
    """Heatmaps for one model and one method; the traced computation is kept between calls.

        explainer = Explainer(model)                      # gradcam / grad-rollout by family
        maps = explainer.heatmaps(images, targets=2)      # (B, H, W) float32 in [0, 1]

    ``images``: float32 (B, H, W, C) in the model's range [-1, 1] (``prepare_images`` turns uint8
    images of any size into that). ``targets``: one output index for all images or one per image.
    ``signs``: +1 explains the output's logit, -1 its negation (the negative class of a one-logit
    binary model). ``layer`` (CNN methods): the feature map to explain, default the last
    convolutional stage.
    """

    def __init__(self, model, method: str | None = None, *, layer: str | None = None):
        self.model = model
        self.method = resolve_method(model, method)
        self.height, self.width, self.channels = _input_hwc(model)
        self.num_outputs = int(model.output_shape[-1])
        if self.method in CNN_METHODS:
            if layer is not None and layer not in {known.name for known in model.layers}:
                maps = [known.name for known in model.layers
                        if not isinstance(known.output, (list, tuple)) and len(known.output.shape) == 4]
                raise ConfigError(f"{model.name} has no layer {layer!r}; its last feature maps: "
                                  f"{', '.join(maps[-4:])}")
            try:
                self.layer = layer or last_conv_layer_name(model)
                feature = model.get_layer(self.layer).output
            except ValueError as exc:
                raise ConfigError(str(exc).splitlines()[0]) from None
            if isinstance(feature, (list, tuple)) or len(feature.shape) != 4:
                raise ConfigError(f"layer {self.layer!r} of {model.name} has no (B, h, w, C) feature map")
            self._graph = keras.Model(model.inputs, [feature, model.outputs[0]], name=f"{model.name}_gradcam")
        else:
            if layer is not None:
                raise ConfigError("layer= applies to Grad-CAM; rollout uses every attention block")
            self.layer = None
            attention = vit_attention_model(model)
            self._graph = keras.Model(model.inputs, [*attention.outputs, model.outputs[0]],
                                      name=f"{model.name}_rollout")
            self.class_token = _has_class_token(model)
            tokens = int(attention.outputs[0].shape[-1]) - int(self.class_token)
            patch = math.sqrt(self.height * self.width / tokens)
            self.grid = (round(self.height / patch), round(self.width / patch))
            if self.grid[0] * self.grid[1] != tokens:
                raise ConfigError(f"cannot lay {tokens} tokens out on a grid for a {self.height}x{self.width} input")
        self._fn = None

    # -- public -------------------------------------------------------------------------------
    def heatmaps(self, images, targets=0, signs=None, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(B, H, W) float32 heatmaps in [0, 1] at the model's input size."""
        images = self._check_images(images)
        n = len(images)
        targets = self._per_image(targets, n, "targets", np.int32)
        signs = self._per_image(1.0 if signs is None else signs, n, "signs", np.float32)
        if np.any((targets < 0) | (targets >= self.num_outputs)):
            raise ConfigError(f"targets must be output indices in 0..{self.num_outputs - 1}")
        fn = self._function()
        out = np.zeros((n, self.height, self.width), np.float32)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            out[lo:hi] = fn(images[lo:hi], targets[lo:hi], signs[lo:hi]).numpy()
        return out

    def logits(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(B, K) float32 logits of the model (inference mode)."""
        images = self._check_images(images)
        out = np.zeros((len(images), self.num_outputs), np.float32)
        for lo in range(0, len(images), batch_size):
            out[lo:lo + batch_size] = np.asarray(self.model(images[lo:lo + batch_size], training=False), np.float32)
        return out

    # -- internals ----------------------------------------------------------------------------
    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3 and self.channels == 1:
            images = images[..., None]
        if images.ndim != 4 or images.shape[1:] != (self.height, self.width, self.channels):
            raise ConfigError(f"images must be (B, {self.height}, {self.width}, {self.channels}) for "
                              f"{self.model.name}, got {images.shape} (prepare_images resizes files)")
        if images.dtype == np.uint8:
            raise ConfigError("images must be float32 in [-1, 1]; use prepare_images for uint8 images")
        return images.astype(np.float32, copy=False)

    @staticmethod
    def _per_image(value, n: int, what: str, dtype) -> np.ndarray:
        array = np.asarray(value, dtype)
        if array.ndim == 0:
            return np.full(n, array, dtype)
        if array.shape != (n,):
            raise ConfigError(f"{what} must be one value or one per image ({n}), got shape {array.shape}")
        return array

    def _function(self):
        if self._fn is None:
            body = {"gradcam": self._gradcam, "gradcam++": self._gradcam, "rollout": self._rollout,
                    "grad-rollout": self._grad_rollout}[self.method]
            spec = [tf.TensorSpec((None, self.height, self.width, self.channels), tf.float32),
                    tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.float32)]
            self._fn = tf.function(body, input_signature=spec, reduce_retracing=True)
        return self._fn

    def _scores(self, logits, targets, signs):
        logits = ops.cast(logits, "float32")
        picked = ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1)[:, 0]
        return picked * signs

    def _gradcam(self, images, targets, signs):
        with tf.GradientTape() as tape:
            feature, logits = self._graph(images, training=False)
            # Images are independent at inference (BatchNorm uses its moving statistics), so the
            # gradient of the summed scores is each image's own gradient.
            score = ops.sum(self._scores(logits, targets, signs))
        grads = ops.cast(tape.gradient(score, feature), "float32")
        feature = ops.cast(feature, "float32")
        if self.method == "gradcam":
            weights = ops.mean(grads, axis=(1, 2), keepdims=True)
        else:
            g2 = grads * grads
            denom = 2.0 * g2 + ops.sum(feature, axis=(1, 2), keepdims=True) * g2 * grads
            alpha = g2 / ops.where(ops.not_equal(denom, 0.0), denom, ops.ones_like(denom))
            weights = ops.sum(alpha * ops.relu(grads), axis=(1, 2), keepdims=True)
        cam = ops.relu(ops.sum(weights * feature, axis=-1))
        return self._finish(cam)

    def _attention(self, outputs):
        *scores, logits = outputs
        return [ops.cast(s, "float32") for s in scores], logits

    def _readout(self, rollout):
        if self.class_token:
            row = rollout[:, 0, 1:]
        else:
            row = ops.mean(rollout, axis=1)
        return ops.reshape(row, (-1, *self.grid))

    def _rollout(self, images, targets, signs):
        scores, _ = self._attention(self._graph(images, training=False))
        tokens = scores[0].shape[-1]
        eye = ops.eye(tokens, dtype="float32")
        rollout = None
        for attention in scores:
            a = ops.mean(attention, axis=1) + eye
            a = a / ops.sum(a, axis=-1, keepdims=True)
            rollout = a if rollout is None else ops.matmul(a, rollout)
        return self._finish(self._readout(rollout))

    def _grad_rollout(self, images, targets, signs):
        with tf.GradientTape() as tape:
            outputs = self._graph(images, training=False)
            raw_scores = outputs[:-1]
            score = ops.sum(self._scores(outputs[-1], targets, signs))
        grads = tape.gradient(score, raw_scores)
        tokens = raw_scores[0].shape[-1]
        rollout = ops.broadcast_to(ops.eye(tokens, dtype="float32"), (ops.shape(images)[0], tokens, tokens))
        for attention, grad in zip(raw_scores, grads):
            weighted = ops.mean(ops.relu(ops.cast(grad, "float32") * ops.cast(attention, "float32")), axis=1)
            rollout = rollout + ops.matmul(weighted, rollout)
        return self._finish(self._readout(rollout))

    def _finish(self, maps):
        """(B, h, w) -> bilinear to the input size -> per-image min-max to [0, 1]."""
        return upsample_and_normalize(maps, (self.height, self.width))


def upsample_and_normalize(maps, size: tuple[int, int]):
    """(B, h, w) maps -> (B, H, W): bilinear resize (half-pixel centres), then each map min-max
    scaled to [0, 1]; a constant map becomes all 0. keras.ops only."""
    maps = ops.cast(maps, "float32")
    if tuple(maps.shape[1:3]) != tuple(size):
        maps = ops.image.resize(ops.expand_dims(maps, -1), size, interpolation="bilinear",
                                data_format="channels_last")[..., 0]
    low = ops.min(maps, axis=(1, 2), keepdims=True)
    span = ops.max(maps, axis=(1, 2), keepdims=True) - low
    return ops.where(span > 1e-12, (maps - low) / ops.where(span > 1e-12, span, ops.ones_like(span)),
                     ops.zeros_like(maps))


# Functional shorthands ------------------------------------------------------------------------
def explain(model, images, targets=0, method: str | None = None, *, signs=None, layer: str | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """(B, H, W) heatmaps in [0, 1]; see ``Explainer``."""
    return Explainer(model, method, layer=layer).heatmaps(images, targets, signs, batch_size=batch_size)


def gradcam(model, images, targets=0, *, layer=None, plus: bool = False) -> np.ndarray:
    return explain(model, images, targets, "gradcam++" if plus else "gradcam", layer=layer)


def attention_rollout(model, images) -> np.ndarray:
    return explain(model, images, 0, "rollout")


def gradient_rollout(model, images, targets=0) -> np.ndarray:
    return explain(model, images, targets, "grad-rollout")


def prepare_images(images_uint8, model) -> np.ndarray:
    """uint8 images ((N, H, W) or (N, H, W, C), C in 1/3/4, one size) -> the model's float32 input,
    through the serving computation (``chest_tf.serving.signature.preprocess``)."""
    height, width, channels = _input_hwc(model)
    return preprocess(np.asarray(images_uint8), height, width, channels).numpy()
