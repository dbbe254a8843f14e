"""Heatmaps of where a classifier looks, behind one API:

    maps = explain(model, images, label, method)      # (B, H, W) float32 in [0, 1], input size
    explainer = Explainer(model, method)               # keeps its traced computation between calls
    maps = explainer.heatmaps(images, targets=2)

Methods (default ``gradcam`` for CNNs and ``grad-rollout`` for ViTs; ``METHODS``):

CNNs (a convolutional feature map, ``CNN_METHODS``):

- ``gradcam`` (Selvaraju et al. 2017): the last convolutional stage, found by layer name
  (``chest_tf.models.registry.last_conv_layer_name``: ``conv5_block{N}_out`` for ResNets,
  ``relu`` for DenseNets), weighted by the spatial mean of the gradient of the finding's logit;
  ReLU.
- ``gradcam++`` (Chattopadhay et al. 2018): per-position weights
  ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` on the positive gradients (the closed form for an
  exponentiated score, which only rescales each image's map).
- ``hirescam`` (Draelos & Carin 2020): the gradient times the activation at each position,
  summed over channels, ReLU: no spatial averaging of the gradient, so the map shows where the
  score came from at the feature map's resolution.
- ``layercam`` (Jiang et al. 2021): per stage, ``relu(sum_c relu(g) * A)``, each stage's map
  scaled by ``tanh(2 cam / max cam)`` and upsampled to the input, fused by the element-wise
  maximum over the last ``stages`` resolutions (default 3: 14x14, 7x7, 4x4 for a ResNet at 28 px):
  finer than the last stage alone.

ViTs (``VIT_METHODS``):

- ``rollout`` (Abnar & Zuidema 2020): per block, the attention averaged over heads, plus the
  identity (the residual path), rows renormalised; multiplied through the blocks,
  ``R = A_L ... A_1``; the class token's row over the patches, or (``pool="gap"`` ViTs) the mean
  of the rows. Class-agnostic: the same map for every finding.
- ``grad-rollout`` (Chefer et al. 2021, "Generic attention-model explainability"): per block
  ``A_bar = mean_heads(relu(dS/dA * A))`` for the finding's logit S, and ``R <- R + A_bar R``
  from ``R = I``; read out as above. Class-specific.

Any model (``ANY_METHODS``; they only need the input and the output):

- ``occlusion`` (Zeiler & Fergus 2014): a ``window``-pixel square (default size/7) slid with
  ``stride`` (default window/2) is replaced by a blurred copy of the image (``occlusion_sigma``,
  default size/10 px); each pixel's value is the mean drop of the finding's logit over the windows
  that cover it, ReLU. One forward pass per window position.
- ``integrated-gradients`` (Sundararajan et al. 2017): ``(x - x0) * mean_a dS/dx(x0 + a (x - x0))``
  over ``steps`` (default 32) midpoints from the black image x0 = -1, absolute value summed over
  channels.
- ``smoothgrad`` (Smilkov et al. 2017): the mean over ``samples`` (default 25) noisy copies
  (Gaussian, sd ``noise`` = 0.15 of the input range) of ``|dS/dx|`` summed over channels; the
  noise is seeded (``seed``), so maps repeat.

Both gradient methods are batched: each step or sample is one compiled gradient call on the whole
batch.

Every heatmap is upsampled (bilinear, half-pixel centres) to the model's input size and min-max
normalised per image to [0, 1] (a constant map becomes all 0: Grad-CAM's "no positive evidence").
The class score is the finding's logit (pre-sigmoid / pre-softmax); a one-logit binary model's
negative class is explained with the negated logit. ``layer=`` explains another feature map (e.g.
``conv4_block2_out``) with the single-layer CAMs: at 28 px the last stage is only 4x4 (ResNet) or
3x3 (DenseNet) cells, which bounds how finely it can point.

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
from chest_tf.models.vit import vit_attention_layer_names, vit_with_attention
from chest_tf.serving.signature import model_input_spec, preprocess

CNN_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
VIT_METHODS = ("rollout", "grad-rollout")
ANY_METHODS = ("occlusion", "integrated-gradients", "smoothgrad")
METHODS = (*CNN_METHODS, *VIT_METHODS, *ANY_METHODS)
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
                 "layercam": "LayerCAM (fused stages)", "rollout": "attention rollout",
                 "grad-rollout": "gradient-weighted rollout", "occlusion": "occlusion sensitivity",
                 "integrated-gradients": "Integrated Gradients", "smoothgrad": "SmoothGrad"}
DEFAULT_BATCH_SIZE = 64
SINGLE_LAYER_CAMS = ("gradcam", "gradcam++", "hirescam")


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


def family_methods(model) -> tuple[str, ...]:
    """The methods that apply to ``model``: its family's and the model-agnostic ones."""
    return (*(VIT_METHODS if is_vit(model) else CNN_METHODS), *ANY_METHODS)


