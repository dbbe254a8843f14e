"""Per-layer speed of chest_tf's small-map convolutions (chest_tf/training/small_map_conv.py)
against Keras' convolution (TensorFlow's oneDNN kernel on a CPU), on the shapes the CNNs meet.

    python pipelines/bench_conv.py [--batch 128] [--repeats 10]

For each shape: milliseconds of one forward pass plus both gradients (input and kernel) with
Keras' convolution and with the method the kernel picks, the speed-up, and the largest difference
of outputs and gradients relative to the largest value. Both run in the same process, alternately,
so compare the ratio (the machine is shared).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf.models.layers import Conv2D  # noqa: E402
from chest_tf.training import small_map_conv  # noqa: E402

# (map size, input channels, filters, where the CNNs have it)
SHAPES = [
    (2, 512, 512, "ResNet-18/50 stage 4 at 64 px"),
    (2, 128, 32, "DenseNet-121 block 4 at 64 px"),
    (4, 512, 512, "ResNet-18/50 stage 4 at 28 px"),
    (4, 256, 256, "ResNet-18/50 stage 3 at 64 px"),
    (4, 128, 128, "(declined: under 256 x 256 channels)"),
    (4, 128, 32, "DenseNet-121 block 3 at 64 px (declined)"),
    (3, 128, 32, "DenseNet-121 block 4 at 28 px (declined)"),
    (7, 256, 256, "ResNet-18 stage 3 at 28 px (declined: Keras' convolution both times)"),
]


def time_step(layer, images, repeats: int):
    """(ms per forward + both gradients, [outputs, input gradient, kernel gradient])."""
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y, *tape.gradient(loss, [x, layer.kernel])]

    step(images)
    step(images)
    start = time.perf_counter()
    for _ in range(repeats):
        results = step(images)
    return (time.perf_counter() - start) / repeats * 1000, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| map | channels -> filters | method | Keras ms | small-map ms | speed-up | max rel. diff | where |")
    print("|---|---|---|---|---|---|---|---|")
    for size, channels, filters, where in SHAPES:
        images = tf.constant(rng.normal(size=(args.batch, size, size, channels)).astype("float32"))
        layer = Conv2D(filters, 3, padding="same", use_bias=False)
        layer.build(images.shape)
        method = small_map_conv.choose_method(layer, images) or "keras"
        small_map_conv.uninstall()
        keras_ms, expected = time_step(layer, images, args.repeats)
        small_map_conv.install()
        ours_ms, got = time_step(layer, images, args.repeats)
        small_map_conv.uninstall()
        diff = max(float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(a))) for a, b in zip(expected, got))
        print(f"| {size}x{size} | {channels} -> {filters} | {method} | {keras_ms:.1f} | {ours_ms:.1f} | "
              f"{keras_ms / ours_ms:.2f}x | {diff:.1e} | {where} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
