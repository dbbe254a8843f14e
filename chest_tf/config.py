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

import argparse
import dataclasses
import json
import math
import re
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
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


def setting(default: Any = None, help: str = "", *, choices: tuple | None = None, flag: bool = True,
            metavar: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with the help text (and fixed choices) its generated command-line flag shows;
    ``flag=False`` for settings that have their own flag (model overrides: ``--model-arg``)."""
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = setting("chestmnist", "MedMNIST 2D set, or phantom (generated offline)")
    size: int = setting(28, "image size: 28, 64, 128 or 224")
    data_dir: str | None = setting(None, "npz files (default $CHEST_TF_DATA_DIR or ~/.cache/chest_tf)",
                                   metavar="DIR")
    records_dir: str | None = setting(None, "TFRecord shards (default DATA_DIR/tfrecords)", metavar="DIR")
    npz: str | None = setting(None, "read this npz file in place instead of the data dir's (e.g. a shared copy)",
                              metavar="FILE")


@dataclass
class ModelConfig:
    arch: str = setting("resnet18", "registered architecture or family alias (resnet, densenet, vit)")
    weights: str | None = setting(None, "start from ImageNet weights where available", choices=("imagenet",))
    overrides: dict[str, Any] = setting(help="builder overrides (flag: --model-arg KEY=VALUE)", flag=False,
                                        factory=dict)


@dataclass
class TrainConfig:
    epochs: int = setting(30, "training epochs")
    batch_size: int = setting(128, "global batch size")
    lr: float = setting(2e-3, "peak learning rate")
    optimizer: str = setting("adamw", "optimiser", choices=OPTIMIZERS)
    schedule: str = setting("cosine", "cosine (linear warmup, then cosine decay), step (MedMNIST's x0.1 at 50%% "
                            "and 75%%) or constant", choices=SCHEDULES)
    warmup_epochs: float = setting(1.0, "linear warmup length in epochs (cosine schedule)")
    weight_decay: float = setting(0.05, "AdamW weight decay (not on norms, biases, embeddings)")
    label_smoothing: float = setting(0.0, "label smoothing in [0, 1)")
    loss: str = setting("bce", "training loss", choices=LOSSES)
    focal_gamma: float = setting(2.0, "focusing parameter of --loss focal")
    augment: str = setting("light", "augmentation preset (chest_tf.augment.PRESETS)")
    mixup: float = setting(0.0, "alpha of per-image Beta(alpha, alpha) mixup in the training step; 0 = off")
    precision: str = setting("auto", "auto: mixed precision on GPUs and on CPUs with native bfloat16 "
                             "(avx512_bf16/amx_bf16), float32 on other CPUs", choices=PRECISIONS)
    jit: str = setting("auto", "XLA: auto (on for GPUs, off on a CPU, as measured), on, off",
                       choices=JIT_MODES)
    strategy: str = setting("auto", "auto: mirrored with more than one GPU", choices=STRATEGIES)
    seed: int = setting(0, "random seed (weights, data order, augmentation)")
    early_stopping: int = setting(0, "stop after PATIENCE epochs without a better val AUC; 0 = off",
                                  metavar="PATIENCE")
    steps_per_epoch: int | None = setting(None, "fewer steps per epoch, for quick runs")
    deterministic: bool = setting(False, "ordered tf.data stages (slower); results repeatable per seed")
    explain_every: int = setting(1, "Grad-CAM / rollout of 8 validation images to TensorBoard every N epochs; "
                                 "0 = off", metavar="N")


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


# ----------------------------------------------------------------------------------------------
# Command-line flags, generated from the dataclasses above (every field has one; none can drift)

SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_FLAG_TYPES = (bool, int, float, str)


def _flag_type(section: str, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(SECTION_CLASSES[section])[f.name]
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    kind = options[0]
    if kind not in _FLAG_TYPES:
        raise TypeError(f"[{section}] {f.name}: no flag for a {hint} setting; give it flag=False")
    return kind


def config_flags() -> list[tuple[str, str, type]]:
    """``(section, field, type)`` of every setting that has a flag, in declaration order."""
    return [(section, f.name, _flag_type(section, f))
            for section, cls in SECTION_CLASSES.items() for f in fields(cls) if f.metadata.get("flag", True)]


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not MISSING else None
    return "" if default in (None, False) else f" (default {default})"


def add_config_arguments(parser: argparse.ArgumentParser, choices: dict[str, list[str]] | None = None) -> None:
    """A flag for every ``RunConfig`` setting (``--batch-size`` for ``train.batch_size``), grouped by
    section, plus ``--config FILE`` and ``--model-arg KEY=VALUE``. ``choices`` adds the choices known
    only at run time (registered architectures, datasets, augmentation presets) by field name.
    Flags left out stay ``None``, so TOML and the dataset's defaults show through."""
    choices = choices or {}
    parser.add_argument("--config", metavar="FILE", help="TOML file with [data], [model], [train] tables; flags "
                                                         "override it")
    for section, cls in SECTION_CLASSES.items():
        group = parser.add_argument_group(section)
        for f in fields(cls):
            if not f.metadata.get("flag", True):
                continue
            kind = _flag_type(section, f)
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "") + _default_text(f)
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
                continue
            allowed = choices.get(f.name) or f.metadata.get("choices")
            group.add_argument(flag, type=kind, choices=list(allowed) if allowed else None,
                               metavar=f.metadata.get("metavar"), help=help_text)
        if section == "model":
            group.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                               help="architecture override, e.g. width=16, head_dropout=0.2 or drop_path_rate=0.1 "
                                    "(repeatable)")


