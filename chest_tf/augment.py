"""On-device augmentation for chest radiographs, written with keras.ops only.

Augmentation runs on the accelerator inside the compiled training step, so it must be
XLA-compilable. Keras' own RandomRotation / RandomZoom / RandomTranslation set
``supports_jit = False``, and a single such layer makes Keras silently compile the whole step
without XLA; ``keras.ops.image.affine_transform`` has no XLA kernel either. Here geometry is an
affine sampling grid per image, sampled bilinearly with gathers (``keras.ops.take``), and the
photometric changes are elementwise ops. Nothing imports TensorFlow, so the same layer runs on
the JAX and PyTorch backends.

Value range: images are float ``(x / 255 - 0.5) / 0.5`` in [-1, 1] (chest_tf.data.normalization).
Photometric changes work on the [0, 1] view and map back; the output is clipped to [-1, 1].

Contract with training and export (see ``attach_augmentation``): the classifier itself never
contains augmentation. Training wraps it as ``input -> ChestAugment -> classifier`` and fits the
wrapper; the wrapper shares the classifier's weights, so after ``fit`` the original classifier is
trained and is the model that gets saved and exported.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
from keras import ops

from chest_tf.data.normalization import PIXEL_MAX, PIXEL_MEAN, PIXEL_MIN, PIXEL_STD

FILL_MODES = ("nearest", "constant")
ERASE_FILLS = ("noise", "mean")
# Random-erasing rectangles get an aspect ratio drawn log-uniformly in [1/3.3, 3.3] (the usual
# range for cutout-style erasing); the area is what the config controls.
_ERASE_LOG_ASPECT = math.log(3.3)


# --------------------------------------------------------------------------------------------
# Configuration and presets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; every zero / neutral value switches that part off.

    Each image draws its own strength uniformly up to these limits.

    Geometry (one affine resampling per image):
      rotation_deg: max |angle| in degrees; positive = counter-clockwise as displayed.
      translate_frac: max shift as a fraction of the image height / width.
      scale_range: (min, max) isotropic zoom, drawn log-uniformly; > 1 magnifies.
      shear_deg: max |horizontal shear angle| in degrees.
      flip_horizontal: mirror left-right with probability 0.5. Off by default: a chest X-ray is
        not left-right symmetric (the heart sits on the patient's left, dextrocardia is a finding).
      fill_mode: what is sampled outside the image. "nearest" (default) repeats the edge pixel;
        "constant" fills with black (-1.0). Nearest is the default because it matches whatever
        the border is: where a radiograph's edge is dark air, it repeats dark; but MedMNIST
        images are often tight crops whose edges are not dark at all (PneumoniaMNIST's border
        pixels average 135/255, next to the image mean of 147/255), and there a black fill paints
        a high-contrast wedge that no test image has. At these small angles and shifts the
        repeated edge is a strip of a pixel or two (28 px) that continues the local intensity.

    Photometric (on the [0, 1] view of the image):
      brightness: max |additive shift|.
      contrast: max |relative change| of the contrast around the image mean (0.2 -> x0.8..x1.2).
      gamma: gamma drawn log-uniformly in [1 / (1 + gamma), 1 + gamma].
      noise_std: each image adds gaussian noise with a std drawn in [0, noise_std].
      erase_prob: probability that an image gets one random rectangle erased (cutout).
      erase_area: (min, max) fraction of the image area the rectangle covers.
      erase_fill: "noise" (gaussian with the image's own mean and std) or "mean" (flat mean).
    """

    rotation_deg: float = 0.0
    translate_frac: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    shear_deg: float = 0.0
    flip_horizontal: bool = False
    fill_mode: str = "nearest"
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise_std: float = 0.0
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.1)
    erase_fill: str = "noise"

    def __post_init__(self):
        # JSON / TOML give lists; keep tuples so configs compare and hash as values.
        object.__setattr__(self, "scale_range", _pair("scale_range", self.scale_range))
        object.__setattr__(self, "erase_area", _pair("erase_area", self.erase_area))
        for name in ("rotation_deg", "translate_frac", "shear_deg", "brightness", "contrast",
                     "gamma", "noise_std"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.rotation_deg <= 180.0:
            raise ValueError(f"rotation_deg must be in [0, 180], got {self.rotation_deg}")
        if not 0.0 <= self.shear_deg < 60.0:
            raise ValueError(f"shear_deg must be in [0, 60), got {self.shear_deg}")
        if self.translate_frac >= 1.0:
            raise ValueError(f"translate_frac must be < 1, got {self.translate_frac}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")
        low, high = self.erase_area
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"erase_area must satisfy 0 < min <= max <= 1, got {self.erase_area}")
        if self.contrast >= 1.0:
            raise ValueError(f"contrast must be < 1 (a factor of 1 - contrast must stay > 0), "
                             f"got {self.contrast}")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        if self.erase_fill not in ERASE_FILLS:
            raise ValueError(f"erase_fill must be one of {ERASE_FILLS}, got {self.erase_fill!r}")

    @property
    def has_geometry(self) -> bool:
        return bool(self.rotation_deg or self.translate_frac or self.shear_deg
                    or self.flip_horizontal or self.scale_range != (1.0, 1.0))

    @property
    def has_photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.gamma or self.noise_std
                    or self.erase_prob)

    @property
    def is_identity(self) -> bool:
        return not (self.has_geometry or self.has_photometric)

    def replace(self, **changes) -> AugmentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pair(name, value) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
    return values


