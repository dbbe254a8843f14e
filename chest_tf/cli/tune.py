"""``python -m chest_tf.tune``: hyperparameter search for one architecture, objective validation AUC.

    pip install 'chest_tf[tune]'        # keras-tuner
    python -m chest_tf.tune --arch resnet18 --dataset pneumoniamnist \\
        --npz ../shared/data/pneumoniamnist.npz --model-arg width=16 --trials 8 --epochs 5
    python -m chest_tf.tune --arch vit_small --dataset chestmnist --size 64 --trials 20 --epochs 15
    python -m chest_tf.tune --arch resnet18 --config pipelines/base.toml ...   # base from a TOML

keras-tuner's oracle proposes, chest_tf's own ``train()`` runs each trial; what is searched and
how trials are scored: ``chest_tf.experiments.tuning``. Everything else comes from the base config:
defaults < ``--config`` TOML < flags (every ``RunConfig`` setting has a flag, as for
``python -m chest_tf.train``). Every trial and the default config train for ``--epochs`` (the
budget per trial; default 10 without ``--config``) with the same seed. ``--oracle bayesian``
(default) samples the first half of the budget at random, then follows a Gaussian process;
``--oracle random`` samples throughout.

Output (``--out``, default ``runs/tune/<dataset>_<size>_<arch>``)::

    tune.json            the search settings (a rerun with other settings is refused)
    default/             the default config's run dir (same budget), the baseline to beat
    trials/trial_<id>/   one chest_tf.train run dir per trial (+ val.json: its objective)
    keras_tuner/         the oracle's state (trial proposals; what makes the search resumable)
    trials.csv, trials.md  every trial and the default, best first
    best.toml            the best trial's config: [data], [model], [train]; runs with
                         ``python -m chest_tf.train --config best.toml`` or ``python -m chest_tf.sweep``
    hparams/             TensorBoard HParams experiment: ``tensorboard --logdir <out>``

Rerunning the same command resumes: finished trials are kept, an interrupted trial resumes from its
last backup, and a larger ``--trials`` extends the search. SIGTERM or Ctrl-C stops the search after
saving the running trial's state (exit status 143 / 130).

Distributed (keras-tuner's own mode; the same command on every machine, all sharing ``--out``)::

    python -m chest_tf.tune --arch resnet18 ... --out /shared/tune --tuner-id chief   --oracle-address 10.0.0.1:8000
    python -m chest_tf.tune --arch resnet18 ... --out /shared/tune --tuner-id worker0 --oracle-address 10.0.0.1:8000
    python -m chest_tf.tune --arch resnet18 ... --out /shared/tune --tuner-id worker1 --oracle-address 10.0.0.1:8000

The chief serves the oracle (it trains nothing) and, once every trial is done, writes trials.md,
best.toml and the test numbers; workers train the trials. keras-tuner's environment variables
(KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT) work too.
"""
from __future__ import annotations

import argparse

from chest_tf.augment import PRESETS
from chest_tf.config import add_config_arguments, settings_from_arguments
from chest_tf.data.info import CATALOGUE
from chest_tf.errors import ChestTFError
from chest_tf.experiments.tuning import (
    TRIAL_EPOCHS,
    base_config,
    import_keras_tuner,
    run_search,
    set_distributed,
)
from chest_tf.models.registry import arch_choices


def build_parser() -> argparse.ArgumentParser:
    # "resolve": the search group below re-declares --arch (required here), --epochs and --seed
    # with what they mean for a search, replacing the generated config flags of the same name.
    p = argparse.ArgumentParser(prog="python -m chest_tf.tune", conflict_handler="resolve",
                                description="Hyperparameter search (keras-tuner) over chest_tf runs.")
    add_config_arguments(p, choices={"dataset": sorted(CATALOGUE), "arch": arch_choices(),
                                     "augment": sorted(PRESETS)})
    search = p.add_argument_group("search")
    search.add_argument("--arch", required=True, choices=arch_choices(),
                        help="architecture to tune (python -m chest_tf.models list)")
    search.add_argument("--epochs", type=int,
                        help=f"epochs per trial and for the default config (default {TRIAL_EPOCHS}, or --config's)")
    search.add_argument("--seed", type=int, help="training seed of every trial and the oracle's seed (default 0)")
    search.add_argument("--trials", type=int, default=10, help="trial budget (default 10)")
    search.add_argument("--oracle", choices=("bayesian", "random"), default="bayesian")
    search.add_argument("--out", help="default runs/tune/<dataset>_<size>_<arch>")
    search.add_argument("--no-default", action="store_true", help="do not train the default config for comparison")
    search.add_argument("--overwrite", action="store_true", help="delete --out first")
    search.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity (default 2)")
    dist = p.add_argument_group("distributed (keras-tuner's chief and workers; see the module docs)")
    dist.add_argument("--tuner-id", help="chief (serves the oracle) or a worker name such as worker0")
    dist.add_argument("--oracle-address", metavar="HOST:PORT", help="where the chief serves the oracle")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tuner_id or args.oracle_address:
        if not (args.tuner_id and args.oracle_address):
            raise ChestTFError("distributed tuning needs both --tuner-id and --oracle-address")
        set_distributed(args.tuner_id, args.oracle_address)
    kt = import_keras_tuner()
    base = base_config(settings_from_arguments(args), default_epochs=None if args.config else TRIAL_EPOCHS)
    result = run_search(kt, base, args.out, trials=args.trials, oracle=args.oracle, with_default=not args.no_default,
                        overwrite=args.overwrite, verbose=args.verbose)
    if result is None:  # a distributed worker: the chief reports
        return 0
    out, best = result.out, result.best
    print(f"\ntuning finished in {result.seconds / 60:.1f} min; trials: {out / 'trials.md'}; "
          f"best config: {out / 'best.toml'}")
    for line in result.comparison or [f"best trial {best['trial']}: val AUC {best['val_auc']:.4f}"]:
        print(line)
    for label, head in result.tests.items():
        print(f"  {label}: test AUC {head.get('auc', float('nan')):.4f}, ACC {head.get('acc', float('nan')):.4f} "
              "(reported only)")
    return 0
