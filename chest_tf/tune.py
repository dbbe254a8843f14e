"""``python -m chest_tf.tune``: hyperparameter search for one architecture, objective validation AUC.

    pip install 'chest_tf[tune]'        # keras-tuner
    python -m chest_tf.tune --arch resnet18 --dataset pneumoniamnist \\
        --npz ../shared/data/pneumoniamnist.npz --model-arg width=16 --trials 8 --epochs 5
    python -m chest_tf.tune --arch vit_small --dataset chestmnist --size 64 --trials 20 --epochs 15
    python -m chest_tf.tune --arch resnet18 --config pipelines/base.toml ...   # base from a TOML

What is searched (keras-tuner's oracle proposes, chest_tf's own ``train()`` runs each trial):

    lr              log-uniform; CNNs 1e-4..1e-2, ViTs 3e-5..2e-3
    weight_decay    log-uniform 1e-4..0.3 (AdamW only; other optimizers ignore it, so it is not searched)
    augment         augmentation preset: none, light, medium, strong
    loss            bce, bce_weighted, focal, asymmetric (multi-class sets: bce, focal)
    head_dropout    0..0.5 in steps of 0.1
    drop_path_rate  0..0.3 in steps of 0.05 (ViTs only)

Everything else comes from the base config: defaults < ``--config`` TOML < flags. Every trial and
the default config train for ``--epochs`` (the budget per trial) with the same seed. ``--oracle
bayesian`` (default) samples the first half of the budget at random, then follows a Gaussian
process; ``--oracle random`` samples throughout.

Objective: validation AUC by the MedMNIST formula (chest_tf.metrics) of each trial's best
checkpoint, maximised. Trials never look at the test set; only the default config and the best
trial are evaluated on test at the end (full eval/ reports), for information.

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
last epoch, and a larger ``--trials`` extends the search.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.config import (
    LOSSES,
    RunConfig,
    load_toml,
    merge_settings,
    parse_model_args,
)
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.runs import config_differences
from chest_tf.sweep import (
    EPOCH_CURVES,
    PlannedRun,
    check_runnable,
    config_to_toml,
    quiet_retracing_warnings,
    read_run,
    run_or_skip,
    set_setting,
    write_hparams_config,
)

quiet_tensorflow()

INSTALL_HINT = "pip install 'chest_tf[tune]'"
# search-space name -> the dotted setting it sets
SPACE_SETTINGS = {
    "lr": "train.lr",
    "weight_decay": "train.weight_decay",
    "augment": "train.augment",
    "loss": "train.loss",
    "head_dropout": "model.overrides.head_dropout",
    "drop_path_rate": "model.overrides.drop_path_rate",
}
AUGMENT_PRESETS = ("none", "light", "medium", "strong")
OBJECTIVE = "val_auc"
VAL_FILE = "val.json"
TUNE_METRICS = (
    ("final/val_auc", "", "val AUC (objective)"),
    ("final/val_acc", "", "val ACC"),
    ("final/seconds_per_epoch", "", "s/epoch"),
    ("final/total_seconds", "", "training s"),
    ("final/test_auc", "", "test AUC (default and best only)"),
    *EPOCH_CURVES,
)


def import_keras_tuner():
    try:
        import keras_tuner  # noqa: PLC0415
    except ImportError:
        raise ChestTFError(f"chest_tf.tune needs keras-tuner: {INSTALL_HINT}") from None
    return keras_tuner


# ----------------------------------------------------------------------------------------------
# Search space


def is_vit(arch: str) -> bool:
    return arch.startswith("vit")


def task_losses(task: str) -> list[str]:
    from chest_tf.data.info import MULTI_CLASS, ORDINAL  # noqa: PLC0415

    return ["bce", "focal"] if task in (MULTI_CLASS, ORDINAL) else list(LOSSES)


def declare_space(hp, arch: str, task: str, base: RunConfig) -> None:
    """The search space on a keras_tuner ``HyperParameters`` (see the module docstring)."""
    vit = is_vit(arch)
    hp.Float("lr", 3e-5 if vit else 1e-4, 2e-3 if vit else 1e-2, sampling="log")
    if base.train.optimizer == "adamw":
        hp.Float("weight_decay", 1e-4, 0.3, sampling="log")
    hp.Choice("augment", list(AUGMENT_PRESETS))
    hp.Choice("loss", task_losses(task))
    hp.Float("head_dropout", 0.0, 0.5, step=0.1)
    if vit:
        hp.Float("drop_path_rate", 0.0, 0.3, step=0.05)


def _clean(value: Any) -> Any:
    """4 significant digits for floats (1e-3 rather than 0.0010000000000000002)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    config = base
    for name, value in values.items():
        if name not in SPACE_SETTINGS:
            raise ConfigError(f"unknown search-space entry {name!r}")
        config = set_setting(config, SPACE_SETTINGS[name], _clean(value))
    return config.validate()