_LIGHT = AugmentConfig(rotation_deg=5.0, translate_frac=0.04, scale_range=(0.95, 1.05),
                       brightness=0.05, contrast=0.05)
_MEDIUM = _LIGHT.replace(rotation_deg=10.0, translate_frac=0.06, scale_range=(0.9, 1.1),
                         brightness=0.1, contrast=0.1, gamma=0.15, noise_std=0.02,
                         erase_prob=0.25, erase_area=(0.02, 0.1))
_STRONG = _MEDIUM.replace(rotation_deg=15.0, translate_frac=0.1, scale_range=(0.85, 1.15),
                          shear_deg=5.0, brightness=0.15, contrast=0.2, gamma=0.3,
                          noise_std=0.04, erase_prob=0.5, erase_area=(0.02, 0.2))

# light: small pose changes and mild exposure changes, safe for any model and image size.
# medium: adds gamma, sensor noise and one erased patch for a quarter of the images.
# strong: larger pose changes plus shear, stronger photometrics, erasing for half the images.
PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "light": _LIGHT,
    "medium": _MEDIUM,
    "strong": _STRONG,
}


def resolve_augment_config(preset_or_config) -> AugmentConfig:
    """A preset name, an AugmentConfig, a dict of its fields (from TOML / JSON) or None."""
    if preset_or_config is None:
        return PRESETS["none"]
    if isinstance(preset_or_config, AugmentConfig):
        return preset_or_config
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset_or_config!r}; "
                             f"known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[preset_or_config]
    if isinstance(preset_or_config, dict):
        return AugmentConfig(**preset_or_config)
    raise TypeError("expected a preset name, an AugmentConfig or a dict, "
                    f"got {type(preset_or_config).__name__}")


# --------------------------------------------------------------------------------------------
# Geometry: per-image affine sampling matrices and a bilinear gather sampler
# --------------------------------------------------------------------------------------------


