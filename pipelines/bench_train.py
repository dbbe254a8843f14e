"""Training throughput, end to end: tf.data pipeline -> on-device augmentation -> model.fit step.

    python pipelines/bench_train.py --arch resnet18 --size 28 --batch 128 --steps 30 --jit off --batchnorm both
    python pipelines/bench_train.py --arch resnet18 --size 64 --batch 128 --steps 30 --jit off --small-map-conv both

Prints images/s for the real path (phantom records through the pipeline, augmentation on) and for
the same fit fed one cached batch over and over; the gap is the share of step time spent waiting
for input. Run the PyTorch peer in the same session and compare ratios (the machine is shared):

    peer-venv/bin/python ../shared/tools/peer_torch.py --arch resnet18 --size 28 --batch 128 --steps 20

(pipelines/bench_peers.py does both, for every architecture, in one table.)
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf import augment as augment_lib  # noqa: E402
from chest_tf.config import parse_model_args  # noqa: E402
from chest_tf.data.pipeline import load_dataset  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.training import fused_batchnorm, small_map_conv  # noqa: E402
from chest_tf.training.speed import StepTimer  # noqa: E402


def images_per_second(model, dataset, steps: int, warmup: int, batch: int) -> float:
    timer = StepTimer(warmup, max_seconds=None)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    return timer.steps * batch / timer.seconds()


def make_model(args, handle, jit: bool):
    keras.utils.set_random_seed(0)
    classifier = build_model(args.arch, handle.image_shape, handle.info.num_outputs, **args.model_arg)
    model = augment_lib.attach_augmentation(classifier, augment_lib.build_augmentation(args.augment, seed=0))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--jit", choices=["on", "off", "both"], default="both")
    parser.add_argument("--batchnorm", choices=["fused", "keras", "both"], default="fused",
                        help="BatchNorm training kernel: TF's fused one (what chest_tf.train uses) or Keras' ops")
    parser.add_argument("--small-map-conv", choices=["dense", "keras", "both"], default="dense",
                        help="convolutions on <= 2x2 maps: one matrix product (what chest_tf.train uses on a CPU)"
                             " or Keras' convolution")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "chest_tf_bench"))
    parser.add_argument("--model-arg", action="append", default=[], help="KEY=VALUE builder override, e.g. width=32")
    args = parser.parse_args()
    args.model_arg = parse_model_args(args.model_arg)

    handle = load_dataset("phantom", args.size, data_dir=args.data_dir, verbose=False)
    real = handle.batches("train", args.batch, training=True, seed=0, drop_remainder=True, repeat=True,
                          deterministic=False)
    constant = real.take(1).cache().repeat()
    print(f"{args.arch} {args.model_arg or ''} size={args.size} batch={args.batch} augment={args.augment} "
          f"float32 threads={tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count()}")
    batchnorms = ["fused", "keras"] if args.batchnorm == "both" else [args.batchnorm]
    convs = ["dense", "keras"] if args.small_map_conv == "both" else [args.small_map_conv]
    for batchnorm, conv in itertools.product(batchnorms, convs):
        for kernel, wanted in ((fused_batchnorm, batchnorm == "fused"), (small_map_conv, conv == "dense")):
            if wanted:
                kernel.install()
            else:
                kernel.uninstall()
        for jit in ([True, False] if args.jit == "both" else [args.jit == "on"]):
            model = make_model(args, handle, jit)
            through_pipeline = images_per_second(model, real, args.steps, args.warmup, args.batch)
            one_batch = images_per_second(model, constant, args.steps, args.warmup, args.batch)
            waiting = max(0.0, 1.0 - through_pipeline / one_batch)
            print(f"  BatchNorm {batchnorm:5s} small-map conv {conv:5s} XLA {'on ' if jit else 'off'}:"
                  f" {through_pipeline:7.1f} img/s end to end | {one_batch:7.1f} img/s on one cached batch"
                  f" | input wait {waiting:.0%} of step time | model.jit_compile={model.jit_compile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
