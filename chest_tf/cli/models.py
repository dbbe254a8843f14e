"""Model zoo command line: ``python -m chest_tf.models {list,bench}``.

    python -m chest_tf.models list
    python -m chest_tf.models bench [--size 28] [--batch 128] [--archs resnet18 vit_tiny] [--steps 10]

``bench`` prints one row per architecture: parameters, FLOPs per image (analytic: 2 x the
multiply-adds of conv, dense and attention layers; see ``estimate_flops``) at each
``--flops-sizes``, and training throughput (images/s) of compiled train steps on random data,
warm-up steps excluded. Keras APIs only, so it runs on any backend (``KERAS_BACKEND=jax``).
"""

from __future__ import annotations

import argparse

from chest_tf.models.bench import JIT_CHOICES, bench
from chest_tf.models.registry import ARCHS, aliases


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m chest_tf.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered architectures and the family aliases")
    bench = sub.add_parser("bench", help="params, FLOPs and training speed per architecture")
    bench.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS), metavar="ARCH",
                       help=f"architectures (default: all of {', '.join(sorted(ARCHS))})")
    bench.add_argument("--size", type=int, default=28, help="image side for the training speed (px)")
    bench.add_argument("--batch", type=int, default=128, help="batch size of the timed train steps")
    bench.add_argument("--steps", type=int, default=10, help="timed train steps per arch (after warm-up)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed train steps first (compilation)")
    bench.add_argument("--max-seconds", type=float, default=None,
                       help="stop timing an arch after this long (at least one timed step)")
    bench.add_argument("--flops-sizes", type=int, nargs="*", default=[28, 224],
                       help="image sides to count FLOPs at")
    bench.add_argument("--channels", type=int, default=1, help="image channels (1 for ChestMNIST)")
    bench.add_argument("--classes", type=int, default=14, help="outputs (14 ChestMNIST findings)")
    bench.add_argument("--jit", choices=sorted(JIT_CHOICES), default="auto",
                       help="XLA for the train step (auto: Keras decides per backend)")
    bench.add_argument("--no-train", action="store_true", help="only params and FLOPs")
    bench.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "bench":
        for value, what in ((args.size, "--size"), (args.batch, "--batch"), (args.steps, "--steps"),
                            (args.channels, "--channels"), (args.classes, "--classes")):
            if value < 1:
                parser.error(f"{what} must be >= 1, got {value}")
        if args.warmup < 0:
            parser.error("--warmup must be >= 0")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    if args.command == "list":
        print("\n".join(sorted(ARCHS)))
        print("aliases: " + ", ".join(f"{alias} = {arch}" for alias, arch in aliases().items()))
    else:
        bench(args)
    return 0

