"""``python -m chest_tf.doctor``: what this machine gives chest_tf, as a report to paste into a bug
report. Devices, versions (TensorFlow, Keras, CUDA and cuDNN as TensorFlow was built with), what
``auto`` resolves to, then a few training steps of each architecture on phantom data through the
real training path (pipeline, augmentation, the compiled step with the resolved precision and
XLA), with images/s and every fallback or retracing warning seen on the way."""
from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import chest_tf
from chest_tf import augment as augment_lib
from chest_tf import losses as losses_lib
from chest_tf.data.pipeline import load_dataset
from chest_tf.models.registry import build_model, resolve_arch
from chest_tf.training import fused_batchnorm
from chest_tf.training.runtime import Runtime, resolve_runtime

DEFAULT_ARCHS = ("resnet18", "vit_small")


def environment() -> dict:
    """Versions and devices."""
    build = tf.sysconfig.get_build_info()
    return {
        "chest_tf": chest_tf.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_cores": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "keras_backend": keras.backend.backend(), "tensorflow_datasets": tfds.__version__, "numpy": np.__version__,
        "cuda_build": build.get("cuda_version", "none (CPU build)"), "cudnn_build": build.get("cudnn_version", "none"),
        "devices": [f"{d.device_type}: {d.name}" for d in tf.config.list_physical_devices()],
    }


class _Capture(logging.Handler):
    """Keeps the warnings TensorFlow and Keras log (retracing, XLA fallbacks)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage().splitlines()[0][:200])


@dataclass
class Probe:
    arch: str
    images_per_second: float | None = None
    seconds_per_step: float | None = None
    steps: int = 0
    jit_compile: bool | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def probe_training(arch: str, runtime: Runtime, *, steps: int = 30, batch_size: int = 32, size: int = 28,
                   data_dir: str | None = None, overrides: dict | None = None) -> Probe:
    """``steps`` timed training steps (after one warm-up step) of ``arch`` on the phantom set."""
    probe = Probe(resolve_arch(arch))
    capture = _Capture()
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handle = load_dataset("phantom", size, data_dir=data_dir, verbose=False)
            keras.mixed_precision.set_global_policy(runtime.precision)
            fused_batchnorm.install()
            classifier = build_model(probe.arch, handle.image_shape, handle.info.num_outputs, **(overrides or {}))
            model = augment_lib.attach_augmentation(classifier, augment_lib.build_augmentation("light", seed=0))
            positives, total = handle.positive_counts("train")
            model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=runtime.jit_compile,
                          loss=losses_lib.build_loss("bce", handle.info.task, positives, total))
            batches = iter(handle.batches("train", batch_size, training=True, seed=0, drop_remainder=True,
                                          repeat=True))
            model.train_on_batch(*next(batches))  # tracing and compilation
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(*next(batches))
            elapsed = time.perf_counter() - start
        probe.steps = steps
        probe.seconds_per_step = elapsed / max(steps, 1)
        probe.images_per_second = steps * batch_size / elapsed if steps else None
        probe.jit_compile = bool(model.jit_compile)
        probe.warnings = [str(w.message).splitlines()[0][:200] for w in caught] + capture.messages
        if runtime.jit_compile and not model.jit_compile:
            probe.warnings.append("XLA was asked for but Keras fell back to jit_compile=False")
    except Exception as exc:  # noqa: BLE001 (a report: say what failed and go on to the next arch)
        probe.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    return probe


def report(env: dict, runtime: Runtime, probes: list[Probe], batch_size: int, size: int) -> str:
    """Markdown for a bug report."""
    lines = ["## chest_tf doctor", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value if not isinstance(value, list) else '; '.join(value) or 'none'} |"
              for key, value in env.items()]
    lines += ["", f"`auto` resolves to: precision **{runtime.precision}**, XLA **{'on' if runtime.jit_compile else 'off'}**, "
                  f"strategy **{runtime.strategy}**, device **{runtime.device}**", "",
              f"Training steps on phantom {size} px, batch {batch_size}, light augmentation, the resolved settings:", "",
              "| arch | images/s | s/step | timed steps | XLA in effect | warnings |", "|---|---|---|---|---|---|"]
    for p in probes:
        if p.error:
            lines.append(f"| {p.arch} | failed | | | | {p.error} |")
            continue
        seen = "; ".join(sorted(set(p.warnings))) or "none"
        lines.append(f"| {p.arch} | {p.images_per_second:.1f} | {p.seconds_per_step:.3f} | {p.steps} | "
                     f"{'on' if p.jit_compile else 'off'} | {seen} |")
    return "\n".join(lines)


def run_doctor(archs=DEFAULT_ARCHS, *, steps: int = 30, batch_size: int = 32, size: int = 28,
               data_dir: str | None = None, overrides: dict | None = None, precision: str = "auto",
               jit: str = "auto") -> tuple[str, list[Probe]]:
    env = environment()
    runtime = resolve_runtime(precision, jit, "none")
    probes = [probe_training(arch, runtime, steps=steps, batch_size=batch_size, size=size, data_dir=data_dir,
                             overrides=(overrides or {}).get(resolve_arch(arch))) for arch in archs]
    return report(env, runtime, probes, batch_size, size), probes
