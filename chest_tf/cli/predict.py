"""Predict findings on real image files: ``python -m chest_tf.predict MODEL IMAGE_OR_FOLDER...``.

    python -m chest_tf.predict saved_models/resnet18_chestmnist_224 scans/ extra.png
    python -m chest_tf.predict runs/chestmnist_224/resnet18_s0 scans/ --format json > out.json
    python -m chest_tf.predict model.keras --dataset chestmnist scans/ --format csv --top-k 3
    python -m chest_tf.predict --bench [--bench-arch resnet18 --bench-images 64 --bench-size 1024]

MODEL is an export folder (``python -m chest_tf.export``; its ``serve`` signature and
assets/metadata.json are used), a run folder (best.keras and eval/metrics.json), or a ``.keras``
file (its labels and thresholds from an export or run folder around it, else ``--dataset``).
Either way the images go through the same serving computation (``chest_tf.serving``: channel
conversion, antialiased resize, training's normalisation), so a run folder and its export give
the same numbers.

Files: PNG and JPEG (8/16-bit, gray, RGB, RGBA, any size) and DICOM with pydicom, read by
``chest_tf.imageio`` (see there for 16-bit scaling, alpha and DICOM windowing). Folders are
walked recursively in sorted order for .png/.jpg/.jpeg/.dcm/.dicom. Consecutive images of the same
size are batched (``--batch-size``); files are decoded in background threads while the model runs.

Before the model sees an image, the input checks (``chest_tf.serving.input_checks``: too small,
extreme aspect ratio, blank, strong colour, inverted polarity) refuse it (an error) or warn;
``--check NAME=error|warning|off`` changes a check's level. An exported model also says whether
each image is like its training images (``ood_score``, ``in_distribution``); an ensemble gives the
members' spread per finding.

Output (stdout): ``table`` (per image: the OOD verdict and warnings, each finding's probability,
the threshold chosen on validation and the positive calls; ``--top-k`` keeps the K most
probable), ``json`` (one document: model, thresholds, calibration, OOD, results with checks and
OOD fields, errors, skipped files) or ``csv`` (file, size, one probability column per output, the
calls, ood_score, in_distribution, checks). A file that cannot be read or is refused gets one line
``error: PATH: reason`` on stderr and the others are still predicted; files in a folder that are
not images are counted and named. Exit status: 0 all predicted, 1 some file failed or was
refused, 2 a usage or model error (nothing predicted).
"""
from __future__ import annotations

import argparse

from chest_tf import imageio
from chest_tf.errors import ConfigError
from chest_tf.serving.bench import bench
from chest_tf.serving.input_checks import CHECK_NAMES, DEFAULT_POLICY, parse_check_levels
from chest_tf.serving.outputs import FORMATS, run_predictions
from chest_tf.serving.predictor import DEFAULT_BATCH_SIZE, load_predictor


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
    parser.add_argument("--check", action="append", default=[], metavar="NAME=LEVEL",
                        help="input check level: NAME one of " + ", ".join(CHECK_NAMES) +
                             "; LEVEL error (not predicted), warning (shown) or off (repeatable)")
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
    policy = DEFAULT_POLICY.with_levels(parse_check_levels(args.check))
    predictor = load_predictor(args.model, args.dataset)
    return run_predictions(predictor, args.inputs, fmt=args.format, batch_size=args.batch_size, top_k=args.top_k,
                           max_pixels=args.max_pixels, workers=args.workers, policy=policy)
