"""Where a classifier looks: Grad-CAM / Grad-CAM++ for the CNNs, attention rollout for the ViTs.

    python -m chest_tf.explain runs/phantom_28/resnet18_s0 scan1.png scan2.jpg --top-k 3
    python -m chest_tf.explain model.keras --dataset chestmnist scans/ --label effusion --out xai/
    python -m chest_tf.explain saved_models/vit_tiny_phantom_28 scan.png --method grad-rollout

MODEL is a run folder, a ``.keras`` file or an export folder (its ``model.keras``), resolved as
``python -m chest_tf.predict`` does (labels from the run's dataset, the export's metadata, or
``--dataset``). Image files of any size and format ``chest_tf.imageio`` reads go through the
serving computation's preprocessing (``chest_tf.export.preprocess``: channels, antialiased resize
to the model's input, normalisation), so the explained input is exactly what predict scores. For
each image and finding (``--label NAME``, repeatable, or the ``--top-k K`` most probable, default
1) an overlay PNG is written (the X-ray and the heatmap over it, titled with the finding and its
probability), plus ``contact_sheet.png`` when there are several panels and ``explanations.json``
(file, finding, probability, method, heatmap peak in the file's pixel coordinates).

Methods (``--method``, default ``gradcam`` for CNNs and ``grad-rollout`` for ViTs):

- ``gradcam`` (Selvaraju et al. 2017): the last convolutional stage, found by layer name
  (``chest_tf.models.last_conv_layer_name``: ``conv5_block{N}_out`` for ResNets, ``relu`` for
  DenseNets), weighted by the spatial mean of the gradient of the finding's logit; ReLU.
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
normalised per image to [0, 1] (a constant map becomes all 0: Grad-CAM's "no positive evidence",
titled so on the overlay). The class score is the finding's logit (pre-sigmoid / pre-softmax); a
one-logit binary model's negative class is explained with the negated logit, and its top-1 is the
called class. ``--layer`` explains another feature map (e.g. ``conv4_block2_out``): at 28 px the
last stage is only 4x4 (ResNet) or 3x3 (DenseNet) cells, which bounds how finely it can point.

Checks (the evaluation of issue 7; ``pipelines/pointing_game.py`` runs them on phantom run
folders): ``pointing_game`` (the heatmap's peak inside the finding's box, the share of heatmap
mass inside it, beside a random point's hit rate = the box's area share, an image-blind location
prior and the ceiling the map's native resolution allows) and ``sanity_check`` (Adebayo et al.
2018: the Spearman correlation of heatmaps with those of copies whose weights are re-initialised,
cascading from the output and in full). ``ExplanationPanel`` is a Keras callback that writes
overlays of fixed validation images to TensorBoard each epoch.

Numerics are keras.ops; gradients use ``tf.GradientTape`` (this is TensorFlow glue, like export).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.errors import ChestTFError, ConfigError

quiet_tensorflow()

import numpy as np  # noqa: E402

METHODS = ("gradcam", "gradcam++", "rollout", "grad-rollout")
CNN_METHODS = ("gradcam", "gradcam++")
VIT_METHODS = ("rollout", "grad-rollout")
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "rollout": "attention rollout",
                 "grad-rollout": "gradient-weighted rollout"}
DEFAULT_BATCH_SIZE = 64
DEFAULT_OUT = Path("explanations")


# ----------------------------------------------------------------------------------------------
# Model introspection
# ----------------------------------------------------------------------------------------------
def is_vit(model) -> bool:
    """True for a chest_tf ViT (it has ``encoder_block1_attn``)."""
    from chest_tf.models import vit_attention_layer_names  # noqa: PLC0415

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
    from chest_tf.export import model_input_spec  # noqa: PLC0415

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
        import keras  # noqa: PLC0415

        self.model = model
        self.method = resolve_method(model, method)
        self.height, self.width, self.channels = _input_hwc(model)
        self.num_outputs = int(model.output_shape[-1])
        if self.method in CNN_METHODS:
            from chest_tf.models import last_conv_layer_name  # noqa: PLC0415

            if layer is not None and layer not in {l.name for l in model.layers}:
                maps = [l.name for l in model.layers
                        if not isinstance(l.output, (list, tuple)) and len(l.output.shape) == 4]
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
            from chest_tf.models import vit_attention_model  # noqa: PLC0415

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
            import tensorflow as tf  # noqa: PLC0415

            body = {"gradcam": self._gradcam, "gradcam++": self._gradcam, "rollout": self._rollout,
                    "grad-rollout": self._grad_rollout}[self.method]
            spec = [tf.TensorSpec((None, self.height, self.width, self.channels), tf.float32),
                    tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.float32)]
            self._fn = tf.function(body, input_signature=spec, reduce_retracing=True)
        return self._fn

    def _scores(self, logits, targets, signs):
        from keras import ops  # noqa: PLC0415

        logits = ops.cast(logits, "float32")
        picked = ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1)[:, 0]
        return picked * signs

    def _gradcam(self, images, targets, signs):
        import tensorflow as tf  # noqa: PLC0415
        from keras import ops  # noqa: PLC0415

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
        from keras import ops  # noqa: PLC0415

        *scores, logits = outputs
        return [ops.cast(s, "float32") for s in scores], logits

    def _readout(self, rollout):
        from keras import ops  # noqa: PLC0415

        if self.class_token:
            row = rollout[:, 0, 1:]
        else:
            row = ops.mean(rollout, axis=1)
        return ops.reshape(row, (-1, *self.grid))

    def _rollout(self, images, targets, signs):
        from keras import ops  # noqa: PLC0415

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
        import tensorflow as tf  # noqa: PLC0415
        from keras import ops  # noqa: PLC0415

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
    from keras import ops  # noqa: PLC0415

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
    through the serving computation (``chest_tf.export.preprocess``)."""
    from chest_tf import export  # noqa: PLC0415

    height, width, channels = _input_hwc(model)
    return export.preprocess(np.asarray(images_uint8), height, width, channels).numpy()