def settings_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML document the flags describe: ``--config``'s tables with every given flag laid over
    them (so the dataset's defaults still see which settings were explicit)."""
    values = load_toml(args.config) if getattr(args, "config", None) else {}
    for section, cls in SECTION_CLASSES.items():
        given = {f.name: getattr(args, f.name) for f in fields(cls)
                 if f.metadata.get("flag", True) and getattr(args, f.name, None) is not None}
        if given:
            values = merge_settings(values, section, given)
    if getattr(args, "model_arg", None):
        values = merge_settings(values, "model", {"overrides": parse_model_args(args.model_arg)})
    return values


def config_from_arguments(args: argparse.Namespace) -> RunConfig:
    """``RunConfig`` from parsed flags (see ``add_config_arguments``), validated."""
    return RunConfig.from_dict(settings_from_arguments(args)).validate()


# ----------------------------------------------------------------------------------------------
# Editing a config by dotted key (sweep grids, ``--set``, tune's search space) and writing it back
# as TOML (tune's best.toml)

SECTIONS = tuple(SECTION_CLASSES)


def source_prefix(source: str | None) -> str:
    """``"FILE: "`` before a message about a setting that came from FILE; ``""`` without one."""
    return f"{source}: " if source else ""


def split_key(key: str, source: str | None = None) -> tuple[str, str, str | None]:
    """``"train.lr"`` -> ("train", "lr", None); ``"model.overrides.width"`` -> ("model",
    "overrides", "width"). Unknown sections or fields are ConfigErrors."""
    where = source_prefix(source)
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{where}setting {key!r} must be dotted as section.field with section one of "
                          f"{', '.join(SECTIONS)} (e.g. train.lr, model.overrides.width)")
    section, name = parts[0], parts[1]
    known = {f.name for f in fields(SECTION_CLASSES[section])}
    if name not in known:
        raise ConfigError(f"{where}unknown setting {key!r}; [{section}] knows {', '.join(sorted(known))}")
    if section == "model" and name == "overrides":
        if len(parts) == 2:
            return section, name, None
        if len(parts) != 3 or not parts[2]:
            raise ConfigError(f"{where}setting {key!r}: use model.overrides.KEY")
        return section, name, parts[2]
    if len(parts) != 2:
        raise ConfigError(f"{where}setting {key!r}: only model.overrides takes a third part")
    return section, name, None


def set_setting(config: RunConfig, key: str, value: Any, source: str | None = None) -> RunConfig:
    """A copy of ``config`` with the dotted setting ``key`` set to ``value``."""
    section, name, sub = split_key(key, source)
    if sub is not None:
        return apply_overrides(config, "model", {"overrides": {sub: value}})
    if name == "overrides" and not isinstance(value, dict):
        raise ConfigError(f"{source_prefix(source)}model.overrides takes a table, got {value!r}")
    return apply_overrides(config, section, {name: value})


def _toml_value_or_text(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``--set train.lr=1e-3`` pairs -> {dotted key: value}; values parsed as TOML/JSON scalars
    where possible (``3``, ``1e-3``, ``true``, ``"x"``, ``{...}``), else taken as strings."""
    return parse_key_values(pairs, "--set", _toml_value_or_text, " (e.g. train.lr=1e-3)")


def toml_value(value: Any) -> str:
    """One TOML value (strings, numbers, booleans, lists and inline tables; no None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key)


def config_to_toml(config: RunConfig, comments: Iterable[str] = (), sweep: dict[str, Any] | None = None) -> str:
    """``config`` as [data], [model], [train] tables (None settings left out: they are the
    defaults), after ``# comments``; with ``sweep``, a [sweep] table first. Reads back with
    ``RunConfig.from_dict(load_toml(...))`` (without ``sweep``) or as an experiment file."""
    lines = [f"# {line}".rstrip() for line in comments]
    if lines:
        lines.append("")
    tables = {"sweep": sweep} if sweep else {}
    tables.update(config.to_dict())
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
