"""``python -m chest_tf.sweep``: run an experiment file (``pipelines/*.toml``) and rank its runs.

    python -m chest_tf.sweep pipelines/quick.toml --dry-run          # what would run, and where
    python -m chest_tf.sweep pipelines/quick.toml                    # run it (again: skip/resume)
    python -m chest_tf.sweep pipelines/paper.toml --only 'resnet*'   # a subset (names or patterns)
    python -m chest_tf.sweep pipelines/quick.toml --set data.dataset=pneumoniamnist \\
        --set data.npz=../shared/data/pneumoniamnist.npz --out runs/sweeps/quick_pneumonia
    python -m chest_tf.sweep pipelines/quick.toml --leaderboard-only  # rebuild the tables/plot

Experiment file format
======================
A base config -- the ``[data]``, ``[model]`` and ``[train]`` tables exactly as
``python -m chest_tf.train --config`` reads them (``RunConfig.from_dict``) -- plus an optional
``[sweep]`` table and optional ``[[runs]]`` tables::

    [sweep]
    name = "quick"              # default output dir runs/sweeps/<name> (default: the file's stem)
    description = "..."         # optional, copied into the leaderboard
    seeds = [0, 1, 2]           # every config runs once per seed (train.seed); default [train.seed]
    grid = { "model.arch" = ["resnet18", "densenet121"], "train.lr" = [1e-3, 3e-3] }

    [data]                      # the base config: every run starts from it
    dataset = "pneumoniamnist"
    [model]
    arch = "resnet18"
    overrides = { width = 16 }
    [train]
    epochs = 10

    [[runs]]                    # a named set of overrides on top of the base
    name = "densenet121"        # letters, digits, _ . + - (names the run dirs)
    model = { arch = "densenet121", overrides = { growth_rate = 12 } }
    train = { lr = 1e-3 }
    seeds = [0]                 # optional: this run's own seeds instead of [sweep].seeds

* ``grid`` keys are dotted settings: ``section.field`` (``train.lr``, ``data.size``) or
  ``model.overrides.KEY`` (``model.overrides.width``); each value is a non-empty list. The grid is
  the cartesian product of the lists (in file order, the last key varying fastest).
* Runs are ``[[runs]]`` x grid points x seeds. With no ``[[runs]]`` the base alone is the one run
  set; with no grid, each ``[[runs]]`` is one config. Precedence: base < run < grid point <
  ``--set`` < seed. ``model.overrides`` tables merge key by key.
* A config is named ``<run name>_<grid labels>`` (a grid label is the value for ``model.arch``,
  else ``<field><value>``, e.g. ``lr0.001``; with neither runs nor grid, the sweep's name); each run
  ``<config>_s<seed>``, which is its run dir ``<out>/runs/<config>_s<seed>/``.
* Order: every config with the first seed, then every config with the second seed, and so on, so a
  sweep cut short already compares every config once.
* Relative paths in ``[data]`` (``npz``, ``data_dir``, ``records_dir``) are used as written, i.e.
  relative to the directory the command runs in -- run sweeps from the repository root.
* Unknown tables or keys, a bad grid, duplicate names or settings the trainer would reject are
  one-line errors before anything trains.

Output (``--out``, default ``runs/sweeps/<name>``)::

    sweep.json               the resolved plan: every run's name, seed and full config
    runs/<run>/              one ordinary chest_tf.train run dir per run (resumable)
    leaderboard.csv          one row per finished run
    leaderboard_by_config.csv  per config: mean, std, min and max over seeds
    leaderboard.md           both tables, the published rows for the dataset and size, the plot
    auc_vs_time.png          test AUC against training time, published results as reference lines
    hparams/                 TensorBoard HParams experiment definition

Rerunning the same command skips finished runs (``skipping ...``), resumes an interrupted one from
its last epoch, and rebuilds the leaderboard from the run dirs. A finished run whose config no
longer matches the file is an error (delete that run dir, or use another ``--out``).

TensorBoard: ``tensorboard --logdir <out>`` -- each run's ``tensorboard/`` dir is one HParams
session (its hyperparameters and final metrics), next to its training curves.

All reported numbers come from the run's ``eval/metrics.json`` (chest_tf.metrics on the best
validation-AUC checkpoint): AUC/ACC by the MedMNIST formulas, test AUC/ACC 95% CIs by bootstrap
over test images, sensitivity/specificity as the mean over labels at thresholds chosen on
validation. Configs are ranked by mean validation AUC; test numbers are reported, never used to
choose.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import itertools
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_toml,
    parse_key_values,
    with_dataset_defaults,
)
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.runs import saved_config_differences

quiet_tensorflow()

SECTIONS = ("data", "model", "train")
_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
TOP_LEVEL_KEYS = {"sweep", "runs", *SECTIONS}
SWEEP_KEYS = {"name", "description", "seeds", "grid"}
RUN_KEYS = {"name", "seeds", *SECTIONS}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
FINISHED_MARKER = "finished.json"  # written by chest_tf.train when a run completes
HPARAMS_MARKER = "hparams.json"  # written here once a run's HParams session is logged
RUNS_SUBDIR = "runs"

# Always logged as HParams (plus every setting that varies within the sweep).
KEY_HPARAMS = (
    "data.dataset", "data.size", "model.arch", "model.weights", "train.epochs", "train.batch_size", "train.lr",
    "train.optimizer", "train.schedule", "train.warmup_epochs", "train.weight_decay", "train.loss",
    "train.augment", "train.mixup", "train.label_smoothing", "train.seed",
)
# (tag, group, display name): the training curves Keras' TensorBoard callback writes per run.
EPOCH_CURVES = (
    ("epoch_auc", "validation", "val AUC per epoch (Keras)"),
    ("epoch_loss", "validation", "val loss per epoch"),
    ("epoch_loss", "train", "train loss per epoch"),
)
# HParams metrics of a sweep: the final numbers each run writes, then its training curves.
FINAL_METRICS = (
    ("final/val_auc", "", "val AUC"),
    ("final/test_auc", "", "test AUC"),
    ("final/test_acc", "", "test ACC"),
    ("final/test_sensitivity", "", "sensitivity (val thresholds)"),
    ("final/test_specificity", "", "specificity (val thresholds)"),
    ("final/seconds_per_epoch", "", "s/epoch"),
    ("final/total_seconds", "", "training s"),
    ("final/params", "", "params"),
    *EPOCH_CURVES,
)


# ----------------------------------------------------------------------------------------------
# The plan: an experiment file -> an ordered list of runs


@dataclass
class PlannedRun:
    name: str  # <config>_s<seed>: unique in the sweep, the run dir's name
    config_name: str  # the group a seed belongs to
    seed: int
    config: RunConfig
    settings: dict[str, Any] = field(default_factory=dict)  # dotted key -> value set on top of the base


@dataclass
class Sweep:
    name: str
    base: RunConfig
    runs: list[PlannedRun]
    description: str = ""
    source: str | None = None
    grid: dict[str, list] = field(default_factory=dict)


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _check_name(name: Any, what: str, source: str | None) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{_where(source)}{what} {name!r} must be a non-empty string of letters, digits, _ . + - "
                          "(it names run dirs)")
    return name


def _check_seeds(seeds: Any, what: str, source: str | None) -> list[int]:
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{_where(source)}{what} must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{_where(source)}{what} lists a seed twice: {seeds}")
    return list(seeds)


def split_key(key: str, source: str | None = None) -> tuple[str, str, str | None]:
    """``"train.lr"`` -> ("train", "lr", None); ``"model.overrides.width"`` -> ("model",
    "overrides", "width"). Unknown sections or fields are ConfigErrors."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{_where(source)}setting {key!r} must be dotted as section.field with section one of "
                          f"{', '.join(SECTIONS)} (e.g. train.lr, model.overrides.width)")
    section, name = parts[0], parts[1]
    known = {f.name for f in fields(_SECTION_CLASSES[section])}
    if name not in known:
        raise ConfigError(f"{_where(source)}unknown setting {key!r}; [{section}] knows {', '.join(sorted(known))}")
    if section == "model" and name == "overrides":
        if len(parts) == 2:
            return section, name, None
        if len(parts) != 3 or not parts[2]:
            raise ConfigError(f"{_where(source)}setting {key!r}: use model.overrides.KEY")
        return section, name, parts[2]
    if len(parts) != 2:
        raise ConfigError(f"{_where(source)}setting {key!r}: only model.overrides takes a third part")
    if section == "train" and name == "seed":
        raise ConfigError(f"{_where(source)}set seeds in [sweep] seeds = [...] (or a run's seeds), not {key}")
    return section, name, None