def affine_matrices(angle, scale, shear, shift_y, shift_x, flip, height, width):
    """Sampling matrices ``(B, 2, 3)`` for per-image parameters, each of shape ``(B,)``.

    The forward transform, about the image centre, is flip -> shear -> rotate -> scale -> shift
    (angle and shear in radians, angle positive = counter-clockwise as displayed with y pointing
    down; shifts in pixels; flip is 1.0 to mirror left-right, else 0.0). What is returned is its
    inverse, the form a sampler needs: for an output pixel ``(y, x)`` the source position is
    ``M @ (y, x, 1)``, rows ordered (y, x). Zero angle/shear/shift, unit scale and no flip give
    exactly ``[[1, 0, 0], [0, 1, 0]]``.
    """
    cos, sin = ops.cos(angle), ops.sin(angle)
    shear_tan = ops.tan(shear)
    mirror = 1.0 - 2.0 * flip  # -1 flips x
    inv_scale = 1.0 / scale
    # Inverse linear part in (x, y) order: flip^-1 . shear^-1 . rotate(-angle) / scale.
    xx = mirror * (cos - shear_tan * sin) * inv_scale
    xy = mirror * (-sin - shear_tan * cos) * inv_scale
    yx = sin * inv_scale
    yy = cos * inv_scale
    centre_y = (height - 1) / 2.0
    centre_x = (width - 1) / 2.0
    # source = centre + L @ (output - centre - shift)
    moved_y = centre_y + shift_y
    moved_x = centre_x + shift_x
    offset_y = centre_y - (yy * moved_y + yx * moved_x)
    offset_x = centre_x - (xy * moved_y + xx * moved_x)
    row_y = ops.stack([yy, yx, offset_y], axis=-1)
    row_x = ops.stack([xy, xx, offset_x], axis=-1)
    return ops.stack([row_y, row_x], axis=1)


def random_affine_matrices(batch_size, height, width, config: AugmentConfig, seed):
    """Draw one affine sampling matrix per image from the geometry limits in ``config``."""
    angle_max = math.radians(config.rotation_deg)
    shear_max = math.radians(config.shear_deg)
    angle = _uniform(batch_size, -angle_max, angle_max, seed)
    shear = _uniform(batch_size, -shear_max, shear_max, seed)
    # Log-uniform scale keeps zooming in and out equally likely in ratio terms.
    low, high = config.scale_range
    scale = ops.exp(_uniform(batch_size, math.log(low), math.log(high), seed))
    shift_y = _uniform(batch_size, -1.0, 1.0, seed) * (config.translate_frac * height)
    shift_x = _uniform(batch_size, -1.0, 1.0, seed) * (config.translate_frac * width)
    if config.flip_horizontal:
        flip = ops.cast(_uniform(batch_size, 0.0, 1.0, seed) < 0.5, "float32")
    else:
        flip = ops.zeros_like(angle)
    return affine_matrices(angle, scale, shear, shift_y, shift_x, flip, height, width)


