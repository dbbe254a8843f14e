"""Predict findings on real image files: ``python -m chest_tf.predict MODEL IMAGE_OR_FOLDER...``.

    python -m chest_tf.predict saved_models/resnet18_chestmnist_224 scans/ extra.png
    python -m chest_tf.predict runs/chestmnist_224/resnet18_s0 scans/ --format json > out.json
    python -m chest_tf.predict model.keras --dataset chestmnist scans/ --format csv --top-k 3
    python -m chest_tf.predict --bench [--bench-arch resnet18 --bench-images 64 --bench-size 1024]

MODEL is an export folder (``python -m chest_tf.export``; its ``serve`` signature and
assets/metadata.json are used), a run folder (best.keras and eval/metrics.json), or a ``.keras``
file (its labels and thresholds from an export or run folder around it, else ``--dataset``).
Either way the images go through the same serving computation (``chest_tf.export.preprocess``:
channel conversion, antialiased resize, training's normalisation), so a run folder and its
export give the same numbers.

Files: PNG and JPEG (8/16-bit, gray, RGB, RGBA, any size) and DICOM with pydicom, read by
``chest_tf.imageio`` (see there for 16-bit scaling, alpha and DICOM windowing). Folders are
walked recursively in sorted order for .png/.jpg/.jpeg/.dcm/.dicom. Consecutive images of the same
size are batched (``--batch-size``); files are decoded in background threads while the model runs.

Output (stdout): ``table`` (per image: each finding's probability, the threshold chosen on
validation and the positive calls; ``--top-k`` keeps the K most probable), ``json`` (one document:
model, thresholds, results, errors) or ``csv`` (file, size, one probability column per output,
the calls). A file that cannot be read gets one line ``error: PATH: reason`` on stderr and the
others are still predicted. Exit status: 0 all predicted, 1 some file failed, 2 a usage or model
error (nothing predicted).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np

from chest_tf import imageio
from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.errors import ChestTFError, ConfigError

quiet_tensorflow()

FORMATS = ("table", "json", "csv")
DEFAULT_BATCH_SIZE = 16


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """``serve(uint8 batch) -> probs (N, K) float32`` and the export metadata that explains them."""

    serve: Callable[[np.ndarray], np.ndarray]
    metadata: dict
    kind: str  # "savedmodel", "run" or "keras"
    path: Path
    handle: Any = None  # the loaded SavedModel or Keras model, kept alive while ``serve`` is used


def load_predictor(model_path: str | Path, dataset: str | None = None) -> Predictor:
    """A ``Predictor`` for an export folder, a run folder or a .keras file (see the module docstring)."""
    import tensorflow as tf  # noqa: PLC0415

    from chest_tf import export  # noqa: PLC0415

    path = Path(model_path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        metadata = export.read_metadata(path)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ChestTFError(f"cannot load the SavedModel at {path}: {str(exc).splitlines()[0]}") from None
        if not hasattr(loaded, export.ENDPOINT):
            raise ConfigError(f"the SavedModel at {path} has no '{export.ENDPOINT}' endpoint")
        fn = getattr(loaded, export.ENDPOINT)
        return Predictor(lambda images: fn(tf.constant(images))["probs"].numpy(), metadata, "savedmodel", path,
                         loaded)
    if path.is_dir() and (path / "config.json").is_file():
        model, metadata, _ = export.load_run(path)
        return _keras_predictor(model, metadata, "run", path)
    if path.is_file() and path.suffix == ".keras":
        model = export.load_keras_model(path)
        if (path.parent / export.METADATA_PATH).is_file():
            metadata = export.read_metadata(path.parent)
        elif (path.parent / "config.json").is_file():
            _, metadata, _ = export.load_run(path.parent, model=model)
        elif dataset:
            from chest_tf.data.info import get_info  # noqa: PLC0415

            try:
                info = get_info(dataset)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            metadata = export.build_metadata(model, info, source={"keras_file": str(path.resolve())})
        else:
            raise ConfigError(f"{path} has no export or run folder around it to name its outputs; "
                              "pass --dataset NAME")
        return _keras_predictor(model, metadata, "keras", path)
    if not path.exists():
        raise ConfigError(f"model not found: {path}")
    raise ConfigError(f"{path} is not an export folder (saved_model.pb), a run folder (config.json) or a .keras file")


def _keras_predictor(model, metadata: dict, kind: str, path: Path) -> Predictor:
    import tensorflow as tf  # noqa: PLC0415

    from chest_tf import export  # noqa: PLC0415

    fn = export.serving_tf_function(model, metadata["task"])
    return Predictor(lambda images: fn(tf.constant(images))["probs"].numpy(), metadata, kind, path, model)


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


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
    workers: int = 2,
    on_error: Callable[[Path, str], None] | None = None,
    stats: Stats | None = None,
) -> Iterator[Prediction]:
    """Predictions for the readable files, in input order, batching consecutive images of one
    shape; unreadable files go to ``on_error(path, message)``."""
    stats = stats if stats is not None else Stats()
    batch: list[Decoded] = []

    def flush() -> Iterator[Prediction]:
        start = time.perf_counter()
        probs = np.asarray(predictor.serve(np.stack([d.image for d in batch])), dtype=np.float32)
        stats.model_seconds += time.perf_counter() - start
        stats.batches += 1
        stats.images += len(batch)
        for d, p in zip(batch, probs):
            yield Prediction(d.path, tuple(d.image.shape), p)
        batch.clear()

    for decoded in decode_in_order(paths, max_pixels, workers):
        stats.decode_seconds += decoded.seconds
        if decoded.error is not None:
            stats.failed += 1
            if on_error is not None:
                on_error(decoded.path, decoded.error)
            continue
        if batch and (len(batch) >= batch_size or batch[0].image.shape != decoded.image.shape):
            yield from flush()
        batch.append(decoded)
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


def _shape_text(shape: tuple[int, int, int]) -> str:
    return f"{shape[1]} x {shape[0]} {'gray' if shape[2] == 1 else 'RGB'}"


def _ranked(names: Sequence[str], probs: Sequence[float], top_k: int) -> list[int]:
    order = sorted(range(len(names)), key=lambda k: -probs[k])
    return order[:top_k] if top_k > 0 else order


class TableWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta, self.top_k = out, metadata, top_k

    def start(self, predictor: Predictor) -> None:
        t = self.meta["thresholds"]
        chosen = f"chosen on {t['chosen_on']} ({t['method']})" if t.get("chosen_on") else "0.5 (none chosen on validation)"
        print(f"model {predictor.path} ({self.meta.get('arch') or 'model'}, {self.meta['dataset']}, "
              f"{self.meta['input']['height']} px); thresholds {chosen}", file=self.out)

    def write(self, pred: Prediction) -> None:
        meta, calls = self.meta, interpret(pred.probs, self.meta)
        names, probs = meta["output_names"], [float(p) for p in pred.probs]
        thresholds = meta["thresholds"]["values"]
        if "positive" in calls:
            verdict = "positive: " + (", ".join(calls["positive"]) or "none")
        elif "call" in calls:
            verdict = f"call: {calls['call']}"
        else:
            verdict = f"predicted: {calls['predicted']}"
        lines = [f"\n{pred.path}  ({_shape_text(pred.shape)})  {verdict}"]
        width = max(len("finding"), *(len(n) for n in names))
        lines.append(f"  {'finding':<{width}}  {'prob':>6}  {'threshold':>9}")
        for k in _ranked(names, probs, self.top_k):
            t = thresholds[k]
            mark = "  *" if t is not None and probs[k] >= t and "predicted" not in calls else ""
            t_text = "-" if t is None else f"{t:.3f}"
            lines.append(f"  {names[k]:<{width}}  {probs[k]:6.3f}  {t_text:>9}{mark}")
        print("\n".join(lines), file=self.out)

    def finish(self, errors: list[dict]) -> None:
        pass


class CsvWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta = out, metadata
        self.writer = csv.writer(out, lineterminator="\n")

    def start(self, predictor: Predictor) -> None:
        task = self.meta["task"]
        call = "positive" if task.startswith("multi-label") else "call" if task == "binary-class" else "predicted"
        self.call_key = call
        self.writer.writerow(["file", "width", "height", "channels", *self.meta["output_names"], call])

    def write(self, pred: Prediction) -> None:
        calls = interpret(pred.probs, self.meta)
        value = calls[self.call_key]
        value = ";".join(value) if isinstance(value, list) else value
        self.writer.writerow([str(pred.path), pred.shape[1], pred.shape[0], pred.shape[2],
                              *(f"{float(p):.6f}" for p in pred.probs), value])

    def finish(self, errors: list[dict]) -> None:
        pass


class JsonWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta, self.top_k = out, metadata, top_k
        self.results: list[dict] = []

    def start(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def write(self, pred: Prediction) -> None:
        calls = interpret(pred.probs, self.meta)
        entry = {"file": str(pred.path), "width": pred.shape[1], "height": pred.shape[0], "channels": pred.shape[2],
                 **calls}
        if self.top_k > 0:
            names, probs = self.meta["output_names"], [float(p) for p in pred.probs]
            entry["top"] = [{"name": names[k], "prob": probs[k]} for k in _ranked(names, probs, self.top_k)]
        self.results.append(entry)

    def finish(self, errors: list[dict]) -> None:
        meta = self.meta
        doc = {
            "model": {"path": str(self.predictor.path), "kind": self.predictor.kind, "arch": meta.get("arch"),
                      "dataset": meta["dataset"], "task": meta["task"], "input": meta["input"]},
            "output_names": meta["output_names"],
            "thresholds": meta["thresholds"],
            "decision": meta.get("decision"),
            "results": self.results,
            "errors": errors,
        }
        json.dump(doc, self.out, indent=2)
        self.out.write("\n")


WRITERS = {"table": TableWriter, "json": JsonWriter, "csv": CsvWriter}


def run_predictions(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    *,
    fmt: str = "table",
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = 0,
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
    workers: int = 2,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stats: Stats | None = None,
) -> int:
    """Predict every image under ``inputs`` and print them; returns the exit status (0 or 1)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    paths = imageio.find_images(inputs)
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, inputs))} ({', '.join(imageio.IMAGE_EXTENSIONS)})")
    errors: list[dict] = []

    def on_error(path: Path, message: str) -> None:
        errors.append({"file": str(path), "error": message})
        print(f"error: {message}", file=err, flush=True)

    writer = WRITERS[fmt](out, predictor.metadata, top_k)
    writer.start(predictor)
    stats = stats if stats is not None else Stats()
    for pred in predict_files(predictor, paths, batch_size=batch_size, max_pixels=max_pixels, workers=workers,
                              on_error=on_error, stats=stats):
        writer.write(pred)
    writer.finish(errors)
    out.flush()
    print(f"predicted {stats.images} image(s)" + (f", {stats.failed} failed" if stats.failed else ""), file=err)
    return 1 if errors else 0


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
def write_bench_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` 8-bit grayscale PNGs of ``size`` px: smooth structure plus film-grain noise, so they
    compress (and decode) like radiographs rather than like white noise."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        coarse = rng.normal(size=(16, 16))
        smooth = np.kron(coarse, np.ones((size // 16 + 1, size // 16 + 1)))[:size, :size]
        body = np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2))
        image = 40 + 150 * body + 12 * smooth + rng.normal(scale=3.0, size=(size, size))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(folder / f"img_{i:04d}.png")


def bench(arch: str = "resnet18", images: int = 64, image_size: int = 1024, model_size: int = 224,
          batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2, out: TextIO | None = None) -> dict:
    """End-to-end file -> prediction throughput through an exported (untrained) model, the path
    ``python -m chest_tf.predict EXPORT FOLDER`` takes. Returns the figures."""
    import tensorflow as tf  # noqa: PLC0415

    from chest_tf import export  # noqa: PLC0415
    from chest_tf.data.info import get_info  # noqa: PLC0415
    from chest_tf.models import build_model  # noqa: PLC0415

    out = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="chest_tf_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_bench_images(tmp / "images", images, image_size)
        t_write = time.perf_counter() - t0
        mean_kib = sum(p.stat().st_size for p in (tmp / "images").iterdir()) / images / 1024
        info = get_info("chestmnist")
        model = build_model(arch, input_shape=(model_size, model_size, info.n_channels), num_classes=info.num_outputs)
        metadata = export.build_metadata(model, info, arch=arch, source={"bench": "untrained"})
        t0 = time.perf_counter()
        export.export_model(model, metadata, tmp / "export", verify=False)
        t_export = time.perf_counter() - t0
        predictor = load_predictor(tmp / "export")
        paths = imageio.find_images([tmp / "images"])
        t0 = time.perf_counter()
        predictor.serve(np.stack([imageio.read_image(p) for p in paths[:batch_size]]))  # warm-up
        t_warm = time.perf_counter() - t0

        # Serial components, for the shares: decoding alone, preprocessing alone, the whole serve.
        t0 = time.perf_counter()
        decoded = [imageio.read_image(p) for p in paths]
        t_decode = time.perf_counter() - t0
        h, w, c = export.model_input_spec(model)
        pre = tf.function(lambda x: export.preprocess(x, h, w, c), input_signature=export.SERVE_SIGNATURE)
        batches = [np.stack(decoded[i:i + batch_size]) for i in range(0, len(decoded), batch_size)]
        pre(tf.constant(batches[0]))
        t0 = time.perf_counter()
        for b in batches:
            pre(tf.constant(b)).numpy()
        t_pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in batches:
            predictor.serve(b)
        t_serve = time.perf_counter() - t0
        del decoded, batches

        stats = Stats()
        t0 = time.perf_counter()
        status = run_predictions(predictor, [tmp / "images"], fmt="csv", batch_size=batch_size, workers=workers,
                                 out=io.StringIO(), err=io.StringIO(), stats=stats)
        t_end = time.perf_counter() - t0
    if status != 0 or stats.images != images:
        raise ChestTFError(f"bench: {stats.failed} of {images} images failed")
    serial = t_decode + t_serve
    result = {
        "arch": arch, "model_size": model_size, "images": images, "image_size": image_size, "batch_size": batch_size,
        "decode_workers": workers, "mean_png_kib": mean_kib, "images_per_second": images / t_end, "end_to_end_seconds": t_end,
        "serial": {"decode_seconds": t_decode, "serve_seconds": t_serve, "preprocess_seconds": t_pre,
                   "decode_share": t_decode / serial, "model_share": (t_serve - t_pre) / serial,
                   "resize_normalise_share": t_pre / serial},
        "setup": {"write_pngs_seconds": t_write, "export_seconds": t_export, "first_batch_seconds": t_warm},
    }
    s = result["serial"]
    print(f"predict bench: {images} x {image_size}x{image_size} 8-bit gray PNGs ({mean_kib:.0f} KiB each) -> {arch} at {model_size} px "
          f"(untrained, exported SavedModel), batch {batch_size}, {workers} decode thread(s)\n"
          f"  end to end: {result['images_per_second']:.1f} images/s ({t_end:.2f} s)\n"
          f"  serial time split: decode {s['decode_share']:.0%} ({t_decode / images * 1e3:.1f} ms/image), "
          f"resize+normalise {s['resize_normalise_share']:.0%} ({t_pre / images * 1e3:.1f} ms/image), "
          f"model {s['model_share']:.0%} ({(t_serve - t_pre) / images * 1e3:.1f} ms/image)\n"
          f"  setup: PNGs {t_write:.1f} s, export {t_export:.1f} s, first batch {t_warm:.1f} s", file=out)
    return result


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.predict",
        description="Predict findings on PNG/JPEG/DICOM files with an exported model, a run folder or a .keras file.",
    )
    parser.add_argument("model", nargs="?", help="export folder, run folder or .keras file")
    parser.add_argument("inputs", nargs="*", help="image files and folders (walked recursively)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output on stdout (default table)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per model call")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="table/json: show the K most probable outputs per image (default all)")
    parser.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels than this (default {imageio.DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--dataset", help="label names and task for a bare .keras file")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    bench_group = parser.add_argument_group("benchmark (no MODEL or inputs)")
    bench_group.add_argument("--bench", action="store_true", help="measure file -> prediction throughput")
    bench_group.add_argument("--bench-arch", default="resnet18")
    bench_group.add_argument("--bench-images", type=int, default=64)
    bench_group.add_argument("--bench-size", type=int, default=1024, help="PNG side in px")
    bench_group.add_argument("--bench-model-size", type=int, default=224)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bench:
        bench(args.bench_arch, args.bench_images, args.bench_size, args.bench_model_size, args.batch_size, args.workers)
        return 0
    if not args.model or not args.inputs:
        raise ConfigError("give MODEL and at least one image file or folder (or --bench)")
    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {args.max_pixels}")
    predictor = load_predictor(args.model, args.dataset)
    return run_predictions(predictor, args.inputs, fmt=args.format, batch_size=args.batch_size, top_k=args.top_k,
                           max_pixels=args.max_pixels, workers=args.workers)


if __name__ == "__main__":
    sys.exit(run_cli(main))
