"""From image files to predictions: the ``Predictor`` (one interface over an export folder, a run
dir and a ``.keras`` file), background decoding, batching and the calls at the thresholds.

Either way the images go through the same serving computation (``chest_tf.serving.signature``),
so a run folder and its export give the same numbers.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from chest_tf import imageio
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.runs import resolve_model
from chest_tf.serving.input_checks import DEFAULT_POLICY, CheckResult, InputPolicy, check_image
from chest_tf.serving.input_checks import errors as input_errors
from chest_tf.serving.signature import ENDPOINT, serving_tf_function

DEFAULT_BATCH_SIZE = 16


@dataclass
class Predictor:
    """``serve(uint8 batch) -> {"probs": (N, K) float32, and when the model has them "ood_score" (N,),
    "in_distribution" (N,), "uncertainty" (N, K)}`` and the export metadata that explains them."""

    serve: Callable[[np.ndarray], dict[str, np.ndarray]]
    metadata: dict
    kind: str  # "savedmodel", "run" or "keras"
    path: Path
    handle: Any = None  # the loaded SavedModel or Keras model, kept alive while ``serve`` is used

    @property
    def model_size(self) -> int:
        return int(self.metadata["input"]["height"])


def _numpy_outputs(fn) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    return lambda images: {name: value.numpy() for name, value in fn(tf.constant(images)).items()}


def load_predictor(model_path: str | Path, dataset: str | None = None) -> Predictor:
    """A ``Predictor`` for an export folder (its SavedModel), a run dir or a .keras file (the Keras
    model through the same serving computation, with an export's calibration and OOD score when
    it lives in one); see ``chest_tf.runs.resolve_model``."""
    resolved = resolve_model(model_path, dataset)
    if resolved.kind == "export":
        try:
            loaded = tf.saved_model.load(str(resolved.path))
        except Exception as exc:  # noqa: BLE001
            raise ChestTFError(f"cannot load the SavedModel at {resolved.path}: {str(exc).splitlines()[0]}") from None
        if not hasattr(loaded, ENDPOINT):
            raise ConfigError(f"the SavedModel at {resolved.path} has no '{ENDPOINT}' endpoint")
        return Predictor(_numpy_outputs(getattr(loaded, ENDPOINT)), resolved.metadata, "savedmodel", resolved.path,
                         loaded)
    fn = serving_tf_function(resolved.model, resolved.metadata["task"], resolved.extras)
    return Predictor(_numpy_outputs(fn), resolved.metadata, resolved.kind, resolved.path, resolved.model)


# ----------------------------------------------------------------------------------------------
# Reading and batching
# ----------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    path: Path
    image: np.ndarray | None
    error: str | None
    seconds: float


def _decode(path: Path, max_pixels: int) -> Decoded:
    start = time.perf_counter()
    try:
        image = imageio.read_image(path, max_pixels)
        return Decoded(path, image, None, time.perf_counter() - start)
    except ChestTFError as exc:
        return Decoded(path, None, str(exc), time.perf_counter() - start)
    except MemoryError:
        return Decoded(path, None, f"{path}: out of memory while decoding", time.perf_counter() - start)


def decode_in_order(paths: Sequence[Path], max_pixels: int, workers: int = 2, lookahead: int = 32) -> Iterator[Decoded]:
    """Decode ``paths`` in background threads (Pillow releases the GIL), yielding in input order
    with at most ``lookahead`` files decoded ahead."""
    if workers <= 1:
        for path in paths:
            yield _decode(path, max_pixels)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chest_tf-decode") as pool:
        pending: deque = deque()
        todo = iter(paths)
        for path in todo:
            pending.append(pool.submit(_decode, path, max_pixels))
            if len(pending) >= lookahead:
                break
        while pending:
            decoded = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_decode, nxt, max_pixels))
            yield decoded


@dataclass
class Stats:
    images: int = 0
    failed: int = 0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    batches: int = 0


@dataclass
class Prediction:
    path: Path
    shape: tuple[int, int, int]  # height, width, channels as read
    probs: np.ndarray  # (K,)
    checks: list[CheckResult] = field(default_factory=list)  # warnings only: errors are not predicted
    ood_score: float | None = None
    in_distribution: bool | None = None
    uncertainty: np.ndarray | None = None  # (K,), ensembles only


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
    workers: int = 2,
    policy: InputPolicy = DEFAULT_POLICY,
    on_error: Callable[[Path, str], None] | None = None,
    stats: Stats | None = None,
) -> Iterator[Prediction]:
    """Predictions for the readable files that pass the input checks (``policy``), in input order,
    batching consecutive images of one shape; unreadable or refused files go to
    ``on_error(path, message)``."""
    stats = stats if stats is not None else Stats()
    batch: list[tuple[Decoded, list[CheckResult]]] = []

    def flush() -> Iterator[Prediction]:
        start = time.perf_counter()
        outputs = predictor.serve(np.stack([d.image for d, _ in batch]))
        stats.model_seconds += time.perf_counter() - start
        stats.batches += 1
        stats.images += len(batch)
        probs = np.asarray(outputs["probs"], dtype=np.float32)
        for i, (d, checks) in enumerate(batch):
            yield Prediction(
                d.path, tuple(d.image.shape), probs[i], checks,
                ood_score=float(outputs["ood_score"][i]) if "ood_score" in outputs else None,
                in_distribution=bool(outputs["in_distribution"][i]) if "in_distribution" in outputs else None,
                uncertainty=np.asarray(outputs["uncertainty"][i]) if "uncertainty" in outputs else None,
            )
        batch.clear()

    for decoded in decode_in_order(paths, max_pixels, workers):
        stats.decode_seconds += decoded.seconds
        if decoded.error is None:
            checks = check_image(decoded.image, predictor.model_size, policy)
            refused = input_errors(checks)
            if refused:
                decoded.error = (f"{decoded.path}: {refused[0].message} (input check {refused[0].check}; "
                                 f"--check {refused[0].check}=warning predicts it anyway)")
        if decoded.error is not None:
            stats.failed += 1
            if on_error is not None:
                on_error(decoded.path, decoded.error)
            continue
        if batch and (len(batch) >= batch_size or batch[0][0].image.shape != decoded.image.shape):
            yield from flush()
        batch.append((decoded, checks))
    if batch:
        yield from flush()


# ----------------------------------------------------------------------------------------------
# Interpreting and printing
# ----------------------------------------------------------------------------------------------
def interpret(probs: np.ndarray, metadata: dict) -> dict[str, Any]:
    """Probabilities -> {"probs": {name: p}, and the calls at the exported thresholds: "positive"
    (multi-label), "call" (binary) or "predicted" (multi-class)}."""
    names = metadata["output_names"]
    thresholds = metadata["thresholds"]["values"]
    task = metadata["task"]
    probs = [float(p) for p in probs]
    out: dict[str, Any] = {"probs": dict(zip(names, probs))}
    if task.startswith("multi-label"):
        out["positive"] = [n for n, p, t in zip(names, probs, thresholds) if t is not None and p >= t]
    elif task == "binary-class":
        classes = metadata["class_names"]
        t = thresholds[-1]
        out["call"] = classes[-1] if t is not None and probs[-1] >= t else classes[0]
    else:
        out["predicted"] = names[int(np.argmax(probs))]
    return out
