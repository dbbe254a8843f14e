"""Hyperparameter search for one architecture: keras-tuner's oracle proposes, chest_tf's own
``train()`` runs each trial, and the objective is validation AUC.

What is searched (``declare_space``)::

    lr              log-uniform; CNNs 1e-4..1e-2, ViTs 3e-5..2e-3
    weight_decay    log-uniform 1e-4..0.3 (AdamW only; other optimizers ignore it, so it is not searched)
    augment         augmentation preset: none, light, medium, strong
    loss            bce, bce_weighted, focal, asymmetric (multi-class sets: bce, focal)
    head_dropout    0..0.5 in steps of 0.1 (architectures whose builder takes it)
    drop_path_rate  0..0.3 in steps of 0.05 (architectures whose builder takes it: ViTs)

Everything else comes from the base config. Every trial and the default config train for the same
epochs with the same seed. The ``bayesian`` oracle samples the first half of the budget at random,
then follows a Gaussian process; ``random`` samples throughout.

Objective: validation AUC by the MedMNIST formula (chest_tf.evaluation.metrics) of each trial's
best checkpoint, maximised. Trials never look at the test set; only the default config and the best
trial are evaluated on test at the end (full eval/ reports), for information.

keras-tuner is the optional ``tune`` extra: ``import_keras_tuner`` imports it when a search starts.

Distributed (keras-tuner's own mode, ``tuning_role``): one chief process serves the oracle over gRPC
at ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`` (``python -m chest_tf.tune ... --tuner-id chief
--oracle-address HOST:PORT``); any number of workers (``--tuner-id worker0`` ...) on any machines
sharing ``--out`` ask it for trials and train them. The first worker to arrive trains the default
config (its run dir's lock keeps the others off it). Once every trial is done and every worker has
stopped, the chief writes trials.csv/.md and best.toml and evaluates the default and the best
trial on test, as a single-process search does.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from chest_tf.checks import check_runnable
from chest_tf.config import LOSSES, RunConfig, config_to_toml, merge_settings, set_setting
from chest_tf.data.info import MULTI_CLASS, ORDINAL, get_info
from chest_tf.data.pipeline import DatasetHandle, load_dataset
from chest_tf.errors import ChestTFError, ConfigError, Interrupted
from chest_tf.evaluation import metrics
from chest_tf.evaluation.evaluator import predict_split
from chest_tf.experiments.leaderboard import markdown_table, read_run, write_csv
from chest_tf.experiments.run import EPOCH_CURVES, quiet_retracing_warnings, run_or_skip, write_hparams_config
from chest_tf.files import write_json_atomic, write_text_atomic
from chest_tf.models.registry import FAMILIES, arch_family, arch_overrides
from chest_tf.runs import config_differences, load_keras_model, read_run_dir
from chest_tf.training import Runtime, evaluate_best

INSTALL_HINT = "pip install 'chest_tf[tune]'"
TRIAL_EPOCHS = 10  # epochs per trial unless the flags or the base config file say otherwise
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
# Peak learning rates searched, by family: ViTs train stably only at lower rates than CNNs.
LR_RANGES = {"vit": (3e-5, 2e-3)}
DEFAULT_LR_RANGE = (1e-4, 1e-2)
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
ROW_FACTS = ("best_epoch", "epochs", "s_per_epoch", "total_s", "val_auc_keras")  # from each run dir
TRIAL_COLUMNS = ("rank", "trial", "status", "val_auc", "val_acc", *SPACE_SETTINGS, *ROW_FACTS, "run_dir")


def import_keras_tuner():
    try:
        import keras_tuner  # noqa: PLC0415 (an optional extra: only a search needs it)
    except ImportError:
        raise ChestTFError(f"chest_tf.tune needs keras-tuner: {INSTALL_HINT}") from None
    return keras_tuner


# ----------------------------------------------------------------------------------------------
# The base config and the search space


def base_config(settings: dict[str, Any], *, default_epochs: int | None = TRIAL_EPOCHS) -> RunConfig:
    """The config every trial starts from: ``settings`` (a TOML document with the flags laid over
    it) with ``default_epochs`` when they give no ``train.epochs``, checked as training would check
    it (``check_runnable``; the architecture alias resolved)."""
    train = settings.get("train", {})
    if default_epochs is not None and not (isinstance(train, dict) and "epochs" in train):
        settings = merge_settings(settings, "train", {"epochs": default_epochs})
    return check_runnable(RunConfig.from_dict(settings))


def task_losses(task: str) -> list[str]:
    return ["bce", "focal"] if task in (MULTI_CLASS, ORDINAL) else list(LOSSES)


def declare_space(hp, arch: str, task: str, base: RunConfig) -> None:
    """The search space on a keras_tuner ``HyperParameters`` (see the module docstring)."""
    low, high = LR_RANGES.get(arch_family(arch), DEFAULT_LR_RANGE)
    hp.Float("lr", low, high, sampling="log")
    if base.train.optimizer == "adamw":
        hp.Float("weight_decay", 1e-4, 0.3, sampling="log")
    hp.Choice("augment", list(AUGMENT_PRESETS))
    hp.Choice("loss", task_losses(task))
    accepted = arch_overrides(arch)
    if "head_dropout" in accepted:
        hp.Float("head_dropout", 0.0, 0.5, step=0.1)
    if "drop_path_rate" in accepted:
        hp.Float("drop_path_rate", 0.0, 0.3, step=0.05)


def clean_value(value: Any) -> Any:
    """4 significant digits for floats (1e-3 rather than 0.0010000000000000002)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``base`` with a trial's point in the search space set."""
    config = base
    for name, value in values.items():
        if name not in SPACE_SETTINGS:
            raise ConfigError(f"unknown search-space entry {name!r}")
        config = set_setting(config, SPACE_SETTINGS[name], clean_value(value))
    return config.validate()


