"""Model zoo: ResNet, DenseNet and ViT families behind one registry (see registry.py).

    from chest_tf.models import build_model, ARCHS
    model = build_model("resnet18", input_shape=(28, 28, 1), num_classes=14)   # logits

Grad-CAM target layer: ``last_conv_layer_name(model)``; ViT attention maps for rollout:
``vit_attention_model(model)``.
"""

from chest_tf.models.registry import (
    ARCHS,
    FAMILIES,
    IMAGENET_SOURCES,
    arch_family,
    arch_overrides,
    build_model,
    estimate_flops,
    last_conv_layer_name,
    register,
)
from chest_tf.models.vit import vit_attention_layer_names, vit_attention_model

__all__ = [
    "ARCHS",
    "FAMILIES",
    "IMAGENET_SOURCES",
    "arch_family",
    "arch_overrides",
    "build_model",
    "estimate_flops",
    "last_conv_layer_name",
    "register",
    "vit_attention_layer_names",
    "vit_attention_model",
]