def stage_layers(model, stages: int = 3) -> list[str]:
    """The deepest layer at each of the last ``stages`` spatial resolutions of a CNN's 4-D feature
    maps (for a ResNet at 28 px: conv3_block2_out 14x14, conv4_block2_out 7x7, conv5_block2_out
    4x4): LayerCAM's stages."""
    last_at: dict[tuple[int, int], str] = {}
    order: list[tuple[int, int]] = []
    for layer in model.layers:
        output = layer.output
        if isinstance(output, (list, tuple)) or len(output.shape) != 4 or layer.name == model.layers[0].name:
            continue
        key = (int(output.shape[1]), int(output.shape[2]))
        if key in last_at:
            order.remove(key)
        last_at[key] = layer.name
        order.append(key)
    if not order:
        raise ConfigError(f"{model.name} has no 4-D feature map")
    return [last_at[key] for key in order[-stages:]]


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
                          f"use one of {', '.join(family_methods(model))}")
    if not vit and method in VIT_METHODS:
        raise ConfigError(f"{method} needs a ViT's attention maps and {model.name} is not a chest_tf ViT; "
                          f"use one of {', '.join(family_methods(model))}")
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
    binary model). ``layer`` (Grad-CAM, Grad-CAM++, HiResCAM): the feature map to explain, default
    the last convolutional stage. Method options (see the module docstring): ``stages``
    (layercam), ``window``, ``stride``, ``occlusion_sigma`` (occlusion), ``steps``
    (integrated-gradients), ``samples``, ``noise``, ``seed`` (smoothgrad).
    """

    def __init__(self, model, method: str | None = None, *, layer: str | None = None, stages: int = 3,
                 window: int | None = None, stride: int | None = None, occlusion_sigma: float | None = None,
                 steps: int = 32, samples: int = 25, noise: float = 0.15, seed: int = 0):
        self.model = model
        self.method = resolve_method(model, method)
        self.height, self.width, self.channels = _input_hwc(model)
        self.num_outputs = int(model.output_shape[-1])
        self.layer, self.layers = None, []
        if layer is not None and self.method not in SINGLE_LAYER_CAMS:
            raise ConfigError(f"layer= applies to {', '.join(SINGLE_LAYER_CAMS)}; {self.method} does not take one")
        if self.method in SINGLE_LAYER_CAMS:
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
            self.layers = [self.layer]
            self._graph = keras.Model(model.inputs, [feature, model.outputs[0]], name=f"{model.name}_gradcam")
        elif self.method == "layercam":
            if stages < 1:
                raise ConfigError(f"stages must be at least 1, got {stages}")
            self.layers = stage_layers(model, stages)
            self.layer = "+".join(self.layers)
            features = [model.get_layer(name).output for name in self.layers]
            self._graph = keras.Model(model.inputs, [*features, model.outputs[0]], name=f"{model.name}_layercam")
        elif self.method in VIT_METHODS:
            self._graph = vit_with_attention(model)
            self.class_token = _has_class_token(model)
            tokens = int(self._graph.outputs[0].shape[-1]) - int(self.class_token)
            patch = math.sqrt(self.height * self.width / tokens)
            self.grid = (round(self.height / patch), round(self.width / patch))
            if self.grid[0] * self.grid[1] != tokens:
                raise ConfigError(f"cannot lay {tokens} tokens out on a grid for a {self.height}x{self.width} input")
        else:
            self._graph = model
        side = min(self.height, self.width)
        self.window = int(window if window is not None else max(2, round(side / 7)))
        self.stride = int(stride if stride is not None else max(1, self.window // 2))
        self.occlusion_sigma = float(occlusion_sigma if occlusion_sigma is not None else max(1.0, side / 10))
        self.steps, self.samples, self.noise, self.seed = int(steps), int(samples), float(noise), int(seed)
        for name, value in (("window", self.window), ("stride", self.stride), ("steps", self.steps),
                            ("samples", self.samples)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.occlusion_sigma <= 0:
            raise ConfigError(f"occlusion_sigma must be positive, got {self.occlusion_sigma}")
        if self.window > side:
            raise ConfigError(f"window {self.window} is larger than the {side} px input")
        self._fn = None
        self._rng = np.random.default_rng(self.seed)

    # -- public -------------------------------------------------------------------------------
    def heatmaps(self, images, targets=0, signs=None, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(B, H, W) float32 heatmaps in [0, 1] at the model's input size."""
        images = self._check_images(images)
        n = len(images)
        targets = self._per_image(targets, n, "targets", np.int32)
        signs = self._per_image(1.0 if signs is None else signs, n, "signs", np.float32)
        if np.any((targets < 0) | (targets >= self.num_outputs)):
            raise ConfigError(f"targets must be output indices in 0..{self.num_outputs - 1}")
        out = np.zeros((n, self.height, self.width), np.float32)
        if self.method in ANY_METHODS:
            body = {"occlusion": self._occlusion, "integrated-gradients": self._integrated_gradients,
                    "smoothgrad": self._smoothgrad}[self.method]
            # gradient calls hold about 256 images of 28 px at a time; occlusion 8 images' windows
            per_batch = max(1, batch_size // 8) if self.method == "occlusion" else \
                max(1, int(batch_size * 4 * 784 / (self.height * self.width)))
            self._rng = np.random.default_rng(self.seed)
            for lo in range(0, n, per_batch):
                hi = min(n, lo + per_batch)
                raw = body(images[lo:hi], targets[lo:hi], signs[lo:hi])
                out[lo:hi] = ops.convert_to_numpy(upsample_and_normalize(raw, (self.height, self.width)))
            return out
        fn = self._function()
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            out[lo:hi] = fn(images[lo:hi], targets[lo:hi], signs[lo:hi]).numpy()
        return out

    def logits(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(B, K) float32 logits of the model (inference mode)."""
        images = self._check_images(images)
        out = np.zeros((len(images), self.num_outputs), np.float32)
        fn = self._logits_function()
        for lo in range(0, len(images), batch_size):
            out[lo:lo + batch_size] = fn(images[lo:lo + batch_size]).numpy()
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

    def _spec(self):
        return [tf.TensorSpec((None, self.height, self.width, self.channels), tf.float32),
                tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.float32)]

    def _function(self):
        if self._fn is None:
            body = {"gradcam": self._gradcam, "gradcam++": self._gradcam, "hirescam": self._gradcam,
                    "layercam": self._layercam, "rollout": self._rollout,
                    "grad-rollout": self._grad_rollout}[self.method]
            self._fn = tf.function(body, input_signature=self._spec(), reduce_retracing=True)
        return self._fn

    def _logits_function(self):
        if getattr(self, "_logits_fn", None) is None:
            spec = [tf.TensorSpec((None, self.height, self.width, self.channels), tf.float32)]
            self._logits_fn = tf.function(lambda x: ops.cast(self.model(x, training=False), "float32"),
                                          input_signature=spec, reduce_retracing=True)
        return self._logits_fn

    def _input_gradient_function(self):
        if getattr(self, "_grad_fn", None) is None:
            def body(images, targets, signs):
                with tf.GradientTape() as tape:
                    tape.watch(images)
                    score = ops.sum(self._scores(self.model(images, training=False), targets, signs))
                return ops.cast(tape.gradient(score, images), "float32")
            self._grad_fn = tf.function(body, input_signature=self._spec(), reduce_retracing=True)
        return self._grad_fn

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
        if self.method == "hirescam":
            return self._finish(ops.relu(ops.sum(grads * feature, axis=-1)))
        if self.method == "gradcam":
            weights = ops.mean(grads, axis=(1, 2), keepdims=True)
        else:
            g2 = grads * grads
            denom = 2.0 * g2 + ops.sum(feature, axis=(1, 2), keepdims=True) * g2 * grads
            alpha = g2 / ops.where(ops.not_equal(denom, 0.0), denom, ops.ones_like(denom))
            weights = ops.sum(alpha * ops.relu(grads), axis=(1, 2), keepdims=True)
        cam = ops.relu(ops.sum(weights * feature, axis=-1))
        return self._finish(cam)

    def _layercam(self, images, targets, signs):
        with tf.GradientTape() as tape:
            *features, logits = self._graph(images, training=False)
            score = ops.sum(self._scores(logits, targets, signs))
        grads = tape.gradient(score, features)
        fused = None
        for feature, grad in zip(features, grads):
            feature, grad = ops.cast(feature, "float32"), ops.cast(grad, "float32")
            cam = ops.relu(ops.sum(ops.relu(grad) * feature, axis=-1))
            top = ops.max(cam, axis=(1, 2), keepdims=True)
            cam = ops.tanh(2.0 * cam / ops.where(top > 0, top, ops.ones_like(top)))
            cam = ops.image.resize(ops.expand_dims(cam, -1), (self.height, self.width), interpolation="bilinear",
                                   data_format="channels_last")[..., 0]
            fused = cam if fused is None else ops.maximum(fused, cam)
        return self._finish(fused)

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
            # A ViT's last block may query with the class token only: (B, heads, 1, T) scores,
            # the identity's first row, and a rollout of that row alone.
            a = ops.mean(attention, axis=1) + eye[:attention.shape[-2]]
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
            rollout = rollout[:, :attention.shape[-2]] + ops.matmul(weighted, rollout)
        return self._finish(self._readout(rollout))

    # -- model-agnostic methods (numpy loops over compiled calls) ----------------------------------
    def _occlusion(self, images, targets, signs):
        """(b, H, W) mean logit drop over the windows covering each pixel, ReLU."""
        n = len(images)
        reference = blur(images, self.occlusion_sigma)
        ys = list(range(0, self.height - self.window + 1, self.stride))
        xs = list(range(0, self.width - self.window + 1, self.stride))
        if ys[-1] != self.height - self.window:
            ys.append(self.height - self.window)
        if xs[-1] != self.width - self.window:
            xs.append(self.width - self.window)
        positions = [(y, x) for y in ys for x in xs]
        base = self._picked(self.logits(images), targets, signs)
        total = np.zeros((n, self.height, self.width), np.float64)
        count = np.zeros((self.height, self.width), np.float64)
        chunk = max(1, 512 // max(1, n))
        for lo in range(0, len(positions), chunk):
            block = positions[lo:lo + chunk]
            batch = np.repeat(images[None], len(block), axis=0)
            for j, (y, x) in enumerate(block):
                batch[j, :, y:y + self.window, x:x + self.window] = reference[:, y:y + self.window, x:x + self.window]
            scores = self._picked(self.logits(batch.reshape(-1, *images.shape[1:]), batch_size=512)
                                  .reshape(len(block), n, -1), targets, signs)
            for j, (y, x) in enumerate(block):
                total[:, y:y + self.window, x:x + self.window] += (base - scores[j])[:, None, None]
        for y, x in positions:
            count[y:y + self.window, x:x + self.window] += 1
        return np.maximum(total / np.maximum(count, 1), 0.0).astype(np.float32)

    @staticmethod
    def _picked(logits, targets, signs):
        """The explained score per image from (..., b, K) logits."""
        return np.take_along_axis(logits, targets.reshape(*([1] * (logits.ndim - 2)), -1, 1).astype(np.int64),
                                  axis=-1)[..., 0] * signs

    def _integrated_gradients(self, images, targets, signs):
        """(b, H, W): |(x - x0) * mean gradient along the straight path from x0 = -1| over channels."""
        fn = self._input_gradient_function()
        baseline = -np.ones_like(images)
        total = np.zeros_like(images)
        for a in (np.arange(self.steps) + 0.5) / self.steps:
            total += fn(baseline + np.float32(a) * (images - baseline), targets, signs).numpy()
        return np.abs((images - baseline) * total / self.steps).sum(axis=-1)

    def _smoothgrad(self, images, targets, signs):
        """(b, H, W): mean over noisy copies of |dS/dx|, summed over channels."""
        fn = self._input_gradient_function()
        rng = self._rng          # seeded at the start of each heatmaps() call: maps repeat
        sd = np.float32(self.noise * 2.0)          # the input range is [-1, 1]
        total = np.zeros_like(images)
        for _ in range(self.samples):
            noisy = images + sd * rng.standard_normal(images.shape, dtype=np.float32)
            total += np.abs(fn(noisy, targets, signs).numpy())
        return (total / self.samples).sum(axis=-1)

    def _finish(self, maps):
        """(B, h, w) -> bilinear to the input size -> per-image min-max to [0, 1]."""
        return upsample_and_normalize(maps, (self.height, self.width))


def blur(images, sigma: float) -> np.ndarray:
    """(B, H, W, C) images blurred by a Gaussian of ``sigma`` px (separable, reflected edges): the
    'information removed' reference of occlusion, deletion and insertion."""
    images = np.asarray(images, np.float32)
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    out = images
    for axis in (1, 2):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if n > radius else "edge")
        acc = np.zeros_like(out)
        for j, w in enumerate(taps):
            acc += w * np.take(padded, np.arange(j, j + n), axis=axis)
        out = acc
    return out


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
def explain(model, images, label=0, method: str | None = None, *, signs=None, layer: str | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE, **options) -> np.ndarray:
    """``explain(model, images, label, method) -> maps``: (B, H, W) float32 heatmaps in [0, 1] at
    the model's input size, of output ``label`` (one index, or one per image) by ``method``
    (``METHODS``; default by family). ``images``: float32 (B, H, W, C) in [-1, 1] (or uint8, which
    ``prepare_images`` converts). ``options``: the method's settings (see ``Explainer``)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prepare_images(images, model)
    return Explainer(model, method, layer=layer, **options).heatmaps(images, label, signs, batch_size=batch_size)


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