def builder_default(arch: str, name: str) -> Any:
    """An architecture override's default (e.g. head_dropout 0.0), from its family's builder."""
    parameter = inspect.signature(FAMILIES[arch_family(arch)].builder).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def space_values(config: RunConfig, names: list[str]) -> dict[str, Any]:
    """What ``config`` uses for each searched setting (the default config's point in the space)."""
    values = {}
    for name in names:
        section, _, setting = SPACE_SETTINGS[name].partition(".")
        if setting.startswith("overrides."):
            key = setting.split(".", 1)[1]
            values[name] = config.model.overrides.get(key, builder_default(config.model.arch, key))
        else:
            values[name] = getattr(getattr(config, section), setting)
    return values


# ----------------------------------------------------------------------------------------------
# One trial: train, then the objective on validation only


def _dataset(config: RunConfig) -> DatasetHandle:
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
    handle = _dataset(config)
    model = load_keras_model(run_dir / "best.keras")
    scores = metrics.scores_from_logits(predict_split(model, handle, "val", config.train.batch_size),
                                        handle.info.task)
    labels = handle.labels("val")
    result = {"val_auc": float(metrics.official_auc(labels, scores, handle.info.task)),
              "val_acc": float(metrics.official_acc(labels, scores, handle.info.task))}
    write_json_atomic(path, result)
    return result


def run_trial(config: RunConfig, run_dir: Path, *, name: str, hparams: dict[str, Any], verbose: int) -> dict:
    """Train (or skip / resume) one trial without touching test, then score it on validation; its
    HParams session carries the validation score and timing. ``TrialBusy`` when another process is
    training it."""

    def trial_metrics(run_dir: Path) -> dict[str, float]:
        values = {f"final/{k}": v for k, v in validation_score(run_dir, config).items()}
        timing = read_run(run_dir)
        for tag, key in (("final/seconds_per_epoch", "s_per_epoch"), ("final/total_seconds", "total_s")):
            if isinstance(timing.get(key), (int, float)):
                values[tag] = float(timing[key])
        return values

    if run_or_skip(config, run_dir, name=name, hparams=hparams, verbose=verbose, evaluate=False,
                   metrics=trial_metrics) == "busy":
        raise TrialBusy(f"{name} is being trained by another process ({run_dir})")
    return validation_score(run_dir, config)


class TrialBusy(ChestTFError):
    """Another process holds the trial's run dir."""


TUNER_ID_ENV, ORACLE_IP_ENV, ORACLE_PORT_ENV = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"


