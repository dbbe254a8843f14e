"""The training engine: a ``RunConfig`` in, a run dir out (see ``train``).

The run dir (default ``runs/<dataset>_<size>/<arch>_s<seed>``) holds::

    config.json      the resolved config, plus what "auto" became (precision, XLA, strategy, device)
    history.csv      one row per epoch: loss, auc, val_loss, val_auc, learning_rate
    best.keras       the model (no augmentation) at the epoch with the best validation AUC
    best.json        that epoch and its validation AUC
    timing.json      seconds per epoch and training images/s
    tensorboard/     losses, learning rate, validation AUC, a grid of augmented training images
    backup/          until the run has finished: the state it resumes from (training/backup.py)
    .chest_tf.lock   held while a process trains here (chest_tf.locks): a second one is refused
    eval/            after training: the best model's val/test metrics (chest_tf.evaluation.metrics),
                     predictions.npz they came from, report.md and figures
    finished.json    written last; a finished run is only replaced with overwrite

Training the same config into the same run dir again resumes an interrupted run where its last
backup stands: the end of an epoch, a step inside one (``backup_every_steps``), or the step at which
SIGTERM / SIGINT stopped it (the run saves its state and ends with ``errors.Interrupted``). Only one
process trains a run dir at a time: a second one gets a one-line error naming the first (its PID
and host); the lock of a process that died is taken over. A full disk or a folder that cannot be
written ends the run with a one-line error; what was saved before (best.keras, the last backup)
stays as it was, and the same command resumes once the problem is fixed.
"""
from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chest_tf import augment as augment_lib
from chest_tf import losses as losses_lib
from chest_tf.checks import check_runnable
from chest_tf.config import RunConfig
from chest_tf.data.info import get_info
from chest_tf.data.pipeline import DatasetHandle, load_dataset
from chest_tf.errors import ChestTFError, ConfigError, error_line
from chest_tf.evaluation.evaluator import evaluate_model
from chest_tf.files import write_json_atomic, write_problem, write_text_atomic
from chest_tf.locks import RUN_LOCK, FileLock
from chest_tf.models.registry import build_model
from chest_tf.runs import FINISHED_MARKER, load_keras_model, saved_config_differences
from chest_tf.training import kernels
from chest_tf.training.backup import BACKUP_DIR, RunBackup, SignalCatcher, describe_state, interrupted
from chest_tf.training.callbacks import build_callbacks, training_auc_metric
from chest_tf.training.optimizer import build_optimizer
from chest_tf.training.runtime import Runtime, distribution_strategy, resolve_runtime


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.data.dataset}_{config.data.size}" / f"{config.model.arch}_s{config.train.seed}"


def run_lock(run_dir: str | Path) -> FileLock:
    """The lock a process holds while it trains ``run_dir`` (re-entrant within a process)."""
    run_dir = Path(run_dir)
    return FileLock(run_dir / RUN_LOCK, f"run dir {run_dir}")


def lock_run_dir(run_dir: Path) -> FileLock:
    """Create ``run_dir`` if needed and take its lock: ``LockBusy`` (one line, naming the holder's PID
    and host) when another process trains it; a dead holder's lock is taken over, with a note."""
    lock = run_lock(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        stale = lock.acquire()
    except OSError as exc:
        raise ConfigError(f"run dir {run_dir} is not writable ({exc.strerror}); choose another --run-dir") from None
    if stale is not None:
        print(f"{run_dir}: taking over from {stale.describe()}, which stopped without finishing", file=sys.stderr)
    return lock


def _run_dir_entries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != RUN_LOCK] if run_dir.is_dir() else []


def prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready; return True when an interrupted run is being resumed.

    A finished run is never touched without ``overwrite``; an interrupted one resumes only with the
    same config (so "the same command again" continues it). The caller holds the run dir's lock.
    """
    saved = run_dir / "config.json"
    if overwrite:
        for entry in _run_dir_entries(run_dir):  # everything but the lock, which stays held
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if _run_dir_entries(run_dir):
        if (run_dir / FINISHED_MARKER).exists():
            raise ConfigError(
                f"{run_dir} already holds a finished run; pass --overwrite to replace it or choose another --run-dir"
            )
        if not saved.exists():
            raise ConfigError(f"{run_dir} is not empty and holds no chest_tf run; choose another --run-dir")
        diffs = saved_config_differences(run_dir, config)
        if diffs:
            raise ConfigError(
                f"{run_dir} holds an interrupted run with other settings ({'; '.join(diffs)}); "
                "rerun with the same settings to resume, or pass --overwrite"
            )
        return True
    if resume:
        raise ConfigError(f"nothing to resume in {run_dir}; drop --resume to start a new run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run dir {run_dir} is not writable ({exc.strerror}); choose another --run-dir") from None
    return False


def trim_history(path: Path, epochs: int) -> int:
    """Keep history.csv's header and its first ``epochs`` complete rows (a resumed run writes the
    later ones again; a row cut off by a kill is dropped); returns the number of rows it had."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):  # empty, or killed while writing the header
        path.unlink()
        return 0
    header = next(csv.reader([lines[0]]))
    rows = [line for line in lines[1:] if line.endswith("\n")]
    kept = []
    for line in rows:
        fields = next(csv.reader([line]), [])
        with contextlib.suppress(ValueError, IndexError):
            if len(fields) == len(header) and int(fields[0]) < epochs:
                kept.append(line)
    if len(kept) != len(lines) - 1:
        write_text_atomic(path, lines[0] + "".join(kept))
    return len(rows)


