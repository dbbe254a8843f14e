"""Experiment files (``pipelines/*.toml``) -> an ordered list of planned runs.

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
  one-line errors before anything trains (``parse_sweep``, then ``check_runs``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chest_tf.checks import check_runnable
from chest_tf.config import (
    SECTIONS,
    RunConfig,
    apply_overrides,
    load_toml,
    set_setting,
    source_prefix,
    split_key,
    with_dataset_defaults,
)
from chest_tf.errors import ConfigError

TOP_LEVEL_KEYS = {"sweep", "runs", *SECTIONS}
SWEEP_KEYS = {"name", "description", "seeds", "grid"}
RUN_KEYS = {"name", "seeds", *SECTIONS}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
RUNS_SUBDIR = "runs"  # <sweep dir>/runs/<run name>/ is each run's dir


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


def default_sweep_dir(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


def run_dir_of(sweep_dir: Path, run: PlannedRun) -> Path:
    return sweep_dir / RUNS_SUBDIR / run.name


def _check_name(name: Any, what: str, source: str | None) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{source_prefix(source)}{what} {name!r} must be a non-empty string of letters, digits, "
                          "_ . + - (it names run dirs)")
    return name


def _check_seeds(seeds: Any, what: str, source: str | None) -> list[int]:
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{source_prefix(source)}{what} must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source_prefix(source)}{what} lists a seed twice: {seeds}")
    return list(seeds)


def _check_sweep_key(key: str, source: str | None) -> None:
    """A dotted setting a grid or ``--set`` may vary: any ``split_key`` accepts but the seed, which
    the sweep sets itself."""
    section, name, _ = split_key(key, source)
    if section == "train" and name == "seed":
        raise ConfigError(f"{source_prefix(source)}set seeds in [sweep] seeds = [...] (or a run's seeds), not {key}")


def label_value(value: Any) -> str:
    """A setting's value as it reads in names and tables: ``0.001``, ``true``, ``width16-stemsmall``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "-".join(f"{k}{label_value(v)}" for k, v in value.items())
    return str(value)


def grid_label(key: str, value: Any) -> str:
    """The part of a config name one grid value contributes: ``resnet18``, ``lr0.001``, ``width16``."""
    leaf = key.split(".")[-1]
    text = label_value(value) if leaf in ("arch", "dataset") else f"{leaf}{label_value(value)}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _parse_grid(grid: Any, source: str | None) -> dict[str, list]:
    where = source_prefix(source)
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}[sweep] grid must be a table of setting = [values], got {grid!r}")
    for key, values in grid.items():
        _check_sweep_key(key, source)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}grid {key!r} must be a non-empty list of values, got {values!r}")
        labels = [grid_label(key, v) for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}grid {key!r} lists a value twice: {values!r}")
    return dict(grid)


def _apply_sections(config: RunConfig, tables: dict[str, Any], what: str, source: str | None) -> RunConfig:
    where = source_prefix(source)
    for section in SECTIONS:
        if section not in tables:
            continue
        table = tables[section]
        if not isinstance(table, dict):
            raise ConfigError(f"{where}{what}: {section} must be a table, got {table!r}")
        if section == "train" and "seed" in table:
            raise ConfigError(f"{where}{what}: set seeds = [...] instead of train.seed")
        try:
            config = apply_overrides(config, section, table)
        except ConfigError as exc:
            raise ConfigError(f"{where}{what}: {exc}") from None
    return config


