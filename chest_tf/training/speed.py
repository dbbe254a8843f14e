"""Training throughput on the real path, as ``chest_tf.train`` runs it: phantom TFRecords through
the tf.data pipeline, augmentation attached to the model, the TF kernels train plugs in
(training/kernels.py), BCE on logits, ``model.fit`` with the resolved precision and XLA. Used by
``python -m chest_tf.doctor`` and by ``pipelines/bench_peers.py`` (the speed table beside the
PyTorch peers).

Warm-up steps (tracing, compilation, the pipeline filling its buffers) are not timed; the clock
runs from the end of the last warm-up step to the end of the last timed step, so it holds no
time spent after training (``fit``'s return) either. With ``rounds`` > 1 the same compiled model is
timed again after each ``after_round`` call (bench_peers runs the PyTorch peer there), so a shared
machine's drift reaches both sides of a ratio alike; the probe's figure is the median round."""
from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import keras

from chest_tf import augment as augment_lib
from chest_tf import losses as losses_lib
from chest_tf.data.pipeline import load_dataset
from chest_tf.models.flops import estimate_flops
from chest_tf.models.registry import build_model, resolve_arch
from chest_tf.training import kernels
from chest_tf.training.runtime import Runtime


@dataclass
class Probe:
    """One architecture's measured training speed (or why it could not be measured)."""
    arch: str
    size: int = 28
    batch_size: int = 32
    images_per_second: float | None = None
    seconds_per_step: float | None = None
    steps: int = 0
    round_images_per_second: list[float] = field(default_factory=list)  # one per timed round
    params: int | None = None          # trainable parameters
    gflops: float | None = None        # analytic, one image, forward (models.flops)
    jit_compile: bool | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


class StepTimer(keras.callbacks.Callback):
    """Times the steps after ``warmup``; stops fit once ``max_seconds`` of timed steps have run."""

    def __init__(self, warmup: int, max_seconds: float | None):
        super().__init__()
        self.warmup, self.max_seconds = warmup, max_seconds
        self.started = self.ended = None
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch + 1 == self.warmup:
            self.started = now
        elif batch + 1 > self.warmup:
            self.steps += 1
            self.ended = now
            if self.max_seconds is not None and now - self.started > self.max_seconds:
                self.model.stop_training = True

    def seconds(self) -> float:
        """Wall time of the timed steps."""
        return self.ended - self.started


class _Capture(logging.Handler):
    """Keeps the warnings TensorFlow and Keras log (retracing, XLA fallbacks)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage().splitlines()[0][:200])


def measure_training(arch: str, runtime: Runtime, *, size: int = 28, batch_size: int = 32, steps: int = 30,
                     warmup: int = 3, max_seconds: float | None = None, augment: str = "light",
                     data_dir: str | None = None, overrides: dict | None = None, rounds: int = 1,
                     after_round: Callable[[Probe], None] | None = None) -> Probe:
    """Images/s of ``steps`` training steps of ``arch`` (at most ``max_seconds`` of them, at least
    one) after ``warmup`` untimed ones, on the phantom set at ``size`` px; ``rounds`` times, calling
    ``after_round(probe)`` after each (later rounds re-fit the same model after one untimed step).
    Never raises: a failure, here or in ``after_round``, is the probe's ``error`` (a report goes on
    to the next architecture)."""
    probe = Probe(resolve_arch(arch), size=size, batch_size=batch_size)
    steps = max(1, int(steps))
    capture = _Capture()
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handle = load_dataset("phantom", size, data_dir=data_dir, verbose=False)
            keras.mixed_precision.set_global_policy(runtime.precision)
            kernels.install()
            keras.utils.set_random_seed(0)
            classifier = build_model(probe.arch, handle.image_shape, handle.info.num_outputs, **(overrides or {}))
            # trainable only, as torch counts parameters (BatchNorm's moving statistics are buffers there)
            probe.params = int(sum(math.prod(w.shape) for w in classifier.trainable_weights))
            probe.gflops = estimate_flops(classifier) / 1e9
            model = augment_lib.attach_augmentation(classifier, augment_lib.build_augmentation(augment, seed=0))
            positives, total = handle.positive_counts("train")
            model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=runtime.jit_compile,
                          loss=losses_lib.build_loss("bce", handle.info.task, positives, total))
            batches = handle.batches("train", batch_size, training=True, seed=0, drop_remainder=True,
                                     repeat=True, deterministic=False)
            for round_index in range(max(1, rounds)):
                untimed = max(1, warmup) if round_index == 0 else 1  # a new fit call restarts the iterator
                timer = StepTimer(untimed, max_seconds)
                model.fit(batches, epochs=1, steps_per_epoch=untimed + steps, callbacks=[timer], verbose=0,
                          shuffle=False)  # the pipeline shuffles
                probe.steps = timer.steps
                probe.round_images_per_second.append(timer.steps * batch_size / timer.seconds())
                if after_round is not None:
                    after_round(probe)
        probe.images_per_second = statistics.median(probe.round_images_per_second)
        probe.seconds_per_step = batch_size / probe.images_per_second
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
