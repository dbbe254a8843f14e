"""Running planned runs: a finished run is skipped, an interrupted one resumes from its last backup,
and each run becomes one TensorBoard HParams session (its hyperparameters and final metrics, next
to its training curves), so ``tensorboard --logdir <sweep dir>`` compares them.

Several processes can run one sweep together (on one machine, or on several that share the sweep
dir): each takes a run only if it can take the run dir's lock (``chest_tf.locks``) and otherwise
moves on to the next, so every run is trained once; the sweep's own files (sweep.json, hparams/,
the leaderboard) are written under the sweep's lock, and the leaderboard by the process that
finishes last (``write_leaderboard_if_last``). A SIGTERM or Ctrl-C stops the sweep (the run
saves its state; ``errors.Interrupted``); the same command continues it."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from chest_tf.config import RunConfig
from chest_tf.errors import ChestTFError, ConfigError, Interrupted
from chest_tf.experiments.leaderboard import (
    count_params,
    format_duration,
    is_finite,
    read_run,
    run_state,
    write_leaderboard,
)
from chest_tf.experiments.plan import PlannedRun, Sweep, describe_run, flat_settings, run_dir_of
from chest_tf.files import write_json_atomic
from chest_tf.locks import RUN_LOCK, LockBusy, hold
from chest_tf.locks import holder as lock_holder
from chest_tf.runs import saved_config_differences
from chest_tf.training import lock_run_dir, train

SWEEP_LOCK = ".sweep.lock"  # in the sweep dir: sweep.json, hparams/ and the leaderboard are written under it

HPARAMS_MARKER = "hparams.json"  # written once a run's HParams session is logged

# Always logged as HParams (plus every setting that varies within the sweep).
KEY_HPARAMS = (
    "data.dataset", "data.size", "model.arch", "model.weights", "train.epochs", "train.batch_size", "train.lr",
    "train.optimizer", "train.schedule", "train.warmup_epochs", "train.weight_decay", "train.loss",
    "train.augment", "train.mixup", "train.label_smoothing", "train.seed",
)
# (tag, group, display name): the training curves Keras' TensorBoard callback writes per run.
EPOCH_CURVES = (
    ("epoch_auc", "validation", "val AUC per epoch (Keras)"),
    ("epoch_loss", "validation", "val loss per epoch"),
    ("epoch_loss", "train", "train loss per epoch"),
)
# HParams metrics of a sweep: the final numbers each run writes, then its training curves.
FINAL_METRICS = (
    ("final/val_auc", "", "val AUC"),
    ("final/test_auc", "", "test AUC"),
    ("final/test_acc", "", "test ACC"),
    ("final/test_sensitivity", "", "sensitivity (val thresholds)"),
    ("final/test_specificity", "", "specificity (val thresholds)"),
    ("final/seconds_per_epoch", "", "s/epoch"),
    ("final/total_seconds", "", "training s"),
    ("final/params", "", "params"),
    *EPOCH_CURVES,
)


# ----------------------------------------------------------------------------------------------
# HParams


def _hparam_value(value: Any) -> bool | int | float | str:
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def hparam_values(config: RunConfig, keys: Iterable[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HParams of a run: ``keys`` of its flattened config (values TensorBoard can hold: bool,
    int, float, str; None -> "none"; anything else as JSON), plus ``extra``."""
    flat = flat_settings(config.to_dict())
    values = {key: _hparam_value(flat[key]) for key in keys if key in flat}
    for key, value in (extra or {}).items():
        values[key] = _hparam_value(value)
    return values


def sweep_hparam_keys(runs: list[PlannedRun]) -> list[str]:
    """KEY_HPARAMS plus every setting that differs between the runs or that a run sets."""
    flats = [flat_settings(run.config.to_dict()) for run in runs]
    keys = list(KEY_HPARAMS)
    everything = sorted(set().union(*flats)) if flats else []
    for key in everything:
        if key in keys:
            continue
        values = {json.dumps(flat.get(key), sort_keys=True) for flat in flats}
        if len(values) > 1 or key.startswith("model.overrides.") or any(key in run.settings for run in runs):
            keys.append(key)
    return keys


