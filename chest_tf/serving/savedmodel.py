"""Write a model as an export folder: a SavedModel that takes uint8 images, plus its metadata.

    python -m chest_tf.export runs/chestmnist_224/resnet18_s0                 # -> saved_models/resnet18_chestmnist_224
    python -m chest_tf.export RUN_DIR --out saved_models/chest_v2 [--overwrite] [--no-verify]

The export folder is a SavedModel (Keras 3 ``ExportArchive``) plus::

    saved_model.pb  variables/  fingerprint.pb
    assets/metadata.json   labels, task, input size and channels, normalisation, thresholds chosen
                           on validation (after calibration), calibration, OOD threshold and its
                           measured AUROCs, val/test metrics, source run(s), versions (plain JSON)
    assets/ood_stats.npz   feature means and precision matrices of the Mahalanobis OOD score
    model.keras            the classifier as trained (``best.keras``; an ensemble: all members)
    report/                report.md, metrics.json, predictions.npz and figures of the served
                           (calibrated) model on val and test, the reliability diagram before
    MODEL_CARD.md          intended use, data, metrics with CIs, calibration, OOD, limitations

What export fits and measures before writing (calibration, OOD score, ensembles):
``chest_tf.serving.release``.

Serving signature ``serve`` (also ``serving_default``), the only one::

    inputs  images: uint8, shape unknown-rank: [N, H, W] or [N, H, W, C] with C in {1, 3, 4},
            any H and W (one size per call)
    outputs logits: float32 [N, K]; probs: float32 [N, K] (sigmoid for multi-label and one-logit
            binary models, softmax for multi-class; of logits / temperature when calibrated);
            ood_score float32 [N] and in_distribution bool [N] when the export has an OOD
            score; uncertainty float32 [N, K] for an ensemble

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

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from chest_tf.data.normalization import normalize
from chest_tf.errors import ChestTFError, ConfigError, error_line
from chest_tf.evaluation.metrics import dumps_json
from chest_tf.files import write_problem, write_text_atomic
from chest_tf.serving.metadata import KERAS_FILENAME, METADATA_PATH
from chest_tf.serving.model_card import write_model_card
from chest_tf.serving.release import REPORT_DIR, ReleaseOptions, prepare_release, write_release_report
from chest_tf.serving.signature import (
    ENDPOINT,
    SERVE_SIGNATURE,
    ServingExtras,
    model_input_spec,
    serve_function,
    serving_tf_function,
)

VERIFY_TOLERANCE = 1e-5
DEFAULT_EXPORT_ROOT = Path("saved_models")


def augmentation_layers(model) -> list[str]:
    """Names of any chest_tf augmentation layers inside ``model`` (nested models included)."""
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if type(layer).__module__.startswith("chest_tf.augment"):
            found.append(layer.name)
        stack.extend(getattr(layer, "layers", []) or [])
    return found



def default_export_name(metadata: dict) -> str:
    return f"{metadata['arch'] or 'model'}_{metadata['dataset']}_{metadata['input']['height']}"


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _write_saved_model(model, task: str, directory: Path, extras: ServingExtras | None) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(ENDPOINT, serve_function(model, task, extras), input_signature=SERVE_SIGNATURE)
    archive.write_out(str(directory), verbose=False)


def _write_metadata(directory: Path, metadata: dict) -> None:
    path = directory / METADATA_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dumps_json(metadata) + "\n")


def _write_keras(directory: Path, model, keras_file: Path | None) -> None:
    if keras_file is not None:
        shutil.copyfile(keras_file, directory / KERAS_FILENAME)
    else:
        model.save(directory / KERAS_FILENAME)


def verify_export(directory: Path, model, extras: ServingExtras | None = None, tolerance: float = VERIFY_TOLERANCE,
                  seed: int = 0) -> float:
    """Reload the SavedModel and compare it on random uint8 images at the model's size: its
    probabilities with the Keras model's computed outside the serving graph (training's
    normalisation, the activation, the temperatures), and every output with the Keras model
    through the same serving computation. Returns the max abs difference, raises past ``tolerance``."""
    height, width, channels = model_input_spec(model)
    images = np.random.default_rng(seed).integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    loaded = tf.saved_model.load(str(directory))
    meta = json.loads((directory / METADATA_PATH).read_text())
    exported = {name: value.numpy() for name, value in loaded.serve(tf.constant(images)).items()}
    logits = np.asarray(model(normalize(images.astype(np.float32)), training=False), dtype=np.float32)
    if extras is not None and extras.temperatures is not None:
        logits = logits / extras.temperatures
    expected = tf.sigmoid(logits) if meta["activation"] == "sigmoid" else tf.nn.softmax(logits, axis=-1)
    diffs = [float(np.max(np.abs(exported["probs"] - np.asarray(expected))))]
    keras_path = serving_tf_function(model, meta["task"], extras)(tf.constant(images))
    for name, value in keras_path.items():
        if value.dtype == tf.bool:
            diffs.append(float(np.any(value.numpy() != exported[name])))
        else:
            diffs.append(float(np.max(np.abs(value.numpy() - exported[name]))))
    diff = max(diffs)
    if not diff <= tolerance:
        raise ChestTFError(f"the exported model's outputs differ from the Keras model's by {diff:.2e} "
                           f"(tolerance {tolerance:g}); nothing was written")
    return diff


def export_model(model, metadata: dict, out: str | Path, *, overwrite: bool = False, keras_file: Path | None = None,
                 verify: bool = True, extras: ServingExtras | None = None,
                 finish: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` with ``metadata`` as an export folder at ``out`` (atomically; see the module
    docstring). ``keras_file`` is copied as model.keras (else the model is saved); ``extras`` adds
    calibration and the OOD score to ``serve`` (their statistics are saved beside it);
    ``finish(folder)`` writes anything else into the folder before it is moved into place."""
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
        _write_saved_model(model, metadata["task"], tmp, extras)
        _write_metadata(tmp, metadata)
        if extras is not None and extras.ood is not None:
            extras.ood.save_statistics(tmp)
        _write_keras(tmp, model, keras_file)
        if finish is not None:
            finish(tmp)
        if verify:
            verify_export(tmp, model, extras)
        _move_into_place(tmp, out, overwrite)
    except (OSError, tf.errors.OpError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = write_problem(exc)
        if problem is None and not isinstance(exc, OSError):
            raise  # a TensorFlow error that is not about the disk: not ours to reword
        # TensorFlow's SaveV2 reports a full disk as ResourceExhaustedError with the system's words
        raise ChestTFError(f"could not write the export {out} ({problem or error_line(exc)}); the previous "
                           f"export, if any, is unchanged") from None
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


def export_runs(run_dirs: list[str | Path], out: str | Path | None = None, *, overwrite: bool = False,
                verify: bool = True, options: ReleaseOptions | None = None,
                commands: list[str] | None = None) -> Path:
    """Export one run, or several as a deep ensemble, with calibration, an OOD score, a report and
    a model card (``chest_tf.serving.release``; ``ReleaseOptions.plain()`` for none of them);
    returns the export folder."""
    release = prepare_release(list(run_dirs), options)
    out = Path(out) if out is not None else DEFAULT_EXPORT_ROOT / default_export_name(release.metadata)
    metadata = {**release.metadata, "name": out.name}

    def finish(folder: Path) -> None:
        result = write_release_report(dataclasses.replace(release, metadata=metadata), folder)
        write_model_card(folder, metadata, REPORT_DIR if result is not None else None,
                         commands or [f"python -m chest_tf.export {' '.join(map(str, run_dirs))} --out {out}"])

    return export_model(release.model, metadata, out, overwrite=overwrite, keras_file=release.keras_file,
                        verify=verify, extras=release.extras, finish=finish)


def export_run(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False,
               verify: bool = True, options: ReleaseOptions | None = None) -> Path:
    """Export one run folder (see ``export_runs``); returns the export folder."""
    return export_runs([run_dir], out, overwrite=overwrite, verify=verify, options=options)
