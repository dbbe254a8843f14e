"""Evaluate a trained model on val and test through the shared metrics module.

``evaluate_model`` is the one path from a Keras model and a ``DatasetHandle`` to metrics.json,
predictions.npz and a report; training's final step uses it too.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from chest_tf import metrics as metrics_lib
from chest_tf.data.pipeline import DatasetHandle
from chest_tf.report import report_from_predictions


def predict_split(model: keras.Model, handle: DatasetHandle, split: str, batch_size: int = 256) -> np.ndarray:
    """Logits for ``split`` in file order (aligned with ``handle.labels(split)``)."""
    images = handle.batches(split, batch_size).map(lambda x, y: x)
    return model.predict(images, verbose=0)


def evaluate_model(
    model: keras.Model,
    handle: DatasetHandle,
    out_dir: str | Path,
    *,
    model_name: str,
    batch_size: int = 256,
    seed: int = 0,
    n_bootstrap: int = 1000,
    threshold_method: str = "youden",
    target: float = 0.9,
    history_csv: str | Path | None = None,
    run_info: dict | None = None,
) -> dict:
    """Predict val and test, then write the report folder (see ``chest_tf.report``); returns the
    ``chest_tf.metrics.evaluate_splits`` result. Thresholds are chosen on val only."""
    task = handle.info.task
    scores = {
        split: metrics_lib.scores_from_logits(predict_split(model, handle, split, batch_size), task)
        for split in ("val", "test")
    }
    history = Path(history_csv) if history_csv is not None and Path(history_csv).exists() else None
    return report_from_predictions(
        out_dir,
        handle.labels("val"), scores["val"], handle.labels("test"), scores["test"],
        task, list(handle.info.labels), handle.info.name, handle.size, model_name,
        n_bootstrap=n_bootstrap, seed=seed, threshold_method=threshold_method, target=target,
        history_csv=history, run_info=run_info,
    )