def sample_affine(images, matrices, fill_mode="nearest", fill_value=PIXEL_MIN):
    """Resample ``(B, H, W, C)`` images through per-image sampling matrices ``(B, 2, 3)``.

    Bilinear interpolation as four gathers from the flattened batch (each gathers all channels
    of a pixel at once). Out-of-image samples repeat the edge pixel ("nearest") or read
    ``fill_value`` ("constant", per interpolation corner, as in scipy / keras map_coordinates).

    Why not ``keras.ops.image.map_coordinates`` with a batch-index grid: on the TensorFlow
    backend it needs every dimension's size at trace time, and inside ``model.fit`` the batch
    dimension is unknown (None), so it fails to trace; it also interpolates along the batch and
    channel axes too (16 gathers for a 4-D input where 4 are needed). Checked against it in the
    tests.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    source_y, source_x = _source_coordinates(matrices, height, width)
    if fill_mode == "nearest":
        # Clamping the position before interpolating is exactly edge-pixel extension.
        source_y = ops.clip(source_y, 0.0, height - 1.0)
        source_x = ops.clip(source_x, 0.0, width - 1.0)
    top = ops.floor(source_y)
    left = ops.floor(source_x)
    weight_y = ops.expand_dims(source_y - top, -1)
    weight_x = ops.expand_dims(source_x - left, -1)

    flat_pixels = ops.reshape(images, (-1, channels))
    batch_offsets = ops.reshape(ops.arange(ops.shape(images)[0], dtype="int32") * (height * width),
                                (-1, 1, 1))

    def corner(row, col):
        row_index = ops.cast(ops.clip(row, 0.0, height - 1.0), "int32")
        col_index = ops.cast(ops.clip(col, 0.0, width - 1.0), "int32")
        values = ops.take(flat_pixels, batch_offsets + row_index * width + col_index, axis=0)
        if fill_mode == "constant":
            inside = (row >= 0) & (row <= height - 1) & (col >= 0) & (col <= width - 1)
            values = ops.where(ops.expand_dims(inside, -1), values,
                               ops.cast(fill_value, values.dtype))
        return values

    top_row = corner(top, left) * (1.0 - weight_x) + corner(top, left + 1.0) * weight_x
    bottom = top + 1.0
    bottom_row = corner(bottom, left) * (1.0 - weight_x) + corner(bottom, left + 1.0) * weight_x
    return top_row * (1.0 - weight_y) + bottom_row * weight_y


def _source_coordinates(matrices, height, width):
    """Source (y, x) positions ``(B, H, W)`` for every output pixel."""
    grid_y = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
    grid_x = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))

    def coefficient(row, col):
        return ops.reshape(matrices[:, row, col], (-1, 1, 1))

    source_y = coefficient(0, 0) * grid_y + coefficient(0, 1) * grid_x + coefficient(0, 2)
    source_x = coefficient(1, 0) * grid_y + coefficient(1, 1) * grid_x + coefficient(1, 2)
    return source_y, source_x


# --------------------------------------------------------------------------------------------
# Photometric changes, on the [0, 1] view; per-image strengths have shape (B,)
# --------------------------------------------------------------------------------------------


def to_unit_range(images):
    return images * PIXEL_STD + PIXEL_MEAN


def from_unit_range(unit_images):
    return (unit_images - PIXEL_MEAN) / PIXEL_STD


def adjust_brightness(unit_images, delta):
    return unit_images + _per_image(delta)


def image_statistics(unit_images):
    """Per-image mean and standard deviation, each ``(B, 1, 1, 1)``."""
    mean = ops.mean(unit_images, axis=(1, 2, 3), keepdims=True)
    return mean, ops.std(unit_images, axis=(1, 2, 3), keepdims=True)


def adjust_contrast(unit_images, factor, pivot=None):
    """Scale each image's deviation from ``pivot`` (``(B, 1, 1, 1)``, default: its own mean) by
    ``factor``."""
    if pivot is None:
        pivot = ops.mean(unit_images, axis=(1, 2, 3), keepdims=True)
    return (unit_images - pivot) * _per_image(factor) + pivot


def adjust_gamma(unit_images, gamma):
    """``u ** gamma`` on [0, 1] images (clipped first: a negative base has no real power)."""
    return ops.power(ops.clip(unit_images, 0.0, 1.0), _per_image(gamma))


def add_gaussian_noise(unit_images, std, seed):
    noise = random_normal_like(unit_images, seed)
    return unit_images + noise * _per_image(std)


def rectangle_masks(height, width, top, left, rect_height, rect_width):
    """``(B, H, W, 1)`` float masks, 1 inside each image's rectangle (all in pixels, ``(B,)``)."""
    rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
    cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))
    top, left = _per_image(top, 3), _per_image(left, 3)
    bottom = top + _per_image(rect_height, 3)
    right = left + _per_image(rect_width, 3)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return ops.expand_dims(ops.cast(inside, "float32"), -1)


