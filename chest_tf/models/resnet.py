"""ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks), functional API.

Layer names follow keras.applications (``conv1_conv``, ``conv3_block2_1_conv``, ``conv5_block3_out``)
so Grad-CAM can name the last feature map and ImageNet weights transfer by name. Convolutions have
no bias (the BatchNorm after each has its own shift), which matches the reference parameter counts
(torchvision: ResNet-50 25,557,032 trainable).

Stride placement in bottleneck blocks: ``stride_on="conv3x3"`` (ResNet v1.5, the usual modern
choice) by default; ``"conv1x1"`` is the original v1 layout that keras.applications' ImageNet
weights were trained with, and is chosen automatically when those weights are loaded.
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

# depth -> (block kind, blocks per stage conv2..conv5)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_FILTERS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BOTTLENECK_EXPANSION = 4
STRIDE_PLACEMENTS = ("conv3x3", "conv1x1")


def apply_conv_bn(x, filters: int, kernel_size: int, stride: int, name: str, relu: bool = True):
    """Conv (no bias) -> BatchNorm (-> ReLU), named ``{name}_conv``, ``{name}_bn``, ``{name}_relu``."""
    x = Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = BatchNorm(name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def apply_basic_block(x, filters: int, stride: int, name: str):
    """Two 3x3 convs plus a shortcut (1x1 projection ``{name}_0`` when the shape changes)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = apply_conv_bn(x, filters, 1, stride, f"{name}_0", relu=False)
    x = apply_conv_bn(x, filters, 3, stride, f"{name}_1")
    x = apply_conv_bn(x, filters, 3, 1, f"{name}_2", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_bottleneck_block(x, filters: int, stride: int, name: str, stride_on: str = "conv3x3"):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) plus a shortcut (projection ``{name}_0`` when the
    shape changes); ``stride_on`` says which conv downsamples (see the module docstring)."""
    out_filters = BOTTLENECK_EXPANSION * filters
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = apply_conv_bn(x, out_filters, 1, stride, f"{name}_0", relu=False)
    stride_1x1, stride_3x3 = (stride, 1) if stride_on == "conv1x1" else (1, stride)
    x = apply_conv_bn(x, filters, 1, stride_1x1, f"{name}_1")
    x = apply_conv_bn(x, filters, 3, stride_3x3, f"{name}_2")
    x = apply_conv_bn(x, out_filters, 1, 1, f"{name}_3", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_stage(x, block: str, filters: int, blocks: int, stride: int, name: str,
                stride_on: str = "conv3x3"):
    """``blocks`` residual blocks named ``{name}_block1..N``; the first one downsamples."""
    for i in range(1, blocks + 1):
        block_stride = stride if i == 1 else 1
        if block == "basic":
            x = apply_basic_block(x, filters, block_stride, f"{name}_block{i}")
        else:
            x = apply_bottleneck_block(x, filters, block_stride, f"{name}_block{i}", stride_on)
    return x


def build_resnet(
    depth: int,
    input_shape=(28, 28, 1),
    num_classes: int = 14,
    *,
    stem: str | None = None,
    width: int = 64,
    stride_on: str = "conv3x3",
    head_dropout: float = 0.0,
    imagenet_preprocessing: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Build ResNet-``depth`` returning logits of shape (B, num_classes).

    Args:
        depth: one of 18, 34, 50, 101, 152.
        input_shape: (H, W, C) of float32 images in [-1, 1].
        stem: "small" (3x3/1, no pool), "imagenet" (7x7/2 + max-pool) or None: small below 64 px.
        width: filters of the stem and first stage (stages double it: 64 -> 64/128/256/512, the
            standard ResNet). Narrower nets (e.g. 16 or 32) train several times faster on a CPU.
        stride_on: "conv3x3" (v1.5) or "conv1x1" (v1) for bottleneck blocks.
        head_dropout: dropout before the final Dense.
        imagenet_preprocessing: None, or "caffe"/"torch" to put an ImageNetInput layer first
            (set by ``build_model(..., weights="imagenet")``).
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"unknown ResNet depth {depth!r}; known depths: {sorted(RESNET_DEPTHS)}")
    input_shape = check_input_shape(input_shape)
    check_positive_int(num_classes, "num_classes")
    stem = resolve_stem(stem, input_shape)
    if stride_on not in STRIDE_PLACEMENTS:
        raise ValueError(f"stride_on must be one of {STRIDE_PLACEMENTS}, got {stride_on!r}")
    head_dropout = check_rate(head_dropout, "head_dropout")
    check_positive_int(width, "width")
    if width != 64 and imagenet_preprocessing:
        raise ValueError("ImageNet weights need the standard width 64; drop width=")
    name = name or f"resnet{depth}"
    block, stage_blocks = RESNET_DEPTHS[depth]
    log.info(
        "building %s: input_shape=%s num_classes=%d stem=%s width=%d block=%s stages=%s "
        "stride_on=%s head_dropout=%s imagenet_preprocessing=%s",
        name, input_shape, num_classes, stem, width, block, stage_blocks, stride_on, head_dropout,
        imagenet_preprocessing,
    )

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    if imagenet_preprocessing:
        x = ImageNetInput(imagenet_preprocessing, name="imagenet_input")(x)
    x = apply_stem(x, stem, filters=width)
    for stage, (filters, blocks, stride) in enumerate(
        zip(STAGE_FILTERS, stage_blocks, STAGE_STRIDES), start=2
    ):
        x = apply_stage(x, block, filters * width // 64, blocks, stride, f"conv{stage}", stride_on)
    logits = apply_classifier_head(x, num_classes, head_dropout)
    return keras.Model(inputs, logits, name=name)