def write_hparams_config(log_dir: Path, hparam_names: list[str], metrics=FINAL_METRICS) -> None:
    """The HParams experiment (which hyperparameters and metrics the dashboard shows), written to
    ``log_dir`` (replacing an older definition there)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents*"):
        old.unlink()
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hp.hparams_config(
            hparams=[hp.HParam(name) for name in hparam_names],
            metrics=[hp.Metric(tag, group=group or None, display_name=display) for tag, group, display in metrics],
        )
    writer.close()


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers a finished run is judged by, from its eval/metrics.json and timing.json."""
    row = read_run(run_dir)
    names = {"val_auc": "val_auc", "test_auc": "test_auc", "test_acc": "test_acc",
             "test_sensitivity": "sensitivity", "test_specificity": "specificity",
             "seconds_per_epoch": "s_per_epoch", "total_seconds": "total_s"}
    values = {f"final/{tag}": float(row[key]) for tag, key in names.items() if is_finite(row.get(key))}
    params = count_params(run_dir)
    if params is not None:
        values["final/params"] = float(params)
    return values


def log_hparams(run_dir: Path, hparams: dict[str, Any], trial_id: str, metrics: dict[str, float]) -> None:
    """One HParams session in ``run_dir/tensorboard`` (next to Keras' train/ and validation/
    curves): the run's hyperparameters and its final metrics; then ``hparams.json``."""
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default():
        hp.hparams(hparams, trial_id=trial_id)
        for tag, value in metrics.items():
            tf.summary.scalar(tag, value, step=0)
    writer.close()
    write_json_atomic(run_dir / HPARAMS_MARKER, {"trial_id": trial_id, "hparams": hparams, "metrics": metrics})


# ----------------------------------------------------------------------------------------------
# One run: skip, resume or train


def quiet_retracing_warnings() -> None:
    """Several trainings in one process make tf.function warn about retracing on every new model;
    that is expected here, so TensorFlow's Python logger shows errors only (``console.launch``
    does the same, but not when the library is called directly)."""
    tf.get_logger().setLevel("ERROR")


def run_or_skip(config: RunConfig, run_dir: Path, *, name: str, hparams: dict[str, Any], verbose: int | str = 2,
                evaluate: bool = True, metrics: Callable[[Path], dict[str, float]] | None = None,
                backup_every_steps: int = 0) -> str:
    """Train ``config`` into ``run_dir`` unless it has finished there already; an interrupted run
    resumes (chest_tf.training.train). Logs the HParams session once, with ``metrics(run_dir)``
    (default ``final_metrics``). Returns "skipped", "trained", or "busy" when another process
    holds the run dir (it is training it; nothing is done here)."""
    try:
        lock = lock_run_dir(run_dir)
    except LockBusy as busy:
        who = busy.holder.describe() if busy.holder else "another process"
        print(f"skipping {name}: {who} is training it ({run_dir})", flush=True)
        return "busy"
    try:
        state = run_state(run_dir)
        if state == "finished":
            diffs = saved_config_differences(run_dir, config)
            if diffs:
                raise ConfigError(f"{run_dir} holds a finished run with other settings ({'; '.join(diffs)}); "
                                  "delete it or write the sweep to another --out")
            print(f"skipping {name}: finished ({run_dir})", flush=True)
            outcome = "skipped"
        else:
            keras.backend.clear_session()  # free the previous run's graphs and weights
            print(f"{'resuming' if state == 'interrupted' else 'running'} {name} -> {run_dir}", flush=True)
            train(config, run_dir, verbose=verbose, evaluate=evaluate, backup_every_steps=backup_every_steps)
            outcome = "trained"
        if not (run_dir / HPARAMS_MARKER).exists():
            log_hparams(run_dir, hparams, name, (metrics or final_metrics)(run_dir))
    finally:
        lock.release()
    return outcome


# ----------------------------------------------------------------------------------------------
# A sweep: its plan on disk, on the terminal, and its runs one after another