# ----------------------------------------------------------------------------------------------
# Pointing game on known finding locations
# ----------------------------------------------------------------------------------------------
def box_masks(boxes, height: int, width: int, tolerance: float = 0.0) -> np.ndarray:
    """(..., 4) boxes (x0, y0, x1, y1) in pixels (x1, y1 exclusive) -> (..., H, W) bool masks of
    the pixels whose centre lies in the box (``tolerance`` > 0: within that many pixels of it,
    Euclidean, as Zhang et al.'s pointing game allows); NaN boxes give empty masks."""
    boxes = np.asarray(boxes, np.float32)
    cx = np.arange(width, dtype=np.float32) + 0.5
    cy = np.arange(height, dtype=np.float32) + 0.5
    with np.errstate(invalid="ignore"):
        if tolerance <= 0:
            in_x = (cx >= boxes[..., 0:1]) & (cx < boxes[..., 2:3])  # (..., W)
            in_y = (cy >= boxes[..., 1:2]) & (cy < boxes[..., 3:4])  # (..., H)
            masks = in_y[..., :, None] & in_x[..., None, :]
        else:
            dx = np.maximum(np.maximum(boxes[..., 0:1] - cx, cx - boxes[..., 2:3]), 0.0)
            dy = np.maximum(np.maximum(boxes[..., 1:2] - cy, cy - boxes[..., 3:4]), 0.0)
            masks = dy[..., :, None] ** 2 + dx[..., None, :] ** 2 <= tolerance**2
    # A box narrower than a pixel may hold no pixel centre: it still covers the pixel of its centre.
    flat_boxes, flat_masks = boxes.reshape(-1, 4), masks.reshape(-1, height, width)
    for i in np.flatnonzero(~np.isnan(flat_boxes[:, 0]) & ~flat_masks.any(axis=(1, 2))):
        x0, y0, x1, y1 = flat_boxes[i]
        col = int(np.clip(np.floor((x0 + x1) / 2), 0, width - 1))
        row = int(np.clip(np.floor((y0 + y1) / 2), 0, height - 1))
        flat_masks[i, row, col] = True
    return masks


def peak_pixels(heatmaps, rtol: float = 1e-6) -> np.ndarray:
    """(B, H, W) maps -> (B,) flat index of each map's peak. Ties (pixels within ``rtol`` of the
    maximum, e.g. the flat border a bilinear upsampling leaves around a border cell) go to the
    tied pixel nearest the tied pixels' centroid (first in row-major order if still tied), so a
    plateau points at its middle, not at its top-left corner."""
    heatmaps = np.asarray(heatmaps, np.float64)
    n, _, width = heatmaps.shape
    flat = heatmaps.reshape(n, -1)
    peaks = flat.argmax(axis=1) if n else np.zeros(0, np.int64)
    top = flat.max(axis=1) if n else np.zeros(0)
    for i in range(n):
        tied = np.flatnonzero(flat[i] >= top[i] - rtol * max(abs(top[i]), 1e-30))
        if len(tied) > 1:
            ys, xs = np.divmod(tied, width)
            d = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
            peaks[i] = tied[int(np.argmin(d))]
    return peaks