def builder_default(arch: str, name: str) -> Any:
    """An architecture override's default (e.g. head_dropout 0.0), from its family builder."""
    from chest_tf.models.densenet import build_densenet  # noqa: PLC0415
    from chest_tf.models.resnet import build_resnet  # noqa: PLC0415
    from chest_tf.models.vit import build_vit  # noqa: PLC0415

    builder = build_vit if is_vit(arch) else build_densenet if arch.startswith("densenet") else build_resnet
    parameter = inspect.signature(builder).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def space_values(config: RunConfig, names: list[str]) -> dict[str, Any]:
    """What ``config`` uses for each searched setting (the default config's point in the space)."""
    values = {}
    for name in names:
        section, _, field = SPACE_SETTINGS[name].partition(".")
        if field.startswith("overrides."):
            key = field.split(".", 1)[1]
            values[name] = config.model.overrides.get(key, builder_default(config.model.arch, key))
        else:
            values[name] = getattr(getattr(config, section), field)
    return values


# ----------------------------------------------------------------------------------------------
# One trial: train, then the objective on validation only


def _dataset(config: RunConfig):
    from chest_tf.data.pipeline import load_dataset  # noqa: PLC0415

    data = config.data
    return load_dataset(data.dataset, data.size, data_dir=data.data_dir, records_dir=data.records_dir,
                        npz_path=data.npz)


