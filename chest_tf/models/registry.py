"""One open registry for every architecture: ``build_model("densenet121", input_shape, num_classes)``.

A family (``register_family("resnet", build_resnet, default="resnet18")``) names the builder whose
keyword-only arguments are the overrides its architectures accept, and the architecture its alias
stands for; an architecture (``@register("resnet18")``) is a thin wrapper over its family's
builder. Neither needs an edit of a closed list, so a new family registers from its own module::

    register_family("convnext", build_convnext, default="convnext_tiny")
    @register("convnext_tiny")
    def _convnext_tiny(**kw): return build_convnext(depths=(3, 3, 9, 3), **kw)

``ARCHS`` maps names to builders (``--arch`` choices are ``sorted(ARCHS)`` plus the family
aliases); ``resolve_arch("vit")`` gives ``vit_small``. Also here: the Grad-CAM layer lookup
(``last_conv_layer_name``). ImageNet initialisation is in ``transfer.py``, FLOPs in ``flops.py``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import keras

from chest_tf.models.densenet import build_densenet
from chest_tf.models.resnet import build_resnet
from chest_tf.models.transfer import imagenet_overrides, load_imagenet_source, transfer_weights
from chest_tf.models.vit import VIT_SIZES, build_vit, vit_attention_layer_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    builder: Callable[..., keras.Model]  # its keyword-only arguments are the accepted overrides
    default: str  # the architecture the family's name stands for (``--arch vit``)


FAMILIES: dict[str, Family] = {}
ARCHS: dict[str, Callable[..., keras.Model]] = {}
_FAMILY_OF: dict[str, str] = {}
# Set by build_model itself, never by callers.
_INTERNAL_ARGS = {"input_shape", "num_classes", "name", "imagenet_preprocessing"}


def register_family(name: str, builder: Callable[..., keras.Model], *, default: str) -> Family:
    """Add a family: ``builder`` takes the overrides as keyword-only arguments; ``default`` is the
    architecture the alias ``name`` resolves to (it may be registered after the family)."""
    if name in FAMILIES:
        raise ValueError(f"family {name!r} is already registered")
    FAMILIES[name] = family = Family(name, builder, default)
    return family


def register(name: str, family: str | None = None):
    """Decorator adding a builder ``fn(input_shape, num_classes, **overrides) -> keras.Model`` to
    ``ARCHS``; the family defaults to the registered family whose name prefixes ``name``."""
    family = family or next((f for f in sorted(FAMILIES, key=len, reverse=True) if name.startswith(f)), None)
    if family not in FAMILIES:
        raise ValueError(f"cannot tell the family of {name!r}; pass family= one of {sorted(FAMILIES)} "
                         "or register_family() first")
    if name in FAMILIES:
        raise ValueError(f"{name!r} is a family alias; give the architecture a name of its own")

    def decorator(fn):
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHS[name] = fn
        _FAMILY_OF[name] = family
        return fn

    return decorator


register_family("resnet", build_resnet, default="resnet18")
register_family("densenet", build_densenet, default="densenet121")
register_family("vit", build_vit, default="vit_small")


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


def aliases() -> dict[str, str]:
    """Family alias -> the architecture it stands for, e.g. {"vit": "vit_small"}."""
    return {name: family.default for name, family in sorted(FAMILIES.items()) if family.default in ARCHS}


def arch_choices() -> list[str]:
    """Every name ``--arch`` takes: registered architectures, then family aliases."""
    return sorted(ARCHS) + sorted(aliases())


def resolve_arch(name: str) -> str:
    """The registered architecture ``name`` stands for: itself, or its family's default
    (``vit`` -> ``vit_small``). Unknown names fail with the known ones."""
    if name in ARCHS:
        return name
    if name in aliases():
        return aliases()[name]
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))} "
                     f"(aliases: {', '.join(f'{a}={t}' for a, t in aliases().items())})")


def arch_family(name: str) -> str:
    """The family an architecture (or alias) belongs to, e.g. "resnet"."""
    return _FAMILY_OF[resolve_arch(name)]


def arch_overrides(name: str) -> list[str]:
    """The keyword overrides ``build_model(name, ...)`` accepts (besides ``weights``)."""
    params = inspect.signature(FAMILIES[arch_family(name)].builder).parameters
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
    name = resolve_arch(name)
    allowed = arch_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{name} does not take {unknown}; it accepts: {', '.join(allowed)}")
    input_shape = tuple(input_shape)
    if weights == "imagenet":
        overrides = imagenet_overrides(name, arch_family(name), input_shape, overrides)
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
                         "chest_tf.models.vit.vit_attention_model(model) for attention rollout")
    for layer in reversed(model.layers):
        output = layer.output
        if not isinstance(output, (list, tuple)) and len(output.shape) == 4:
            return layer.name
    raise ValueError(f"{model.name} has no 4-D feature map")