def score_heatmaps(heatmaps, masks, hit_masks=None, reachable=None) -> dict[str, np.ndarray]:
    """Per map: ``hit`` (the peak pixel, ``peak_pixels``, lies in ``hit_masks``,
    default ``masks``; an all-zero map is a miss), ``energy`` (heatmap mass in ``masks`` / total
    mass; 0 for an all-zero map), ``area`` (the hit mask's share of the image: the expected hit
    rate of a uniformly random point), ``box_area`` (the box's share: the energy share of a
    uniform map), ``empty`` (all-zero map), and with ``reachable`` ((H, W) bool, the pixels
    where a map of the method's native resolution can peak) ``ceiling``: the hit mask holds a
    reachable pixel."""
    heatmaps = np.asarray(heatmaps, np.float64)
    masks = np.asarray(masks, bool)
    hit_masks = masks if hit_masks is None else np.asarray(hit_masks, bool)
    n = len(heatmaps)
    flat, mflat, hflat = heatmaps.reshape(n, -1), masks.reshape(n, -1), hit_masks.reshape(n, -1)
    total = flat.sum(axis=1)
    empty = total <= 0
    peak = peak_pixels(heatmaps) if n else np.zeros(0, int)
    hit = hflat[np.arange(n), peak] & ~empty
    energy = np.where(empty, 0.0, (flat * mflat).sum(axis=1) / np.where(empty, 1.0, total))
    out = {"hit": hit, "energy": energy, "area": hflat.mean(axis=1), "box_area": mflat.mean(axis=1),
           "empty": empty}
    if reachable is not None:
        out["ceiling"] = (hflat & np.asarray(reachable, bool).reshape(1, -1)).any(axis=1)
    return out


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _summary(scores: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(scores["hit"])
    hits = int(scores["hit"].sum())

    def mean(key):
        return float(scores[key].mean()) if n and key in scores else float("nan")

    return {
        "n": n,
        "hits": hits,
        "hit_rate": hits / n if n else float("nan"),
        "hit_rate_ci95": list(wilson_interval(hits, n)),
        "energy_in_box": mean("energy"),
        "random_baseline": mean("area"),
        "uniform_energy_baseline": mean("box_area"),
        "resolution_ceiling": mean("ceiling"),
        "empty_maps": int(scores["empty"].sum()),
    }


def native_grid(explainer: Explainer) -> tuple[int, int]:
    """(h, w) of the map a method computes before upsampling: the feature map (Grad-CAM) or the
    patch grid (rollout)."""
    if explainer.method in CNN_METHODS:
        shape = explainer._graph.outputs[0].shape
        return int(shape[1]), int(shape[2])
    return explainer.grid


def reachable_peaks(explainer: Explainer) -> np.ndarray:
    """(H, W) bool: pixels where the upsampled map of a single active cell of the native grid
    peaks. An upsampled map peaks at (or next to) its largest cell, so no heatmap of this method
    can point finer than these pixels; the pointing game's ``resolution_ceiling`` is the share of
    boxes that hold one."""
    from keras import ops  # noqa: PLC0415

    h, w = native_grid(explainer)
    deltas = np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)
    maps = ops.convert_to_numpy(upsample_and_normalize(deltas, (explainer.height, explainer.width)))
    reachable = np.zeros((explainer.height, explainer.width), bool)
    peaks = peak_pixels(maps)
    reachable.reshape(-1)[peaks] = True
    return reachable


