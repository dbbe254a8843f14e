"""Explain a classifier on image files: ``python -m chest_tf.explain MODEL IMAGE_OR_FOLDER...``.

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

``--method`` (default ``gradcam`` for CNNs, ``grad-rollout`` for ViTs) and the maths are
described in ``chest_tf.explain.methods``. ``--layer`` explains another feature map (e.g.
``conv4_block2_out``): at 28 px the last stage is only 4x4 (ResNet) or 3x3 (DenseNet) cells,
which bounds how finely it can point. For a one-logit binary model, top-1 is the called class.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chest_tf.errors import ConfigError
from chest_tf.explain.files import explain_files
from chest_tf.explain.methods import METHODS
from chest_tf.runs import resolve_model

DEFAULT_OUT = Path("explanations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.explain",
        description="Heatmaps of where a chest X-ray classifier looks (Grad-CAM, Grad-CAM++, attention "
                    "rollout), written as overlay PNGs for image files.",
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


def main(argv: list[str] | None = None) -> int:
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
