"""What ``auto`` resolves to on this machine: precision, XLA, distribution strategy, device."""
from __future__ import annotations

import os
from dataclasses import dataclass

import tensorflow as tf


@dataclass
class Runtime:
    precision: str
    jit_compile: bool
    strategy: str
    device: str
    replicas: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _gpu_compute_capability(gpu) -> tuple[int, int]:
    details = tf.config.experimental.get_device_details(gpu)
    return tuple(details.get("compute_capability", (0, 0)))


def resolve_runtime(precision: str, jit: str, strategy: str) -> Runtime:
    """auto: mixed precision and XLA on a GPU (bfloat16 from Ampere on, float16 with loss scaling
    before), float32 without XLA on a CPU; MirroredStrategy with more than one GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = _gpu_compute_capability(gpus[0])
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        device = f"{len(gpus)} x {name} (compute capability {capability[0]}.{capability[1]})"
    else:
        capability = (0, 0)
        device = f"CPU ({os.cpu_count()} cores)"
    if precision == "auto":
        precision = ("mixed_bfloat16" if capability >= (8, 0) else "mixed_float16") if gpus else "float32"
    jit_compile = bool(gpus) if jit == "auto" else jit == "on"
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "none"
    replicas = max(len(gpus), 1) if strategy == "mirrored" else 1
    return Runtime(precision, jit_compile, strategy, device, replicas)


def distribution_strategy(runtime: Runtime) -> tf.distribute.Strategy:
    if runtime.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()  # the default (no-op) strategy