def pointing_game(model, images, labels, boxes, method: str | None = None, *,
                  label_names: Sequence[str] | None = None, findings: Sequence[int] | None = None,
                  layer: str | None = None, tolerance: float = 0.0,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Pointing game and energy-in-box over every (image, finding) where the finding is present.

    ``images``: float32 model input (B, H, W, C) (or uint8, prepared with ``prepare_images``);
    ``labels``: (B, K) 0/1; ``boxes``: (B, K, 4) (x0, y0, x1, y1) in input pixels, NaN where
    absent (the phantom set's ``*_boxes``). Output k is explained for finding k. ``tolerance``:
    a peak within that many pixels of the box counts as a hit (default 0: inside it).

    Returns {"method", "layer", "native_grid", "tolerance", "overall": summary over all
    instances (micro), "macro": means of the per-finding figures, "per_finding": {name: summary}},
    where a summary holds n, hits, hit_rate (+ 95% Wilson interval), energy_in_box (mean share of
    the heatmap's mass inside the box), random_baseline (mean share of the image where a hit
    counts = the expected hit rate of a uniformly random point), uniform_energy_baseline (mean box
    area share = the energy share of a uniform map; equal to random_baseline at tolerance 0),
    resolution_ceiling (share of instances whose box can hold the peak of a map of the method's
    native resolution, see ``reachable_peaks``) and empty_maps (all-zero heatmaps, counted as
    misses).
    """
    explainer = Explainer(model, method, layer=layer)
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prepare_images(images, model)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    if labels.ndim != 2 or boxes.shape != (len(labels), labels.shape[1], 4) or len(images) != len(labels):
        raise ConfigError(f"labels {labels.shape} and boxes {boxes.shape} must be (B, K) and (B, K, 4) "
                          f"for {len(images)} images")
    k_all = labels.shape[1]
    if explainer.num_outputs != k_all:
        raise ConfigError(f"{model.name} has {explainer.num_outputs} outputs for {k_all} findings")
    names = list(label_names) if label_names is not None else [str(k) for k in range(k_all)]
    present = (labels > 0) & ~np.isnan(boxes[..., 0])
    rows, cols = np.nonzero(present)
    if findings is not None:
        keep = np.isin(cols, list(findings))
        rows, cols = rows[keep], cols[keep]
    height, width = explainer.height, explainer.width
    heatmaps = explainer.heatmaps(images[rows], cols, batch_size=batch_size) if len(rows) else \
        np.zeros((0, height, width), np.float32)
    masks = box_masks(boxes[rows, cols], height, width)
    hit_masks = box_masks(boxes[rows, cols], height, width, tolerance) if tolerance > 0 else masks
    scores = score_heatmaps(heatmaps, masks, hit_masks, reachable_peaks(explainer))
    per_finding = {}
    for k in sorted(set(cols.tolist())):
        sel = cols == k
        per_finding[names[k]] = _summary({key: v[sel] for key, v in scores.items()})
    macro = {key: float(np.mean([s[key] for s in per_finding.values()])) if per_finding else float("nan")
             for key in ("hit_rate", "energy_in_box", "random_baseline", "resolution_ceiling")}
    return {"method": explainer.method, "layer": explainer.layer, "native_grid": list(native_grid(explainer)),
            "tolerance": float(tolerance), "overall": _summary(scores), "macro": macro,
            "per_finding": per_finding}


def location_prior(labels, boxes, height: int, width: int) -> np.ndarray:
    """(K, H, W): per finding, the mean box mask over the images where it is present (where
    findings usually are), from a training split. Its peak is the image-blind 'always point at the
    usual place' baseline of the pointing game."""
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    prior = np.zeros((labels.shape[1], height, width), np.float64)
    for k in range(labels.shape[1]):
        present = (labels[:, k] > 0) & ~np.isnan(boxes[:, k, 0])
        if present.any():
            prior[k] = box_masks(boxes[present, k], height, width).mean(axis=0)
    return prior


def prior_pointing_game(prior, labels, boxes, *, label_names: Sequence[str] | None = None,
                        tolerance: float = 0.0, grid: tuple[int, int] | None = None) -> dict[str, Any]:
    """The pointing game played by ``prior`` ((K, H, W), e.g. ``location_prior`` of the train
    split) on (labels, boxes): the same map for every image. ``grid`` (h, w): first reduce the
    prior to that resolution (area average) and upsample it as the explainers do, for a
    comparison at a method's native resolution (``native_grid``). Returns {"overall", "macro",
    "per_finding"} with the summaries of ``pointing_game``."""
    prior = np.asarray(prior, np.float64)
    if grid is not None:
        from keras import ops  # noqa: PLC0415

        size = prior.shape[1:]
        coarse = ops.image.resize(prior[..., None].astype(np.float32), tuple(grid), interpolation="area")
        prior = ops.convert_to_numpy(upsample_and_normalize(coarse[..., 0], size)).astype(np.float64)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    _, height, width = prior.shape
    rows, cols = np.nonzero((labels > 0) & ~np.isnan(boxes[..., 0]))
    masks = box_masks(boxes[rows, cols], height, width)
    hit_masks = box_masks(boxes[rows, cols], height, width, tolerance) if tolerance > 0 else masks
    scores = score_heatmaps(prior[cols], masks, hit_masks)
    names = list(label_names) if label_names is not None else [str(k) for k in range(labels.shape[1])]
    per_finding = {names[k]: _summary({key: v[cols == k] for key, v in scores.items()})
                   for k in sorted(set(cols.tolist()))}
    macro = {key: float(np.mean([s[key] for s in per_finding.values()])) if per_finding else float("nan")
             for key in ("hit_rate", "energy_in_box", "random_baseline")}
    return {"overall": _summary(scores), "macro": macro, "per_finding": per_finding}


def load_phantom_split(npz_path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels (N, 14), boxes (N, 14, 4)) of a phantom npz and the boxes
    file beside it (``chest_tf.data.phantom.boxes_path``)."""
    from chest_tf.data import phantom  # noqa: PLC0415

    npz_path = Path(npz_path)
    boxes_file = phantom.boxes_path(npz_path)
    if not npz_path.is_file():
        raise ConfigError(f"no phantom npz at {npz_path}")
    if not boxes_file.is_file():
        raise ConfigError(f"no boxes file {boxes_file} beside {npz_path} (is it a phantom set?)")
    with np.load(npz_path) as data, np.load(boxes_file) as box_data:
        key = f"{split}_boxes"
        if f"{split}_images" not in data or key not in box_data:
            raise ConfigError(f"{npz_path} or its boxes file has no '{split}' split")
        images, labels, boxes = data[f"{split}_images"], data[f"{split}_labels"], box_data[key]
    if len(boxes) != len(images):
        raise ConfigError(f"{boxes_file} holds {len(boxes)} {split} boxes for {len(images)} images")
    return images, labels, boxes


def run_phantom_npz(run_dir) -> Path:
    """The phantom npz a run trained on (its config's data.npz, or DATA_DIR/phantom[_SIZE].npz)."""
    from chest_tf.data import download  # noqa: PLC0415
    from chest_tf.data.info import get_info  # noqa: PLC0415
    from chest_tf.runs import read_run_dir  # noqa: PLC0415

    config, _ = read_run_dir(run_dir)
    data = config.data
    if data.dataset != "phantom":
        raise ConfigError(f"{run_dir} was trained on {data.dataset!r}; the pointing game needs the "
                          "phantom set's finding boxes")
    if data.npz:
        return Path(data.npz).expanduser()
    return download.npz_path(get_info("phantom"), int(data.size), data.data_dir)


# ----------------------------------------------------------------------------------------------
# Sanity check (Adebayo et al. 2018): heatmaps must depend on the learned weights
# ----------------------------------------------------------------------------------------------
def weight_groups(model) -> list[tuple[str, list[str]]]:
    """The model's weighted layers grouped by name prefix (``conv5``, ``pool4``,
    ``encoder_block4``, ``predictions`` ...), from the output back to the input: the steps of a
    cascading randomisation."""
    groups: list[tuple[str, list[str]]] = []
    for layer in reversed(model.layers):
        if not layer.weights:
            continue
        prefix = re.match(r"[a-z]+_block\d+|[^_]+", layer.name).group(0)
        if groups and groups[-1][0] == prefix:
            groups[-1][1].append(layer.name)
        else:
            groups.append((prefix, [layer.name]))
    return groups


def randomized_copy(model, randomize: Sequence[str] | None = None, *, seed: int = 0):
    """A copy of ``model`` with the layers named in ``randomize`` (all weighted layers when None)
    re-initialised by their own initialisers, the others keeping the trained weights. BatchNorm
    layers that are re-initialised get their initial statistics (mean 0, variance 1). Seeds the
    global Keras/TF/numpy RNGs with ``seed`` (``keras.utils.set_random_seed``). ``model`` itself
    is untouched."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(model)
    if randomize is None:
        return fresh
    chosen = set(randomize)
    unknown = chosen - {layer.name for layer in model.layers}
    if unknown:
        raise ConfigError(f"{model.name} has no layer(s) {sorted(unknown)}")
    for layer in model.layers:
        if layer.weights and layer.name not in chosen:
            fresh.get_layer(layer.name).set_weights(layer.get_weights())
    return fresh


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (B, ...) x (B, ...) -> (B,), mid-ranks for
    ties; NaN where either map is constant."""
    from chest_tf.metrics import midranks  # noqa: PLC0415

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        ra, rb = midranks(a[i]), midranks(b[i])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
        if denom > 0:
            out[i] = float((ra * rb).sum() / denom)
    return out


def sanity_check(model, images, targets, method: str | None = None, *, seed: int = 0, cascade: bool | int = True,
                 layer: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Rank correlation (Spearman, per image, then mean and median) between the trained model's
    heatmaps and those of copies with re-initialised weights: cascading from the output
    (``weight_groups`` order, each step adding the next group; ``cascade=N``: the first N steps
    only, False: none) and in full. Heatmaps that explain the model should decorrelate; a method
    that mostly reflects the input would not.

    Returns {"method", "n", "steps": [{"randomized": "predictions" / "... + conv5" / "all",
    "spearman_mean", "spearman_median", "abs_spearman_mean"}, ...]}."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prepare_images(images, model)
    explainer = Explainer(model, method, layer=layer)
    reference = explainer.heatmaps(images, targets, batch_size=batch_size)
    steps = []
    plan: list[tuple[str, list[str] | None]] = []
    if cascade:
        done: list[str] = []
        groups = weight_groups(model)
        if not isinstance(cascade, bool):
            groups = groups[:int(cascade)]
        for prefix, names in groups:
            done = done + names
            plan.append((prefix, list(done)))
    plan.append(("all", None))
    seen_prefixes: list[str] = []
    for prefix, names in plan:
        copy = randomized_copy(model, names, seed=seed)
        maps = Explainer(copy, explainer.method, layer=explainer.layer).heatmaps(images, targets,
                                                                                  batch_size=batch_size)
        rho = spearman(reference, maps)
        if prefix != "all":
            seen_prefixes.append(prefix)
        steps.append({
            "randomized": "all (full re-initialisation)" if prefix == "all" else " + ".join(seen_prefixes),
            "groups": len(seen_prefixes) if prefix != "all" else None,
            "spearman_mean": float(np.nanmean(rho)),
            "spearman_median": float(np.nanmedian(rho)),
            "abs_spearman_mean": float(np.nanmean(np.abs(rho))),
            "constant_maps": int(np.isnan(rho).sum()),
        })
    return {"method": explainer.method, "layer": explainer.layer, "n": len(images), "steps": steps}


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
OVERLAY_CMAP = "jet"
MAX_ALPHA = 0.6


def _display_image(image_uint8: np.ndarray) -> np.ndarray:
    image = np.asarray(image_uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def blend_overlay(image_uint8: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) image and a [0, 1] heatmap (any size) -> float32 RGB (H, W, 3) in [0, 1]:
    the colour-mapped heatmap blended over the image with opacity rising with the heat (up to
    ``MAX_ALPHA``), so cold regions show the plain X-ray. Nearest-neighbour resize of the heatmap
    when sizes differ (callers pass it at the image size when they care)."""
    import matplotlib  # noqa: PLC0415

    image = _display_image(image_uint8).astype(np.float32) / 255.0
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != rgb.shape[:2]:
        ys = (np.arange(rgb.shape[0]) * heat.shape[0] // rgb.shape[0])
        xs = (np.arange(rgb.shape[1]) * heat.shape[1] // rgb.shape[1])
        heat = heat[ys][:, xs]
    colour = matplotlib.colormaps[OVERLAY_CMAP](np.clip(heat, 0, 1))[..., :3].astype(np.float32)
    alpha = (MAX_ALPHA * np.clip(heat, 0, 1))[..., None]
    return (1 - alpha) * rgb + alpha * colour


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) map to (height, width), bilinear (half-pixel centres), clipped to [0, 1]."""
    from keras import ops  # noqa: PLC0415

    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape == (height, width):
        return heatmap
    out = ops.image.resize(heatmap[None, ..., None], (height, width), interpolation="bilinear")
    return np.clip(ops.convert_to_numpy(out)[0, ..., 0], 0.0, 1.0)


@dataclass
class Panel:
    """One explained (image, finding)."""

    image: np.ndarray  # uint8 (H, W, C) as read
    heatmap: np.ndarray  # (h, w) at the model's input size, [0, 1]
    finding: str
    prob: float
    method: str
    source: str  # file name or caption
    extra: dict = field(default_factory=dict)

    def title(self) -> str:
        return f"{self.finding}  p={self.prob:.3f}"


def _draw_panel(ax, panel: Panel, overlay: bool, title: str | None) -> None:
    image = _display_image(panel.image)
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest" if max(height, width) < 256 else "antialiased")
    if overlay:
        import matplotlib  # noqa: PLC0415

        heat = resize_heatmap(panel.heatmap, height, width)
        rgba = matplotlib.colormaps[OVERLAY_CMAP](heat)
        rgba[..., 3] = MAX_ALPHA * heat
        ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_overlay(panel: Panel, path: str | Path) -> Path:
    """Two panels (the X-ray; the heatmap over it, with a colour bar), titled with the finding,
    its probability, the method and the file."""
    import matplotlib  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(7.2, 3.9), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _draw_panel(left, panel, overlay=False, title="X-ray")
    empty = not np.any(panel.heatmap > 0)
    _draw_panel(right, panel, overlay=True,
                title=METHOD_TITLES[panel.method] + (": no positive evidence (empty map)" if empty else ""))
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=OVERLAY_CMAP)
    fig.colorbar(mappable, ax=right, fraction=0.046, pad=0.03, label="relevance")
    fig.suptitle(f"{panel.finding}: p = {panel.prob:.3f}\n{panel.source}", fontsize=11)
    return _save_figure(fig, path)


def save_contact_sheet(panels: Sequence[Panel], path: str | Path, columns: int | None = None,
                       title: str | None = None) -> Path:
    """All panels' overlays on one page, each captioned with its file, finding and probability."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    n = len(panels)
    columns = columns or min(n, 5)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        empty = "" if np.any(panel.heatmap > 0) else " (empty)"
        _draw_panel(ax, panel, overlay=True, title=f"{_short(panel.source)}\n{panel.title()}{empty}")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save_figure(fig, path)


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def _save_figure(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.clear()
    return path


# ----------------------------------------------------------------------------------------------
# Models from files, and explaining files
# ----------------------------------------------------------------------------------------------
def load_model_and_metadata(model_path, dataset: str | None = None):
    """(keras model, metadata) for a run folder, a .keras file or an export folder, with the
    label names, task and activation of ``chest_tf.export.build_metadata`` (as predict uses)."""
    from chest_tf import export, predict  # noqa: PLC0415
    from chest_tf.runs import load_keras_model  # noqa: PLC0415

    path = Path(model_path)
    if not path.exists():
        raise ConfigError(f"model not found: {path}")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        keras_file = path / export.KERAS_FILENAME
        if not keras_file.is_file():
            raise ConfigError(f"the export {path} has no {export.KERAS_FILENAME} to explain (gradients need the Keras model)")
        return load_keras_model(keras_file), export.read_metadata(path)
    predictor = predict.load_predictor(path, dataset)
    return predictor.handle, predictor.metadata


@dataclass
class Target:
    """What to explain for one image: output ``index`` (with ``sign``), its display name, its probability."""

    index: int
    sign: float
    name: str
    prob: float


def output_probabilities(logits: np.ndarray, metadata: dict) -> np.ndarray:
    """Probabilities by the export metadata's activation, with the metrics module's (overflow-safe)
    sigmoid and softmax."""
    from chest_tf import metrics  # noqa: PLC0415

    if metadata.get("activation", "sigmoid") == "softmax":
        return metrics.softmax(logits, axis=-1)
    return metrics.sigmoid(logits)


def choose_targets(probs: np.ndarray, metadata: dict, labels: Sequence[str] | None = None,
                   top_k: int | None = None) -> list[Target]:
    """The findings to explain for one image's probabilities: the named ``labels`` (output names,
    or for a one-logit binary model either class name), else the ``top_k`` most probable outputs
    (default 1; for a one-logit binary model its two classes, so top-1 is the predicted class)."""
    names = list(metadata["output_names"])
    if labels:
        targets = []
        classes = list(metadata.get("class_names") or [])
        for label in labels:
            key = label.strip().lower()
            lowered = [n.lower() for n in names]
            if key in lowered:
                k = lowered.index(key)
                targets.append(Target(k, 1.0, names[k], float(probs[k])))
            elif len(names) == 1 and len(classes) == 2 and key == classes[0].lower():
                targets.append(Target(0, -1.0, classes[0], float(1.0 - probs[0])))
            else:
                known = names + ([classes[0]] if len(names) == 1 and len(classes) == 2 else [])
                raise ConfigError(f"unknown label '{label}'; this model's outputs: {', '.join(known)}")
        return targets
    k = 1 if top_k is None else top_k
    if k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {k}")
    classes = list(metadata.get("class_names") or [])
    if len(names) == 1 and len(classes) == 2:
        # One-logit binary model: rank both classes (the negative one is the negated logit).
        both = [Target(0, 1.0, names[0], float(probs[0])), Target(0, -1.0, classes[0], float(1.0 - probs[0]))]
        return sorted(both, key=lambda t: -t.prob)[:k]
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [Target(int(i), 1.0, names[int(i)], float(probs[int(i)])) for i in order]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def explain_files(model, metadata: dict, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  labels: Sequence[str] | None = None, top_k: int | None = None, method: str | None = None,
                  layer: str | None = None, max_pixels: int | None = None, contact_sheet: bool = True,
                  err=None) -> dict[str, Any]:
    """Explain image files (folders walked as predict does) into ``out_dir``; returns the summary
    written to ``explanations.json``. Unreadable files are reported on ``err`` and skipped."""
    from chest_tf import imageio  # noqa: PLC0415

    err = err if err is not None else sys.stderr
    paths = imageio.find_images(inputs)
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, inputs))} ({', '.join(imageio.IMAGE_EXTENSIONS)})")
    explainer = Explainer(model, method, layer=layer)
    method_tag = explainer.method.replace("+", "p")  # gradcam++ -> gradcampp in file names
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels, results, errors = [], [], []
    used_names: set[str] = set()
    for path in paths:
        try:
            image = imageio.read_image(path, max_pixels or imageio.DEFAULT_MAX_PIXELS)
        except ChestTFError as exc:
            errors.append({"file": str(path), "error": str(exc)})
            print(f"error: {exc}", file=err, flush=True)
            continue
        x = prepare_images(image[None], model)
        probs = output_probabilities(explainer.logits(x)[0], metadata)
        targets = choose_targets(probs, metadata, labels, top_k)
        maps = explainer.heatmaps(np.repeat(x, len(targets), axis=0), [t.index for t in targets],
                                  [t.sign for t in targets])
        stem = _slug(path.stem)
        while stem in used_names:
            stem += "_"
        used_names.add(stem)
        height, width = image.shape[:2]
        for target, heatmap in zip(targets, maps):
            panel = Panel(image, heatmap, target.name, target.prob, explainer.method, path.name)
            overlay = save_overlay(panel, out_dir / f"{stem}_{_slug(target.name)}_{method_tag}.png")
            full = resize_heatmap(heatmap, height, width)
            py, px = np.unravel_index(int(peak_pixels(full[None])[0]), full.shape)
            results.append({"file": str(path), "width": int(width), "height": int(height), "finding": target.name,
                            "output_index": target.index, "sign": target.sign, "prob": target.prob,
                            "method": explainer.method, "layer": explainer.layer, "overlay": str(overlay),
                            "peak_xy": [int(px), int(py)] if heatmap.max() > 0 else None,
                            "empty_map": bool(heatmap.max() <= 0)})
            panels.append(panel)
    sheet = None
    if contact_sheet and len(panels) > 1:
        sheet = str(save_contact_sheet(panels, out_dir / "contact_sheet.png",
                                       title=f"{METHOD_TITLES[explainer.method]} - {metadata.get('arch') or model.name}"))
    summary = {"model": {"name": model.name, "arch": metadata.get("arch"), "dataset": metadata.get("dataset"),
                         "input": [explainer.height, explainer.width, explainer.channels]},
               "method": explainer.method, "layer": explainer.layer, "results": results, "contact_sheet": sheet,
               "errors": errors}
    (out_dir / "explanations.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------
# TensorBoard panel
# ----------------------------------------------------------------------------------------------
def __getattr__(name: str):
    # The callback subclasses keras.callbacks.Callback; defined on first use so that importing this
    # module (and the CLI's argument errors) does not wait for TensorFlow.
    if name == "ExplanationPanel":
        cls = _make_explanation_panel()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_explanation_panel():
    import keras  # noqa: PLC0415

    class ExplanationPanel(keras.callbacks.Callback):
        """Keras callback: after every ``every`` epochs, overlays for a fixed set of (validation)
        images go to TensorBoard as one image grid, ``explanations/<method>`` under ``log_dir``.

            panel = ExplanationPanel(classifier, val_images[:8], run_dir / "tensorboard" / "validation",
                                     targets=[...], label_names=info.labels)
            fit_model.fit(..., callbacks=[..., panel])

        ``classifier`` is the model whose weights are being trained (training fits the classifier
        wrapped with augmentation, so the callback's own ``self.model`` is not necessarily it).
        ``images``: float32 (N, H, W, C) in [-1, 1]; ``targets``: output index per image (default:
        each image's most probable output at that epoch).
        """

        def __init__(self, classifier, images, log_dir, *, targets=None, method: str | None = None,
                     every: int = 1, label_names: Sequence[str] | None = None, scale: int | None = None):
            super().__init__()
            self.classifier, self.images = classifier, np.asarray(images, np.float32)
            self.log_dir, self.targets, self.method_name = Path(log_dir), targets, method
            self.every, self.label_names = max(1, int(every)), label_names
            self.scale = scale or max(1, 112 // self.images.shape[1])
            self._explainer = None
            self._writer = None

        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % self.every:
                return
            import tensorflow as tf  # noqa: PLC0415

            if self._explainer is None:
                self._explainer = Explainer(self.classifier, self.method_name)
                self._writer = tf.summary.create_file_writer(str(self.log_dir))
            grid = self.render()
            with self._writer.as_default():
                tf.summary.image(f"explanations/{self._explainer.method}", grid[None], step=epoch)
                tf.summary.text(f"explanations/{self._explainer.method}_targets", self.caption(), step=epoch)
            self._writer.flush()

        def render(self) -> np.ndarray:
            """The (rows*H*s, cols*W*s, 3) float grid in [0, 1] written at each logged epoch: the
            images (top row) and the overlays (bottom row)."""
            explainer = self._explainer or Explainer(self.classifier, self.method_name)
            self._explainer = explainer
            targets = self.targets
            if targets is None:
                targets = np.argmax(explainer.logits(self.images), axis=-1)
            self._last_targets = np.asarray(targets)
            maps = explainer.heatmaps(self.images, targets)
            uint8 = np.clip(np.rint((self.images + 1.0) * 127.5), 0, 255).astype(np.uint8)
            s = self.scale
            tiles_top, tiles_bottom = [], []
            for image, heat in zip(uint8, maps):
                big = np.kron(image, np.ones((s, s, 1), np.uint8))
                heat_big = resize_heatmap(heat, big.shape[0], big.shape[1])
                tiles_bottom.append(blend_overlay(big, heat_big))
                tiles_top.append(blend_overlay(big, np.zeros_like(heat_big)))
            return np.concatenate([np.concatenate(tiles_top, axis=1), np.concatenate(tiles_bottom, axis=1)], axis=0)

        def caption(self) -> str:
            """Which output each column explains (markdown, for TensorBoard's text tab)."""
            names = self.label_names
            targets = getattr(self, "_last_targets", [])
            cells = [str(names[int(t)]) if names is not None else f"output {int(t)}" for t in targets]
            return "columns, left to right: " + ", ".join(cells)

        def on_train_end(self, logs=None):
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    ExplanationPanel.__module__ = __name__
    return ExplanationPanel


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.explain",
        description="Heatmaps of where a chest X-ray classifier looks (Grad-CAM, Grad-CAM++, attention "
                    "rollout), written as overlay PNGs for image files.",
    )
    parser.add_argument("model", help="run folder, .keras file or export folder")
    parser.add_argument("inputs", nargs="+", help="image files and folders (PNG, JPEG, DICOM; any size)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--label", action="append", metavar="NAME",
                       help="explain this finding (repeatable; comma-separated also works)")
    which.add_argument("--top-k", type=int, metavar="K", help="explain the K most probable findings (default 1)")
    parser.add_argument("--method", choices=("auto", *METHODS), default="auto",
                        help="default: gradcam for CNNs, grad-rollout for ViTs")
    parser.add_argument("--layer", help="Grad-CAM: explain this layer's feature map instead of the last conv stage")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--dataset", help="label names and task for a bare .keras file")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default as predict)")
    parser.add_argument("--no-contact-sheet", action="store_true", help="only the per-image overlays")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = [part for value in (args.label or []) for part in value.split(",") if part.strip()] or None
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {args.max_pixels}")
    model, metadata = load_model_and_metadata(args.model, args.dataset)
    summary = explain_files(model, metadata, args.inputs, args.out, labels=labels, top_k=args.top_k,
                            method=args.method, layer=args.layer, max_pixels=args.max_pixels,
                            contact_sheet=not args.no_contact_sheet)
    for row in summary["results"]:
        print(f"{row['file']}: {row['finding']} p={row['prob']:.3f} -> {row['overlay']}")
    if summary["contact_sheet"]:
        print(f"contact sheet: {summary['contact_sheet']}")
    print(f"explained {len({r['file'] for r in summary['results']})} image(s) with {summary['method']}"
          + (f", {len(summary['errors'])} failed" if summary["errors"] else "") + f" -> {args.out}", file=sys.stderr)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
