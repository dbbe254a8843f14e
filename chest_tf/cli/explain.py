"""Explain a classifier on image files: ``python -m chest_tf.explain MODEL IMAGE_OR_FOLDER...``;
benchmark its explanations: ``python -m chest_tf.explain bench RUN_DIR [--methods ...]``.

    python -m chest_tf.explain runs/phantom_28/resnet18_s0 scan1.png scan2.jpg --top-k 3
    python -m chest_tf.explain model.keras --dataset chestmnist scans/ --label effusion --out xai/
    python -m chest_tf.explain saved_models/vit_tiny_phantom_28 scan.png --method grad-rollout

MODEL is a run folder, a ``.keras`` file or an export folder (its ``model.keras``), resolved by
``chest_tf.runs.resolve_model`` as predict does (labels from the run's dataset, the export's
metadata, or ``--dataset``). Image files of any size and format ``chest_tf.imageio`` reads go
through the serving computation's preprocessing (``chest_tf.serving.signature.preprocess``:
channels, antialiased resize to the model's input, normalisation), so the explained input is
exactly what predict scores. For each image and finding (``--label NAME``, repeatable, or the
``--top-k K`` most probable, default 1) an overlay PNG is written (the X-ray and the heatmap over
it, titled with the finding and its probability), plus ``contact_sheet.png`` when there are
several panels and ``explanations.json`` (file, finding, probability, method, heatmap peak in the
file's pixel coordinates).

``--method`` (default ``gradcam`` for CNNs, ``grad-rollout`` for ViTs; also ``gradcam++``,
``hirescam``, ``layercam``, ``rollout``, ``occlusion``, ``integrated-gradients``, ``smoothgrad``)
and the maths are described in ``chest_tf.explain.methods``. ``--layer`` explains another feature map (e.g.
``conv4_block2_out``): at 28 px the last stage is only 4x4 (ResNet) or 3x3 (DenseNet) cells,
which bounds how finely it can point. For a one-logit binary model, top-1 is the called class.

The localisation benchmark (``chest_tf.explain.bench``) runs on a run folder trained on a phantom
version-2 set (``--dataset phantom2``, ``phantom2_hard`` or ``phantom2_shortcut``), whose test
images carry a mask per finding, and writes ``RUN_DIR/explain_bench/`` (report.md, bench.json,
example figures)::

    python -m chest_tf.explain bench runs/loc/resnet18 --label-random runs/loc/resnet18_randlabels
    python -m chest_tf.explain bench runs/loc/vit --methods grad-rollout,rollout --max-images 200
    python -m chest_tf.explain prior phantom2 --size 28    # the image-blind prior vs uniform, per finding
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from chest_tf.data import download, phantom
from chest_tf.data.info import SIZES, get_info
from chest_tf.errors import ConfigError
from chest_tf.explain.bench import (
    REPORT_DIR,
    BenchSettings,
    format_prior_table,
    format_tables,
    prior_table,
    run_bench,
    write_report,
)
from chest_tf.explain.files import explain_files
from chest_tf.explain.methods import METHODS
from chest_tf.runs import resolve_model

DEFAULT_OUT = Path("explanations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.explain",
        description="Heatmaps of where a chest X-ray classifier looks (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM, "
                    "attention rollout, occlusion, Integrated Gradients, SmoothGrad), written as overlay PNGs for "
                    "image files. Also: 'bench RUN_DIR' (the localisation benchmark on phantom2) and 'prior DATASET'.",
    )
    parser.add_argument("model", help="run folder, .keras file or export folder")
    parser.add_argument("inputs", nargs="+", help="image files and folders (PNG, JPEG, DICOM; any size)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--label", action="append", metavar="NAME",
                       help="explain this finding (repeatable; comma-separated also works)")
    which.add_argument("--top-k", type=int, metavar="K", help="explain the K most probable findings (default 1)")
    parser.add_argument("--method", choices=("auto", *METHODS), default="auto",
                        help="default: gradcam for CNNs, grad-rollout for ViTs")
    parser.add_argument("--layer", help="Grad-CAM: explain this layer's feature map instead of the last conv stage")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--dataset", help="label names and task for a bare .keras file")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default as predict)")
    parser.add_argument("--no-contact-sheet", action="store_true", help="only the per-image overlays")
    return parser


def build_bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.explain bench",
        description="Localisation benchmark of the explanation methods on the phantom version-2 test split: "
                    "pointing game, energy, IoU, deletion/insertion, bootstrap CIs, baselines, randomisation checks.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders trained on a phantom2 set")
    parser.add_argument("--methods", help=f"comma-separated (default: all for the model's family; of {', '.join(METHODS)})")
    parser.add_argument("--label-random", metavar="RUN_DIR",
                        help="the same architecture trained on --dataset phantom2_randlabels (label-randomisation check)")
    parser.add_argument("--max-images", type=int, help="only the first N test images")
    parser.add_argument("--val-images", type=int, default=400, help="val images for the IoU threshold (default 400)")
    parser.add_argument("--tolerance", type=float, help="pointing-game tolerance in px (default 15 px at 224, scaled)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--faithfulness", type=int, default=300, metavar="N",
                        help="detected instances for deletion/insertion (default 300)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    parser.add_argument("--sanity", type=int, default=32, metavar="N", help="instances for the randomisation checks")
    parser.add_argument("--no-cascade", action="store_true", help="randomisation: full re-initialisation only")
    parser.add_argument("--occlusion-window", type=int, metavar="PX", help="occlusion's window (default size/7)")
    parser.add_argument("--occlusion-stride", type=int, metavar="PX", help="occlusion's stride (default window/2)")
    parser.add_argument("--out", help=f"report folder (default RUN_DIR/{REPORT_DIR}; one run only)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def bench_main(argv: list[str]) -> int:
    args = build_bench_parser().parse_args(argv)
    if args.out and len(args.runs) > 1:
        raise ConfigError("--out takes one run; without it each run's report goes to RUN_DIR/" + REPORT_DIR)
    for name, value in (("--bootstrap", args.bootstrap), ("--steps", args.steps), ("--val-images", args.val_images),
                        ("--faithfulness", args.faithfulness), ("--sanity", args.sanity)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    for name, value in (("--max-images", args.max_images), ("--occlusion-window", args.occlusion_window),
                        ("--occlusion-stride", args.occlusion_stride)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    occlusion = {key: value for key, value in (("window", args.occlusion_window), ("stride", args.occlusion_stride))
                 if value is not None}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        if method not in METHODS:
            raise ConfigError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    settings = BenchSettings(methods=methods, max_images=args.max_images, val_images=args.val_images,
                             tolerance=args.tolerance, bootstrap=args.bootstrap, steps=args.steps,
                             faithfulness=args.faithfulness, sanity=args.sanity, cascade=not args.no_cascade,
                             label_random=args.label_random, seed=args.seed,
                             options={"occlusion": occlusion} if occlusion else {})
    command = "python -m chest_tf.explain bench " + shlex.join(argv)
    for run in args.runs:
        result = run_bench(run, settings, log=lambda line: print(line, file=sys.stderr, flush=True))
        out = Path(args.out) if args.out else Path(run) / REPORT_DIR
        report = write_report(result, out, command)
        print(f"\n## {result['arch']} ({run})\n")
        print(format_tables(result))
        print(f"\nreport: {report}", file=sys.stderr)
    return 0


def prior_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.explain prior",
        description="The image-blind location prior's pointing-game hit rate per finding (fitted on train masks) "
                    "next to a uniformly random point, on a phantom version-2 test split.")
    parser.add_argument("dataset", help="phantom2, phantom2_hard, phantom2_shortcut, or phantom (version 1: its boxes)")
    parser.add_argument("--size", type=int, default=28, choices=SIZES)
    parser.add_argument("--data-dir", help="where the npz is (generated there when missing)")
    parser.add_argument("--tolerance", type=float, help="pointing-game tolerance in px (default 15 px at 224, scaled)")
    args = parser.parse_args(argv)
    info = get_info(args.dataset)
    if not info.generated:
        raise ConfigError(f"{info.name} has no finding locations; use a phantom set (phantom2, ..., or phantom: boxes)")
    path = download.npz_path(info, args.size, args.data_dir)
    if not path.is_file() or (info.name != "phantom" and not phantom.masks_path(path).is_file()):
        print(f"generating {info.name} at {args.size} px into {path}", file=sys.stderr)
        phantom.write_phantom(path, size=args.size)
    print(format_prior_table(prior_table(path, args.tolerance)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    if argv and argv[0] == "prior":
        return prior_main(argv[1:])
    args = build_parser().parse_args(argv)
    labels = [part for value in (args.label or []) for part in value.split(",") if part.strip()] or None
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {args.max_pixels}")
    resolved = resolve_model(args.model, args.dataset)
    summary = explain_files(resolved.model, resolved.metadata, args.inputs, args.out, labels=labels,
                            top_k=args.top_k, method=args.method, layer=args.layer, max_pixels=args.max_pixels,
                            contact_sheet=not args.no_contact_sheet)
    for row in summary["results"]:
        print(f"{row['file']}: {row['finding']} p={row['prob']:.3f} -> {row['overlay']}")
    if summary["contact_sheet"]:
        print(f"contact sheet: {summary['contact_sheet']}")
    print(f"explained {len({r['file'] for r in summary['results']})} image(s) with {summary['method']}"
          + (f", {len(summary['errors'])} failed" if summary["errors"] else "") + f" -> {args.out}", file=sys.stderr)
    return 1 if summary["errors"] else 0
