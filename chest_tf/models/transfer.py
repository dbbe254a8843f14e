"""ImageNet initialisation: ``build_model(..., weights="imagenet")`` starts a backbone from
keras.applications' ImageNet weights, copied layer by layer by name."""
from __future__ import annotations

import keras
from keras import layers

from chest_tf.models.layers import MIN_SIZE_FOR_STEM

# arch -> (keras.applications constructor, the input preprocessing its weights expect)
IMAGENET_SOURCES = {
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "resnet152": ("ResNet152", "caffe"),
    "densenet121": ("DenseNet121", "torch"),
    "densenet169": ("DenseNet169", "torch"),
    "densenet201": ("DenseNet201", "torch"),
}

# Overrides that would change weight shapes away from the keras.applications checkpoints.
_CHECKPOINT_SHAPE = {"width": 64, "growth_rate": 32, "compression": 0.5}


def imagenet_overrides(name: str, family: str, input_shape, overrides: dict) -> dict:
    """Check an ImageNet start is possible and return the overrides that make the architecture
    match the checkpoint (ImageNet stem, v1 stride placement, input preprocessing)."""
    if name not in IMAGENET_SOURCES:
        raise ValueError(
            f"weights='imagenet' is available for {', '.join(IMAGENET_SOURCES)} only "
            f"(keras.applications has no {name}); pass weights=None"
        )
    height, width, channels = input_shape
    if min(height, width) < MIN_SIZE_FOR_STEM["imagenet"]:
        raise ValueError(f"weights='imagenet' needs inputs of at least 32 px, got {height}x{width}; "
                         f"use a larger image size or weights=None")
    if channels not in (1, 3):
        raise ValueError(f"weights='imagenet' needs 1 or 3 input channels, got {channels}")
    for key, value in _CHECKPOINT_SHAPE.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"weights='imagenet' needs the standard {key}={value}; drop {key}=")
    if overrides.get("stem", "imagenet") != "imagenet":
        raise ValueError("weights='imagenet' needs the 7x7 ImageNet stem; drop stem= or pass stem='imagenet'")
    resolved = {**overrides, "stem": "imagenet", "imagenet_preprocessing": IMAGENET_SOURCES[name][1]}
    if family == "resnet":
        # keras.applications' ResNet weights were trained with the stride on the first 1x1 conv.
        resolved.setdefault("stride_on", "conv1x1")
    return resolved


def load_imagenet_source(name: str, input_shape) -> keras.Model:
    """The keras.applications backbone with ImageNet weights (downloaded once, then cached in
    ~/.keras/models). Raises RuntimeError with what to do when that fails (e.g. offline)."""
    constructor = getattr(keras.applications, IMAGENET_SOURCES[name][0])
    height, width, _ = input_shape
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=(height, width, 3))
    except Exception as err:  # keras.utils.get_file raises a bare Exception on network errors
        raise RuntimeError(
            f"could not load ImageNet weights for {name} ({type(err).__name__}: {err}). They are "
            f"downloaded once into ~/.keras/models: connect to the network (or copy the file "
            f"there), or pass weights=None"
        ) from err


def transfer_weights(source: keras.Model, target: keras.Model) -> int:
    """Copy weights from ``source`` to ``target`` layer by layer, matching names; returns the
    number of layers copied. A source conv bias is folded into the BatchNorm that follows in
    ``target`` (whose convs have no bias): BN(Wx + b) with mean m equals BN(Wx) with mean m - b.
    Every conv/BN layer of ``target`` must be covered, else RuntimeError."""
    copied, folded_biases = set(), {}
    for src in source.layers:
        weights = src.get_weights()
        if not weights:
            continue
        try:
            dst = target.get_layer(src.name)
        except ValueError:
            raise RuntimeError(f"{target.name} has no layer {src.name!r} to take {source.name}'s weights") from None
        expected = [tuple(w.shape) for w in dst.weights]
        if isinstance(src, layers.Conv2D) and len(weights) == 2 and len(expected) == 1:
            kernel, bias = weights
            weights = [kernel]
            folded_biases[src.name[: -len("conv")] + "bn"] = bias
        if [tuple(w.shape) for w in weights] != expected:
            raise RuntimeError(f"shape mismatch at layer {src.name!r}: "
                               f"{[w.shape for w in weights]} -> {expected}")
        dst.set_weights(weights)
        copied.add(src.name)
    for bn_name, bias in folded_biases.items():
        bn = target.get_layer(bn_name)
        gamma, beta, moving_mean, moving_var = bn.get_weights()
        bn.set_weights([gamma, beta, moving_mean - bias, moving_var])
    missed = [l.name for l in target.layers
              if isinstance(l, (layers.Conv2D, layers.BatchNormalization)) and l.name not in copied]
    if missed:
        raise RuntimeError(f"{len(missed)} conv/BN layers of {target.name} got no weights, e.g. {missed[:3]}")
    return len(copied)
