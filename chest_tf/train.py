"""``python -m chest_tf.train``: train a classifier with model.fit, XLA, mixed precision,
on-device augmentation, TensorBoard, checkpoints and resume.

    python -m chest_tf.train --arch resnet18 --dataset phantom            # offline, anywhere
    python -m chest_tf.train --arch vit_small --dataset chestmnist --size 64 --epochs 50
    python -m chest_tf.train --config my_run.toml --lr 1e-3               # TOML, flags on top

The run dir (``--run-dir``, default ``runs/<dataset>_<size>/<arch>_s<seed>``) holds::

    config.json      the resolved config, plus what "auto" became (precision, XLA, strategy, device)
    history.csv      one row per epoch: loss, auc, val_loss, val_auc, learning_rate
    best.keras       the model (no augmentation) at the epoch with the best validation AUC
    best.json        that epoch and its validation AUC
    timing.json      seconds per epoch and training images/s
    tensorboard/     losses, learning rate, validation AUC, a grid of augmented training images
    backup/          while training: BackupAndRestore state; a killed run resumes from it
    eval/            after training: the best model's val/test metrics (chest_tf.metrics),
                     predictions.npz they came from, report.md and figures

Running the same command again resumes an interrupted run at the epoch it reached; a finished run
is left alone unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.config import (
    JIT_MODES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    RunConfig,
    load_toml,
    merge_settings,
    parse_model_args,
)
from chest_tf.errors import ChestTFError, ConfigError

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf import augment as augment_lib  # noqa: E402
from chest_tf import fused_batchnorm  # noqa: E402
from chest_tf import losses as losses_lib  # noqa: E402
from chest_tf.data.info import CATALOGUE, SIZES, get_info  # noqa: E402
from chest_tf.data.pipeline import DatasetHandle, load_dataset  # noqa: E402
from chest_tf.models.registry import ARCHS, build_model  # noqa: E402

BACKUP_DIR = "backup"
FINISHED_MARKER = "finished.json"
# Weight decay skips normalisation scales/offsets, biases and embeddings (usual AdamW practice).
NO_DECAY_NAMES = ["bias", "gamma", "beta", "embedding", "token", "temperature"]


# ----------------------------------------------------------------------------------------------
# Runtime: what "auto" resolves to on this machine


@dataclass
class Runtime:
    precision: str
    jit_compile: bool
    strategy: str
    device: str
    replicas: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _gpu_compute_capability(gpu) -> tuple[int, int]:
    details = tf.config.experimental.get_device_details(gpu)
    return tuple(details.get("compute_capability", (0, 0)))


def resolve_runtime(precision: str, jit: str, strategy: str) -> Runtime:
    """auto: mixed precision and XLA on a GPU (bfloat16 from Ampere on, float16 with loss scaling
    before), float32 without XLA on a CPU; MirroredStrategy with more than one GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = _gpu_compute_capability(gpus[0])
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        device = f"{len(gpus)} x {name} (compute capability {capability[0]}.{capability[1]})"
    else:
        capability = (0, 0)
        device = f"CPU ({os.cpu_count()} cores)"
    if precision == "auto":
        precision = ("mixed_bfloat16" if capability >= (8, 0) else "mixed_float16") if gpus else "float32"
    jit_compile = bool(gpus) if jit == "auto" else jit == "on"
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "none"
    replicas = max(len(gpus), 1) if strategy == "mirrored" else 1
    return Runtime(precision, jit_compile, strategy, device, replicas)


def distribution_strategy(runtime: Runtime) -> tf.distribute.Strategy:
    if runtime.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()  # the default (no-op) strategy


# ----------------------------------------------------------------------------------------------
# Optimiser and schedule


