"""``assets/metadata.json``: the plain-JSON description that travels with a model (labels,
task, input contract, thresholds chosen on validation, metrics, source, versions). Built for an
export, for a run dir and for a bare ``.keras`` file alike, so predict, explain and the app read one
format."""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import chest_tf
from chest_tf.data.info import BINARY, MULTI_LABEL, DatasetInfo
from chest_tf.data.normalization import PIXEL_MEAN, PIXEL_STD
from chest_tf.errors import ConfigError
from chest_tf.serving.input_checks import DEFAULT_POLICY
from chest_tf.serving.ood import OODScorer
from chest_tf.serving.signature import (
    ENDPOINT,
    INPUT_NAME,
    RESIZE,
    ServingExtras,
    model_input_spec,
    output_activation,
)

METADATA_FORMAT = "chest_tf.export/1"
METADATA_PATH = Path("assets") / "metadata.json"
KERAS_FILENAME = "model.keras"


def output_names(info: DatasetInfo, num_outputs: int) -> list[str]:
    """One name per logit column: findings (multi-label), the positive class (one-logit binary,
    as chest_tf.evaluation.metrics names it), classes otherwise."""
    if info.task == BINARY and num_outputs == 1:
        return [info.labels[-1]]
    if num_outputs != info.num_labels:
        raise ConfigError(f"the model has {num_outputs} outputs but {info.name} has {info.num_labels} labels")
    return list(info.labels)


def _decision_rule(task: str, names: list[str], class_names: list[str]) -> str:
    if task == MULTI_LABEL:
        return "each finding is positive when probs[k] >= thresholds.values[k] (a null threshold: never)"
    if task == BINARY and len(names) == 1:
        return (f"'{class_names[-1]}' when probs[0] >= thresholds.values[0], else '{class_names[0]}'")
    if task == BINARY:
        return f"'{class_names[-1]}' when probs[1] >= thresholds.values[-1], else '{class_names[0]}'"
    return "the class with the highest probability (argmax); thresholds are one-vs-rest, for reference"


def _split_summary(split: dict | None) -> dict | None:
    if not isinstance(split, dict):
        return None
    keys = ("n", "auc", "acc", "auc_ci", "acc_ci", "auc_note", "n_labels_defined", "undefined_labels")
    summary = {k: split[k] for k in keys if k in split}
    rows = split.get("per_label")
    if isinstance(rows, list):
        summary["per_label"] = [
            {k: row.get(k) for k in ("label", "auc", "sensitivity", "specificity", "threshold") if k in row}
            for row in rows
        ]
    return summary


