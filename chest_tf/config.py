"""One dataclass tree for a run: data, model and training settings.

CLI flags and TOML files (``--config run.toml``, and the runs of ``pipelines/*.toml``) both map
onto it: defaults < the dataset's defaults (``DATASET_TRAIN_DEFAULTS``) < TOML < flags. Every run
writes its resolved config to ``config.json`` with what ``auto`` resolved to (precision, XLA,
strategy, device).

A TOML file has up to three tables, named like the dataclasses::

    [data]
    dataset = "pneumoniamnist"
    size = 28
    [model]
    arch = "resnet18"
    overrides = { head_dropout = 0.1 }
    [train]
    epochs = 30
    lr = 0.002
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from chest_tf.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("bce", "bce_weighted", "focal", "asymmetric")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_MODES = ("auto", "on", "off")
STRATEGIES = ("auto", "none", "mirrored")


# Training defaults that depend on the dataset, applied under any TOML table or flag (defaults <
# these < TOML < flags) when a config is read. The phantom set is the offline demo, 4,000 training
# images: the general 30 epochs x batch 128 take ~27 min with a full-width ResNet-18 on 2 CPU
# cores. Small batches give 4x the updates per epoch, and every phantom image already has its own
# random pose, build, exposure and noise, so on-the-fly augmentation only slows a short schedule
# (full width, batch 32, 6 epochs: val AUC 0.950 with the light preset, 0.967-0.981 without, ~6 min;
# measured in the README).
DATASET_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "phantom": {"epochs": 6, "batch_size": 32, "augment": "none"},
}


@dataclass
class DataConfig:
    dataset: str = "chestmnist"
    size: int = 28
    data_dir: str | None = None  # npz files; default $CHEST_TF_DATA_DIR or ~/.cache/chest_tf
    records_dir: str | None = None  # TFRecord shards; default DATA_DIR/tfrecords
    npz: str | None = None  # read this npz file instead (e.g. a shared copy), in place


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    weights: str | None = None  # None (from scratch) or "imagenet"
    overrides: dict[str, Any] = field(default_factory=dict)  # passed to build_model


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adamw"
    schedule: str = "cosine"  # cosine = linear warmup then cosine decay; step = MedMNIST's x0.1 at 50%, 75%
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    loss: str = "bce"
    focal_gamma: float = 2.0
    augment: str = "light"  # a preset of chest_tf.augment.PRESETS
    mixup: float = 0.0  # alpha of per-image Beta(alpha, alpha) mixup in the training step; 0 = off
    precision: str = "auto"
    jit: str = "auto"
    strategy: str = "auto"
    seed: int = 0
    early_stopping: int = 0  # patience in epochs on validation AUC; 0 = off
    steps_per_epoch: int | None = None  # fewer steps per epoch for quick runs
    deterministic: bool = False  # ordered tf.data stages (slower); results repeatable per seed
    explain_every: int = 1  # Grad-CAM / rollout of 8 validation images to TensorBoard every N epochs; 0 = off


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, dataset_defaults: bool = True) -> RunConfig:
        """The config a TOML document (or saved config.json) describes; with ``dataset_defaults``
        its dataset's training defaults fill the [train] settings it does not give."""
        unknown = set(values) - {"data", "model", "train"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; use [data], [model] and [train]")
        config = cls()
        for section, table in values.items():
            if not isinstance(table, dict):
                raise ConfigError(f"[{section}] must be a table of settings, got {table!r}")
            config = apply_overrides(config, section, table)
        if dataset_defaults:
            config = with_dataset_defaults(config, explicit=values.get("train", {}))
        return config

    def validate(self) -> RunConfig:
        train = self.train
        for name, value, allowed in (
            ("optimizer", train.optimizer, OPTIMIZERS),
            ("schedule", train.schedule, SCHEDULES),
            ("loss", train.loss, LOSSES),
            ("precision", train.precision, PRECISIONS),
            ("jit", train.jit, JIT_MODES),
            ("strategy", train.strategy, STRATEGIES),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {name} '{value}'; choose one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size"):
            if getattr(train, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(train, name)}")
        if train.lr <= 0:
            raise ConfigError(f"lr must be positive, got {train.lr}")
        if train.steps_per_epoch is not None and train.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be at least 1, got {train.steps_per_epoch}")
        if train.mixup < 0:
            raise ConfigError(f"mixup alpha must be >= 0 (0 = off), got {train.mixup}")
        if not 0 <= train.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {train.label_smoothing}")
        return self


def apply_overrides(config: RunConfig, section: str, values: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with ``values`` set in ``section``; unknown keys are errors."""
    part = getattr(config, section)
    known = {f.name for f in fields(part)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown [{section}] setting(s) {unknown}; known: {', '.join(sorted(known))}")
    merged = dict(values)
    if section == "model" and "overrides" in merged:
        merged["overrides"] = {**part.overrides, **merged["overrides"]}
    return dataclasses.replace(config, **{section: dataclasses.replace(part, **merged)})


def with_dataset_defaults(config: RunConfig, explicit: Iterable[str] = ()) -> RunConfig:
    """``config`` with its dataset's ``DATASET_TRAIN_DEFAULTS`` for the [train] settings not named
    in ``explicit`` (those a TOML table, flag or sweep setting gave)."""
    explicit = set(explicit)
    defaults = {name: value for name, value in DATASET_TRAIN_DEFAULTS.get(config.data.dataset, {}).items()
                if name not in explicit}
    return apply_overrides(config, "train", defaults) if defaults else config


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_run_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(load_toml(path))


def parse_key_values(pairs: list[str], flag: str, parse_value: Callable[[str], Any],
                     example: str = "") -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` pairs -> {key: parse_value(text)}; a malformed pair is a
    ConfigError naming ``flag`` (with ``example`` of a good one)."""
    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE{example}, got '{pair}'")
        parsed[key.strip()] = parse_value(text)
    return parsed


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare string such as stem=small


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``--model-arg`` pairs: ``width=16`` -> {"width": 16} (values as JSON where possible, else
    strings, e.g. ``stem=small``)."""
    return parse_key_values(pairs, "--model-arg", _json_or_text, " (e.g. width=16)")


def merge_settings(values: dict[str, Any], section: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a TOML document) with ``settings`` laid over its ``[section]`` table; model
    ``overrides`` merge key by key. Flags go through this so the dataset's defaults still see them."""
    table = values.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table of settings, got {table!r}")
    table = dict(table)
    if "overrides" in settings:
        settings = {**settings, "overrides": {**table.get("overrides", {}), **settings["overrides"]}}
    return {**values, section: {**table, **settings}}
