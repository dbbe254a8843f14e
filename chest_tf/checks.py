"""``check_runnable``: everything about a ``RunConfig`` that can be refused before any data is read
or any model is built. Train, evaluate, sweep and tune all ask here, so a mistake reads the same
everywhere and a sweep refuses a bad run before its first run trains."""
from __future__ import annotations

import dataclasses

from chest_tf.augment import PRESETS
from chest_tf.config import RunConfig
from chest_tf.data.info import SIZES, get_info
from chest_tf.errors import ConfigError
from chest_tf.models.registry import arch_overrides, resolve_arch


def check_dataset(dataset: str, size: int | None = None) -> str:
    """The catalogue key for ``dataset`` (lower-cased); ``size``, when given, must be offered."""
    try:
        info = get_info(dataset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if size is not None and size not in SIZES:
        raise ConfigError(f"{info.name} has no {size} px version; choose one of {', '.join(map(str, SIZES))}")
    return dataset.lower()


def check_runnable(config: RunConfig) -> RunConfig:
    """``config`` validated, with its architecture alias resolved (``vit`` -> ``vit_small``), or a
    one-line ``ConfigError``: unknown dataset, size, architecture or architecture override, and
    everything ``RunConfig.validate`` refuses."""
    config.validate()
    dataset = check_dataset(config.data.dataset, config.data.size)
    try:
        arch = resolve_arch(config.model.arch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    allowed = set(arch_overrides(arch))
    bad = sorted(set(config.model.overrides) - allowed)
    if bad:
        raise ConfigError(f"{arch} does not take overrides {bad}; it accepts {', '.join(sorted(allowed))}")
    if config.train.augment not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{config.train.augment}'; choose one of "
                          f"{', '.join(sorted(PRESETS))}")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=dataset),
                               model=dataclasses.replace(config.model, arch=arch))
