"""Export a trained run as a SavedModel that takes uint8 images: ``python -m chest_tf.export RUN_DIR``.

    python -m chest_tf.export runs/chestmnist_224/resnet18_s0                 # -> saved_models/resnet18_chestmnist_224
    python -m chest_tf.export RUN_DIR --out saved_models/chest_v2 [--overwrite] [--no-verify]

The export folder is a SavedModel (Keras 3 ``ExportArchive``) plus two files:

    saved_model.pb  variables/  fingerprint.pb
    assets/metadata.json   labels, task, input size and channels, normalisation, thresholds chosen
                           on validation, val/test metrics, source run, versions (plain JSON)
    model.keras            the classifier as trained (``best.keras``), for fine-tuning

Serving signature ``serve`` (also ``serving_default``), the only one::

    inputs  images: uint8, shape unknown-rank: [N, H, W] or [N, H, W, C] with C in {1, 3, 4},
            any H and W (one size per call)
    outputs logits: float32 [N, K]; probs: float32 [N, K] (sigmoid for multi-label and one-logit
            binary models, softmax for multi-class)

The rank is left open so that a batch of grayscale arrays ``[N, H, W]`` (what TF Serving's REST
API makes of ``{"instances": [[[...]]]}`` for 2-D images) and of channel-last images both work;
the function checks the rank and channels at run time and fails with a clear message otherwise.
Inside it (``preprocess``): channels are converted to the model's (RGB -> gray by BT.601
luminance 0.299 R + 0.587 G + 0.114 B; gray -> RGB by repeating; RGBA composited over black
first), the image is resized to the model's input size with antialiased bilinear interpolation
(exactly the identity at the model's own size), and normalised as in training
(``chest_tf.data.normalization``: ``(x / 255 - 0.5) / 0.5``). No augmentation is inside.

Writing is atomic: everything goes to a hidden ``.NAME.partial-*`` folder beside the target,
which is checked (the SavedModel reloaded and compared with the Keras model) and then renamed to
NAME. An existing export is refused without ``--overwrite``; with it the old one is swapped out
only once the new one is complete. An interrupted export removes its partial folder.

Loading it without chest_tf::

    import json, tensorflow as tf
    model = tf.saved_model.load("saved_models/resnet18_chestmnist_224")
    meta = json.load(open("saved_models/resnet18_chestmnist_224/assets/metadata.json"))
    probs = model.serve(tf.constant(images_uint8))["probs"]   # images_uint8: [N, H, W(, C)]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.runs import load_keras_model, read_run_dir  # noqa: F401 (load_keras_model: part of this API)

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf.data.info import BINARY, MULTI_LABEL, DatasetInfo, get_info  # noqa: E402
from chest_tf.data.normalization import PIXEL_MEAN, PIXEL_STD, normalize  # noqa: E402

METADATA_FORMAT = "chest_tf.export/1"
METADATA_PATH = Path("assets") / "metadata.json"
KERAS_FILENAME = "model.keras"
ENDPOINT = "serve"
INPUT_NAME = "images"
SERVE_SIGNATURE = [tf.TensorSpec(shape=None, dtype=tf.uint8, name=INPUT_NAME)]
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion
RESIZE = {"method": "bilinear", "antialias": True}
VERIFY_TOLERANCE = 1e-5
DEFAULT_EXPORT_ROOT = Path("saved_models")


# ----------------------------------------------------------------------------------------------
# The serving computation (TensorFlow graph code; also used by predict for .keras models)
# ----------------------------------------------------------------------------------------------
def preprocess(images, height: int, width: int, channels: int) -> tf.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` (C in 1, 3, 4) -> float32 ``[N, height, width,
    channels]`` in the model's range: channel conversion, antialiased bilinear resize, training's
    normalisation (see the module docstring)."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype.name}")
    rank = tf.rank(images)
    rank_ok = tf.debugging.Assert(tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4)),
                                  ["images must be uint8 [N, H, W] or [N, H, W, C]; got rank", rank])
    with tf.control_dependencies([rank_ok]):
        shape4 = tf.concat([tf.shape(images), [1]], axis=0)[:4]  # [N, H, W] -> [N, H, W, 1]
        x = tf.reshape(images, shape4)
    x = tf.ensure_shape(x, [None, None, None, None])
    c = shape4[3]
    checks = [
        tf.debugging.Assert(tf.reduce_any(tf.equal(c, [1, 3, 4])),
                            ["images must have 1 (gray), 3 (RGB) or 4 (RGBA) channels; got", c]),
        tf.debugging.Assert(tf.logical_and(shape4[1] > 0, shape4[2] > 0),
                            ["images must have at least one pixel; got height and width", shape4[1:3]]),
    ]
    with tf.control_dependencies(checks):
        x = tf.cast(x, tf.float32)
    x = _convert_channels(x, c, channels)
    if tf.compat.dimension_value(x.shape[1]) != height or tf.compat.dimension_value(x.shape[2]) != width:
        x = tf.image.resize(x, (height, width), **RESIZE)
    return normalize(x, ops=tf)


def _convert_channels(x: tf.Tensor, c: tf.Tensor, channels: int) -> tf.Tensor:
    """float32 [N, H, W, c] (c dynamic: 1, 3 or 4) -> [N, H, W, channels]."""
    if channels not in (1, 3):
        raise ConfigError(f"models with {channels} input channels are not supported (1 or 3)")
    weights = tf.constant(LUMA_WEIGHTS, tf.float32)

    def rgb():
        return x[..., :3]

    def rgba():
        return x[..., :3] * (x[..., 3:4] / 255.0)

    def luma(v):
        return tf.reduce_sum(v * weights, axis=-1, keepdims=True)

    if channels == 1:
        branches = [lambda: x[..., :1], lambda: luma(rgb()), lambda: luma(rgba())]
    else:
        branches = [lambda: tf.tile(x[..., :1], [1, 1, 1, 3]), rgb, rgba]
    index = tf.where(tf.equal(c, 1), 0, tf.where(tf.equal(c, 3), 1, 2))
    out = tf.switch_case(index, branches)
    out.set_shape([None, None, None, channels])
    return out


def output_activation(task: str, num_outputs: int) -> str:
    """``chest_tf.metrics.scores_from_logits``' rule: sigmoid for multi-label and one-logit binary
    models, softmax otherwise."""
    if task == MULTI_LABEL or (task == BINARY and num_outputs == 1):
        return "sigmoid"
    return "softmax"


def model_input_spec(model) -> tuple[int, int, int]:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ConfigError(f"the model's input shape {shape} must be (None, H, W, C) with H, W, C fixed")
    return int(shape[1]), int(shape[2]), int(shape[3])


def serve_function(model, task: str) -> Callable:
    """The serving computation for ``model``: uint8 images -> {"logits", "probs"} (plain Python;
    wrap it with ``tf.function(input_signature=SERVE_SIGNATURE)``)."""
    height, width, channels = model_input_spec(model)
    num_outputs = int(model.output_shape[-1])
    activation = output_activation(task, num_outputs)

    def serve(images):
        x = preprocess(images, height, width, channels)
        logits = tf.cast(model(x, training=False), tf.float32)
        probs = tf.sigmoid(logits) if activation == "sigmoid" else tf.nn.softmax(logits, axis=-1)
        return {"logits": logits, "probs": probs}

    return serve


def serving_tf_function(model, task: str):
    """``serve_function`` as a tf.function with the exported signature."""
    return tf.function(serve_function(model, task), input_signature=SERVE_SIGNATURE, autograph=False)


# ----------------------------------------------------------------------------------------------
# Models and runs
# ----------------------------------------------------------------------------------------------
def augmentation_layers(model) -> list[str]:
    """Names of any chest_tf augmentation layers inside ``model`` (nested models included)."""
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if type(layer).__module__.startswith("chest_tf.augment"):
            found.append(layer.name)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def output_names(info: DatasetInfo, num_outputs: int) -> list[str]:
    """One name per logit column: findings (multi-label), the positive class (one-logit binary,
    as chest_tf.metrics names it), classes otherwise."""
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
) -> dict[str, Any]:
    """The plain-JSON description that travels with an export (see ``assets/metadata.json``)."""
    import keras  # noqa: PLC0415

    import chest_tf  # noqa: PLC0415

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
            "outputs": {"logits": {"dtype": "float32", "shape": [None, num_outputs]},
                        "probs": {"dtype": "float32", "shape": [None, num_outputs], "activation": activation}},
        },
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def load_run(run_dir: str | Path, model=None):
    """``(model, metadata, best_keras_path)`` for a run dir (config.json + best.keras; the
    thresholds and metrics from eval/metrics.json when present)."""
    run_dir = Path(run_dir)
    keras_path = run_dir / "best.keras"
    run_config, saved = read_run_dir(run_dir)
    config = run_config.to_dict()
    dataset, size, arch = run_config.data.dataset, run_config.data.size, run_config.model.arch
    info = get_info(dataset)
    metrics_path = run_dir / "eval" / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else None
    model = model if model is not None else load_keras_model(keras_path)
    best_path = run_dir / "best.json"
    source = {
        "run_dir": str(run_dir.resolve()),
        "dataset": dataset, "size": size, "arch": arch,
        "model_config": config.get("model"),
        "best": _read_json(best_path) if best_path.is_file() else None,
        "runtime": saved.get("runtime"),
        "training_versions": saved.get("versions"),
        "metrics_file": str(metrics_path.resolve()) if metrics else None,
    }
    metadata = build_metadata(model, info, arch=arch, metrics=metrics, source=source)
    return model, metadata, keras_path


def default_export_name(metadata: dict) -> str:
    return f"{metadata['arch'] or 'model'}_{metadata['dataset']}_{metadata['input']['height']}"


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _write_saved_model(model, task: str, directory: Path) -> None:
    import keras  # noqa: PLC0415

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(ENDPOINT, serve_function(model, task), input_signature=SERVE_SIGNATURE)
    archive.write_out(str(directory), verbose=False)


def _write_metadata(directory: Path, metadata: dict) -> None:
    from chest_tf.metrics import dumps_json  # noqa: PLC0415  (NaN -> null, numpy -> JSON)

    path = directory / METADATA_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_json(metadata) + "\n")


def _write_keras(directory: Path, model, keras_file: Path | None) -> None:
    if keras_file is not None:
        shutil.copyfile(keras_file, directory / KERAS_FILENAME)
    else:
        model.save(directory / KERAS_FILENAME)


def verify_export(directory: Path, model, tolerance: float = VERIFY_TOLERANCE, seed: int = 0) -> float:
    """Reload the SavedModel and compare its probabilities with the Keras model's on random uint8
    images at the model's size; returns the max abs difference, raises past ``tolerance``."""
    height, width, channels = model_input_spec(model)
    images = np.random.default_rng(seed).integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    loaded = tf.saved_model.load(str(directory))
    meta = json.loads((directory / METADATA_PATH).read_text())
    exported = loaded.serve(tf.constant(images))["probs"].numpy()
    logits = np.asarray(model(normalize(images.astype(np.float32)), training=False), dtype=np.float32)
    expected = tf.sigmoid(logits) if meta["activation"] == "sigmoid" else tf.nn.softmax(logits, axis=-1)
    diff = float(np.max(np.abs(exported - np.asarray(expected))))
    if not diff <= tolerance:
        raise ChestTFError(f"the exported model's probabilities differ from the Keras model's by {diff:.2e} "
                           f"(tolerance {tolerance:g}); nothing was written")
    return diff