def _trim_timing(path: Path, epochs: int) -> None:
    if not path.exists():
        return
    try:
        timing = json.loads(path.read_text())
        records = [r for r in timing["epochs"] if r["epoch"] <= epochs]
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink()  # unreadable: the timer starts a new one
        return
    if len(records) != len(timing["epochs"]):
        write_json_atomic(path, {**timing, "epochs": records})


@dataclass
class TrainResult:
    run_dir: Path
    history: dict
    best_epoch: int | None
    best_val_auc: float | None
    metrics: dict | None
    timing: dict


def _steps_per_epoch(config: RunConfig, handle: DatasetHandle, replicas: int) -> int:
    n = handle.num_examples("train")
    batch = config.train.batch_size
    if batch > n:
        raise ConfigError(f"batch size {batch} is larger than the train split ({n} images); use --batch-size {n} or less")
    if batch % replicas:
        raise ConfigError(f"batch size {batch} must be divisible by the {replicas} replicas of --strategy mirrored")
    full = n // batch
    return min(config.train.steps_per_epoch, full) if config.train.steps_per_epoch else full


def evaluate_best(run_dir: Path, handle: DatasetHandle, config: RunConfig, runtime: Runtime) -> dict:
    """The best checkpoint's val/test metrics, predictions and report, in run_dir/eval."""
    return evaluate_model(
        load_keras_model(run_dir / "best.keras"), handle, run_dir / "eval",
        model_name=config.model.arch, batch_size=config.train.batch_size, seed=config.train.seed,
        history_csv=run_dir / "history.csv",
        run_info={"run_dir": str(run_dir), "best": json.loads((run_dir / "best.json").read_text()),
                  "runtime": runtime.to_dict()},
    )


