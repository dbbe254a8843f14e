"""From a Keras model and a ``DatasetHandle`` to metrics.json, predictions.npz and a report.

``evaluate_model`` is the one path; training's final step and ``python -m chest_tf.evaluate`` use
it. The model's input shape and number of outputs are checked against the dataset before anything
is predicted.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from chest_tf.data.info import BINARY, MULTI_LABEL, SIZES, DatasetInfo
from chest_tf.data.pipeline import DatasetHandle
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.evaluation import metrics as metrics_lib
from chest_tf.evaluation.report import report_from_predictions

THRESHOLD_CHOICES = ("youden", "sensitivity", "specificity", "fixed")
DEFAULT_TARGET = {"youden": 0.9, "sensitivity": 0.9, "specificity": 0.9, "fixed": 0.5}
DEFAULT_BATCH_SIZE = 256



def model_io_shapes(model: keras.Model, name: str = "the model") -> tuple[tuple, tuple]:
    """The model's input shape (H, W, C) and output shape (K,), without the batch axis. Models with
    several inputs or outputs, or without known shapes, are refused."""
    try:
        in_shape, out_shape = model.input_shape, model.output_shape
    except (AttributeError, ValueError):
        raise ConfigError(f"{name} has no known input/output shape; save a functional Keras model") from None
    if isinstance(in_shape, list) and len(in_shape) == 1:
        in_shape = in_shape[0]
    if isinstance(out_shape, list) and len(out_shape) == 1:
        out_shape = out_shape[0]
    if not isinstance(in_shape, tuple) or len(in_shape) != 4:
        raise ConfigError(f"{name} takes inputs of shape {in_shape}; expected one image input (batch, H, W, C)")
    if not isinstance(out_shape, tuple) or len(out_shape) != 2:
        raise ConfigError(f"{name} returns outputs of shape {out_shape}; expected one logit vector (batch, K)")
    return tuple(in_shape[1:]), tuple(out_shape[1:])


def _dims(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def check_model_matches(model: keras.Model, info: DatasetInfo, size: int, name: str = "the model") -> None:
    """Raise ``ConfigError`` (one line) unless ``model`` takes ``info``'s images at ``size`` px and
    emits one logit per output column (binary sets: 1, or 2 softmax logits)."""
    (h, w, c), (k,) = model_io_shapes(model, name)
    expected = (size, size, info.n_channels)
    if any(got is not None and got != want for got, want in zip((h, w, c), expected)):
        hint = (f"; evaluate with --size {h}" if h == w and h in SIZES and c in (None, info.n_channels)
                else "; was it trained on another dataset?")
        raise ConfigError(f"{name} takes {_dims((h, w, c))} images but {info.name} at {size} px has "
                          f"{_dims(expected)}{hint}")
    allowed = (1, 2) if info.task == BINARY else (info.num_outputs,)
    if k not in allowed:
        kind = "labels" if info.task == MULTI_LABEL else "classes"
        needs = "1 (or 2 softmax logits)" if info.task == BINARY else str(info.num_outputs)
        raise ConfigError(f"{name} has {k} output{'' if k == 1 else 's'} but {info.name} ({info.task}, "
                          f"{info.num_labels} {kind}) needs {needs}; was it trained on another dataset?")


def predict_split(model: keras.Model, handle: DatasetHandle, split: str, batch_size: int = 256) -> np.ndarray:
    """Logits for ``split`` in file order (aligned with ``handle.labels(split)``)."""
    images = handle.batches(split, batch_size).map(lambda x, y: x)
    logits = np.asarray(model.predict(images, verbose=0))
    n = handle.num_examples(split)
    if logits.shape[0] != n:
        raise ChestTFError(f"got {logits.shape[0]} predictions for the {n} {split} images")
    return logits


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
    temperatures: np.ndarray | None = None,
) -> dict:
    """Predict val and test, then write the report folder (see ``chest_tf.evaluation.report``);
    returns the ``chest_tf.evaluation.metrics.evaluate_splits`` result. Thresholds are chosen on
    val only. ``temperatures`` (an export's calibration) divide the logits first, so an export is
    evaluated on the probabilities it serves."""
    check_model_matches(model, handle.info, handle.size, model_name)
    task = handle.info.task
    scale = 1.0 if temperatures is None else np.asarray(temperatures, np.float32)
    scores = {
        split: metrics_lib.scores_from_logits(predict_split(model, handle, split, batch_size) / scale, task)
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


def headline_text(result: dict, model_name: str, dataset: str, size: int) -> str:
    """One line: test AUC and ACC with 95% CIs, labels defined, how thresholds were chosen."""
    head, test, thresholds = result["headline"], result["test"], result["thresholds"]

    def with_ci(value, ci):
        text = "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"
        if ci is not None and np.all(np.isfinite(np.asarray(ci, dtype=float))):
            text += f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"
        return text

    method = thresholds["method"]
    if thresholds["target"] is not None:
        method += f" {thresholds['target']:g}"
    return (f"{model_name} on {dataset} {size} px, test (n = {test['n']}): AUC {with_ci(head['auc'], head['auc_ci'])}"
            f" | ACC {with_ci(head['acc'], head['acc_ci'])} | labels defined {test['n_labels_defined']} of "
            f"{len(test['per_label'])} | thresholds: {method}, chosen on val")


def size_from_model(model: keras.Model, name: str) -> int:
    """The image size a square model takes (one of the MedMNIST sizes), else a one-line error."""
    (h, w, _), _ = model_io_shapes(model, name)
    if h is None or h != w or h not in SIZES:
        raise ConfigError(f"cannot tell the image size from {name} (input {_dims((h, w))}); pass --size")
    return int(h)
