"""The training engine: a ``RunConfig`` in, a run dir out (see ``train``).

The run dir (default ``runs/<dataset>_<size>/<arch>_s<seed>``) holds::

    config.json      the resolved config, plus what "auto" became (precision, XLA, strategy, device)
    history.csv      one row per epoch: loss, auc, val_loss, val_auc, learning_rate
    best.keras       the model (no augmentation) at the epoch with the best validation AUC
    best.json        that epoch and its validation AUC
    timing.json      seconds per epoch and training images/s
    tensorboard/     losses, learning rate, validation AUC, a grid of augmented training images
    backup/          while training: BackupAndRestore state; a killed run resumes from it
    eval/            after training: the best model's val/test metrics (chest_tf.evaluation.metrics),
                     predictions.npz they came from, report.md and figures
    finished.json    written last; a finished run is only replaced with overwrite

Training the same config into the same run dir again resumes an interrupted run at the epoch it
reached.
"""
from __future__ import annotations

import json
import shutil
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
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.evaluation.evaluator import evaluate_model
from chest_tf.files import write_json_atomic
from chest_tf.models.registry import build_model
from chest_tf.runs import FINISHED_MARKER, load_keras_model, saved_config_differences
from chest_tf.training import fused_batchnorm
from chest_tf.training.callbacks import build_callbacks, training_auc_metric
from chest_tf.training.optimizer import build_optimizer
from chest_tf.training.runtime import Runtime, distribution_strategy, resolve_runtime


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.data.dataset}_{config.data.size}" / f"{config.model.arch}_s{config.train.seed}"


def prepare_run_dir(run_dir: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready; return True when an interrupted run is being resumed.

    A finished run is never touched without ``overwrite``; an interrupted one resumes only with the
    same config (so "the same command again" continues it).
    """
    saved = run_dir / "config.json"
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
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
    evaluate: bool = True, verbose: int | str = "auto",
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (see the module docstring for what it holds)."""
    config = check_runnable(config)
    info = get_info(config.data.dataset)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    resuming = prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)

    runtime = resolve_runtime(config.train.precision, config.train.jit, config.train.strategy)
    print(f"{'resuming' if resuming else 'starting'} {run_dir}: {config.model.arch} on {info.name} "
          f"{config.data.size} px | {config.train.epochs} epochs, batch {config.train.batch_size}, "
          f"lr {config.train.lr:g}, augment {config.train.augment} | device {runtime.device} | "
          f"precision {runtime.precision} | XLA {'on' if runtime.jit_compile else 'off'} | "
          f"strategy {runtime.strategy}")
    keras.utils.set_random_seed(config.train.seed)
    keras.mixed_precision.set_global_policy(runtime.precision)
    try:
        return _fit(config, run_dir, runtime, resuming, evaluate, verbose)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _fit(config, run_dir, runtime, resuming, evaluate, verbose) -> TrainResult:
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
    fused_batchnorm.install()  # one TF kernel per BatchNorm in training (see fused_batchnorm.py)
    strategy = distribution_strategy(runtime)
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
    callbacks = build_callbacks(run_dir, classifier, augmenter, handle, config, loss)
    history = model.fit(
        train_ds, epochs=train.epochs, steps_per_epoch=steps,
        callbacks=callbacks, verbose=verbose, shuffle=False,  # the pipeline shuffles
    )
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise ChestTFError(
            f"the loss became NaN in epoch {len(losses)}; lower --lr, use --precision float32, or check the data "
            f"({run_dir} keeps the last good best.keras)"
        )
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").exists() else {}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").exists() else {}
    results = evaluate_best(run_dir, handle, config, runtime) if evaluate and best else None
    write_json_atomic(run_dir / FINISHED_MARKER, {"epochs": train.epochs, "best": best, "timing": timing})
    if results is not None:
        head = results["headline"]
        print(f"best epoch {best.get('epoch')}: val AUC {best.get('val_auc', float('nan')):.4f} | "
              f"test AUC {head['auc']:.4f} ACC {head['acc']:.4f} -> {run_dir / 'eval'}")
    return TrainResult(run_dir, history.history, best.get("epoch"), best.get("val_auc"), results, timing)