def set_distributed(tuner_id: str, oracle_address: str) -> None:
    """Set keras-tuner's environment for its distributed mode: ``tuner_id`` "chief" serves the
    oracle at ``oracle_address`` (HOST:PORT; the chief binds it), any other id is a worker."""
    host, _, port = oracle_address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--oracle-address must be HOST:PORT, got {oracle_address!r}")
    if not tuner_id:
        raise ConfigError("--tuner-id must not be empty (chief, or a worker name such as worker0)")
    os.environ.update({TUNER_ID_ENV: tuner_id, ORACLE_IP_ENV: host, ORACLE_PORT_ENV: port})


def tuning_role() -> str | None:
    """"chief" or "worker" in keras-tuner's distributed mode (its environment variables), else None."""
    if ORACLE_IP_ENV not in os.environ:
        return None
    if ORACLE_PORT_ENV not in os.environ or TUNER_ID_ENV not in os.environ:
        raise ConfigError(f"{ORACLE_IP_ENV} is set: distributed tuning also needs {ORACLE_PORT_ENV} and "
                          f"{TUNER_ID_ENV} (use --oracle-address HOST:PORT and --tuner-id)")
    return "chief" if "chief" in os.environ[TUNER_ID_ENV] else "worker"


def full_evaluation(run_dir: Path, config: RunConfig) -> dict:
    """The eval/ report (val and test) of a finished trial, once, as training writes it."""
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    _, payload = read_run_dir(run_dir)
    return evaluate_best(run_dir, _dataset(config), config, Runtime(**payload["runtime"]))


def log_test_metrics(run_dir: Path, result: dict) -> None:
    head = result.get("headline", {})
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default():
        for key in ("auc", "acc"):
            if isinstance(head.get(key), (int, float)):
                tf.summary.scalar(f"final/test_{key}", head[key], step=0)
    writer.close()


# ----------------------------------------------------------------------------------------------
# keras-tuner: the oracle proposes, a chest_tf run is each trial


