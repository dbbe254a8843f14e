"""``python -m chest_tf.doctor``: devices, versions, what ``auto`` resolves to, and a few timed
training steps of ResNet-18 and ViT on phantom data, as a report to paste into a bug report.

    python -m chest_tf.doctor                       # resnet18 and vit_small, 30 steps each
    python -m chest_tf.doctor --archs resnet --steps 10 --jit on
"""
from __future__ import annotations

import argparse

from chest_tf.config import JIT_MODES, PRECISIONS
from chest_tf.errors import ConfigError
from chest_tf.models.registry import arch_choices
from chest_tf.training.doctor import DEFAULT_ARCHS, run_doctor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chest_tf.doctor",
                                     description="A report of this machine for chest_tf: devices, versions, the "
                                                 "resolved settings and training speed on phantom data.")
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=arch_choices(), metavar="ARCH",
                        help=f"architectures to time (default {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per arch (default 30)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="image size (default 28)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--jit", choices=JIT_MODES, default="auto", help="XLA (default auto)")
    parser.add_argument("--data-dir", help="where the phantom set is made (default $CHEST_TF_DATA_DIR or "
                                           "~/.cache/chest_tf)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be at least 1")
    text, probes = run_doctor(args.archs, steps=args.steps, batch_size=args.batch_size, size=args.size,
                              data_dir=args.data_dir, precision=args.precision, jit=args.jit)
    print(text)
    return 1 if any(p.error for p in probes) else 0
