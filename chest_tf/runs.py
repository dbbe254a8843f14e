"""Run dirs and model files: the one place that reads what training wrote.

Used by evaluate, export, predict, explain, sweep and tune, so "is this a run dir" and "load this
.keras file" mean the same everywhere and fail with the same one-line errors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chest_tf.config import RunConfig
from chest_tf.errors import ChestTFError, ConfigError


def load_keras_model(path: str | Path):
    """A chest_tf ``.keras`` file, loaded in safe mode with the custom layers registered; a file
    that is missing or that Keras cannot read becomes a one-line error."""
    import keras  # noqa: PLC0415

    import chest_tf.augment  # noqa: F401, PLC0415 (registers the augmentation layers)
    import chest_tf.models  # noqa: F401, PLC0415 (registers the model layers)

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no model file at {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 (Keras raises many types for a bad file; all mean "can't load")
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ChestTFError(f"could not load {path}: {first[:300]}") from None


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
    if not (run_dir / "best.keras").is_file():
        raise ConfigError(f"{run_dir} has no best.keras (training saves it after its first epoch); "
                          "train longer or pass a .keras file")
    return config, payload


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
