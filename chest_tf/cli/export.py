"""``python -m chest_tf.export RUN_DIR [RUN_DIR ...]``: a SavedModel that takes uint8 images, with
calibrated probabilities, an out-of-distribution score, its metadata, a report and a model card.

    python -m chest_tf.export runs/chestmnist_224/resnet18_s0                 # -> saved_models/resnet18_chestmnist_224
    python -m chest_tf.export RUN_DIR --out saved_models/chest_v2 [--overwrite] [--no-verify]
    python -m chest_tf.export runs/sweeps/pneumonia/runs/* --out saved_models/pneumonia_ensemble   # deep ensemble
    python -m chest_tf.export RUN_DIR --calibration none --ood none        # the model's own probabilities only

Several run dirs (same dataset and size) become one deep ensemble: the mean of the members'
probabilities, and their spread as ``uncertainty``. What export measures and adds:
``chest_tf.serving.release``; what the folder holds and how to load it without chest_tf:
``chest_tf.serving.savedmodel``.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from chest_tf.serving.calibration import SCOPES
from chest_tf.serving.metadata import KERAS_FILENAME, METADATA_PATH, read_metadata
from chest_tf.serving.model_card import CARD_NAME
from chest_tf.serving.ood import METHODS
from chest_tf.serving.release import release_options
from chest_tf.serving.savedmodel import export_runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.export",
        description="Export training runs as a SavedModel taking uint8 images (serve / serving_default), with "
                    "calibration, an OOD score, assets/metadata.json, model.keras, report/ and MODEL_CARD.md.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folder(s) (config.json, best.keras, eval/metrics.json); several make an ensemble")
    parser.add_argument("--out", help="export folder (default saved_models/<arch>_<dataset>_<size>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export (once the new one is complete)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the SavedModel and comparing it with the Keras model")
    group = parser.add_argument_group("calibration and OOD (fitted on the run's own train/val data)")
    group.add_argument("--calibration", choices=SCOPES, help="temperature scaling: global (default), per-label, none")
    group.add_argument("--ood", choices=METHODS, help="OOD score: mahalanobis (default), energy, none")
    group.add_argument("--ood-percentile", type=float, help="in distribution up to this percentile of val scores "
                                                            "(default 99)")
    group.add_argument("--ood-reference", metavar="NPZ",
                       help="a MedMNIST-format npz of another dataset; its test split is one more far-OOD set")
    group.add_argument("--ood-fit-images", type=int, help="training images for the OOD statistics (default 20000)")
    group.add_argument("--ood-eval-images", type=int, help="test images per OOD set for the AUROCs (default 1000)")
    group.add_argument("--threshold", choices=("youden", "sensitivity", "specificity", "fixed"),
                       help="how thresholds are chosen on calibrated val scores (default: the run's own)")
    group.add_argument("--target", type=float, help="target sensitivity/specificity, or the fixed threshold")
    group.add_argument("--batch-size", type=int, help="prediction batch size (default 256)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = release_options(calibration=args.calibration, ood=args.ood, ood_percentile=args.ood_percentile,
                              ood_reference=args.ood_reference, ood_fit_images=args.ood_fit_images,
                              ood_eval_images=args.ood_eval_images, threshold_method=args.threshold,
                              target=args.target, batch_size=args.batch_size)
    command = "python -m chest_tf.export " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out = export_runs(args.run_dirs, args.out, overwrite=args.overwrite, verify=not args.no_verify, options=options,
                      commands=[command])
    meta = read_metadata(out)
    t = meta["thresholds"]
    print(f"exported {out}: {meta['arch']} on {meta['dataset']} {meta['input']['height']} px, "
          f"{len(meta['output_names'])} output(s), thresholds {t['method']}"
          f"{' (chosen on ' + t['chosen_on'] + ')' if t.get('chosen_on') else ''}")
    calibration = meta.get("calibration") or {}
    if calibration.get("method") == "temperature":
        ece = calibration["ece"]
        print(f"  calibration: temperature ({calibration['scope']}) fitted on val; mean ECE on test "
              f"{ece['test_before']:.4f} -> {ece['test_after']:.4f}")
    ood = meta.get("ood") or {}
    if ood.get("method", "none") != "none":
        rows = ", ".join(f"{name} {row['auroc']:.3f}" for name, row in ood["evaluation"].items()
                         if row["auroc"] is not None)
        print(f"  OOD ({ood['method']}, threshold {ood['threshold']:.4g}): AUROC against {rows}")
    outputs = ", ".join(meta["signature"]["outputs"])
    print(f"  serve / serving_default: images uint8 [N,H,W] or [N,H,W,C] -> {outputs}; "
          f"metadata {out / METADATA_PATH}; Keras model {out / KERAS_FILENAME}; card {out / CARD_NAME}")
    return 0