def learning_rate_schedule(config: RunConfig, steps_per_epoch: int):
    train = config.train
    total = train.epochs * steps_per_epoch
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "step":  # MedMNIST's: x0.1 at 50% and 75% of training
        bounds = [int(total * 0.5), int(total * 0.75)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [train.lr, train.lr * 0.1, train.lr * 0.01])
    warmup = min(int(round(train.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train.lr,
        decay_steps=max(total - warmup, 1),
        warmup_target=train.lr if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    train = config.train
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return optimizer


# ----------------------------------------------------------------------------------------------
# Callbacks


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves ``classifier`` (not the augmented training wrapper) to best.keras whenever the
    monitored validation metric improves; the best value so far lives in best.json, so a resumed
    run keeps comparing against it. Writes go to a temporary file renamed into place."""

    def __init__(self, classifier: keras.Model, run_dir: Path, monitor: str = "val_auc"):
        super().__init__()
        self.classifier, self.monitor = classifier, monitor
        self.path, self.state_path = run_dir / "best.keras", run_dir / "best.json"
        self.best = -math.inf
        if self.state_path.exists():
            self.best = json.loads(self.state_path.read_text())[monitor]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or value <= self.best:
            return
        self.best = float(value)
        tmp = self.path.with_name("best.tmp.keras")
        self.classifier.save(tmp)
        os.replace(tmp, self.path)
        _write_json_atomic(self.state_path, {"epoch": epoch + 1, self.monitor: self.best})


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the learning rate of the epoch's last step into the logs (history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochTimer(keras.callbacks.Callback):
    """Seconds and training images/s per epoch, appended to timing.json (kept across resumes).
    Images/s leaves out each epoch's first step, which pays for tracing and compilation."""

    def __init__(self, path: Path, batch_size: int):
        super().__init__()
        self.path, self.batch_size = path, batch_size
        self.records = json.loads(path.read_text())["epochs"] if path.exists() else []
        self._started = self._after_first = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._after_first = time.perf_counter(), None

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self._after_first = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        record = {"epoch": epoch + 1, "seconds": now - self._started}
        steps = self.params.get("steps") or 0
        if steps > 1 and self._after_first is not None:
            record["train_images_per_second"] = (steps - 1) * self.batch_size / (now - self._after_first)
        self.records = [r for r in self.records if r["epoch"] != epoch + 1] + [record]
        _write_json_atomic(self.path, {"epochs": self.records, **summarise_timing(self.records)})


def summarise_timing(records: list[dict]) -> dict:
    steady = records[1:] or records  # the first epoch pays for tracing/compilation
    rates = [r["train_images_per_second"] for r in steady if "train_images_per_second" in r]
    return {
        "seconds_per_epoch": float(np.median([r["seconds"] for r in steady])) if steady else None,
        "train_images_per_second": float(np.median(rates)) if rates else None,
        "total_seconds": float(sum(r["seconds"] for r in records)),
    }


class AugmentationPreview(keras.callbacks.Callback):
    """Writes a grid of augmented training images to TensorBoard once, at the start."""

    def __init__(self, log_dir: Path, augmenter, images: np.ndarray, seed: int):
        super().__init__()
        self.log_dir, self.augmenter, self.images, self.seed = log_dir, augmenter, images, seed

    def on_train_begin(self, logs=None):
        if self.augmenter is None:
            return
        preview = augment_lib.ChestAugment(self.augmenter.config, seed=self.seed)
        augmented = keras.ops.convert_to_numpy(preview(self.images, training=True))
        grid = image_grid(np.concatenate([self.images, augmented]), columns=len(self.images))
        writer = tf.summary.create_file_writer(str(self.log_dir / "train"))
        with writer.as_default():
            tf.summary.image("augmented_batch (top: input, bottom: augmented)", grid[None], step=0)
        writer.close()


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, C) images in [-1, 1] -> one (rows*H, columns*W, C) float image in [0, 1]."""
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = (np.clip(image, -1, 1) + 1) / 2
    return grid


# ----------------------------------------------------------------------------------------------
# Run dir: create, resume or refuse


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
        from chest_tf.runs import saved_config_differences  # noqa: PLC0415

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


# ----------------------------------------------------------------------------------------------
# Training


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


def _auc_metric(handle: DatasetHandle) -> keras.metrics.Metric:
    # Keras' 200-threshold AUC on training batches is for the progress bar only: with saturated
    # scores it reads far below the exact AUC. Validation uses ExactValidation below.
    return keras.metrics.AUC(multi_label=True, num_labels=handle.info.num_outputs, from_logits=True, name="auc")


class ExactValidation(keras.callbacks.Callback):
    """Validation once per epoch with the exact numbers: ``val_auc`` is the official MedMNIST AUC
    (chest_tf.metrics) and ``val_loss`` the training loss, both over the whole validation split.

    It replaces Keras' own validation pass (whose 200-threshold AUC under-reads saturated scores,
    e.g. 0.56 against an exact 0.70), so checkpoint choice and early stopping see the number
    that is reported. It runs before the other callbacks, which read ``val_auc`` from the logs.
    """

    def __init__(self, handle: DatasetHandle, loss: keras.losses.Loss, batch_size: int):
        super().__init__()
        from chest_tf import metrics as metrics_lib  # noqa: PLC0415

        self.metrics_lib, self.loss, self.task = metrics_lib, loss, handle.info.task
        batches = handle.batches("val", batch_size)
        self.images = batches.map(lambda x, y: x)
        self.targets = np.concatenate([y for _, y in batches.as_numpy_iterator()])
        self.labels = handle.labels("val")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logits = self.model.predict(self.images, verbose=0)
        if not np.isfinite(logits).all():  # diverged: TerminateOnNaN stops the run, train() reports it
            logs["val_loss"] = logs["val_auc"] = float("nan")
            return
        scores = self.metrics_lib.scores_from_logits(logits, self.task)
        logs["val_loss"] = float(keras.ops.convert_to_numpy(self.loss(self.targets, logits)))
        logs["val_auc"] = float(self.metrics_lib.official_auc(self.labels, scores, self.task))


def build_callbacks(run_dir, classifier, augmenter, handle, config, loss):
    train = config.train
    preview = next(iter(handle.batches("val", 8)))[0].numpy()
    callbacks = [
        ExactValidation(handle, loss, train.batch_size),
        keras.callbacks.BackupAndRestore(str(run_dir / BACKUP_DIR), save_freq="epoch", delete_checkpoint=True),
        LearningRateLogger(),
        BestModelCheckpoint(classifier, run_dir),
        EpochTimer(run_dir / "timing.json", train.batch_size),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, update_freq="epoch"),
        AugmentationPreview(run_dir / "tensorboard", augmenter, preview, train.seed),
    ]
    if train.explain_every:
        from chest_tf.explain import ExplanationPanel  # noqa: PLC0415

        callbacks.append(ExplanationPanel(classifier, preview, run_dir / "tensorboard" / "validation",
                                          every=train.explain_every, label_names=list(handle.info.labels)))
    if train.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=train.early_stopping, verbose=1)
        )
    return callbacks


def evaluate_best(run_dir: Path, handle: DatasetHandle, config: RunConfig, runtime: Runtime) -> dict:
    """The best checkpoint's val/test metrics, predictions and report, in run_dir/eval."""
    from chest_tf.evaluate import evaluate_model  # noqa: PLC0415
    from chest_tf.runs import load_keras_model  # noqa: PLC0415

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
    config.validate()
    if config.model.arch not in ARCHS:
        raise ConfigError(f"unknown arch '{config.model.arch}'; choose one of {', '.join(sorted(ARCHS))}")
    info = get_info(config.data.dataset)
    if config.data.size not in SIZES:
        raise ConfigError(f"{info.name} has no {config.data.size} px version; choose one of {', '.join(map(str, SIZES))}")
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
    _write_json_atomic(
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
    fused_batchnorm.install()  # one TF kernel per BatchNorm in training (chest_tf/fused_batchnorm.py)
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
            metrics=[_auc_metric(handle)],
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
    _write_json_atomic(run_dir / FINISHED_MARKER, {"epochs": train.epochs, "best": best, "timing": timing})
    if results is not None:
        head = results["headline"]
        print(f"best epoch {best.get('epoch')}: val AUC {best.get('val_auc', float('nan')):.4f} | "
              f"test AUC {head['auc']:.4f} ACC {head['acc']:.4f} -> {run_dir / 'eval'}")
    return TrainResult(run_dir, history.history, best.get("epoch"), best.get("val_auc"), results, timing)


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m chest_tf.train", description="Train a chest X-ray classifier (see the module docs)."
    )
    p.add_argument("--config", help="TOML file with [data], [model], [train] tables; flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(CATALOGUE), help="default chestmnist; phantom runs offline")
    g.add_argument("--size", type=int, help="image size: 28, 64, 128 or 224 (default 28)")
    g.add_argument("--data-dir", help="npz files (default $CHEST_TF_DATA_DIR or ~/.cache/chest_tf)")
    g.add_argument("--records-dir", help="TFRecord shards (default DATA_DIR/tfrecords)")
    g.add_argument("--npz", help="read this npz file in place instead of the data dir's")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=sorted(ARCHS), help="default resnet18")
    g.add_argument("--weights", choices=["imagenet"], help="start from ImageNet weights where available")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture override, e.g. head_dropout=0.2 or drop_path_rate=0.1 (repeatable)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch size (default 128)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--schedule", choices=SCHEDULES, help="cosine (with warmup), step (MedMNIST) or constant")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--loss", choices=LOSSES)
    g.add_argument("--augment", choices=sorted(augment_lib.PRESETS), help="augmentation preset (default light)")
    g.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    g.add_argument("--precision", choices=PRECISIONS)
    g.add_argument("--jit", choices=JIT_MODES, help="XLA: auto (on for GPUs), on, off")
    g.add_argument("--strategy", choices=STRATEGIES)
    g.add_argument("--seed", type=int)
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without a better val AUC")
    g.add_argument("--steps-per-epoch", type=int, help="fewer steps per epoch, for quick runs")
    g.add_argument("--deterministic", action="store_true", default=None, help="ordered input pipeline")
    g.add_argument("--explain-every", type=int, metavar="N",
                   help="heatmaps of 8 validation images to TensorBoard every N epochs (default 1; 0 = off)")
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", help="default runs/<dataset>_<size>/<arch>_s<seed>")
    g.add_argument("--resume", action="store_true", help="require an interrupted run to resume")
    g.add_argument("--overwrite", action="store_true", help="replace whatever is in the run dir")
    g.add_argument("--no-eval", action="store_true", help="skip the final val/test evaluation")
    return p


_FLAG_SECTIONS = {
    "data": ("dataset", "size", "data_dir", "records_dir", "npz"),
    "model": ("arch", "weights"),
    "train": (
        "epochs", "batch_size", "lr", "optimizer", "schedule", "warmup_epochs", "weight_decay", "label_smoothing",
        "loss", "augment", "mixup", "precision", "jit", "strategy", "seed", "early_stopping", "steps_per_epoch",
        "deterministic", "explain_every",
    ),
}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = load_toml(args.config) if args.config else {}
    for section, names in _FLAG_SECTIONS.items():
        given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
        if given:
            values = merge_settings(values, section, given)
    if args.model_arg:
        values = merge_settings(values, "model", {"overrides": parse_model_args(args.model_arg)})
    return RunConfig.from_dict(values).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    train(config, args.run_dir, resume=args.resume, overwrite=args.overwrite, evaluate=not args.no_eval)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
