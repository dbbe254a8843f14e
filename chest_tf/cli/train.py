"""``python -m chest_tf.train``: train a classifier with model.fit, XLA, mixed precision,
on-device augmentation, TensorBoard, checkpoints and resume.

    python -m chest_tf.train --arch resnet18 --dataset phantom            # offline, anywhere
    python -m chest_tf.train --arch vit --dataset chestmnist --size 64 --epochs 50
    python -m chest_tf.train --config my_run.toml --lr 1e-3               # TOML, flags on top

Every setting of ``chest_tf.config.RunConfig`` has a flag (generated from the dataclasses, with
their help text); ``--arch`` takes a registered name or a family alias (``vit`` = vit_small,
``resnet`` = resnet18, ``densenet`` = densenet121). What the run dir holds:
``chest_tf.training.engine``. Running the same command again resumes an interrupted run at the
epoch it reached; a finished run is left alone unless ``--overwrite`` is given.

SIGTERM or Ctrl-C (preemption, ``scancel``, ``kill``) saves the state at the current step and
exits with status 143 (SIGTERM) or 130 (SIGINT) and ``interrupted: ...``; the same command then
resumes at that step. ``--backup-every-steps N`` also saves every N steps, for long epochs on
machines that are killed without warning. A second process on the same run dir is refused at once
with a one-line error naming the PID and host that hold it.
"""
from __future__ import annotations

import argparse

from chest_tf.augment import PRESETS
from chest_tf.config import add_config_arguments, config_from_arguments
from chest_tf.data.info import CATALOGUE
from chest_tf.models.registry import arch_choices
from chest_tf.training import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.train", description="Train a chest X-ray classifier (see the module docs)."
    )
    add_config_arguments(parser, choices={"dataset": sorted(CATALOGUE), "arch": arch_choices(),
                                          "augment": sorted(PRESETS)})
    group = parser.add_argument_group("run")
    group.add_argument("--run-dir", help="default runs/<dataset>_<size>/<arch>_s<seed> (the resolved arch name)")
    group.add_argument("--resume", action="store_true", help="require an interrupted run to resume")
    group.add_argument("--overwrite", action="store_true", help="replace whatever is in the run dir")
    group.add_argument("--no-eval", action="store_true", help="skip the final val/test evaluation")
    group.add_argument("--backup-every-steps", type=int, default=0, metavar="N",
                       help="also save the training state every N steps, for long epochs (default 0: at the end of "
                            "each epoch and on SIGTERM/SIGINT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(config_from_arguments(args), args.run_dir, resume=args.resume, overwrite=args.overwrite,
          evaluate=not args.no_eval, backup_every_steps=args.backup_every_steps)
    return 0
