"""``python -m chest_tf.sweep``: run an experiment file (``pipelines/*.toml``) and rank its runs.

    python -m chest_tf.sweep pipelines/quick.toml --dry-run          # what would run, and where
    python -m chest_tf.sweep pipelines/quick.toml                    # run it (again: skip/resume)
    python -m chest_tf.sweep pipelines/paper.toml --only 'resnet*'   # a subset (names or patterns)
    python -m chest_tf.sweep pipelines/quick.toml --set data.dataset=pneumoniamnist \\
        --set data.npz=../shared/data/pneumoniamnist.npz --out runs/sweeps/quick_pneumonia
    python -m chest_tf.sweep pipelines/quick.toml --leaderboard-only  # rebuild the tables/plot

The experiment file format ([sweep], [data], [model], [train], [[runs]]; grids, seeds, naming and
order of the runs) is described in ``chest_tf.experiments.plan``.

Output (``--out``, default ``runs/sweeps/<name>``)::

    sweep.json               the resolved plan: every run's name, seed and full config
    runs/<run>/              one ordinary chest_tf.train run dir per run (resumable)
    leaderboard.csv          one row per finished run
    leaderboard_by_config.csv  per config: mean, std, min and max over seeds
    leaderboard.md           both tables, the published rows for the dataset and size, the plot
    auc_vs_time.png          test AUC against training time, published results as reference lines
    hparams/                 TensorBoard HParams experiment definition

Rerunning the same command skips finished runs (``skipping ...``), resumes an interrupted one from
its last backup, and rebuilds the leaderboard from the run dirs. A finished run whose config no
longer matches the file is an error (delete that run dir, or use another ``--out``). SIGTERM or
Ctrl-C stops the sweep after saving the current run's state (exit status 143 / 130).

Several processes, one sweep: start the same command several times -- on one machine, or on several
machines that share ``--out`` -- and they divide the runs between them. Each run dir is locked by the
process training it (the others skip it: ``skipping NAME: PID ... on HOST is training it``), so every
run is trained once; the process that finishes last writes the leaderboard. See
docs/DISTRIBUTED.md for a Slurm array and a several-hosts example, and for the filesystems on
which the locks hold.

TensorBoard: ``tensorboard --logdir <out>`` -- each run's ``tensorboard/`` dir is one HParams
session (its hyperparameters and final metrics), next to its training curves. What the reported
numbers are and how configs are ranked: ``chest_tf.experiments.leaderboard``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chest_tf.config import parse_settings
from chest_tf.errors import ChestTFError
from chest_tf.experiments import (
    check_runs,
    default_sweep_dir,
    leaderboard_summary,
    load_sweep,
    print_plan,
    run_sweep,
    select_runs,
    write_leaderboard,
    write_leaderboard_if_last,
    write_plan,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chest_tf.sweep",
                                description="Run an experiment file (pipelines/*.toml) and write its leaderboard.")
    p.add_argument("file", help="experiment TOML ([sweep], [data], [model], [train], [[runs]]; see the module docs)")
    p.add_argument("--out", help="sweep dir (default runs/sweeps/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state; train nothing")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs or configs (shell patterns)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="override a dotted setting in every run, e.g. data.dataset=pneumoniamnist (repeatable)")
    p.add_argument("--leaderboard-only", action="store_true", help="rebuild the leaderboard from the run dirs")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                   help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch (default)")
    p.add_argument("--backup-every-steps", type=int, default=0, metavar="N",
                   help="also save each run's state every N steps, for long epochs (default 0: at each epoch's end "
                        "and on SIGTERM/SIGINT)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep = load_sweep(args.file, extra=parse_settings(args.settings))
    sweep_dir = Path(args.out) if args.out else default_sweep_dir(sweep)
    selected = select_runs(sweep.runs, args.only)
    check_runs(sweep.runs)
    if args.dry_run:
        print_plan(sweep, selected, sweep_dir)
        print(f"dry run: nothing trained; the leaderboard would go to {sweep_dir / 'leaderboard.md'}")
        return 0

    write_plan(sweep, sweep_dir, command=sys.argv)
    if args.leaderboard_only:
        failures, board = {}, write_leaderboard(sweep, sweep_dir)
    else:
        failures = run_sweep(sweep, selected, sweep_dir, verbose=args.verbose,
                             backup_every_steps=args.backup_every_steps)
        board = write_leaderboard_if_last(sweep, sweep_dir, failures)
    if board is None:  # other processes still train runs of this sweep; the last one writes it
        if failures:
            raise ChestTFError(f"{len(failures)} of {len(selected)} runs failed: {', '.join(failures)} (see above)")
        return 0
    print(leaderboard_summary(board["configs"]))
    print(f"leaderboard: {sweep_dir / 'leaderboard.md'} (and .csv, leaderboard_by_config.csv, auc_vs_time.png); "
          f"TensorBoard HParams: tensorboard --logdir {sweep_dir}")
    if failures:
        raise ChestTFError(f"{len(failures)} of {len(selected)} runs failed: {', '.join(failures)} (see above)")
    return 0
