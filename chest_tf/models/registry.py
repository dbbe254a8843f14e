"""One registry for every architecture: ``build_model("densenet121", input_shape, num_classes)``.

``ARCHS`` maps names to builders; the training CLI's ``--arch`` choices are ``sorted(ARCHS)``.
Also here: ImageNet initialisation (``weights="imagenet"``), the Grad-CAM layer lookup
(``last_conv_layer_name``) and an analytic FLOP count (``estimate_flops``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import keras
from keras import layers

from chest_tf.models.densenet import build_densenet
from chest_tf.models.layers import MIN_SIZE_FOR_STEM
from chest_tf.models.resnet import build_resnet
from chest_tf.models.vit import VIT_SIZES, build_vit, vit_attention_layer_names

log = logging.getLogger(__name__)

FAMILIES = ("resnet", "densenet", "vit")
ARCHS: dict[str, Callable[..., keras.Model]] = {}
_FAMILY_OF: dict[str, str] = {}


def register(name: str, family: str | None = None):
    """Decorator adding a builder ``fn(input_shape, num_classes, **overrides) -> keras.Model`` to
    ``ARCHS``; the family defaults to the name's prefix (resnet / densenet / vit)."""
    family = family or next((f for f in FAMILIES if name.startswith(f)), None)
    if family not in FAMILIES:
        raise ValueError(f"cannot tell the family of {name!r}; pass family= one of {FAMILIES}")

    def decorator(fn):
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHS[name] = fn
        _FAMILY_OF[name] = family
        return fn

    return decorator


# fmt: off
@register("resnet18")
def _resnet18(**kw): return build_resnet(18, **kw)
@register("resnet34")
def _resnet34(**kw): return build_resnet(34, **kw)
@register("resnet50")
def _resnet50(**kw): return build_resnet(50, **kw)
@register("resnet101")
def _resnet101(**kw): return build_resnet(101, **kw)
@register("resnet152")
def _resnet152(**kw): return build_resnet(152, **kw)
@register("densenet121")
def _densenet121(**kw): return build_densenet(121, **kw)
@register("densenet169")
def _densenet169(**kw): return build_densenet(169, **kw)
@register("densenet201")
def _densenet201(**kw): return build_densenet(201, **kw)
@register("vit_tiny")
def _vit_tiny(**kw): return build_vit(**{**VIT_SIZES["tiny"], **kw})
@register("vit_small")
def _vit_small(**kw): return build_vit(**{**VIT_SIZES["small"], **kw})
@register("vit_base")
def _vit_base(**kw): return build_vit(**{**VIT_SIZES["base"], **kw})
# fmt: on

_FAMILY_BUILDERS = {"resnet": build_resnet, "densenet": build_densenet, "vit": build_vit}
# Set by build_model itself, never by callers.
_INTERNAL_ARGS = {"input_shape", "num_classes", "name", "imagenet_preprocessing"}

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


def _check_name(name: str) -> str:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}")
    return name


def arch_family(name: str) -> str:
    """"resnet", "densenet" or "vit"."""
    return _FAMILY_OF[_check_name(name)]


def arch_overrides(name: str) -> list[str]:
    """The keyword overrides ``build_model(name, ...)`` accepts (besides ``weights``)."""
    params = inspect.signature(_FAMILY_BUILDERS[arch_family(name)]).parameters
    return sorted(p for p, spec in params.items()
                  if spec.kind is inspect.Parameter.KEYWORD_ONLY and p not in _INTERNAL_ARGS)


def build_model(name: str, input_shape=(28, 28, 1), num_classes: int = 14, *,
                weights: str | None = None, **overrides) -> keras.Model:
    """Build architecture ``name`` for float32 images in [-1, 1] of ``input_shape`` (H, W, C),
    returning logits (B, num_classes) (float32 under any precision policy).

    ``overrides`` go to the family builder (e.g. ``stem``, ``head_dropout`` for CNNs;
    ``patch_size``, ``pool``, ``dropout``, ``drop_path_rate``, ``spt``, ``lsa`` for ViTs; see
    ``arch_overrides(name)``). ``weights="imagenet"`` starts the backbone from keras.applications'
    ImageNet weights (ResNet-50/101/152, DenseNet-121/169/201; input >= 32 px, 1 or 3 channels;
    downloads once, needs a network then).
    """
    _check_name(name)
    allowed = arch_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take {unknown}; it accepts: {', '.join(allowed)}")
    input_shape = tuple(input_shape)
    if weights == "imagenet":
        overrides = _imagenet_overrides(name, input_shape, overrides)
    elif weights is not None:
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    log.info("build_model(%r, input_shape=%s, num_classes=%s, weights=%s, overrides=%s)",
             name, input_shape, num_classes, weights, overrides)
    # The checkpoint first: offline, fail before spending time on the build.
    source = load_imagenet_source(name, input_shape) if weights == "imagenet" else None
    model = ARCHS[name](input_shape=input_shape, num_classes=num_classes, name=name, **overrides)
    if source is not None:
        transfer_weights(source, model)
    return model


# ----------------------------------------------------------------------------------------------
# ImageNet initialisation
# ----------------------------------------------------------------------------------------------
def _imagenet_overrides(name: str, input_shape, overrides: dict) -> dict:
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
    if arch_family(name) == "resnet":
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


# ----------------------------------------------------------------------------------------------
# Introspection used by explain / bench
# ----------------------------------------------------------------------------------------------
def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last spatial feature map (B, h, w, C) of a CNN built here, the Grad-CAM
    target: ``conv5_block{N}_out`` for ResNets, ``relu`` for DenseNets. ViTs have none: use
    ``vit_attention_model`` (attention rollout) instead."""
    try:
        vit_attention_layer_names(model)
    except ValueError:
        pass
    else:
        raise ValueError(f"{model.name} is a ViT and has no conv feature map; use "
                         "chest_tf.models.vit_attention_model(model) for attention rollout")
    for layer in reversed(model.layers):
        output = layer.output
        if not isinstance(output, (list, tuple)) and len(output.shape) == 4:
            return layer.name
    raise ValueError(f"{model.name} has no 4-D feature map")


def estimate_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass for ONE image, counted analytically from
    layer shapes: 2 x multiply-adds of Conv2D, Dense and attention (Q/K/V/output projections and
    the two score matmuls). BatchNorm, activations, pooling and additions are not counted (well
    under 1% for these architectures). Backend-agnostic (no profiler)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.MultiHeadAttention):
            output, scores = layer.output
            heads, q_len, k_len = scores.shape[1:]
            q_kernel = layer.query_dense.kernel.shape  # (in, heads, key_dim)
            k_kernel = layer.key_dense.kernel.shape
            v_kernel = layer.value_dense.kernel.shape
            o_kernel = layer.output_dense.kernel.shape  # (heads, value_dim, out)
            macs = (q_len * _prod(q_kernel) + k_len * _prod(k_kernel) + k_len * _prod(v_kernel)
                    + q_len * _prod(o_kernel)
                    + heads * q_len * k_len * (q_kernel[-1] + v_kernel[-1]))
        elif isinstance(layer, layers.Conv2D):
            out = layer.output.shape  # (B, h, w, filters)
            macs = out[1] * out[2] * _prod(layer.kernel.shape)
        elif isinstance(layer, layers.Dense):
            positions = _prod(layer.output.shape[1:-1])
            macs = positions * _prod(layer.kernel.shape)
        else:
            continue
        total += 2 * macs
    return int(total)


def _prod(shape) -> int:
    result = 1
    for d in shape:
        result *= int(d)
    return result