def train(
    config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
    evaluate: bool = True, verbose: int | str = "auto", backup_every_steps: int = 0,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (see the module docstring for what it holds).

    ``backup_every_steps``: also back up every N training steps (for long epochs; 0: at the end
    of each epoch, and at the step where SIGTERM or SIGINT arrives)."""
    config = check_runnable(config)
    if backup_every_steps < 0:
        raise ConfigError(f"--backup-every-steps must be 0 (off) or positive, got {backup_every_steps}")
    info = get_info(config.data.dataset)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    lock = lock_run_dir(run_dir)
    try:
        resuming = prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
        runtime = resolve_runtime(config.train.precision, config.train.jit, config.train.strategy, config.model.arch)
        print(f"{'resuming' if resuming else 'starting'} {run_dir}: {config.model.arch} on {info.name} "
              f"{config.data.size} px | {config.train.epochs} epochs, batch {config.train.batch_size}, "
              f"lr {config.train.lr:g}, augment {config.train.augment} | device {runtime.device} | "
              f"precision {runtime.precision} | XLA {'on' if runtime.jit_compile else 'off'} | "
              f"strategy {runtime.strategy}")
        keras.utils.set_random_seed(config.train.seed)
        keras.mixed_precision.set_global_policy(runtime.precision)
        try:
            return _fit(config, run_dir, runtime, resuming, evaluate, verbose, backup_every_steps)
        except (OSError, tf.errors.OpError) as exc:
            problem = write_problem(exc)
            if problem is None:
                raise
            raise ChestTFError(_write_failure_message(run_dir, problem, exc)) from None
        finally:
            keras.mixed_precision.set_global_policy("float32")
    finally:
        lock.release()


def _write_failure_message(run_dir: Path, problem: str, exc: BaseException) -> str:
    where = getattr(exc, "filename", None) or run_dir
    kept = []
    backups = RunBackup(run_dir / BACKUP_DIR, 1, 1).records()
    if backups:
        epoch, step, _ = backups[0]
        kept.append(f"the last backup ({describe_state(epoch, step)})")
    with contextlib.suppress(OSError, ValueError, KeyError):
        kept.append(f"best.keras (epoch {json.loads((run_dir / 'best.json').read_text())['epoch']})")
    fix = "free some space" if problem.startswith("no space") else "make it writable"
    if kept:
        verb = "are kept as they were" if len(kept) > 1 else "is kept as it was"
        saved = f"{' and '.join(kept)} {verb}"
    else:
        saved = "nothing had been saved yet"
    return (f"{problem} while writing {where} ({error_line(exc)}); {saved}: {fix} and run the same command "
            "to resume")


def _fit(config, run_dir, runtime, resuming, evaluate, verbose, backup_every_steps) -> TrainResult:
    data, train = config.data, config.train
    handle = load_dataset(data.dataset, data.size, data_dir=data.data_dir, records_dir=data.records_dir, npz_path=data.npz)
    steps = _steps_per_epoch(config, handle, runtime.replicas)
    write_json_atomic(
        run_dir / "config.json",
        {"config": config.to_dict(), "runtime": runtime.to_dict(), "steps_per_epoch": steps,
         "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
         "train_examples": handle.num_examples("train")},
    )
    train_ds = handle.batches(
        "train", train.batch_size, training=True, seed=train.seed, deterministic=train.deterministic,
        drop_remainder=True, repeat=True,
    )

    positives, total = handle.positive_counts("train")
    loss = losses_lib.build_loss(
        train.loss, handle.info.task, positives, total,
        label_smoothing=train.label_smoothing, focal_gamma=train.focal_gamma,
    )
    kernels.install()  # TF's fused BatchNorm; tiny-map convolutions on a CPU (see kernels.py)
    strategy = distribution_strategy(runtime)
    signals = SignalCatcher()
    backup = RunBackup(run_dir / BACKUP_DIR, steps, train.epochs, every_steps=backup_every_steps, signals=signals)
    with strategy.scope():
        try:
            classifier = build_model(
                config.model.arch, handle.image_shape, handle.info.num_outputs,
                weights=config.model.weights, **config.model.overrides,
            )
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(str(exc)) from None
        augmenter = augment_lib.build_augmentation(train.augment, seed=train.seed)
        # Mixup (if any) runs in the compiled training step, on the device; its seed stream is
        # kept apart from the augmentation's.
        model = augment_lib.attach_augmentation(classifier, augmenter, mixup_alpha=train.mixup,
                                                mixup_seed=train.seed + 1_000_003)
        model.compile(
            optimizer=build_optimizer(config, steps),
            loss=loss,
            metrics=[training_auc_metric(handle)],
            jit_compile=runtime.jit_compile,
        )
        state = backup.restore(model)
    start_epoch, start_step = (state.epoch, state.step) if state else (0, 0)
    recorded = trim_history(run_dir / "history.csv", start_epoch)
    _trim_timing(run_dir / "timing.json", start_epoch)
    if state is not None and start_epoch >= train.epochs:
        print(f"resuming from {state.record.name[:-len('.json')]}: all {train.epochs} epochs were trained; "
              "the final evaluation follows")
    elif state is not None:
        print(f"resuming from {state.record.name[:-len('.json')]}: epoch {start_epoch + 1}"
              + (f", step {start_step + 1} of {steps}" if start_step else ""))
    elif recorded:
        warnings.warn(f"{run_dir} has no backup to resume from: training starts again at epoch 1 "
                      f"(history.csv had {recorded} epochs)", stacklevel=2)
    def fit(first: int, last: int, steps_per_epoch: int) -> dict:
        # Fresh callbacks for each fit call, as a new process would make them (they read their
        # state -- best.json, timing.json, history.csv -- from the run dir); the backup goes last.
        callbacks = [*build_callbacks(run_dir, classifier, augmenter, handle, config, loss), backup]
        return model.fit(train_ds, initial_epoch=first, epochs=last, steps_per_epoch=steps_per_epoch,
                         callbacks=callbacks, verbose=verbose, shuffle=False).history  # the pipeline shuffles

    history: dict[str, list] = {}
    with signals:
        stopped = False
        if start_step and start_epoch < train.epochs:  # a mid-epoch backup: that epoch's remaining steps
            backup.begin(start_epoch, start_step)
            _merge(history, fit(start_epoch, start_epoch + 1, steps - start_step))
            start_epoch += 1
            stopped = model.stop_training  # early stopping
        if start_epoch < train.epochs and not stopped:
            backup.begin(start_epoch, 0)
            _merge(history, fit(start_epoch, train.epochs, steps))
        if signals.signum is not None:  # arrived after the last step: the last epoch's backup holds it
            done = backup.records()
            raise interrupted(signals.signum, backup.dir, done[0][0] if done else 0, 0, train.epochs, steps)
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise ChestTFError(
            f"the loss became NaN in epoch {len(losses)}; lower --lr, use --precision float32, or check the data "
            f"({run_dir} keeps the last good best.keras)"
        )
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").exists() else {}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").exists() else {}
    results = evaluate_best(run_dir, handle, config, runtime) if evaluate and best else None
    write_json_atomic(run_dir / FINISHED_MARKER, {"epochs": train.epochs, "best": best, "timing": timing})
    backup.clear()  # only now: a run killed during its final evaluation resumes there, not at epoch 1
    if results is not None:
        head = results["headline"]
        print(f"best epoch {best.get('epoch')}: val AUC {best.get('val_auc', float('nan')):.4f} | "
              f"test AUC {head['auc']:.4f} ACC {head['acc']:.4f} -> {run_dir / 'eval'}")
    return TrainResult(run_dir, history, best.get("epoch"), best.get("val_auc"), results, timing)


def _merge(history: dict[str, list], more: dict[str, list]) -> None:
    for key, values in more.items():
        history.setdefault(key, []).extend(values)
