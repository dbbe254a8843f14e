"""Convolutions on tiny feature maps as a few matrix products, plugged into chest_tf's Conv2D for
TensorFlow on a CPU.

The last stages of the CNNs run on maps of 2x2 to 4x4 pixels (ResNet at 28 px: 4x4; at 64 px:
2x2; DenseNet's last blocks). oneDNN's convolution is slow there: it multiplies through the zero
padding, which is most of a tiny map, and its kernels are tuned for larger ones. A stride-1 'same'
convolution over such a map is one small linear map, and two exact rewrites of it are faster:

- **dense** (maps of at most 2x2 pixels, and no more pixels than kernel taps): one (H*W*C, H*W*O)
  matrix assembled from the kernel, one matrix product. No more multiply-adds than the
  convolution; the padding drops out.
- **one-tile Winograd** (3x3 kernels on maps of up to 4x4, at least 256 x 256 channels):
  Winograd's F(4x4, 3x3) with the whole map as its single tile (Lavin & Gray 2016, "Fast
  Algorithms for Convolutional Neural Networks"). The input, kernel and output transforms are
  each one product with a constant Kronecker matrix, and the products in between do 36
  multiply-adds per channel pair where the convolution does 144 (100 without the padding). The
  transforms round differently from a direct sum, within float32's precision (relative
  differences up to ~2e-5 at 512 channels), so it is only used when the layer computes in
  float32: bfloat16's 8-bit mantissa would turn the transforms' error into the model's.

``python pipelines/bench_conv.py`` times each method against Keras' convolution per layer shape
(forward plus both gradients, batch 128) and prints their largest difference.

The matrices are rebuilt from the layer's own kernel on every call, so weights, gradients and
saved models are the convolution's; the kernel declines every other shape, and the layer then runs
Keras' convolution. ``pipelines/bench_train.py --small-map-conv both`` measures a whole step.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from chest_tf.models.layers import register_conv_kernel

# Largest map (H * W pixels) the dense form takes: at 2x2 it is ~3x faster than oneDNN's
# convolution, at 3x3 the two tie (3x3 kernel, 256 and 512 channels).
DENSE_MAX_PIXELS = 4
# Winograd F(4x4, 3x3): one 6x6 input tile gives a 4x4 output tile.
WINOGRAD_TILE = 4
# Below this many input x output channels the transforms cost more than they save: 2-3x faster
# at 256 -> 256 and 512 -> 512, a tie at 128 -> 128, 1.5-2x slower at DenseNet's 128 -> 32.
WINOGRAD_MIN_CHANNEL_PRODUCT = 256 * 256
_WINOGRAD_INPUT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_WINOGRAD_KERNEL = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_WINOGRAD_OUTPUT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                             [0, 1, -1, 8, -8, 1]], np.float64)


@functools.lru_cache(maxsize=None)
def tap_selection(height: int, width: int, kernel_height: int, kernel_width: int) -> np.ndarray:
    """S[p, i, t] = 1 where input pixel p meets output pixel i through kernel tap t ('same'
    padding, stride 1; pixels and taps numbered row-major)."""
    pad_h, pad_w = (kernel_height - 1) // 2, (kernel_width - 1) // 2
    select = np.zeros((height * width, height * width, kernel_height * kernel_width), np.float32)
    for out_row in range(height):
        for out_col in range(width):
            for in_row in range(height):
                for in_col in range(width):
                    tap_row, tap_col = in_row - out_row + pad_h, in_col - out_col + pad_w
                    if 0 <= tap_row < kernel_height and 0 <= tap_col < kernel_width:
                        select[in_row * width + in_col, out_row * width + out_col,
                               tap_row * kernel_width + tap_col] = 1.0
    return select


@functools.lru_cache(maxsize=None)
def winograd_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F(4x4, 3x3) in two dimensions: (36, 36) input, (36, 9) kernel and (16, 36) output
    transforms, each the Kronecker square of the one-dimensional matrix."""
    return tuple(np.kron(m, m).astype(np.float32) for m in (_WINOGRAD_INPUT, _WINOGRAD_KERNEL, _WINOGRAD_OUTPUT))


