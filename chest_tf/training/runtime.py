"""What ``auto`` resolves to on this machine: precision, XLA, distribution strategy, device."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import tensorflow as tf

from chest_tf.models.registry import arch_family

# Families trained with XLA on a CPU in float32 under jit="auto": none at present. XLA's CPU
# convolutions are slower than oneDNN's (densenet121 37.6 -> 14.7 img/s, resnet18 86.6 -> 58.7 with
# XLA, 2 cores, batch 128, 28 px), and the ViTs, which XLA used to speed up by fusing LayerNorm and
# GELU, now keep that fusion without it: those two run as XLA-compiled kernels inside the graph
# (training/xla_elementwise.py) and oneDNN keeps the matrix products, which it runs ~1.25x faster
# than XLA:CPU (pipelines/bench_matmul.py). Against the torch peer (pipelines/bench_peers.py, 2 Zen 4
# cores, 2026-12-06) vit_tiny went 1.44x / 1.22x (28 / 64 px, XLA) -> 1.51x / 1.47x (without XLA,
# with the kernels), vit_small 1.32x / 1.54x -> 1.50x / 1.64x. The step alone is faster without XLA
# (`pipelines/bench_train.py --arch vit_tiny --size 64 --jit both --elementwise both --rounds 3`: 57.7
# against 53.2 img/s on one cached batch), but end to end it waits more for input (53.7 against 56.5
# in that run); README, "What passed it".
CPU_XLA_FAMILIES = frozenset()
# CPU instructions that compute bfloat16 natively (Linux /proc/cpuinfo flag names). With one, auto
# trains in mixed_bfloat16 without XLA: on 2 Zen 4 cores (avx512_bf16, no AMX), batch 128, 28 px,
# resnet18 1.3-1.4x, densenet121 1.5-1.6x, vit_tiny 1.4x the float32 step (python -m chest_tf.doctor;
# README, "bfloat16 on a CPU"), ResNet-18 2x on an AMX CPU, and test AUC never worse in the paired
# runs there. Without one, mixed_bfloat16 is emulated and slower than float32.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache  # a fact of the machine: read once, not per architecture resolved
def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the ``CPU_BFLOAT16_FLAGS`` it has); ("unknown", ()) where the file is
    missing or unreadable (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
    except OSError:
        return "unknown", ()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)  # the last CPU's
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", "unknown"), tuple(flag for flag in CPU_BFLOAT16_FLAGS if flag in flags)


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


def resolve_runtime(precision: str, jit: str, strategy: str, arch: str | None = None) -> Runtime:
    """auto: mixed precision and XLA on a GPU (bfloat16 from Ampere on, float16 with loss scaling
    before). On a CPU: mixed_bfloat16 without XLA where the CPU computes bfloat16 natively
    (``cpu_description``), else float32, with XLA only for the families in ``CPU_XLA_FAMILIES``
    (``arch`` given; none at present). MirroredStrategy with more than one GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = _gpu_compute_capability(gpus[0])
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        device = f"{len(gpus)} x {name} (compute capability {capability[0]}.{capability[1]})"
    else:
        capability = (0, 0)
        device = f"CPU ({os.cpu_count()} cores)"
    if precision == "auto" and gpus:
        precision = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    elif precision == "auto":
        precision = "mixed_bfloat16" if cpu_description()[1] else "float32"
    if jit == "auto":
        # XLA:CPU's bfloat16 is slower than oneDNN's (vit_tiny 71 vs 108 img/s): no XLA then.
        jit_compile = bool(gpus) or (precision == "float32" and arch is not None
                                     and arch_family(arch) in CPU_XLA_FAMILIES)
    else:
        jit_compile = jit == "on"
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "none"
    replicas = max(len(gpus), 1) if strategy == "mirrored" else 1
    return Runtime(precision, jit_compile, strategy, device, replicas)


def distribution_strategy(runtime: Runtime) -> tf.distribute.Strategy:
    if runtime.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()  # the default (no-op) strategy