def flat_settings(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys: ``{"model": {"overrides": {"width": 8}}}`` ->
    ``{"model.overrides.width": 8}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_sweep(doc: dict[str, Any], *, source: str | None = None, default_name: str = "sweep",
                extra: dict[str, Any] | None = None) -> Sweep:
    """The plan of an experiment file (a parsed TOML document); see the module docstring.
    ``extra``: dotted settings applied on top of every run (``--set``)."""
    where = source_prefix(source)
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}unknown table(s) {unknown}; use [sweep], [data], [model], [train] and [[runs]]")
    table = doc.get("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}sweep must be a table ([sweep])")
    unknown = sorted(set(table) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{where}unknown [sweep] key(s) {unknown}; known: {', '.join(sorted(SWEEP_KEYS))}")
    name = _check_name(table.get("name", default_name), "[sweep] name", source)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}[sweep] description must be a string")
    try:
        # The dataset's training defaults are filled in last, per run, once its dataset is known.
        plain_base = RunConfig.from_dict({k: doc[k] for k in SECTIONS if k in doc}, dataset_defaults=False)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    base_train_keys = set(doc.get("train", {}))  # from_dict checked it is a table
    base = with_dataset_defaults(plain_base, base_train_keys)
    seeds = _check_seeds(table["seeds"], "[sweep] seeds", source) if "seeds" in table else [base.train.seed]
    grid = _parse_grid(table.get("grid", {}), source)
    extra = dict(extra or {})
    for key in extra:
        _check_sweep_key(key, "--set")

    run_tables = doc.get("runs", [])
    if not isinstance(run_tables, list) or not all(isinstance(r, dict) for r in run_tables):
        raise ConfigError(f"{where}runs must be a list of tables ([[runs]] with name = ...)")
    run_sets: list[tuple[str | None, RunConfig, list[int], dict]] = []
    for index, run in enumerate(run_tables, 1):
        what = f"[[runs]] #{index}"
        unknown = sorted(set(run) - RUN_KEYS)
        if unknown:
            raise ConfigError(f"{where}{what}: unknown key(s) {unknown}; known: {', '.join(sorted(RUN_KEYS))}")
        if "name" not in run:
            raise ConfigError(f"{where}{what} has no name")
        run_name = _check_name(run["name"], f"{what} name", source)
        config = _apply_sections(plain_base, run, f"run {run_name!r}", source)
        run_seeds = _check_seeds(run["seeds"], f"run {run_name!r} seeds", source) if "seeds" in run else seeds
        settings = flat_settings({s: run[s] for s in SECTIONS if s in run})
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
                raise ConfigError(f"{where}config {config_name!r}: {exc}") from None
            planned.append((seed_index, order, PlannedRun(f"{config_name}_s{seed}", config_name, seed, seeded,
                                                          {**settings, "train.seed": seed})))
    planned.sort(key=lambda item: (item[0], item[1]))
    runs = [run for _, _, run in planned]
    duplicates = sorted(n for n, count in Counter(r.name for r in runs).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{where}run names repeat: {duplicates}; give [[runs]] distinct names")
    return Sweep(name, base, runs, description, source, grid)


def load_sweep(path: str | Path, extra: dict[str, Any] | None = None) -> Sweep:
    path = Path(path)
    return parse_sweep(load_toml(path), source=str(path), default_name=path.stem, extra=extra)


def check_runs(runs: Iterable[PlannedRun]) -> None:
    """What the trainer would refuse (``chest_tf.checks.check_runnable``), checked for every run
    before the first one trains. Each run's config is replaced by the checked one, with its
    architecture alias resolved, so it compares equal to the config.json training writes."""
    for run in runs:
        try:
            run.config = check_runnable(run.config)
        except ConfigError as exc:
            raise ConfigError(f"run {run.name}: {exc}") from None


def select_runs(runs: list[PlannedRun], patterns: list[str] | None) -> list[PlannedRun]:
    """Runs whose name or config name matches one of ``patterns`` (shell-style); all without."""
    if not patterns:
        return runs

    def matches(run: PlannedRun, pattern: str) -> bool:
        return fnmatch.fnmatchcase(run.name, pattern) or fnmatch.fnmatchcase(run.config_name, pattern)

    unmatched = [p for p in patterns if not any(matches(r, p) for r in runs)]
    if unmatched:
        names = sorted({r.config_name for r in runs})
        raise ConfigError(f"--only {' '.join(unmatched)} matches no run; configs: {', '.join(names)} "
                          "(runs are <config>_s<seed>)")
    return [r for r in runs if any(matches(r, p) for p in patterns)]


def describe_run(run: PlannedRun) -> str:
    """The settings a run adds to the base, e.g. ``train.lr=0.001, model.arch=vit_tiny``."""
    shown = {k: v for k, v in run.settings.items() if k != "train.seed"}
    return ", ".join(f"{k}={label_value(v)}" for k, v in shown.items()) or "(base config)"
