"""The callbacks of a training run: exact validation, best checkpoint, timing, learning rate,
TensorBoard previews. ``build_callbacks`` puts them in the order they must run; the engine adds the
backup (``training.backup.RunBackup``) after them all."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chest_tf import augment as augment_lib
from chest_tf.data.pipeline import DatasetHandle
from chest_tf.evaluation import metrics as metrics_lib
from chest_tf.explain.callback import ExplanationPanel
from chest_tf.files import atomic_path, write_json_atomic


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
        with atomic_path(self.path) as temp:
            self.classifier.save(temp)
        write_json_atomic(self.state_path, {"epoch": epoch + 1, self.monitor: self.best})


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
        write_json_atomic(self.path, {"epochs": self.records, **summarise_timing(self.records)})


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



def training_auc_metric(handle: DatasetHandle) -> keras.metrics.Metric:
    # Keras' 200-threshold AUC on training batches is for the progress bar only: with saturated
    # scores it reads far below the exact AUC. Validation uses ExactValidation below.
    return keras.metrics.AUC(multi_label=True, num_labels=handle.info.num_outputs, from_logits=True, name="auc")


class ExactValidation(keras.callbacks.Callback):
    """Validation once per epoch with the exact numbers: ``val_auc`` is the official MedMNIST AUC
    (chest_tf.evaluation.metrics) and ``val_loss`` the training loss, both over the whole validation
    split.

    It replaces Keras' own validation pass (whose 200-threshold AUC under-reads saturated scores,
    e.g. 0.56 against an exact 0.70), so checkpoint choice and early stopping see the number
    that is reported. It runs before the other callbacks, which read ``val_auc`` from the logs.
    """

    def __init__(self, handle: DatasetHandle, loss: keras.losses.Loss, batch_size: int):
        super().__init__()
        self.loss, self.task = loss, handle.info.task
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
        scores = metrics_lib.scores_from_logits(logits, self.task)
        logs["val_loss"] = float(keras.ops.convert_to_numpy(self.loss(self.targets, logits)))
        logs["val_auc"] = float(metrics_lib.official_auc(self.labels, scores, self.task))


def build_callbacks(run_dir, classifier, augmenter, handle, config, loss):
    train = config.train
    preview = next(iter(handle.batches("val", 8)))[0].numpy()
    callbacks = [
        ExactValidation(handle, loss, train.batch_size),
        LearningRateLogger(),
        BestModelCheckpoint(classifier, run_dir),
        EpochTimer(run_dir / "timing.json", train.batch_size),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, update_freq="epoch"),
        AugmentationPreview(run_dir / "tensorboard", augmenter, preview, train.seed),
    ]
    if train.explain_every:
        callbacks.append(ExplanationPanel(classifier, preview, run_dir / "tensorboard" / "validation",
                                          every=train.explain_every, label_names=list(handle.info.labels)))
    if train.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=train.early_stopping, verbose=1)
        )
    return callbacks