def choose_method(layer, inputs) -> str | None:
    """'dense', 'winograd' or None (Keras' convolution) for ``layer`` applied to ``inputs``."""
    if len(inputs.shape) != 4 or None in inputs.shape[1:]:
        return None
    if not (tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.padding == "same" and layer.data_format == "channels_last"):
        return None
    height, width = inputs.shape[1], inputs.shape[2]
    kernel_height, kernel_width = layer.kernel_size
    if height * width <= min(DENSE_MAX_PIXELS, kernel_height * kernel_width):
        return "dense"
    if (kernel_height, kernel_width) == (3, 3) and max(height, width) <= WINOGRAD_TILE \
            and inputs.shape[-1] * layer.filters >= WINOGRAD_MIN_CHANNEL_PRODUCT and layer.compute_dtype == "float32":
        return "winograd"
    return None


def dense_conv(inputs, kernel):
    """'same' stride-1 convolution as one product with the (H*W*C, H*W*O) matrix of the map."""
    kernel = tf.convert_to_tensor(kernel)  # a variable reads as the compute dtype (mixed precision)
    height, width, channels = inputs.shape[1:]
    kernel_height, kernel_width, _, filters = kernel.shape
    pixels = height * width
    select = tf.constant(tap_selection(height, width, kernel_height, kernel_width), dtype=kernel.dtype)
    taps = tf.reshape(kernel, (kernel_height * kernel_width, channels, filters))
    matrix = tf.reshape(tf.einsum("pit,tco->pcio", select, taps), (pixels * channels, pixels * filters))
    outputs = tf.matmul(tf.reshape(inputs, (-1, pixels * channels)), matrix)
    return tf.reshape(outputs, (-1, height, width, filters))


def winograd_conv(inputs, kernel):
    """'same' stride-1 3x3 convolution of a map of at most 4x4 as one F(4x4, 3x3) Winograd tile."""
    height, width, channels = inputs.shape[1:]
    filters = kernel.shape[-1]
    input_transform, kernel_transform, output_transform = (tf.constant(m) for m in winograd_matrices())
    # The 6x6 tile: one pixel of 'same' padding before the map, the rest after.
    tile = tf.pad(inputs, [[0, 0], [1, WINOGRAD_TILE + 1 - height], [1, WINOGRAD_TILE + 1 - width], [0, 0]])
    tile = tf.reshape(tf.transpose(tile, [1, 2, 0, 3]), (36, -1))                  # (36, batch * C)
    transformed = tf.reshape(input_transform @ tile, (36, -1, channels))            # (36, batch, C)
    weights = tf.reshape(kernel_transform @ tf.reshape(kernel, (9, -1)), (36, channels, filters))
    products = tf.reshape(tf.matmul(transformed, weights), (36, -1))                # (36, batch * O)
    outputs = tf.reshape(output_transform @ products, (WINOGRAD_TILE, WINOGRAD_TILE, -1, filters))
    return tf.transpose(outputs, [2, 0, 1, 3])[:, :height, :width]


METHODS = {"dense": dense_conv, "winograd": winograd_conv}


def small_map_conv(layer, inputs, kernel):
    """``layer``'s convolution of ``inputs`` with ``kernel`` by the method ``choose_method``
    picks, or None (the layer then runs Keras' convolution)."""
    method = choose_method(layer, inputs)
    return None if method is None else METHODS[method](inputs, kernel)


def install() -> None:
    """Offer the kernel to chest_tf Conv2D layers: TensorFlow backend, no GPU (the gap is
    oneDNN's; no GPU figures exist here to say cuDNN has it)."""
    if keras.backend.backend() == "tensorflow" and not tf.config.list_logical_devices("GPU"):
        register_conv_kernel("tensorflow", small_map_conv)


def uninstall() -> None:
    register_conv_kernel("tensorflow", None)