def set_setting(config: RunConfig, key: str, value: Any, source: str | None = None) -> RunConfig:
    """A copy of ``config`` with the dotted setting ``key`` set to ``value``."""
    section, name, sub = split_key(key, source)
    if sub is not None:
        return apply_overrides(config, "model", {"overrides": {sub: value}})
    if name == "overrides" and not isinstance(value, dict):
        raise ConfigError(f"{_where(source)}model.overrides takes a table, got {value!r}")
    return apply_overrides(config, section, {name: value})


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "-".join(f"{k}{_label_value(v)}" for k, v in value.items())
    return str(value)


def grid_label(key: str, value: Any) -> str:
    """The part of a config name one grid value contributes: ``resnet18``, ``lr0.001``, ``width16``."""
    leaf = key.split(".")[-1]
    text = _label_value(value) if leaf in ("arch", "dataset") else f"{leaf}{_label_value(value)}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _parse_grid(grid: Any, source: str | None) -> dict[str, list]:
    if not isinstance(grid, dict):
        raise ConfigError(f"{_where(source)}[sweep] grid must be a table of setting = [values], got {grid!r}")
    for key, values in grid.items():
        split_key(key, source)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{_where(source)}grid {key!r} must be a non-empty list of values, got {values!r}")
        labels = [grid_label(key, v) for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{_where(source)}grid {key!r} lists a value twice: {values!r}")
    return dict(grid)


def _apply_sections(config: RunConfig, tables: dict[str, Any], what: str, source: str | None) -> RunConfig:
    for section in SECTIONS:
        if section not in tables:
            continue
        table = tables[section]
        if not isinstance(table, dict):
            raise ConfigError(f"{_where(source)}{what}: {section} must be a table, got {table!r}")
        if section == "train" and "seed" in table:
            raise ConfigError(f"{_where(source)}{what}: set seeds = [...] instead of train.seed")
        try:
            config = apply_overrides(config, section, table)
        except ConfigError as exc:
            raise ConfigError(f"{_where(source)}{what}: {exc}") from None
    return config


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_sweep(doc: dict[str, Any], *, source: str | None = None, default_name: str = "sweep",
                extra: dict[str, Any] | None = None) -> Sweep:
    """The plan of an experiment file (a parsed TOML document); see the module docstring.
    ``extra``: dotted settings applied on top of every run (``--set``)."""
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{_where(source)}unknown table(s) {unknown}; use [sweep], [data], [model], [train] "
                          "and [[runs]]")
    table = doc.get("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{_where(source)}sweep must be a table ([sweep])")
    unknown = sorted(set(table) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{_where(source)}unknown [sweep] key(s) {unknown}; known: {', '.join(sorted(SWEEP_KEYS))}")
    name = _check_name(table.get("name", default_name), "[sweep] name", source)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{_where(source)}[sweep] description must be a string")
    try:
        # The dataset's training defaults are filled in last, per run, once its dataset is known.
        plain_base = RunConfig.from_dict({k: doc[k] for k in SECTIONS if k in doc}, dataset_defaults=False)
    except ConfigError as exc:
        raise ConfigError(f"{_where(source)}{exc}") from None
    base_train_keys = set(doc.get("train", {}))  # from_dict checked it is a table
    base = with_dataset_defaults(plain_base, base_train_keys)
    seeds = _check_seeds(table["seeds"], "[sweep] seeds", source) if "seeds" in table else [base.train.seed]
    grid = _parse_grid(table.get("grid", {}), source)
    extra = dict(extra or {})
    for key in extra:
        split_key(key, "--set")

    run_tables = doc.get("runs", [])
    if not isinstance(run_tables, list) or not all(isinstance(r, dict) for r in run_tables):
        raise ConfigError(f"{_where(source)}runs must be a list of tables ([[runs]] with name = ...)")
    run_sets: list[tuple[str | None, RunConfig, list[int], dict]] = []
    for index, run in enumerate(run_tables, 1):
        what = f"[[runs]] #{index}"
        unknown = sorted(set(run) - RUN_KEYS)
        if unknown:
            raise ConfigError(f"{_where(source)}{what}: unknown key(s) {unknown}; known: {', '.join(sorted(RUN_KEYS))}")
        if "name" not in run:
            raise ConfigError(f"{_where(source)}{what} has no name")
        run_name = _check_name(run["name"], f"{what} name", source)
        config = _apply_sections(plain_base, run, f"run {run_name!r}", source)
        run_seeds = _check_seeds(run["seeds"], f"run {run_name!r} seeds", source) if "seeds" in run else seeds
        settings = _flatten({s: run[s] for s in SECTIONS if s in run})
        run_sets.append((run_name, config, run_seeds, settings))
    if not run_sets:
        run_sets.append((None, plain_base, seeds, {}))

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    configs: list[tuple[str, RunConfig, list[int], dict]] = []
    for run_name, run_config, run_seeds, settings in run_sets:
        for point in points:
            config, point_settings = run_config, dict(settings)
            for key, value in point.items():
                config = set_setting(config, key, value, source)
                point_settings[key] = value
            for key, value in extra.items():
                config = set_setting(config, key, value, "--set")
                point_settings[key] = value
            given = base_train_keys | {key.split(".", 1)[1] for key in point_settings if key.startswith("train.")}
            config = with_dataset_defaults(config, given)
            parts = ([run_name] if run_name else []) + [grid_label(k, v) for k, v in point.items()]
            configs.append(("_".join(parts) or name, config, run_seeds, point_settings))

    planned: list[tuple[int, int, PlannedRun]] = []
    for order, (config_name, config, run_seeds, settings) in enumerate(configs):
        for seed_index, seed in enumerate(run_seeds):
            seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
            try:
                seeded.validate()
            except ConfigError as exc:
                raise ConfigError(f"{_where(source)}config {config_name!r}: {exc}") from None
            planned.append((seed_index, order, PlannedRun(f"{config_name}_s{seed}", config_name, seed, seeded,
                                                          {**settings, "train.seed": seed})))
    planned.sort(key=lambda item: (item[0], item[1]))
    runs = [run for _, _, run in planned]
    duplicates = sorted(n for n, count in Counter(r.name for r in runs).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{_where(source)}run names repeat: {duplicates}; give [[runs]] distinct names")
    return Sweep(name, base, runs, description, source, grid)


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


def load_sweep(path: str | Path, extra: dict[str, Any] | None = None) -> Sweep:
    path = Path(path)
    return parse_sweep(load_toml(path), source=str(path), default_name=path.stem, extra=extra)


def check_runnable(runs: Iterable[PlannedRun]) -> None:
    """What the trainer would refuse, checked for every run before the first one trains:
    unknown datasets, sizes, architectures and architecture overrides."""
    from chest_tf.data.info import SIZES, get_info  # noqa: PLC0415
    from chest_tf.models.registry import ARCHS, arch_overrides  # noqa: PLC0415 (imports Keras)

    for run in runs:
        config = run.config
        try:
            get_info(config.data.dataset)
        except (KeyError, ValueError, ChestTFError) as exc:
            raise ConfigError(f"run {run.name}: {exc}") from None
        if config.data.size not in SIZES:
            raise ConfigError(f"run {run.name}: no {config.data.size} px version; choose one of "
                              f"{', '.join(map(str, SIZES))}")
        if config.model.arch not in ARCHS:
            raise ConfigError(f"run {run.name}: unknown arch '{config.model.arch}'; choose one of "
                              f"{', '.join(sorted(ARCHS))}")
        allowed = set(arch_overrides(config.model.arch))
        bad = sorted(set(config.model.overrides) - allowed)
        if bad:
            raise ConfigError(f"run {run.name}: {config.model.arch} does not take overrides {bad}; it accepts "
                              f"{', '.join(sorted(allowed))}")


# ----------------------------------------------------------------------------------------------
# Running: skip finished, resume interrupted, log HParams


def run_state(run_dir: Path) -> str:
    """"finished", "interrupted" (a config.json but no finished.json) or "new"."""
    if (run_dir / FINISHED_MARKER).exists():
        return "finished"
    if (run_dir / "config.json").exists():
        return "interrupted"
    return "new"


def hparam_values(config: RunConfig, keys: Iterable[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HParams of a run: ``keys`` of its flattened config (values TensorBoard can hold: bool,
    int, float, str; None -> "none"; anything else as JSON), plus ``extra``."""
    flat = _flatten(config.to_dict())
    values = {}
    for key in keys:
        if key in flat:
            values[key] = _hparam_value(flat[key])
    for key, value in (extra or {}).items():
        values[key] = _hparam_value(value)
    return values


def _hparam_value(value: Any) -> bool | int | float | str:
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def sweep_hparam_keys(runs: list[PlannedRun]) -> list[str]:
    """KEY_HPARAMS plus every setting that differs between the runs or that a run sets."""
    flats = [_flatten(run.config.to_dict()) for run in runs]
    keys = list(KEY_HPARAMS)
    everything = sorted(set().union(*flats)) if flats else []
    for key in everything:
        if key in keys:
            continue
        values = {json.dumps(flat.get(key), sort_keys=True) for flat in flats}
        if len(values) > 1 or key.startswith("model.overrides.") or any(key in run.settings for run in runs):
            keys.append(key)
    return keys


def write_hparams_config(log_dir: Path, hparam_names: list[str], metrics=FINAL_METRICS) -> None:
    """The HParams experiment (which hyperparameters and metrics the dashboard shows), written to
    ``log_dir`` (replacing an older definition there)."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorboard.plugins.hparams import api as hp  # noqa: PLC0415

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents*"):
        old.unlink()
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hp.hparams_config(
            hparams=[hp.HParam(name) for name in hparam_names],
            metrics=[hp.Metric(tag, group=group or None, display_name=display) for tag, group, display in metrics],
        )
    writer.close()


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers a finished run is judged by, from its eval/metrics.json and timing.json."""
    row = read_run(run_dir)
    names = {"val_auc": "val_auc", "test_auc": "test_auc", "test_acc": "test_acc",
             "test_sensitivity": "sensitivity", "test_specificity": "specificity",
             "seconds_per_epoch": "s_per_epoch", "total_seconds": "total_s"}
    values = {f"final/{tag}": float(row[key]) for tag, key in names.items() if _finite(row.get(key))}
    params = count_params(run_dir)
    if params is not None:
        values["final/params"] = float(params)
    return values


def log_hparams(run_dir: Path, hparams: dict[str, Any], trial_id: str, metrics: dict[str, float]) -> None:
    """One HParams session in ``run_dir/tensorboard`` (next to Keras' train/ and validation/
    curves): the run's hyperparameters and its final metrics; then ``hparams.json``."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorboard.plugins.hparams import api as hp  # noqa: PLC0415

    log_dir = run_dir / "tensorboard"
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hp.hparams(hparams, trial_id=trial_id)
        for tag, value in metrics.items():
            tf.summary.scalar(tag, value, step=0)
    writer.close()
    tmp = run_dir / (HPARAMS_MARKER + ".tmp")
    tmp.write_text(json.dumps({"trial_id": trial_id, "hparams": hparams, "metrics": metrics}, indent=2))
    os.replace(tmp, run_dir / HPARAMS_MARKER)


def quiet_retracing_warnings() -> None:
    """Several trainings in one process make tf.function warn about retracing on every new model;
    that is expected here, so TensorFlow's Python logger shows errors only."""
    import tensorflow as tf  # noqa: PLC0415

    tf.get_logger().setLevel("ERROR")


def run_or_skip(config: RunConfig, run_dir: Path, *, name: str, hparams: dict[str, Any], verbose: int | str = 2,
                evaluate: bool = True, metrics=None) -> str:
    """Train ``config`` into ``run_dir`` unless it has finished there already; an interrupted run
    resumes (chest_tf.train). Logs the HParams session once, with ``metrics(run_dir)`` (default
    ``final_metrics``). Returns "skipped" or "trained"."""
    state = run_state(run_dir)
    if state == "finished":
        diffs = saved_config_differences(run_dir, config)
        if diffs:
            raise ConfigError(f"{run_dir} holds a finished run with other settings ({'; '.join(diffs)}); delete it "
                              "or write the sweep to another --out")
        print(f"skipping {name}: finished ({run_dir})", flush=True)
        outcome = "skipped"
    else:
        import keras  # noqa: PLC0415

        from chest_tf.train import train  # noqa: PLC0415

        keras.backend.clear_session()  # free the previous run's graphs and weights
        print(f"{'resuming' if state == 'interrupted' else 'running'} {name} -> {run_dir}", flush=True)
        train(config, run_dir, verbose=verbose, evaluate=evaluate)
        outcome = "trained"
    if not (run_dir / HPARAMS_MARKER).exists():
        log_hparams(run_dir, hparams, name, (metrics or final_metrics)(run_dir))
    return outcome


# ----------------------------------------------------------------------------------------------
# Reading results back from run dirs


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _ci(values: Any, index: int) -> float | None:
    if isinstance(values, (list, tuple)) and len(values) == 2 and _finite(values[index]):
        return float(values[index])
    return None


def arch_facts(arch: str, overrides: dict[str, Any]) -> dict[str, str]:
    """family, depth (18, 121, tiny, ...) and a short variant text from the model overrides."""
    family = next((f for f in ("resnet", "densenet", "vit") if arch.startswith(f)), "")
    depth = arch[len(family):].lstrip("_") if family else arch
    words = {"width": "width", "growth_rate": "growth", "compression": "compression", "head_dropout": "dropout",
             "drop_path_rate": "drop-path", "patch_size": "patch", "depth": "depth", "dim": "dim",
             "stem": "stem", "heads": "heads"}
    variant = ", ".join(f"{words.get(k, k)} {_label_value(v)}" for k, v in sorted(overrides.items()))
    return {"family": family, "depth": depth, "variant": variant or "standard"}


def _history_epochs(path: Path) -> int | None:
    try:
        with open(path, newline="") as stream:
            return sum(1 for _ in csv.DictReader(stream))
    except OSError:
        return None


def read_run(run_dir: Path) -> dict[str, Any]:
    """One leaderboard row from a run dir (empty values where the run has not produced them)."""
    saved = _read_json(run_dir / "config.json")
    config = saved.get("config", {})
    model = config.get("model", {})
    result = _read_json(run_dir / "eval" / "metrics.json")
    timing = _read_json(run_dir / "timing.json")
    best = _read_json(run_dir / "best.json")
    val, test = result.get("val", {}), result.get("test", {})
    head = result.get("headline", {})
    val_means, test_means = val.get("mean_over_defined", {}), test.get("mean_over_defined", {})
    row = {
        "status": run_state(run_dir),
        "dataset": config.get("data", {}).get("dataset"),
        "size": config.get("data", {}).get("size"),
        "arch": model.get("arch"),
        **arch_facts(model.get("arch") or "", model.get("overrides") or {}),
        "seed": config.get("train", {}).get("seed"),
        "epochs": _history_epochs(run_dir / "history.csv"),
        "best_epoch": best.get("epoch"),
        "s_per_epoch": timing.get("seconds_per_epoch"),
        "total_s": timing.get("total_seconds"),
        "images_per_s": timing.get("train_images_per_second"),
        "val_auc": val.get("auc"),
        "val_acc": val.get("acc"),
        "test_auc": head.get("auc", test.get("auc")),
        "test_auc_lo": _ci(head.get("auc_ci"), 0),
        "test_auc_hi": _ci(head.get("auc_ci"), 1),
        "test_acc": head.get("acc", test.get("acc")),
        "test_acc_lo": _ci(head.get("acc_ci"), 0),
        "test_acc_hi": _ci(head.get("acc_ci"), 1),
        "sensitivity": test_means.get("sensitivity"),
        "specificity": test_means.get("specificity"),
        "val_sensitivity": val_means.get("sensitivity"),
        "val_specificity": val_means.get("specificity"),
        "threshold_method": (result.get("thresholds") or {}).get("method"),
        "val_auc_keras": best.get("val_auc"),
        "device": (saved.get("runtime") or {}).get("device"),
    }
    return row


_PARAMS_CACHE: dict[tuple, int | None] = {}


def count_params(run_dir: Path) -> int | None:
    """Parameters of the run's best.keras (loaded once per architecture setting)."""
    saved = _read_json(run_dir / "config.json").get("config", {})
    key = json.dumps([saved.get("data", {}).get("dataset"), saved.get("data", {}).get("size"), saved.get("model")],
                     sort_keys=True)
    if key in _PARAMS_CACHE:
        return _PARAMS_CACHE[key]
    path = run_dir / "best.keras"
    if not path.exists():
        return None
    from chest_tf.evaluate import load_keras_model  # noqa: PLC0415

    try:
        model = load_keras_model(path)
    except ChestTFError as exc:  # a broken file should not cost the leaderboard
        print(f"warning: no parameter count for {run_dir.name} ({exc})", file=sys.stderr)
        return None
    _PARAMS_CACHE[key] = int(model.count_params())
    return _PARAMS_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Leaderboard: CSV, markdown, plot


RUN_COLUMNS = (
    "run", "config", "seed", "status", "dataset", "size", "arch", "family", "depth", "variant", "params", "epochs",
    "best_epoch", "s_per_epoch", "total_s", "images_per_s", "val_auc", "val_acc", "test_auc", "test_auc_lo",
    "test_auc_hi", "test_acc", "test_acc_lo", "test_acc_hi", "sensitivity", "specificity", "val_sensitivity",
    "val_specificity", "threshold_method", "val_auc_keras", "device", "run_dir",
)
AGGREGATED = ("val_auc", "test_auc", "test_acc", "sensitivity", "specificity", "s_per_epoch", "total_s")
CONFIG_COLUMNS = (
    "rank", "config", "dataset", "size", "arch", "family", "depth", "variant", "params", "n_seeds", "seeds",
    *(f"{m}_{stat}" for m in AGGREGATED for stat in ("mean", "std", "min", "max")),
)


def _stats(values: list[float]) -> dict[str, float | None]:
    values = [float(v) for v in values if _finite(v)]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def collect_rows(runs: list[PlannedRun], runs_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        run_dir = runs_dir / run.name
        row = {"run": run.name, "config": run.config_name, "run_dir": str(run_dir), **read_run(run_dir)}
        if row["arch"] is None:  # not started: describe it from the plan
            facts = arch_facts(run.config.model.arch, run.config.model.overrides)
            row.update(arch=run.config.model.arch, seed=run.seed, dataset=run.config.data.dataset,
                       size=run.config.data.size, **facts)
        row["params"] = count_params(run_dir) if row["status"] == "finished" else None
        rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config (over its finished seeds): mean, std (n-1), min and max; ranked by mean val AUC."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "finished" and _finite(row.get("val_auc")):
            groups.setdefault(row["config"], []).append(row)
    out = []
    for config, members in groups.items():
        first = members[0]
        agg = {k: first.get(k) for k in ("config", "dataset", "size", "arch", "family", "depth", "variant", "params")}
        agg["n_seeds"] = len(members)
        agg["seeds"] = " ".join(str(m["seed"]) for m in members)
        for metric in AGGREGATED:
            for stat, value in _stats([m.get(metric) for m in members]).items():
                agg[f"{metric}_{stat}"] = value
        out.append(agg)
    out.sort(key=lambda a: -(a["val_auc_mean"] if _finite(a["val_auc_mean"]) else -math.inf))
    for rank, agg in enumerate(out, 1):
        agg["rank"] = rank
    return out


def _write_csv(path: Path, columns: Iterable[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "–"


def _duration(seconds: Any) -> str:
    if not _finite(seconds):
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _params(value: Any) -> str:
    if not _finite(value):
        return "–"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value / 1e3:.1f} k"


def _spread(agg: dict, metric: str, digits: int = 3, fmt=None) -> str:
    fmt = fmt or (lambda v: _num(v, digits))
    mean = agg.get(f"{metric}_mean")
    if not _finite(mean):
        return "–"
    if agg["n_seeds"] < 2:
        return fmt(mean)
    return (f"{fmt(mean)} ± {fmt(agg[f'{metric}_std'])} "
            f"[{fmt(agg[f'{metric}_min'])}–{fmt(agg[f'{metric}_max'])}]")


def _with_ci(value: Any, lo: Any, hi: Any) -> str:
    if not _finite(value):
        return "–"
    return f"{_num(value)} ({_num(lo)}–{_num(hi)})" if _finite(lo) and _finite(hi) else _num(value)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def published_for(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """benchmarks.published_rows for every (dataset, size) the runs cover."""
    from chest_tf.benchmarks import published_rows  # noqa: PLC0415

    pairs = sorted({(r["dataset"], int(r["size"])) for r in rows if r.get("dataset") and r.get("size")})
    return {pair: published_rows(*pair) for pair in pairs}


def render_markdown(sweep: Sweep, rows: list[dict], configs: list[dict], published: dict, plot_name: str | None,
                    failures: dict[str, str] | None = None) -> str:
    finished = [r for r in rows if r["status"] == "finished"]
    lines = [f"# Sweep `{sweep.name}`: leaderboard", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    pairs = ", ".join(f"{d} {s} px" for d, s in published) or "–"
    devices = sorted({r["device"] for r in finished if r.get("device")})
    lines += [f"{len(finished)} of {len(rows)} planned runs finished ({pairs}; device: {', '.join(devices) or '–'}). "
              f"Source: `{sweep.source or '-'}`; rebuilt from the run dirs at {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    missing = [f"`{r['run']}` ({r['status']})" for r in rows if r["status"] != "finished"]
    if missing:
        lines += ["Not finished: " + ", ".join(missing) + ".", ""]
    if failures:
        lines += ["Failed in the last invocation: " + "; ".join(f"`{k}`: {v}" for k, v in failures.items()), ""]
    lines += [
        "AUC and ACC by the MedMNIST formulas (chest_tf.metrics) on the checkpoint with the best validation "
        "AUC; test 95% CIs: percentile bootstrap over test images; sensitivity and specificity: test means over "
        "labels at thresholds chosen on validation. Ranked by mean validation AUC (test is reported, never "
        "used to choose). Per config: mean ± std [min–max] over seeds (times: mean).", "",
        "## By config", "",
    ]
    body = [[str(a["rank"]), f"`{a['config']}`", a["arch"] or "", a["family"] or "", f"{a['depth']} ({a['variant']})",
             _params(a["params"]), str(a["n_seeds"]), _duration(a["s_per_epoch_mean"]),
             _duration(a["total_s_mean"]), _spread(a, "val_auc"), _spread(a, "test_auc"),
             _spread(a, "test_acc"), _spread(a, "sensitivity"), _spread(a, "specificity")]
            for a in configs]
    lines += _table(["rank", "config", "arch", "family", "depth/variant", "params", "seeds", "s/epoch",
                     "total time", "val AUC", "test AUC", "test ACC", "sensitivity", "specificity"], body)
    lines += ["", "## All runs", ""]
    body = [[f"`{r['run']}`", r["arch"] or "", r["family"] or "", f"{r['depth']} ({r['variant']})",
             _params(r["params"]), str(r["epochs"] if r["epochs"] is not None else "–"),
             str(r["best_epoch"] if r["best_epoch"] is not None else "–"), _duration(r["s_per_epoch"]),
             _duration(r["total_s"]), _num(r["val_auc"]), _with_ci(r["test_auc"], r["test_auc_lo"], r["test_auc_hi"]),
             _with_ci(r["test_acc"], r["test_acc_lo"], r["test_acc_hi"]), _num(r["sensitivity"]),
             _num(r["specificity"])]
            for r in finished]
    lines += _table(["run", "arch", "family", "depth/variant", "params", "epochs", "best epoch", "s/epoch",
                     "total time", "val AUC", "test AUC (95% CI)", "test ACC (95% CI)", "sensitivity",
                     "specificity"], body)
    for (dataset, size), published_list in published.items():
        lines += ["", f"## Published results: {dataset} {size} px", ""]
        if not published_list:
            lines += [f"No published results for {dataset} at {size} px (chest_tf.benchmarks)."]
            continue
        body = [[p["method"], _num(p["auc"]), _num(p["acc"]), p["group"], p["note"]] for p in published_list]
        lines += _table(["method", "test AUC", "test ACC", "source", "note"], body)
        lines += ["", "Published test numbers (../shared/reference/benchmarks.md); training recipes differ "
                  "(see the notes), so compare with care."]
    if plot_name:
        lines += ["", "## Test AUC against training time", "", f"![test AUC against training time]({plot_name})"]
    return "\n".join(lines) + "\n"


FAMILY_COLOURS = {"resnet": "C0", "densenet": "C1", "vit": "C2"}


def plot_auc_vs_time(rows: list[dict], configs: list[dict], published: dict, out_path: Path, title: str) -> Path | None:
    """Test AUC against total training time: each run faint, each config's mean with std bars,
    published results as horizontal lines (they come without training times)."""
    finished = [r for r in rows
                if r["status"] == "finished" and _finite(r.get("test_auc")) and _finite(r.get("total_s"))]
    if not finished:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    from chest_tf.plots import DPI  # noqa: PLC0415

    fig = Figure(figsize=(8.5, 5.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in finished:
        ax.plot(row["total_s"], row["test_auc"], "o", ms=4, alpha=0.35, color=FAMILY_COLOURS.get(row["family"], "C7"))
    seen_families = set()
    for agg in configs:
        if not (_finite(agg["test_auc_mean"]) and _finite(agg["total_s_mean"])):
            continue
        colour = FAMILY_COLOURS.get(agg["family"], "C7")
        label = agg["family"] if agg["family"] not in seen_families else None
        seen_families.add(agg["family"])
        ax.errorbar(agg["total_s_mean"], agg["test_auc_mean"], xerr=agg["total_s_std"] or None,
                    yerr=agg["test_auc_std"] or None, fmt="s", ms=6, color=colour, capsize=3, label=label)
        ax.annotate(agg["config"], (agg["total_s_mean"], agg["test_auc_mean"]), xytext=(5, 4),
                    textcoords="offset points", fontsize=8)
    times = [r["total_s"] for r in finished]
    if min(times) > 0 and max(times) / min(times) > 20:
        ax.set_xscale("log")
    several = len(published) > 1
    lines = sorted(((pub["auc"], pub, dataset, size) for (dataset, size), published_list in published.items()
                    for pub in published_list if _finite(pub.get("auc"))), key=lambda item: item[0])
    aucs = [r["test_auc"] for r in finished] + [auc for auc, *_ in lines]
    low, high = min(aucs), max(aucs)
    pad = max(0.01, 0.08 * (high - low))
    last_label = {1.0: -math.inf, 0.0: -math.inf}  # the y of the last label on the right / left edge
    for auc, pub, dataset, size in lines:
        ax.axhline(auc, color="0.55", lw=0.9, ls=":" if pub.get("ceiling") else "--", zorder=0)
        text = f"{pub['method']}" + (f" [{dataset} {size}]" if several else "")
        # Labels of lines closer than ~2% of the axis alternate between the right and left edge.
        side = 1.0 if auc - last_label[1.0] > 0.02 * (high - low + 2 * pad) else 0.0
        last_label[side] = auc
        ax.annotate(text, (side, auc), xycoords=("axes fraction", "data"), xytext=(-3 if side else 3, 2),
                    textcoords="offset points", ha="right" if side else "left", fontsize=6.5, color="0.4")
    ax.set_ylim(low - pad, min(1.0, high + pad) if high < 1 else 1.002)
    ax.set_xlabel("total training time (s)")
    ax.set_ylabel("test AUC (MedMNIST formula)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower right", fontsize=8, title="square: config mean ± std; dot: a seed", title_fontsize=7)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    fig.clear()
    return out_path


def write_leaderboard(sweep: Sweep, sweep_dir: Path, failures: dict[str, str] | None = None) -> dict[str, Any]:
    """Rebuild leaderboard.csv, leaderboard_by_config.csv, leaderboard.md and auc_vs_time.png from
    the run dirs of every planned run."""
    rows = collect_rows(sweep.runs, sweep_dir / RUNS_SUBDIR)
    finished = [r for r in rows if r["status"] == "finished"]
    configs = aggregate(rows)
    published = published_for(rows)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(sweep_dir / "leaderboard.csv", RUN_COLUMNS, finished)
    _write_csv(sweep_dir / "leaderboard_by_config.csv", CONFIG_COLUMNS, configs)
    plot = plot_auc_vs_time(rows, configs, published, sweep_dir / "auc_vs_time.png",
                            f"{sweep.name}: test AUC against training time")
    if plot is None and (sweep_dir / "auc_vs_time.png").exists():
        (sweep_dir / "auc_vs_time.png").unlink()
    markdown = render_markdown(sweep, rows, configs, published, plot.name if plot else None, failures)
    (sweep_dir / "leaderboard.md").write_text(markdown)
    return {"rows": rows, "configs": configs, "published": published, "markdown": markdown}


def leaderboard_summary(configs: list[dict]) -> str:
    """A few lines for the terminal."""
    if not configs:
        return "no finished runs yet"
    lines = [f"{'rank':>4}  {'config':<28} {'seeds':>5}  {'val AUC':>15}  {'test AUC':>15}  {'test ACC':>15}  "
             f"{'s/epoch':>8}"]
    for a in configs:
        def mean_std(metric):
            mean, std = a[f"{metric}_mean"], a[f"{metric}_std"]
            return f"{_num(mean)} ± {_num(std)}" if a["n_seeds"] > 1 else _num(mean)
        lines.append(f"{a['rank']:>4}  {a['config'][:28]:<28} {a['n_seeds']:>5}  {mean_std('val_auc'):>15}  "
                     f"{mean_std('test_auc'):>15}  {mean_std('test_acc'):>15}  {_num(a['s_per_epoch_mean'], 1):>8}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def select_runs(runs: list[PlannedRun], patterns: list[str] | None) -> list[PlannedRun]:
    """Runs whose name or config name matches one of ``patterns`` (shell-style); all without."""
    if not patterns:
        return runs
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) or fnmatch.fnmatchcase(r.config_name, p)
                                                 for r in runs)]
    if unmatched:
        names = sorted({r.config_name for r in runs})
        raise ConfigError(f"--only {' '.join(unmatched)} matches no run; configs: {', '.join(names)} "
                          "(runs are <config>_s<seed>)")
    return [r for r in runs if any(fnmatch.fnmatchcase(r.name, p) or fnmatch.fnmatchcase(r.config_name, p)
                                   for p in patterns)]


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``--set train.lr=1e-3`` pairs -> {dotted key: value}; values parsed as TOML/JSON scalars
    where possible (``3``, ``1e-3``, ``true``, ``"x"``, ``{...}``), else taken as strings."""
    return parse_key_values(pairs, "--set", _toml_value_or_text, " (e.g. train.lr=1e-3)")


def _toml_value_or_text(text: str) -> Any:
    import tomllib  # noqa: PLC0415

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(run: PlannedRun) -> str:
    shown = {k: v for k, v in run.settings.items() if k != "train.seed"}
    return ", ".join(f"{k}={_label_value(v)}" for k, v in shown.items()) or "(base config)"


def print_plan(sweep: Sweep, runs: list[PlannedRun], sweep_dir: Path) -> None:
    base = sweep.base
    print(f"sweep {sweep.name} ({sweep.source}): {len(runs)} of {len(sweep.runs)} runs selected -> {sweep_dir}")
    print(f"base: {base.data.dataset} {base.data.size} px | {base.model.arch} {base.model.overrides or ''} | "
          f"epochs {base.train.epochs} batch {base.train.batch_size} lr {base.train.lr:g} {base.train.optimizer} "
          f"{base.train.schedule} | loss {base.train.loss} | augment {base.train.augment}")
    width = max([len(r.name) for r in runs] + [3])
    print(f"{'#':>3}  {'run':<{width}}  {'state':<11}  {'epochs':>6}  settings")
    for index, run in enumerate(runs, 1):
        state = run_state(sweep_dir / RUNS_SUBDIR / run.name)
        print(f"{index:>3}  {run.name:<{width}}  {state:<11}  {run.config.train.epochs:>6}  "
              f"{_describe(run)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chest_tf.sweep",
                                description="Run an experiment file (pipelines/*.toml) and write its leaderboard.")
    p.add_argument("file", help="experiment TOML ([sweep], [data], [model], [train], [[runs]]; see the module docs)")
    p.add_argument("--out", help="sweep dir (default runs/sweeps/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state; train nothing")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs or configs (shell patterns)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="override a dotted setting in every run, e.g. data.dataset=pneumoniamnist (repeatable)")
    p.add_argument("--leaderboard-only", action="store_true", help="rebuild the leaderboard from the run dirs")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                   help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch (default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep = load_sweep(args.file, extra=parse_settings(args.settings))
    sweep_dir = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    selected = select_runs(sweep.runs, args.only)
    check_runnable(sweep.runs)
    if args.dry_run:
        print_plan(sweep, selected, sweep_dir)
        print(f"dry run: nothing trained; the leaderboard would go to {sweep_dir / 'leaderboard.md'}")
        return 0

    sweep_dir.mkdir(parents=True, exist_ok=True)
    plan = {"name": sweep.name, "source": sweep.source, "description": sweep.description, "grid": sweep.grid,
            "command": sys.argv, "runs": [{"name": r.name, "config": r.config_name, "seed": r.seed,
                                           "settings": r.settings, "run_dir": str(sweep_dir / RUNS_SUBDIR / r.name),
                                           "resolved": r.config.to_dict()} for r in sweep.runs]}
    (sweep_dir / "sweep.json").write_text(json.dumps(plan, indent=2, default=str))
    keys = sweep_hparam_keys(sweep.runs)
    write_hparams_config(sweep_dir / "hparams", ["config", *keys])

    failures: dict[str, str] = {}
    if not args.leaderboard_only:
        print_plan(sweep, selected, sweep_dir)
        import tensorflow as tf  # noqa: PLC0415

        quiet_retracing_warnings()

        started = time.perf_counter()
        for index, run in enumerate(selected, 1):
            print(f"[{index}/{len(selected)}] {run.name}", flush=True)
            run_dir = sweep_dir / RUNS_SUBDIR / run.name
            hparams = hparam_values(run.config, keys, {"config": run.config_name})
            try:
                run_or_skip(run.config, run_dir, name=run.name, hparams=hparams, verbose=args.verbose)
            except (ChestTFError, tf.errors.ResourceExhaustedError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"error in {run.name}: {message}", file=sys.stderr, flush=True)
                failures[run.name] = message
        print(f"sweep {sweep.name}: {len(selected)} runs in {_duration(time.perf_counter() - started)}")

    board = write_leaderboard(sweep, sweep_dir, failures)
    print(leaderboard_summary(board["configs"]))
    print(f"leaderboard: {sweep_dir / 'leaderboard.md'} (and .csv, leaderboard_by_config.csv, auc_vs_time.png); "
          f"TensorBoard HParams: tensorboard --logdir {sweep_dir}")
    if failures:
        raise ChestTFError(f"{len(failures)} of {len(selected)} runs failed: {', '.join(failures)} (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