def export_model(model, metadata: dict, out: str | Path, *, overwrite: bool = False, keras_file: Path | None = None,
                 verify: bool = True) -> Path:
    """Write ``model`` with ``metadata`` as an export folder at ``out`` (atomically; see the module
    docstring). ``keras_file`` is copied as model.keras (else the model is saved). Returns ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it")
    found = augmentation_layers(model)
    if found:
        raise ConfigError(f"the model contains augmentation layers ({', '.join(found)}); export the classifier alone")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "name": out.name}
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _write_saved_model(model, metadata["task"], tmp)
        _write_metadata(tmp, metadata)
        _write_keras(tmp, model, keras_file)
        if verify:
            verify_export(tmp, model)
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        try:
            os.rename(tmp, out)  # fails if `out` appeared meanwhile as a non-empty folder
        except OSError:
            if not overwrite:
                raise ConfigError(f"{out} already exists; pass --overwrite to replace it") from None
        else:
            return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the previous export back
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def export_run(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False,
               verify: bool = True) -> Path:
    """Export a run folder (see the module docstring); returns the export folder."""
    model, metadata, keras_path = load_run(run_dir)
    out = Path(out) if out is not None else DEFAULT_EXPORT_ROOT / default_export_name(metadata)
    return export_model(model, metadata, out, overwrite=overwrite, keras_file=keras_path, verify=verify)


def read_metadata(export_dir: str | Path) -> dict:
    """An export's assets/metadata.json."""
    path = Path(export_dir) / METADATA_PATH
    if not path.is_file():
        raise ConfigError(f"{export_dir} has no {METADATA_PATH} (not a chest_tf export?)")
    return _read_json(path)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.export",
        description="Export a training run as a SavedModel taking uint8 images (serve / serving_default), "
                    "with assets/metadata.json and model.keras beside it.",
    )
    parser.add_argument("run_dir", help="run folder (config.json, best.keras, eval/metrics.json)")
    parser.add_argument("--out", help="export folder (default saved_models/<arch>_<dataset>_<size>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export (once the new one is complete)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the SavedModel and comparing it with the Keras model")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, verify=not args.no_verify)
    meta = read_metadata(out)
    t = meta["thresholds"]
    print(f"exported {out}: {meta['arch']} on {meta['dataset']} {meta['input']['height']} px, "
          f"{len(meta['output_names'])} output(s), thresholds {t['method']}"
          f"{' (chosen on ' + t['chosen_on'] + ')' if t.get('chosen_on') else ''}")
    print(f"  serve / serving_default: images uint8 [N,H,W] or [N,H,W,C] -> logits, probs; "
          f"metadata {out / METADATA_PATH}; Keras model {out / KERAS_FILENAME}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