def random_erasing(unit_images, probability, area_range, fill, seed, statistics=None):
    """Replace one random rectangle per image (with ``probability``) by noise or the mean.

    The fill uses ``statistics`` = (mean, std), each ``(B, 1, 1, 1)``, default the image's own.
    """
    batch_size = ops.shape(unit_images)[0]
    height, width = unit_images.shape[1], unit_images.shape[2]
    area = _uniform(batch_size, area_range[0], area_range[1], seed)
    aspect = ops.exp(_uniform(batch_size, -_ERASE_LOG_ASPECT, _ERASE_LOG_ASPECT, seed))
    rect_height = ops.clip(ops.sqrt(area * aspect) * height, 1.0, float(height))
    rect_width = ops.clip(ops.sqrt(area / aspect) * width, 1.0, float(width))
    top = _uniform(batch_size, 0.0, 1.0, seed) * (height - rect_height)
    left = _uniform(batch_size, 0.0, 1.0, seed) * (width - rect_width)
    applied = ops.cast(_uniform(batch_size, 0.0, 1.0, seed) < probability, "float32")
    mask = rectangle_masks(height, width, top, left, rect_height, rect_width) * _per_image(applied)

    mean, std = statistics if statistics is not None else image_statistics(unit_images)
    if fill == "noise":
        noise = random_normal_like(unit_images, seed)
        filler = mean + std * noise
    else:
        filler = ops.broadcast_to(mean, ops.shape(unit_images))
    return unit_images * (1.0 - mask) + filler * mask


# Per-pixel noise. keras.random draws are fine for the few per-image parameters, but XLA's
# CPU lowering of its stateless generator is slow: ~1.3M numbers/s here, i.e. ~25 images/s for a
# 224 px batch of noise versus ~2,500 without XLA. So per-pixel fields come from a keyed integer
# hash of each element's index (two rounds of a 32-bit xorshift-multiply mixer), with the key
# drawn from the layer's SeedGenerator: still deterministic per seed, stateful across steps, and
# a few vectorised integer ops per element on any backend (224 px noise under XLA on this CPU:
# ~25 images/s with keras.random.normal, ~4,000 with this).
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - (1 << 32))  # as int32 (wrapping arithmetic)


def _logical_right_shift(values, bits):
    return ops.bitwise_and(ops.right_shift(values, bits), (1 << (32 - bits)) - 1)


def _mix32(values):
    """A bijective avalanche mixer on int32 bit patterns."""
    values = ops.bitwise_xor(values, _logical_right_shift(values, 16)) * _HASH_MULTIPLIERS[0]
    values = ops.bitwise_xor(values, _logical_right_shift(values, 15)) * _HASH_MULTIPLIERS[1]
    return ops.bitwise_xor(values, _logical_right_shift(values, 16))


def _random_bits24(images, seed):
    """Independent uniform integers in [0, 2**24), one per element of ``(B, H, W, C)`` images."""
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    per_image = height * width * channels
    key = keras.random.randint((), 0, 2**31 - 1, dtype="int32", seed=seed)
    element = ops.reshape(ops.arange(per_image, dtype="int32"), (1, height, width, channels))
    image = ops.reshape(ops.arange(ops.shape(images)[0], dtype="int32"), (-1, 1, 1, 1))
    bits = _mix32(ops.bitwise_xor(_mix32(image * per_image + element), key))
    return _logical_right_shift(bits, 8)  # the best-mixed top 24 bits


def random_uniform_like(images, seed):
    """Uniform values in the open interval (0, 1), shaped like ``images``."""
    return (ops.cast(_random_bits24(images, seed), "float32") + 0.5) * (1.0 / (1 << 24))


def random_normal_like(images, seed):
    """Standard normal values shaped like ``images``, by the inverse CDF (one erfinv per value,
    4x cheaper than Box-Muller under XLA on CPU)."""
    bits = ops.cast(_random_bits24(images, seed), "float32")
    # (2k + 1 - 2**24) / 2**24 is exact in float32 and strictly inside (-1, 1), so erfinv is
    # finite (|z| <= 5.4).
    symmetric = (2.0 * bits + (1.0 - (1 << 24))) * (1.0 / (1 << 24))
    return math.sqrt(2.0) * ops.erfinv(symmetric)


def _uniform(batch_size, low, high, seed):
    return keras.random.uniform((batch_size,), minval=low, maxval=high, dtype="float32",
                                seed=seed)


