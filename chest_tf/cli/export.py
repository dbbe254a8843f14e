"""``python -m chest_tf.export RUN_DIR``: a SavedModel that takes uint8 images, with its metadata.

    python -m chest_tf.export runs/chestmnist_224/resnet18_s0                 # -> saved_models/resnet18_chestmnist_224
    python -m chest_tf.export RUN_DIR --out saved_models/chest_v2 [--overwrite] [--no-verify]


What the folder holds and how to load it without chest_tf: ``chest_tf.serving.savedmodel``.
"""
from __future__ import annotations

import argparse

from chest_tf.serving.metadata import KERAS_FILENAME, METADATA_PATH, read_metadata
from chest_tf.serving.savedmodel import export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.export",
        description="Export a training run as a SavedModel taking uint8 images (serve / serving_default), "
                    "with assets/metadata.json and model.keras beside it.",
    )
    parser.add_argument("run_dir", help="run folder (config.json, best.keras, eval/metrics.json)")
    parser.add_argument("--out", help="export folder (default saved_models/<arch>_<dataset>_<size>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export (once the new one is complete)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the SavedModel and comparing it with the Keras model")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, verify=not args.no_verify)
    meta = read_metadata(out)
    t = meta["thresholds"]
    print(f"exported {out}: {meta['arch']} on {meta['dataset']} {meta['input']['height']} px, "
          f"{len(meta['output_names'])} output(s), thresholds {t['method']}"
          f"{' (chosen on ' + t['chosen_on'] + ')' if t.get('chosen_on') else ''}")
    print(f"  serve / serving_default: images uint8 [N,H,W] or [N,H,W,C] -> logits, probs; "
          f"metadata {out / METADATA_PATH}; Keras model {out / KERAS_FILENAME}")
    return 0


