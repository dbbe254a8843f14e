"""Training throughput, end to end: tf.data pipeline -> on-device augmentation -> model.fit step.

    python pipelines/bench_train.py --arch resnet18 --size 28 --batch 128 --steps 30 --jit off --batchnorm both
    python pipelines/bench_train.py --arch resnet18 --size 64 --batch 128 --steps 30 --jit off --small-map-conv both
    python pipelines/bench_train.py --arch vit_tiny --size 64 --steps 8 --jit both --elementwise both --rounds 4

Prints images/s for the real path (phantom records through the pipeline, augmentation on) and for
the same fit fed one cached batch over and over; the gap is the share of step time spent waiting
for input. Each variant (every combination of the --jit, --batchnorm, --small-map-conv and
--elementwise choices) is built and compiled first, then timed in turn for --rounds rounds, and
the median of its rounds is printed: variants compared in one process, alternating, see the same
machine load. Run the PyTorch peer in the same session and compare ratios (the machine is shared):

    peer-venv/bin/python ../shared/tools/peer_torch.py --arch resnet18 --size 28 --batch 128 --steps 20

(pipelines/bench_peers.py does both, for every architecture, in one table.)
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf import augment as augment_lib  # noqa: E402
from chest_tf.config import parse_model_args  # noqa: E402
from chest_tf.data.pipeline import load_dataset  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.training import fused_batchnorm, small_map_conv, xla_elementwise  # noqa: E402
from chest_tf.training.speed import StepTimer  # noqa: E402


def images_per_second(model, dataset, steps: int, warmup: int, batch: int) -> float:
    timer = StepTimer(warmup, max_seconds=None)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    return timer.steps * batch / timer.seconds()


def both_or(choice: str, both: list[str]) -> list[str]:
    return both if choice == "both" else [choice]


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
    parser.add_argument("--elementwise", choices=["xla", "keras", "both"], default="xla",
                        help="a ViT's LayerNorm and GELU in training steps: XLA-compiled kernels (what chest_tf.train"
                             " uses on a CPU) or Keras' ops")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per variant, alternating variants")
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
    variants = {}
    for batchnorm, conv, elementwise, jit in itertools.product(
            both_or(args.batchnorm, ["fused", "keras"]), both_or(args.small_map_conv, ["dense", "keras"]),
            both_or(args.elementwise, ["xla", "keras"]), both_or(args.jit, ["on", "off"])):
        # The kernels are consulted when a step is traced: set them, build, and trace with a warm-up fit.
        for kernel, wanted in ((fused_batchnorm, batchnorm == "fused"), (small_map_conv, conv == "dense"),
                               (xla_elementwise, elementwise == "xla")):
            if wanted:
                kernel.install()
            else:
                kernel.uninstall()
        model = make_model(args, handle, jit == "on")
        model.fit(constant, epochs=1, steps_per_epoch=1, verbose=0)
        name = f"BatchNorm {batchnorm:5s} small-map conv {conv:5s} LN/GELU {elementwise:5s} XLA {jit:3s}"
        variants[name] = (model, [], [])
    for _ in range(args.rounds):
        for model, through_pipeline, one_batch in variants.values():
            through_pipeline.append(images_per_second(model, real, args.steps, args.warmup, args.batch))
            one_batch.append(images_per_second(model, constant, args.steps, args.warmup, args.batch))
    for name, (model, through_pipeline, one_batch) in variants.items():
        pipeline_median, one_batch_median = statistics.median(through_pipeline), statistics.median(one_batch)
        waiting = max(0.0, 1.0 - pipeline_median / one_batch_median)
        print(f"  {name}: {pipeline_median:7.1f} img/s end to end | {one_batch_median:7.1f} img/s on one cached"
              f" batch | input wait {waiting:.0%} of step time | medians of {args.rounds} round(s)"
              f" | model.jit_compile={model.jit_compile}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