def _per_image(values, rank=4):
    """Reshape ``(B,)`` values to broadcast over an image batch of the given rank."""
    return ops.reshape(values, (-1,) + (1,) * (rank - 1))


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="chest_tf")
class ChestAugment(keras.layers.Layer):
    """Random geometry + photometric augmentation of ``(B, H, W, C)`` images in [-1, 1].

    Identity unless called with ``training=True`` (as ``model.fit`` does). Randomness comes from
    a ``keras.random.SeedGenerator`` held by the layer: its state is a layer variable, advanced
    on every call inside the compiled step and saved with checkpoints, so a run resumes its
    random stream and two layers built with the same seed give the same images.

    Computes in float32 whatever the dtype policy (bfloat16 coordinates would be off by whole
    pixels at 224 px) and returns the input's dtype; inputs are not autocast.

    Args:
        config: an AugmentConfig, a dict of its fields, or None (fields then come from kwargs).
        seed: int or None.
        **kwargs: AugmentConfig fields (override ``config``) and keras Layer arguments.
    """

    def __init__(self, config: AugmentConfig | dict | None = None, seed: int | None = None,
                 **kwargs):
        field_names = {field.name for field in dataclasses.fields(AugmentConfig)}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in field_names}
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        base = resolve_augment_config(config)
        self.config = base.replace(**overrides) if overrides else base
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.config.is_identity:
            return images
        input_dtype = images.dtype
        images = ops.cast(images, "float32")
        # Image statistics for contrast and erasing come from the source image, before the
        # geometry: they differ only by the edge strip, and a reduction over the resampled image
        # makes XLA on CPU recompute the gathers (6x slower at 224 px).
        statistics = None
        if self.config.has_photometric:
            statistics = image_statistics(to_unit_range(images))
        if self.config.has_geometry:
            images = self._random_geometry(images)
        if self.config.has_photometric:
            images = from_unit_range(self._random_photometric(to_unit_range(images), statistics))
        images = ops.clip(images, PIXEL_MIN, PIXEL_MAX)
        return ops.cast(images, input_dtype)

    def _random_geometry(self, images):
        height, width = images.shape[1], images.shape[2]
        matrices = random_affine_matrices(ops.shape(images)[0], height, width, self.config,
                                          self.seed_generator)
        return sample_affine(images, matrices, fill_mode=self.config.fill_mode,
                             fill_value=PIXEL_MIN)

    def _random_photometric(self, unit_images, statistics):
        config, seed = self.config, self.seed_generator
        batch_size = ops.shape(unit_images)[0]
        mean, std = statistics  # kept up to date through brightness and contrast
        if config.brightness:
            delta = _uniform(batch_size, -config.brightness, config.brightness, seed)
            unit_images = adjust_brightness(unit_images, delta)
            mean = mean + _per_image(delta)
        if config.contrast:
            factor = _uniform(batch_size, 1.0 - config.contrast, 1.0 + config.contrast, seed)
            unit_images = adjust_contrast(unit_images, factor, pivot=mean)
            std = std * _per_image(factor)
        if config.gamma:
            log_limit = math.log1p(config.gamma)
            unit_images = adjust_gamma(
                unit_images, ops.exp(_uniform(batch_size, -log_limit, log_limit, seed)))
        if config.noise_std:
            unit_images = add_gaussian_noise(
                unit_images, _uniform(batch_size, 0.0, config.noise_std, seed), seed)
        if config.erase_prob:
            unit_images = random_erasing(unit_images, config.erase_prob, config.erase_area,
                                         config.erase_fill, seed, statistics=(mean, std))
        return ops.clip(unit_images, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self.config.to_dict(), "seed": self.seed}


def build_augmentation(preset_or_config, seed: int | None = None) -> ChestAugment | None:
    """A ChestAugment for a preset name / AugmentConfig / dict, or None when it does nothing."""
    config = resolve_augment_config(preset_or_config)
    if config.is_identity:
        return None
    return ChestAugment(config, seed=seed, name="chest_augment")


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------