def build_metadata(
    model,
    info: DatasetInfo,
    *,
    arch: str | None = None,
    metrics: dict | None = None,
    source: dict | None = None,
    calibration: dict | None = None,
    ood: dict | None = None,
    ensemble: dict | None = None,
) -> dict[str, Any]:
    """The plain-JSON description that travels with an export (see ``assets/metadata.json``).
    ``calibration``, ``ood`` and ``ensemble`` describe what export added to the serving
    computation (``chest_tf.serving.release``); absent, the model serves raw probabilities."""
    height, width, channels = model_input_spec(model)
    num_outputs = int(model.output_shape[-1])
    names = output_names(info, num_outputs)
    if metrics and isinstance(metrics.get("thresholds"), dict) and metrics["thresholds"].get("values") is not None:
        t = metrics["thresholds"]
        values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in t["values"]]
        if info.task == BINARY and num_outputs == 2 and len(values) == 1:
            values = [None, values[0]]  # metrics.py thresholds the positive-class column only
        if len(values) != num_outputs:
            raise ConfigError(f"metrics.json has {len(values)} thresholds for a model with {num_outputs} outputs")
        thresholds = {"method": t.get("method"), "target": t.get("target"), "chosen_on": t.get("chosen_on", "val"),
                      "rule": t.get("rule", "positive when score >= threshold"), "values": values}
    else:
        thresholds = {"method": "default", "target": None, "chosen_on": None,
                      "rule": "positive when score >= threshold", "values": [0.5] * num_outputs,
                      "note": "no eval/metrics.json in the run: 0.5, not chosen on validation"}
    activation = output_activation(info.task, num_outputs)
    return {
        "format": METADATA_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": None,  # set by export_model
        "arch": arch,
        "dataset": info.name,
        "task": info.task,
        "output_names": names,
        "class_names": list(info.labels),
        "activation": activation,
        "decision": _decision_rule(info.task, names, list(info.labels)),
        "thresholds": thresholds,
        "input": {
            "height": height, "width": width, "channels": channels,
            "accepts": "uint8 [N, H, W] or [N, H, W, C], C in {1, 3, 4}, any H and W",
            "channel_conversion": ("RGBA composited over black (value * alpha / 255); RGB -> gray by "
                                   "0.299 R + 0.587 G + 0.114 B; gray -> RGB by repetition"),
            "resize": {**RESIZE, "to": [height, width], "op": "tf.image.resize"},
            "normalization": {"formula": "(x / 255 - mean) / std", "mean": PIXEL_MEAN, "std": PIXEL_STD,
                              "range": [-1.0, 1.0]},
        },
        "signature": {
            "endpoint": ENDPOINT, "aliases": ["serving_default"],
            "inputs": {INPUT_NAME: {"dtype": "uint8", "shape": "unknown rank: [N, H, W] or [N, H, W, C]"}},
            "outputs": _signature_outputs(num_outputs, activation, calibration, ood, ensemble),
        },
        "calibration": calibration or {"method": "none", "note": "probabilities are the model's own"},
        "ood": ood or {"method": "none"},
        "ensemble": ensemble,
        "input_checks": DEFAULT_POLICY.to_dict(),
        "metrics": {
            "headline": (metrics or {}).get("headline"),
            "val": _split_summary((metrics or {}).get("val")),
            "test": _split_summary((metrics or {}).get("test")),
        },
        "source": source or {},
        "files": {"saved_model": ".", "keras": KERAS_FILENAME, "metadata": str(METADATA_PATH)},
        "versions": {"chest_tf": chest_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
    }


def _signature_outputs(num_outputs: int, activation: str, calibration: dict | None, ood: dict | None,
                       ensemble: dict | None) -> dict:
    calibrated = bool(calibration and calibration.get("method") == "temperature")
    outputs = {"logits": {"dtype": "float32", "shape": [None, num_outputs],
                          "note": "the model's logits (an ensemble: the logits of its mean probability)"},
               "probs": {"dtype": "float32", "shape": [None, num_outputs], "activation": activation,
                         "calibrated": calibrated}}
    if ood and ood.get("method", "none") != "none":
        outputs["ood_score"] = {"dtype": "float32", "shape": [None], "note": "higher is stranger"}
        outputs["in_distribution"] = {"dtype": "bool", "shape": [None], "rule": "ood_score <= ood.threshold"}
    if ensemble:
        outputs["uncertainty"] = {"dtype": "float32", "shape": [None, num_outputs],
                                  "note": "standard deviation of the members' probabilities"}
    return outputs


def serving_extras(metadata: dict, directory: Path | None) -> ServingExtras:
    """The temperatures and OOD scorer an export's metadata describes (statistics read from
    ``directory``), for serving its Keras model exactly as its SavedModel does."""
    calibration = metadata.get("calibration") or {}
    temperatures = calibration.get("temperatures") if calibration.get("method") == "temperature" else None
    ood_meta = metadata.get("ood") or {}
    scorer = None
    if ood_meta.get("method", "none") != "none":
        if directory is None:
            raise ConfigError("an OOD score needs the export folder its statistics live in")
        scorer = OODScorer.from_metadata(ood_meta, metadata["activation"], Path(directory))
    return ServingExtras(None if temperatures is None else np.asarray(temperatures, np.float32), scorer)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None



def read_metadata(export_dir: str | Path) -> dict:
    """An export's assets/metadata.json."""
    path = Path(export_dir) / METADATA_PATH
    if not path.is_file():
        raise ConfigError(f"{export_dir} has no {METADATA_PATH} (not a chest_tf export?)")
    return _read_json(path)

