"""``python -m chest_tf.predict --bench``: file -> prediction throughput through an export."""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import tensorflow as tf
from PIL import Image

from chest_tf import imageio
from chest_tf.data.info import get_info
from chest_tf.errors import ChestTFError
from chest_tf.models.registry import build_model
from chest_tf.serving.metadata import build_metadata
from chest_tf.serving.outputs import run_predictions
from chest_tf.serving.predictor import DEFAULT_BATCH_SIZE, Stats, load_predictor
from chest_tf.serving.savedmodel import export_model
from chest_tf.serving.signature import SERVE_SIGNATURE, model_input_spec, preprocess


def write_bench_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` 8-bit grayscale PNGs of ``size`` px: smooth structure plus film-grain noise, so they
    compress (and decode) like radiographs rather than like white noise."""
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
    out = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="chest_tf_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_bench_images(tmp / "images", images, image_size)
        t_write = time.perf_counter() - t0
        mean_kib = sum(p.stat().st_size for p in (tmp / "images").iterdir()) / images / 1024
        info = get_info("chestmnist")
        model = build_model(arch, input_shape=(model_size, model_size, info.n_channels), num_classes=info.num_outputs)
        metadata = build_metadata(model, info, arch=arch, source={"bench": "untrained"})
        t0 = time.perf_counter()
        export_model(model, metadata, tmp / "export", verify=False)
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
        h, w, c = model_input_spec(model)
        pre = tf.function(lambda x: preprocess(x, h, w, c), input_signature=SERVE_SIGNATURE)
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