def validation_score(run_dir: Path, config: RunConfig) -> dict[str, float]:
    """MedMNIST-formula val AUC and ACC of ``run_dir/best.keras`` (cached in val.json)."""
    path = run_dir / VAL_FILE
    if path.exists():
        return json.loads(path.read_text())
    if not (run_dir / "best.keras").exists():
        raise ChestTFError(f"{run_dir} has no best.keras (no epoch gave a finite validation AUC)")
    from chest_tf import metrics as metrics_lib  # noqa: PLC0415
    from chest_tf.evaluate import load_keras_model, predict_split  # noqa: PLC0415

    handle = _dataset(config)
    model = load_keras_model(run_dir / "best.keras")
    scores = metrics_lib.scores_from_logits(predict_split(model, handle, "val", config.train.batch_size),
                                            handle.info.task)
    labels = handle.labels("val")
    result = {"val_auc": float(metrics_lib.official_auc(labels, scores, handle.info.task)),
              "val_acc": float(metrics_lib.official_acc(labels, scores, handle.info.task))}
    tmp = path.with_name(VAL_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return result


def run_trial(config: RunConfig, run_dir: Path, *, name: str, hparams: dict[str, Any], verbose: int) -> dict:
    """Train (or skip / resume) one trial without touching test, then score it on validation; its
    HParams session carries the validation score and timing."""

    def trial_metrics(run_dir: Path) -> dict[str, float]:
        values = {f"final/{k}": v for k, v in validation_score(run_dir, config).items()}
        timing = read_run(run_dir)
        for tag, key in (("final/seconds_per_epoch", "s_per_epoch"), ("final/total_seconds", "total_s")):
            if isinstance(timing.get(key), (int, float)):
                values[tag] = float(timing[key])
        return values

    run_or_skip(config, run_dir, name=name, hparams=hparams, verbose=verbose, evaluate=False, metrics=trial_metrics)
    return validation_score(run_dir, config)


def full_evaluation(run_dir: Path, config: RunConfig) -> dict:
    """The eval/ report (val and test) of a finished trial, once, as training writes it."""
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    from chest_tf.train import Runtime, evaluate_best  # noqa: PLC0415

    runtime = Runtime(**json.loads((run_dir / "config.json").read_text())["runtime"])
    return evaluate_best(run_dir, _dataset(config), config, runtime)


def log_test_metrics(run_dir: Path, result: dict) -> None:
    import tensorflow as tf  # noqa: PLC0415

    head = result.get("headline", {})
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default():
        for key in ("auc", "acc"):
            if isinstance(head.get(key), (int, float)):
                tf.summary.scalar(f"final/test_{key}", head[key], step=0)
    writer.close()


# ----------------------------------------------------------------------------------------------
# The search


def make_tuner(kt, oracle, out: Path, runner):
    """A keras_tuner BaseTuner whose trials are chest_tf runs (``runner(trial_id, values)``)."""

    class RunTuner(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            try:
                return runner(trial.trial_id, dict(trial.hyperparameters.values))
            except ChestTFError as exc:  # e.g. a NaN loss at a high lr: a failed trial, not a failed search
                print(f"trial {trial.trial_id} failed: {exc}", file=sys.stderr, flush=True)
                raise kt.errors.FailedTrialError(str(exc)) from None

    return RunTuner(oracle, directory=str(out), project_name="keras_tuner", overwrite=False)


def make_oracle(kt, kind: str, hp, trials: int, seed: int):
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, max_trials=trials, hyperparameters=hp, tune_new_entries=False,
                  allow_new_entries=False, seed=seed, max_consecutive_failed_trials=3)
    if kind == "random":
        return kt.oracles.RandomSearchOracle(**common)
    return kt.oracles.BayesianOptimizationOracle(num_initial_points=max(2, trials // 2), **common)


TRIAL_COLUMNS = ("rank", "trial", "status", "val_auc", "val_acc", *SPACE_SETTINGS, "best_epoch", "epochs",
                 "s_per_epoch", "total_s", "val_auc_keras", "run_dir")


def collect_trials(out: Path, tuner, names: list[str], default_row: dict | None) -> list[dict]:
    rows = [default_row] if default_row else []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        run_dir = out / "trials" / f"trial_{trial_id}"
        score = json.loads((run_dir / VAL_FILE).read_text()) if (run_dir / VAL_FILE).exists() else {}
        info = read_run(run_dir)
        row = {"trial": trial_id, "status": trial.status, "run_dir": str(run_dir), **score,
               **{k: _clean(v) for k, v in trial.hyperparameters.values.items() if k in names},
               **{k: info.get(k) for k in ("best_epoch", "epochs", "s_per_epoch", "total_s", "val_auc_keras")}}
        rows.append(row)
    scored = sorted((r for r in rows if isinstance(r.get("val_auc"), float)), key=lambda r: -r["val_auc"])
    for rank, row in enumerate(scored, 1):
        row["rank"] = rank
    return scored + [r for r in rows if r not in scored]


def write_trials(out: Path, rows: list[dict], names: list[str]) -> None:
    columns = [c for c in TRIAL_COLUMNS if c not in SPACE_SETTINGS or c in names]
    with open(out / "trials.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    shown = [c for c in columns if c != "run_dir"]

    def cell(value, column=""):
        if isinstance(value, float) and column in ("s_per_epoch", "total_s"):
            return f"{value:.1f}"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.3g}"
        return "–" if value is None or value == "" else str(value)

    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c), c) for c in shown) + " |" for row in rows]
    (out / "trials.md").write_text(
        "# Tuning trials\n\nObjective: validation AUC (MedMNIST formula) of each trial's best checkpoint; "
        "`default` is the base config with the same budget.\n\n" + "\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chest_tf.tune",
                                description="Hyperparameter search (keras-tuner) over chest_tf runs.")
    p.add_argument("--arch", required=True, help="architecture to tune (python -m chest_tf.models list)")
    p.add_argument("--config", help="base config TOML ([data], [model], [train]); flags override it")
    p.add_argument("--dataset", help="default chestmnist; phantom runs offline")
    p.add_argument("--size", type=int, help="image size (default 28)")
    p.add_argument("--data-dir")
    p.add_argument("--records-dir")
    p.add_argument("--npz", help="read this npz file in place")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed architecture override, e.g. width=16 (repeatable)")
    p.add_argument("--trials", type=int, default=10, help="trial budget (default 10)")
    p.add_argument("--epochs", type=int, help="epochs per trial and for the default config (default 10)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps-per-epoch", type=int, help="fewer steps per epoch, for quick searches")
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial and the oracle's seed")
    p.add_argument("--oracle", choices=("bayesian", "random"), default="bayesian")
    p.add_argument("--out", help="default runs/tune/<dataset>_<size>_<arch>")
    p.add_argument("--no-default", action="store_true", help="do not train the default config for comparison")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity (default 2)")
    return p