def random_beta(batch_size, alpha, beta, seed, tries=8):
    """``(B,)`` draws from Beta(alpha, beta) with XLA-compilable ops.

    ``keras.random.beta`` goes through ``tf.random.stateless_gamma``, which has no XLA kernel,
    so this is Beta = X / (X + Y) over gamma draws made here, in log space (with alpha < 1 the
    gammas underflow to 0 in float32).
    """
    log_x = _random_log_gamma(batch_size, float(alpha), seed, tries)
    log_y = _random_log_gamma(batch_size, float(beta), seed, tries)
    return ops.sigmoid(log_x - log_y)


def _random_log_gamma(batch_size, alpha, seed, tries):
    """log of Gamma(alpha, 1) draws: Marsaglia & Tsang's squeeze-free rejection method, with a
    fixed number of vectorised tries (each accepts with probability > 0.95, so 8 tries fail
    with probability < 1e-10; a failure falls back to the mode-like value ``d``)."""
    boost = alpha < 1.0  # Gamma(a) = Gamma(a + 1) * U ** (1 / a)
    shape_param = alpha + 1.0 if boost else alpha
    d = shape_param - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    normal = keras.random.normal((tries, batch_size), dtype="float32", seed=seed)
    uniform = keras.random.uniform((tries, batch_size), minval=1e-12, maxval=1.0,
                                   dtype="float32", seed=seed)
    v = (1.0 + c * normal) ** 3
    safe_v = ops.where(v > 0, v, 1.0)
    accepted = (v > 0) & (ops.log(uniform) < 0.5 * normal**2 + d - d * safe_v + d * ops.log(safe_v))
    first = ops.argmax(ops.cast(accepted, "int32"), axis=0)  # first accepted try per column
    chosen_v = ops.take_along_axis(safe_v, ops.expand_dims(first, 0), axis=0)[0]
    log_gamma = math.log(d) + ops.log(chosen_v)
    if boost:
        log_u = ops.log(keras.random.uniform((batch_size,), minval=1e-12, maxval=1.0,
                                             dtype="float32", seed=seed))
        log_gamma = log_gamma + log_u / alpha
    return log_gamma


def mixup(images, labels, alpha, seed_generator):
    """Mix each image and its (multi-hot) labels with a partner's, by one lambda per pair.

    ``lambda ~ Beta(alpha, alpha)`` per image; the partner of image i is image ``B - 1 - i`` (the
    batch reversed): batches arrive shuffled, so this pairs as randomly as a permutation at no
    cost. Images and labels get the same lambda; labels come back float32 (soft targets for
    BCE). ``TrainingModel`` applies it in the training step when ``mixup_alpha > 0``.
    """
    batch_size = ops.shape(images)[0]
    lam = random_beta(batch_size, alpha, alpha, seed_generator)
    image_dtype = images.dtype
    images = ops.cast(images, "float32")
    labels = ops.cast(labels, "float32")
    image_lam = _per_image(lam, len(images.shape))
    label_lam = _per_image(lam, len(labels.shape))
    mixed_images = image_lam * images + (1.0 - image_lam) * ops.flip(images, axis=0)
    mixed_labels = label_lam * labels + (1.0 - label_lam) * ops.flip(labels, axis=0)
    return ops.cast(mixed_images, image_dtype), mixed_labels


