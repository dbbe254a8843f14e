"""DenseNet-121/169/201 (DenseNet-BC: bottleneck layers, compression 0.5, growth rate 32).

Layer names follow keras.applications (``conv2_block1_1_conv``, ``pool2_conv``, final ``bn`` and
``relu``) so ImageNet weights transfer by name and Grad-CAM can name the last feature map
(``relu``). Parameter count at 224 px, 3 channels, 1000 classes: 8,062,504 in all (keras), of which
7,978,856 trainable (torchvision's figure).
"""

from __future__ import annotations

import logging

import keras
from keras import layers

from chest_tf.models.layers import (
    BatchNorm,
    Conv2D,
    ImageNetInput,
    apply_classifier_head,
    apply_stem,
    check_input_shape,
    check_positive_int,
    check_rate,
    resolve_stem,
)

log = logging.getLogger(__name__)

# depth -> dense layers per block conv2..conv5
DENSENET_DEPTHS = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}
BOTTLENECK_WIDTH = 4  # the 1x1 conv in each dense layer has 4 * growth_rate filters


def apply_bn_relu(x, name: str):
    """BatchNorm -> ReLU, named ``{name}_bn`` and ``{name}_relu`` (DenseNet is pre-activation)."""
    x = BatchNorm(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def apply_dense_layer(x, growth_rate: int, name: str):
    """BN-ReLU-1x1 conv (4k) -> BN-ReLU-3x3 conv (k), concatenated onto the input (+k channels)."""
    y = apply_bn_relu(x, f"{name}_0")
    y = Conv2D(BOTTLENECK_WIDTH * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = apply_bn_relu(y, f"{name}_1")
    y = Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def apply_dense_block(x, num_layers: int, growth_rate: int, name: str):
    """``num_layers`` dense layers named ``{name}_block1..N``."""
    for i in range(1, num_layers + 1):
        x = apply_dense_layer(x, growth_rate, f"{name}_block{i}")
    return x


def apply_transition(x, compression: float, name: str):
    """BN-ReLU-1x1 conv keeping ``compression`` of the channels, then 2x2 average pool (/2)."""
    x = apply_bn_relu(x, name)
    filters = int(x.shape[-1] * compression)
    x = Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def build_densenet(
    depth: int,
    input_shape=(28, 28, 1),
    num_classes: int = 14,
    *,
    stem: str | None = None,
    growth_rate: int = 32,
    compression: float = 0.5,
    head_dropout: float = 0.0,
    imagenet_preprocessing: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Build DenseNet-``depth`` returning logits of shape (B, num_classes).

    Args:
        depth: one of 121, 169, 201.
        input_shape: (H, W, C) of float32 images in [-1, 1].
        stem: "small" (3x3/1, no pool), "imagenet" (7x7/2 + max-pool) or None: small below 64 px.
        growth_rate: channels each dense layer adds (32 in the paper).
        compression: fraction of channels a transition keeps, in (0, 1].
        head_dropout: dropout before the final Dense.
        imagenet_preprocessing: None, or "caffe"/"torch" to put an ImageNetInput layer first.
    """
    if depth not in DENSENET_DEPTHS:
        raise ValueError(f"unknown DenseNet depth {depth!r}; known depths: {sorted(DENSENET_DEPTHS)}")
    input_shape = check_input_shape(input_shape)
    check_positive_int(num_classes, "num_classes")
    stem = resolve_stem(stem, input_shape)
    check_positive_int(growth_rate, "growth_rate")
    if not isinstance(compression, (int, float)) or not 0.0 < compression <= 1.0:
        raise ValueError(f"compression must be in (0, 1], got {compression!r}")
    head_dropout = check_rate(head_dropout, "head_dropout")
    name = name or f"densenet{depth}"
    block_layers = DENSENET_DEPTHS[depth]
    log.info(
        "building %s: input_shape=%s num_classes=%d stem=%s blocks=%s growth_rate=%d "
        "compression=%s head_dropout=%s imagenet_preprocessing=%s",
        name, input_shape, num_classes, stem, block_layers, growth_rate, compression,
        head_dropout, imagenet_preprocessing,
    )

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    if imagenet_preprocessing:
        x = ImageNetInput(imagenet_preprocessing, name="imagenet_input")(x)
    x = apply_stem(x, stem, filters=2 * growth_rate, pool_name="pool1")
    for stage, num_layers in enumerate(block_layers, start=2):
        x = apply_dense_block(x, num_layers, growth_rate, f"conv{stage}")
        if stage < 1 + len(block_layers):
            x = apply_transition(x, compression, f"pool{stage}")
    x = BatchNorm(name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    logits = apply_classifier_head(x, num_classes, head_dropout)
    return keras.Model(inputs, logits, name=name)