def print_plan(sweep: Sweep, runs: list[PlannedRun], sweep_dir: Path) -> None:
    """The selected runs, their state in ``sweep_dir`` and what each sets on top of the base."""
    base = sweep.base
    print(f"sweep {sweep.name} ({sweep.source}): {len(runs)} of {len(sweep.runs)} runs selected -> {sweep_dir}")
    print(f"base: {base.data.dataset} {base.data.size} px | {base.model.arch} {base.model.overrides or ''} | "
          f"epochs {base.train.epochs} batch {base.train.batch_size} lr {base.train.lr:g} {base.train.optimizer} "
          f"{base.train.schedule} | loss {base.train.loss} | augment {base.train.augment}")
    width = max([len(r.name) for r in runs] + [3])
    print(f"{'#':>3}  {'run':<{width}}  {'state':<11}  {'epochs':>6}  settings")
    for index, run in enumerate(runs, 1):
        state = run_state(run_dir_of(sweep_dir, run))
        print(f"{index:>3}  {run.name:<{width}}  {state:<11}  {run.config.train.epochs:>6}  {describe_run(run)}")


def sweep_lock(sweep_dir: Path):
    """``with sweep_lock(sweep_dir):`` -- the sweep's own files are written by one process at a time."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return hold(sweep_dir / SWEEP_LOCK, f"sweep {sweep_dir}", wait=True)


def write_plan(sweep: Sweep, sweep_dir: Path, command: list[str]) -> None:
    """``sweep.json`` (every run's name, seed and full config, and the ``command`` that ran it) and
    the sweep's HParams experiment definition (``hparams/``)."""
    plan = {"name": sweep.name, "source": sweep.source, "description": sweep.description, "grid": sweep.grid,
            "command": command, "runs": [{"name": r.name, "config": r.config_name, "seed": r.seed,
                                          "settings": r.settings, "run_dir": str(run_dir_of(sweep_dir, r)),
                                          "resolved": r.config.to_dict()} for r in sweep.runs]}
    with sweep_lock(sweep_dir):
        write_json_atomic(sweep_dir / "sweep.json", plan, default=str)
        write_hparams_config(sweep_dir / "hparams", ["config", *sweep_hparam_keys(sweep.runs)])


def running_elsewhere(sweep: Sweep, sweep_dir: Path) -> list[str]:
    """The runs of ``sweep`` that another process is training now (it holds their run dir's lock)."""
    return [run.name for run in sweep.runs if lock_holder(run_dir_of(sweep_dir, run) / RUN_LOCK) is not None]


def write_leaderboard_if_last(sweep: Sweep, sweep_dir: Path, failures: dict[str, str] | None = None
                              ) -> dict[str, Any] | None:
    """Rebuild the leaderboard unless another process is still training one of the sweep's runs
    (then it will, when it finishes: the last process to finish writes it); None when skipped."""
    with sweep_lock(sweep_dir):
        running = running_elsewhere(sweep, sweep_dir)
        if running:
            print(f"{len(running)} run{'s' if len(running) > 1 else ''} still training in other processes "
                  f"({', '.join(running[:5])}{', ...' if len(running) > 5 else ''}): the last process to finish "
                  f"writes the leaderboard", flush=True)
            return None
        return write_leaderboard(sweep, sweep_dir, failures)


def run_sweep(sweep: Sweep, runs: list[PlannedRun], sweep_dir: Path, *, verbose: int | str = 2,
              backup_every_steps: int = 0) -> dict[str, str]:
    """Run (or skip, or resume) ``runs`` of ``sweep`` one after another; a run another process is
    training is left to it; a run that fails is reported and the next one starts; a signal
    (``Interrupted``) stops the sweep. Returns {run name: first line of its error}."""
    print_plan(sweep, runs, sweep_dir)
    quiet_retracing_warnings()
    keys = sweep_hparam_keys(sweep.runs)
    failures: dict[str, str] = {}
    started = time.perf_counter()
    for index, run in enumerate(runs, 1):
        print(f"[{index}/{len(runs)}] {run.name}", flush=True)
        hparams = hparam_values(run.config, keys, {"config": run.config_name})
        try:
            run_or_skip(run.config, run_dir_of(sweep_dir, run), name=run.name, hparams=hparams, verbose=verbose,
                        backup_every_steps=backup_every_steps)
        except Interrupted:
            raise
        except (ChestTFError, tf.errors.ResourceExhaustedError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error in {run.name}: {message}", file=sys.stderr, flush=True)
            failures[run.name] = message
    print(f"sweep {sweep.name}: {len(runs)} runs in {format_duration(time.perf_counter() - started)}")
    return failures