# --------------------------------------------------------------------------------------------
# Training model = input -> augmentation -> classifier
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="chest_tf")
class TrainingModel(keras.Model):
    """The functional ``input -> augment -> classifier`` model that ``fit`` trains, with mixup of
    images and labels at the start of each compiled training step when ``mixup_alpha > 0``.

    Mixup needs the labels, which a layer never sees, so it lives in ``train_step``: the batch is
    mixed on the device (``mixup``, XLA-compilable) and handed to Keras' own step, which then
    augments the mixed images, computes the loss against the mixed labels and applies the
    gradients (loss scaling, distribution and metrics unchanged). Evaluation and prediction never
    mix. The mixup seed state is a seed generator of the model; Keras' weight files leave it out,
    so the training backup (``chest_tf.training.backup.RunBackup``) saves and restores it.
    TensorFlow and PyTorch backends (``train_step(data)``); JAX's stateless
    ``train_step(state, data)`` would need the seed threaded through ``state``, not done here.
    """

    def __init__(self, *args, mixup_alpha: float = 0.0, mixup_seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if mixup_alpha < 0:
            raise ValueError(f"mixup alpha must be >= 0 (0 = off), got {mixup_alpha}")
        if mixup_alpha > 0 and keras.backend.backend() == "jax":
            raise ValueError("mixup in the training step needs the TensorFlow or PyTorch backend")
        self.mixup_alpha = float(mixup_alpha)
        self.mixup_seed = mixup_seed
        self.mixup_seed_generator = (keras.random.SeedGenerator(mixup_seed, name="mixup_seed")
                                     if mixup_alpha > 0 else None)

    def train_step(self, data):
        if self.mixup_seed_generator is not None:
            images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            images, labels = mixup(images, labels, self.mixup_alpha, self.mixup_seed_generator)
            data = keras.utils.pack_x_y_sample_weight(images, labels, sample_weight)
        return super().train_step(data)

    def get_config(self):
        return {**super().get_config(), "mixup_alpha": self.mixup_alpha, "mixup_seed": self.mixup_seed}
    # No from_config: Keras revives a functional subclass from its graph and passes the keys
    # get_config adds (mixup_alpha, mixup_seed) to __init__.


def attach_augmentation(model: keras.Model, augment: ChestAugment | None,
                        name: str | None = None, *, mixup_alpha: float = 0.0,
                        mixup_seed: int | None = None) -> keras.Model:
    """The model to ``fit``: ``input -> augment -> model`` (a ``TrainingModel``), sharing
    ``model``'s weights, with mixup in the training step when ``mixup_alpha > 0``.

    Contract: augmentation lives only in this wrapper, so it runs inside the compiled (XLA)
    training step and is the identity in evaluate/predict (training=False). Train the wrapper;
    save and export ``model`` itself, which has been trained through the shared weights and
    holds no augmentation. The wrapper's variables are ``model``'s plus the augmentation's and
    mixup's seed state (saved by ``chest_tf.training.backup.RunBackup``, not by Keras' weight
    files), so a resumed run continues the random stream. Use ``strip_augmentation`` to get
    ``model`` back from a saved wrapper. With ``augment=None`` and no mixup the model is returned unchanged.
    """
    if augment is None and not mixup_alpha:
        return model
    model_inputs = getattr(model, "inputs", None)
    if not model_inputs or len(model_inputs) != 1:
        raise ValueError("attach_augmentation needs a built functional model with exactly one "
                         f"image input; {model.name!r} has "
                         f"{len(model_inputs) if model_inputs else 'no'} symbolic inputs")
    model_input = model_inputs[0]
    if len(model_input.shape) != 4:
        raise ValueError(f"expected (batch, height, width, channels) images, got input shape "
                         f"{model_input.shape}")
    inputs = keras.Input(shape=model_input.shape[1:], dtype=model_input.dtype,
                         name=model_input.name)
    outputs = model(augment(inputs) if augment is not None else inputs)
    return TrainingModel(inputs, outputs, name=name or f"{model.name}_augmented",
                         mixup_alpha=mixup_alpha, mixup_seed=mixup_seed)


def strip_augmentation(model: keras.Model) -> keras.Model:
    """The classifier inside an ``attach_augmentation`` wrapper; other models unchanged."""
    inner = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    augments, classifier = inner[:-1], inner[-1] if inner else None
    wrapper = isinstance(model, TrainingModel) or augments  # older wrappers: plain functional
    if (wrapper and isinstance(classifier, keras.Model) and len(augments) <= 1
            and all(isinstance(layer, ChestAugment) for layer in augments)):
        return classifier
    return model
