"""Run dirs, ``.keras`` files and export folders: the one reader of what training and export wrote.

``resolve_model(path)`` turns any of the three into a ``ResolvedModel`` (the Keras model, loaded on
first use, and the metadata that names its outputs and thresholds), so evaluate, export, predict,
explain and the app mean the same thing by "a model" and fail with the same one-line errors::

    RUN_DIR/            config.json + best.keras (+ eval/metrics.json: thresholds and metrics)
    MODEL.keras         labels from an export or run folder around it, else ``dataset=``
    EXPORT_DIR/         saved_model.pb + assets/metadata.json + model.keras
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

import chest_tf.augment  # noqa: F401 (registers the augmentation layers for loading)
import chest_tf.models.ensemble  # noqa: F401 (registers the ensemble layer for loading)
import chest_tf.models.registry  # noqa: F401 (registers the model layers for loading)
from chest_tf.config import RunConfig
from chest_tf.data.info import get_info
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.serving.metadata import KERAS_FILENAME, METADATA_PATH, build_metadata, read_metadata, serving_extras
from chest_tf.serving.signature import ServingExtras

FINISHED_MARKER = "finished.json"  # written last by a training run that completed
BEST_MODEL = "best.keras"
RUN_KINDS = ("run", "keras", "export")


def load_keras_model(path: str | Path):
    """A chest_tf ``.keras`` file, loaded in safe mode with the custom layers registered; a file
    that is missing or that Keras cannot read becomes a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no model file at {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 (Keras raises many types for a bad file; all mean "can't load")
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ChestTFError(f"could not load {path}: {first[:300]}") from None


def read_json(path: str | Path) -> dict:
    """A JSON file chest_tf wrote; unreadable is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def read_run_dir(run_dir: str | Path) -> tuple[RunConfig, dict]:
    """The run's config (as training wrote it) and the whole config.json payload; the run must
    hold a best.keras."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist")
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{run_dir} is not a chest_tf run dir (no config.json); pass a run dir written by "
                          "python -m chest_tf.train")
    try:
        payload = json.loads(saved.read_text())
        config = RunConfig.from_dict(payload["config"])
    except (ValueError, KeyError, TypeError, ChestTFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{run_dir} is not a chest_tf run dir ({saved} unreadable: {reason})") from None
    if not (run_dir / BEST_MODEL).is_file():
        raise ConfigError(f"{run_dir} has no {BEST_MODEL} (training saves it after its first epoch); "
                          "train longer or pass a .keras file")
    return config, payload


@dataclass
class ResolvedModel:
    """A model named on the command line, with what is known about it.

    ``model`` is loaded from ``keras_path`` on first use (predict on an export folder never needs
    it); ``metadata`` (output names, task, activation, thresholds; the format of an export's
    assets/metadata.json) is built on first use, so a caller can check the model against its data
    first. ``config`` and ``run_payload`` are set for run dirs only."""

    kind: str  # one of RUN_KINDS
    path: Path  # what was given
    keras_path: Path
    config: RunConfig | None = None
    run_payload: dict = field(default_factory=dict)
    dataset: str | None = None  # names the outputs of a bare .keras file
    metadata_dir: Path | None = None  # an export folder whose metadata.json describes the model

    @functools.cached_property
    def model(self):
        if self.kind == "export" and not self.keras_path.is_file():
            raise ConfigError(f"the export {self.path} has no {KERAS_FILENAME} (explaining and evaluating need the "
                              "Keras model); export it again with python -m chest_tf.export")
        return load_keras_model(self.keras_path)

    @functools.cached_property
    def metadata(self) -> dict:
        if self.metadata_dir is not None:
            return read_metadata(self.metadata_dir)
        if self.config is not None:
            return run_metadata(self.keras_path.parent, self.config, self.run_payload, self.model)
        return build_metadata(self.model, get_info(self.dataset), source={"keras_file": str(self.keras_path.resolve())})

    @functools.cached_property
    def extras(self) -> ServingExtras:
        """Calibration and OOD scorer of an export (nothing for a run dir or a bare .keras file)."""
        return serving_extras(self.metadata, self.metadata_dir)

    @property
    def run_dir(self) -> Path | None:
        return self.path if self.kind == "run" else None


def run_metadata(run_dir: Path, config: RunConfig, payload: dict, model) -> dict:
    """Export metadata for a run dir: labels from its dataset, thresholds and metrics from
    eval/metrics.json when the run was evaluated."""
    metrics_path = run_dir / "eval" / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else None
    best_path = run_dir / "best.json"
    source = {
        "run_dir": str(run_dir.resolve()),
        "dataset": config.data.dataset, "size": config.data.size, "arch": config.model.arch,
        "model_config": config.to_dict()["model"],
        "best": read_json(best_path) if best_path.is_file() else None,
        "runtime": payload.get("runtime"),
        "training_versions": payload.get("versions"),
        "metrics_file": str(metrics_path.resolve()) if metrics else None,
    }
    return build_metadata(model, get_info(config.data.dataset), arch=config.model.arch, metrics=metrics,
                          source=source)


def resolve_model(path: str | Path, dataset: str | None = None) -> ResolvedModel:
    """A run dir, a ``.keras`` file or an export folder -> ``ResolvedModel`` (see the module
    docstring). ``dataset`` names the outputs of a bare ``.keras`` file. What can be checked
    without loading the model is checked here."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "saved_model.pb").is_file():
        read_metadata(path)  # an export without its metadata fails now, not on first use
        return ResolvedModel("export", path, path / KERAS_FILENAME, metadata_dir=path)
    if path.is_dir() and (path / "config.json").is_file():
        config, payload = read_run_dir(path)
        return ResolvedModel("run", path, path / BEST_MODEL, config, payload)
    if path.is_file() and path.suffix == ".keras":
        around = path.parent
        if (around / METADATA_PATH).is_file():
            return ResolvedModel("keras", path, path, metadata_dir=around)
        if (around / "config.json").is_file():
            config, payload = read_run_dir(around)
            return ResolvedModel("keras", path, path, config, payload)
        if dataset:
            get_info(dataset)  # an unknown name fails before the model loads
            return ResolvedModel("keras", path, path, dataset=dataset)
        raise ConfigError(f"--dataset is required with a .keras file that has no run or export folder "
                          f"around it to name its outputs ({path}); pass --dataset NAME")
    if not path.exists():
        raise ConfigError(f"model not found: {path} does not exist (expected a run dir, a .keras file or an "
                          "export folder)")
    if path.is_dir():
        raise ConfigError(f"{path} is not a chest_tf run dir (no config.json) nor an export folder (no saved_model.pb)")
    raise ConfigError(f"{path} is neither a run dir nor a .keras file (nor an export folder)")


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["train.lr: 0.001 -> 0.01", ...]``: where two (nested) config dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new)):
            diffs += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return diffs
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def saved_config_differences(run_dir: str | Path, config: RunConfig) -> list[str]:
    """How the config in ``run_dir/config.json`` differs from ``config`` ([] when the same).

    The saved config is read back through ``RunConfig.from_dict`` first, so a run written before a
    setting existed compares as having that setting's default (a new field is not a difference).
    """
    saved = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    try:
        saved = RunConfig.from_dict(saved).to_dict()
    except ChestTFError:
        pass  # a setting that no longer exists: compare the raw dicts, which names it
    as_json = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as config.json holds them
    return config_differences(json.loads(json.dumps(saved)), as_json)