def make_tuner(kt, oracle, out: Path, runner):
    """A keras_tuner BaseTuner whose trials are chest_tf runs (``runner(trial_id, values)``)."""

    class RunTuner(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            try:
                return runner(trial.trial_id, dict(trial.hyperparameters.values))
            except Interrupted as exc:  # SIGTERM / Ctrl-C: stop the search; the trial resumes on the next run
                raise kt.errors.FatalError(str(exc)) from exc
            except ChestTFError as exc:  # e.g. a NaN loss at a high lr: a failed trial, not a failed search
                print(f"trial {trial.trial_id} failed: {exc}", file=sys.stderr, flush=True)
                raise kt.errors.FailedTrialError(str(exc)) from None

    return RunTuner(oracle, directory=str(out), project_name="keras_tuner", overwrite=False)


def make_oracle(kt, kind: str, hp, trials: int, seed: int):
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = {"objective": objective, "max_trials": trials, "hyperparameters": hp, "tune_new_entries": False,
              "allow_new_entries": False, "seed": seed, "max_consecutive_failed_trials": 3}
    if kind == "random":
        return kt.oracles.RandomSearchOracle(**common)
    return kt.oracles.BayesianOptimizationOracle(num_initial_points=max(2, trials // 2), **common)


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix trials of different searches in one --out; record the settings (tune.json)."""
    path = out / "tune.json"
    if path.exists():
        previous = json.loads(path.read_text())
        diffs = config_differences({k: v for k, v in previous.items() if k != "trials"},
                                   {k: v for k, v in settings.items() if k != "trials"})
        if diffs:
            raise ConfigError(f"{out} holds a search with other settings ({'; '.join(diffs[:4])}); pass --overwrite "
                              "or another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# The trials table


def collect_trials(out: Path, tuner, names: list[str], default_row: dict | None) -> list[dict]:
    """One row per trial (and the default config), ranked by val AUC; unscored trials last."""
    rows = [default_row] if default_row else []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        run_dir = out / "trials" / f"trial_{trial_id}"
        score = json.loads((run_dir / VAL_FILE).read_text()) if (run_dir / VAL_FILE).exists() else {}
        info = read_run(run_dir)
        rows.append({"trial": trial_id, "status": trial.status, "run_dir": str(run_dir), **score,
                     **{k: clean_value(v) for k, v in trial.hyperparameters.values.items() if k in names},
                     **{k: info.get(k) for k in ROW_FACTS}})
    scored = sorted((r for r in rows if isinstance(r.get("val_auc"), float)), key=lambda r: -r["val_auc"])
    for rank, row in enumerate(scored, 1):
        row["rank"] = rank
    return scored + [r for r in rows if r not in scored]


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, float) and column in ("s_per_epoch", "total_s"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.3g}"
    return "–" if value is None or value == "" else str(value)


def write_trials(out: Path, rows: list[dict], names: list[str]) -> None:
    """trials.csv and trials.md: every trial and the default, best first."""
    columns = [c for c in TRIAL_COLUMNS if c not in SPACE_SETTINGS or c in names]
    write_csv(out / "trials.csv", columns, rows)
    shown = [c for c in columns if c != "run_dir"]
    table = markdown_table(shown, [[_cell(row.get(c), c) for c in shown] for row in rows])
    write_text_atomic(out / "trials.md",
                      "# Tuning trials\n\nObjective: validation AUC (MedMNIST formula) of each trial's best checkpoint; "
                      "`default` is the base config with the same budget.\n\n" + "\n".join(table) + "\n")


# ----------------------------------------------------------------------------------------------
# The search


@dataclass
class TuneResult:
    out: Path
    best: dict  # the best trial's row (see collect_trials)
    best_config: RunConfig
    comparison: list[str]  # best against the default config (empty without one)
    tests: dict[str, dict] = field(default_factory=dict)  # "default" / "best" -> test headline (reported only)
    seconds: float = 0.0


def default_out_dir(base: RunConfig) -> Path:
    return Path("runs") / "tune" / f"{base.data.dataset}_{base.data.size}_{base.model.arch}"


def _run_default(base: RunConfig, out: Path, names: list[str], fixed: dict, verbose: int) -> dict:
    """The base config trained with the trials' budget: the baseline to beat, as a trials row."""
    values = space_values(base, names)
    score = run_trial(base, out / "default", name="default", hparams={**values, **fixed}, verbose=verbose)
    info = read_run(out / "default")
    print(f"default config: val AUC {score['val_auc']:.4f}", flush=True)
    return {"trial": "default", "status": "COMPLETED", "run_dir": str(out / "default"), **score, **values,
            **{k: info.get(k) for k in ROW_FACTS}}


def _search(tuner) -> None:
    try:
        tuner.search(verbose=1)
    except Exception as exc:
        if isinstance(exc.__cause__, Interrupted):
            raise exc.__cause__ from None
        if not isinstance(exc, RuntimeError):
            raise
        # keras-tuner gives up after consecutive failed trials
        last = [line for line in str(exc).splitlines() if line.strip()]
        raise ChestTFError(f"the search stopped: {last[0] if last else exc}"
                           f"{' (last: ' + last[-1] + ')' if len(last) > 1 else ''}") from None


def _comparison(best: dict, default_row: dict | None) -> list[str]:
    if not default_row:
        return []
    delta = best["val_auc"] - default_row["val_auc"]
    verdict = (f"beats the default by {delta:.4f}" if delta > 0 else
               f"falls short of the default by {-delta:.4f}" if delta < 0 else "ties with the default")
    return [f"default config: val AUC {default_row['val_auc']:.4f}",
            f"best trial {best['trial']}: val AUC {best['val_auc']:.4f} ({verdict})"]


def run_search(kt, base: RunConfig, out: Path | None = None, *, trials: int = 10, oracle: str = "bayesian",
               with_default: bool = True, overwrite: bool = False, verbose: int = 2) -> TuneResult | None:
    """Search ``base.model.arch``'s space for ``trials`` trials into ``out`` (default
    runs/tune/<dataset>_<size>_<arch>); write trials.csv/.md and best.toml; evaluate the default
    config and the best trial on test. A rerun resumes, and a larger ``trials`` extends it.

    In keras-tuner's distributed mode (``tuning_role``) a worker trains trials (and the default
    config, if it gets there first) and returns None; the chief serves the oracle until all trials
    are done, then writes the results."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    role = tuning_role()
    if role and overwrite:
        raise ConfigError("--overwrite cannot be used in distributed mode: delete --out before starting the chief")
    quiet_retracing_warnings()
    arch, seed = base.model.arch, base.train.seed
    task = get_info(base.data.dataset).task
    out = Path(out) if out else default_out_dir(base)
    if overwrite and out.exists():
        shutil.rmtree(out)

    hp = kt.HyperParameters()
    declare_space(hp, arch, task, base)
    names = [p.name for p in hp.space]
    settings = {"arch": arch, "base": base.to_dict(), "space": hp.get_config(), "oracle": oracle, "seed": seed,
                "trials": trials}
    check_settings(out, json.loads(json.dumps(settings)))
    if role != "worker":
        write_hparams_config(out / "hparams", [*names, "arch", "epochs"], TUNE_METRICS)
    fixed = {"arch": arch, "epochs": base.train.epochs}
    print(f"tuning {arch} on {base.data.dataset} {base.data.size} px: {trials} trials x {base.train.epochs} epochs, "
          f"{oracle} oracle, searching {', '.join(names)} -> {out}"
          + (f" ({role} {os.environ[TUNER_ID_ENV]}, oracle at {os.environ[ORACLE_IP_ENV]}:"
             f"{os.environ[ORACLE_PORT_ENV]})" if role else ""), flush=True)
    started = time.perf_counter()
    default_row = None
    if with_default and role == "worker":
        try:  # the first worker here trains it; the others find it busy and go on to trials
            _run_default(base, out, names, fixed, verbose)
        except TrialBusy as busy:
            print(f"default config: {busy}; on to the trials", flush=True)
    elif with_default and role is None:
        default_row = _run_default(base, out, names, fixed, verbose)

    def runner(trial_id: str, values: dict) -> dict:
        score = run_trial(trial_config(base, values), out / "trials" / f"trial_{trial_id}", name=f"trial_{trial_id}",
                          hparams={**{k: clean_value(v) for k, v in values.items()}, **fixed}, verbose=verbose)
        return {OBJECTIVE: score["val_auc"], "val_acc": score["val_acc"]}

    tuner = make_tuner(kt, make_oracle(kt, oracle, hp, trials, seed), out, runner)
    tuner.oracle.max_trials = trials  # a rerun with a larger budget extends the search
    if role == "chief":
        print(f"serving the oracle at {os.environ[ORACLE_IP_ENV]}:{os.environ[ORACLE_PORT_ENV]} until every trial "
              "is done and every worker has stopped", flush=True)
    _search(tuner)
    if role == "worker":
        print(f"worker {os.environ[TUNER_ID_ENV]}: no trials left; the chief writes the results", flush=True)
        return None
    if role == "chief" and with_default:  # trained by a worker (resumed or trained here if it did not finish)
        default_row = _run_default(base, out, names, fixed, verbose)

    rows = collect_trials(out, tuner, names, default_row)
    write_trials(out, rows, names)
    scored = [r for r in rows if r["trial"] != "default" and isinstance(r.get("val_auc"), float)]
    if not scored:
        raise ChestTFError(f"no trial finished; see {out / 'trials.md'}")
    best = scored[0]
    best_config = trial_config(base, {k: best[k] for k in names if k in best})
    best_dir = Path(best["run_dir"])
    comparison = _comparison(best, default_row)
    header = [
        f"Best of {len(scored)} trials of python -m chest_tf.tune for {arch} ({oracle} oracle, "
        f"{base.train.epochs} epochs each): trial {best['trial']}, validation AUC {best['val_auc']:.4f}",
        *comparison,
        f"Searched: {', '.join(f'{k}={best.get(k)}' for k in names)}",
        f"Trial run dir: {best_dir}; all trials: {out / 'trials.md'}",
        "Run it: python -m chest_tf.train --config best.toml   (or python -m chest_tf.sweep best.toml;",
        "add a [sweep] table with seeds = [0, 1, 2] to run several seeds, and raise epochs for a full run)",
    ]
    write_text_atomic(out / "best.toml", config_to_toml(best_config, header))

    # Test numbers for the default and the best trial only: reported, never used to choose.
    tests = {}
    for label, run_dir, config in (("default", out / "default", base), ("best", best_dir, best_config)):
        if label == "default" and default_row is None:
            continue
        result = full_evaluation(run_dir, config)
        log_test_metrics(run_dir, result)
        tests[label] = result.get("headline", {})
    return TuneResult(out, best, best_config, comparison, tests, time.perf_counter() - started)