def base_config(args: argparse.Namespace) -> RunConfig:
    values = load_toml(args.config) if args.config else {}
    data = {k: getattr(args, k) for k in ("dataset", "size", "data_dir", "records_dir", "npz") if getattr(args, k)}
    if data:
        values = merge_settings(values, "data", data)
    values = merge_settings(values, "model", {"arch": args.arch})
    if args.model_arg:
        values = merge_settings(values, "model", {"overrides": parse_model_args(args.model_arg)})
    train = {"seed": args.seed}
    if args.epochs is not None or not args.config:
        train["epochs"] = args.epochs if args.epochs is not None else 10
    for key in ("batch_size", "steps_per_epoch"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    return RunConfig.from_dict(merge_settings(values, "train", train)).validate()


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix trials of different searches in one --out."""
    path = out / "tune.json"
    if path.exists():
        previous = json.loads(path.read_text())
        diffs = config_differences({k: v for k, v in previous.items() if k != "trials"},
                                   {k: v for k, v in settings.items() if k != "trials"})
        if diffs:
            raise ConfigError(f"{out} holds a search with other settings ({'; '.join(diffs[:4])}); pass --overwrite "
                              "or another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    kt = import_keras_tuner()
    quiet_retracing_warnings()
    base = base_config(args)
    check_runnable([PlannedRun("base", "base", base.train.seed, base)])
    from chest_tf.data.info import get_info  # noqa: PLC0415

    task = get_info(base.data.dataset).task
    out = Path(args.out) if args.out else Path("runs") / "tune" / f"{base.data.dataset}_{base.data.size}_{args.arch}"
    if args.overwrite and out.exists():
        shutil.rmtree(out)

    hp = kt.HyperParameters()
    declare_space(hp, args.arch, task, base)
    names = [p.name for p in hp.space]
    settings = {"arch": args.arch, "base": base.to_dict(), "space": hp.get_config(), "oracle": args.oracle,
                "seed": args.seed, "trials": args.trials}
    check_settings(out, json.loads(json.dumps(settings)))
    write_hparams_config(out / "hparams", [*names, "arch", "epochs"], TUNE_METRICS)
    fixed = {"arch": args.arch, "epochs": base.train.epochs}
    print(f"tuning {args.arch} on {base.data.dataset} {base.data.size} px: {args.trials} trials x "
          f"{base.train.epochs} epochs, {args.oracle} oracle, searching {', '.join(names)} -> {out}", flush=True)
    started = time.perf_counter()

    default_row = None
    if not args.no_default:
        default_values = space_values(base, names)
        score = run_trial(base, out / "default", name="default", hparams={**default_values, **fixed},
                          verbose=args.verbose)
        info = read_run(out / "default")
        default_row = {"trial": "default", "status": "COMPLETED", "run_dir": str(out / "default"), **score,
                       **default_values,
                       **{k: info.get(k) for k in ("best_epoch", "epochs", "s_per_epoch", "total_s", "val_auc_keras")}}
        print(f"default config: val AUC {score['val_auc']:.4f}", flush=True)

    def runner(trial_id: str, values: dict) -> dict:
        config = trial_config(base, values)
        score = run_trial(config, out / "trials" / f"trial_{trial_id}", name=f"trial_{trial_id}",
                          hparams={**{k: _clean(v) for k, v in values.items()}, **fixed}, verbose=args.verbose)
        return {OBJECTIVE: score["val_auc"], "val_acc": score["val_acc"]}

    oracle = make_oracle(kt, args.oracle, hp, args.trials, args.seed)
    tuner = make_tuner(kt, oracle, out, runner)
    tuner.oracle.max_trials = args.trials  # a rerun with a larger budget extends the search
    try:
        tuner.search(verbose=1)
    except RuntimeError as exc:  # keras-tuner gives up after consecutive failed trials
        last = [line for line in str(exc).splitlines() if line.strip()]
        raise ChestTFError(f"the search stopped: {last[0] if last else exc}"
                           f"{' (last: ' + last[-1] + ')' if len(last) > 1 else ''}") from None

    rows = collect_trials(out, tuner, names, default_row)
    write_trials(out, rows, names)
    trials = [r for r in rows if r["trial"] != "default" and isinstance(r.get("val_auc"), float)]
    if not trials:
        raise ChestTFError(f"no trial finished; see {out / 'trials.md'}")
    best = trials[0]
    best_config = trial_config(base, {k: best[k] for k in names if k in best})
    best_dir = Path(best["run_dir"])
    comparison = []
    if default_row:
        delta = best["val_auc"] - default_row["val_auc"]
        verdict = (f"beats the default by {delta:.4f}" if delta > 0 else
                   f"falls short of the default by {-delta:.4f}" if delta < 0 else "ties with the default")
        comparison = [f"default config: val AUC {default_row['val_auc']:.4f}",
                      f"best trial {best['trial']}: val AUC {best['val_auc']:.4f} ({verdict})"]
    header = [
        f"Best of {len(trials)} trials of python -m chest_tf.tune for {args.arch} ({args.oracle} oracle, "
        f"{base.train.epochs} epochs each): trial {best['trial']}, validation AUC {best['val_auc']:.4f}",
        *comparison,
        f"Searched: {', '.join(f'{k}={best.get(k)}' for k in names)}",
        f"Trial run dir: {best_dir}; all trials: {out / 'trials.md'}",
        "Run it: python -m chest_tf.train --config best.toml   (or python -m chest_tf.sweep best.toml;",
        "add a [sweep] table with seeds = [0, 1, 2] to run several seeds, and raise epochs for a full run)",
    ]
    (out / "best.toml").write_text(config_to_toml(best_config, header))

    # Test numbers for the default and the best trial only: reported, never used to choose.
    tests = {}
    for label, run_dir, config in (("default", out / "default", base), ("best", best_dir, best_config)):
        if label == "default" and default_row is None:
            continue
        result = full_evaluation(run_dir, config)
        log_test_metrics(run_dir, result)
        tests[label] = result.get("headline", {})
    elapsed = time.perf_counter() - started
    print(f"\ntuning finished in {elapsed / 60:.1f} min; trials: {out / 'trials.md'}; best config: {out / 'best.toml'}")
    for line in comparison or [f"best trial {best['trial']}: val AUC {best['val_auc']:.4f}"]:
        print(line)
    for label, head in tests.items():
        print(f"  {label}: test AUC {head.get('auc', float('nan')):.4f}, ACC {head.get('acc', float('nan')):.4f} "
              "(reported only)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
