"""Do the heatmaps point at the findings? The pointing game and the randomisation check of
``chest_tf.explain`` on phantom run folders (issue 7), as a table anyone can repeat.

This is the version-1 check, on the finding boxes of ``--dataset phantom`` (kept so its numbers
can be reproduced). The localisation benchmark of issue 14 -- phantom version 2 with per-pixel
masks and broad placement, every method, energy, IoU, deletion/insertion, bootstrap intervals,
the image-blind prior and both randomisation checks -- is ``python -m chest_tf.explain bench
RUN_DIR`` (all of it in one command: ``python pipelines/localisation.py``).

    python pipelines/pointing_game.py RUN_DIR [RUN_DIR ...] [--sanity 64] [--per-finding] [--json out.json]
    python pipelines/pointing_game.py --train-reference runs/xai        # train the reference models first

For every run (trained on ``--dataset phantom``) and method (Grad-CAM and Grad-CAM++ for CNNs,
rollout and gradient-weighted rollout for ViTs; ``--also-layer conv4_block2_out`` adds Grad-CAM
one stage earlier where a run has that layer), over every test image and present finding:

- hit rate: the heatmap's peak lies in the finding's box (95% Wilson interval);
- energy in box: the share of the heatmap's mass inside the box;
- random: the box's mean area share, the hit rate of a uniformly random point and the energy
  share of a uniform map;
- prior@grid: an image-blind baseline: always point at the peak of the finding's mean training
  box, reduced to the method's native resolution (its location prior);
- ceiling: the share of boxes that a map of the method's native resolution can point into at all
  (``chest_tf.explain.reachable_peaks``): a 4x4 feature map at 28 px cannot hit a 2 px box.

``--sanity N`` adds the Adebayo et al. (2018) check on N test images (each explained for its
first present finding): mean Spearman correlation between the trained model's heatmaps and those
after re-initialising the weights from the output down (cascading) and in full.

Reference models (``--train-reference DIR`` runs these one after the other, on the default
phantom set at 28 px written into DIR/data):

    python -m chest_tf.train --dataset phantom --data-dir DIR/data --arch resnet18 --model-arg width=16 \\
        --epochs 8 --batch-size 64 --lr 3e-3 --augment light --run-dir DIR/resnet18_w16
    python -m chest_tf.train --dataset phantom --data-dir DIR/data --arch densenet121 --model-arg growth_rate=12 \\
        --epochs 8 --batch-size 64 --lr 3e-3 --augment light --run-dir DIR/densenet121_k12
    python -m chest_tf.train --dataset phantom --data-dir DIR/data --arch vit_tiny --model-arg dim=64 \\
        --model-arg depth=4 --model-arg heads=4 --model-arg patch_size=4 --epochs 40 --batch-size 64 \\
        --lr 2e-3 --warmup-epochs 2 --augment light --run-dir DIR/vit_tiny_d64
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data.phantom import PHANTOM_LABELS  # noqa: E402
from chest_tf.errors import ConfigError  # noqa: E402
from chest_tf.explain import api as explain  # noqa: E402
from chest_tf.models.registry import arch_family  # noqa: E402
from chest_tf.runs import read_run_dir, resolve_model  # noqa: E402

REFERENCE_RUNS = {
    "resnet18_w16": ["--arch", "resnet18", "--model-arg", "width=16", "--epochs", "8", "--batch-size", "64",
                     "--lr", "3e-3", "--augment", "light"],
    "densenet121_k12": ["--arch", "densenet121", "--model-arg", "growth_rate=12", "--epochs", "8",
                        "--batch-size", "64", "--lr", "3e-3", "--augment", "light"],
    "vit_tiny_d64": ["--arch", "vit_tiny", "--model-arg", "dim=64", "--model-arg", "depth=4", "--model-arg", "heads=4",
                     "--model-arg", "patch_size=4", "--epochs", "40", "--batch-size", "64", "--lr", "2e-3",
                     "--warmup-epochs", "2", "--augment", "light"],
}
FAMILY_METHODS = {"resnet": ["gradcam", "gradcam++"], "densenet": ["gradcam", "gradcam++"],
                  "vit": ["rollout", "grad-rollout"]}


def train_reference(folder: Path) -> list[Path]:
    runs = []
    for name, args in REFERENCE_RUNS.items():
        run_dir = folder / name
        command = [sys.executable, "-m", "chest_tf.train", "--dataset", "phantom", "--data-dir", str(folder / "data"),
                   *args, "--run-dir", str(run_dir)]
        if not (run_dir / "finished.json").exists():
            print("$", shlex.join(command), flush=True)
            subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
        runs.append(run_dir)
    return runs


def run_facts(run_dir: Path) -> dict:
    """Arch, family, test AUC, training seconds and the training command of a run folder."""
    config = asdict(read_run_dir(run_dir)[0])
    arch = config["model"]["arch"]
    facts = {"run_dir": str(run_dir), "arch": arch, "family": arch_family(arch), "test_auc": None,
             "train_seconds": None}
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        facts["test_auc"] = json.loads(metrics.read_text()).get("headline", {}).get("auc")
    timing = run_dir / "timing.json"
    if timing.is_file():
        facts["train_seconds"] = sum(e["seconds"] for e in json.loads(timing.read_text()).get("epochs", []))
    train, data = config["train"], config["data"]
    command = ["python -m chest_tf.train", "--dataset", data["dataset"], "--size", str(data["size"]),
               "--arch", arch]
    for key, value in (config["model"].get("overrides") or {}).items():
        command += ["--model-arg", f"{key}={json.dumps(value)}"]
    command += ["--epochs", str(train["epochs"]), "--batch-size", str(train["batch_size"]), "--lr", str(train["lr"]),
                "--warmup-epochs", str(train["warmup_epochs"]), "--augment", train["augment"], "--seed", str(train["seed"])]
    facts["command"] = " ".join(command)
    return facts


def evaluate_run(run_dir: Path, methods: list[str] | None, also_layers: list[str], tolerance: float,
                 sanity: int, max_images: int | None) -> dict:
    facts = run_facts(run_dir)
    model = resolve_model(run_dir).model
    npz = explain.run_phantom_npz(run_dir)
    images, labels, boxes = explain.load_phantom_split(npz, "test")
    if max_images:
        images, labels, boxes = images[:max_images], labels[:max_images], boxes[:max_images]
    train_labels, train_boxes = explain.load_phantom_split(npz, "train")[1:]
    x = explain.prepare_images(images, model)
    height, width = x.shape[1:3]
    prior = explain.location_prior(train_labels, train_boxes, height, width)
    plan = [(m, None) for m in (methods or FAMILY_METHODS[facts["family"]])]
    layer_names = {layer.name for layer in model.layers}
    plan += [("gradcam", layer) for layer in also_layers if facts["family"] != "vit" and layer in layer_names]
    rows = []
    for method, layer in plan:
        start = time.perf_counter()
        result = explain.pointing_game(model, x, labels, boxes, method, label_names=PHANTOM_LABELS, layer=layer,
                                       tolerance=tolerance)
        grid = tuple(result["native_grid"])
        result["prior"] = explain.prior_pointing_game(prior, labels, boxes, label_names=PHANTOM_LABELS,
                                                      tolerance=tolerance, grid=grid)
        result["seconds"] = time.perf_counter() - start
        if sanity:
            present = (labels > 0) & ~np.isnan(boxes[..., 0])
            index = np.flatnonzero(present.any(axis=1))[:sanity]
            targets = present[index].argmax(axis=1)
            result["sanity"] = explain.sanity_check(model, x[index], targets, method, layer=layer)
        rows.append(result)
    return {**facts, "n_test_images": len(images), "results": rows}


def _pct(value) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


def print_tables(runs: list[dict], per_finding: bool) -> None:
    print("\n| family | arch | method (layer, grid) | n | hit rate [95% CI] | energy in box | random | "
          "prior@grid | ceiling | test AUC | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        for r in run["results"]:
            o, p = r["overall"], r["prior"]["overall"]
            grid = "x".join(map(str, r["native_grid"]))
            where = f"{r['layer']}, {grid}" if r["layer"] else grid
            lo, hi = o["hit_rate_ci95"]
            seconds = run["train_seconds"]
            print(f"| {run['family']} | {run['arch']} | {r['method']} ({where}) | {o['n']} | "
                  f"{o['hit_rate']:.3f} [{lo:.3f}, {hi:.3f}] | {o['energy_in_box']:.3f} | {o['random_baseline']:.3f} | "
                  f"{p['hit_rate']:.3f} | {o['resolution_ceiling']:.3f} | {_pct(run['test_auc'])} | "
                  f"{'-' if seconds is None else f'{seconds:.0f}'} |")
    print("\nmacro averages over findings (hit rate / energy / random):")
    for run in runs:
        for r in run["results"]:
            m = r["macro"]
            print(f"  {run['arch']:<12} {r['method']:<13} {r['layer'] or '':<17} {m['hit_rate']:.3f} / "
                  f"{m['energy_in_box']:.3f} / {m['random_baseline']:.3f}")
    if per_finding:
        for run in runs:
            for r in run["results"]:
                print(f"\n{run['arch']} {r['method']} {r['layer'] or ''}: per finding")
                print("| finding | n | hit | energy | random | prior@grid | ceiling |")
                print("|---|---|---|---|---|---|---|")
                for name, s in r["per_finding"].items():
                    prior = r["prior"]["per_finding"].get(name, {}).get("hit_rate", float("nan"))
                    print(f"| {name} | {s['n']} | {s['hit_rate']:.2f} | {s['energy_in_box']:.2f} | "
                          f"{s['random_baseline']:.2f} | {prior:.2f} | {s['resolution_ceiling']:.2f} |")
    sanity = [(run, r) for run in runs for r in run["results"] if "sanity" in r]
    if sanity:
        print("\nrandomisation check (mean Spearman of heatmaps, trained vs re-initialised; 1 = unchanged):")
        for run, r in sanity:
            steps = r["sanity"]["steps"]
            text = ", ".join(f"{s['randomized'].split(' + ')[-1] if s['groups'] else 'all'}: {s['spearman_mean']:.2f}"
                             for s in steps)
            print(f"  {run['arch']} {r['method']} {r['layer'] or ''} (n={r['sanity']['n']}): cascade {text}")
    print("\ntraining commands:")
    for run in runs:
        print(f"  {run['arch']}: {run['command']} (test AUC {_pct(run['test_auc'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders trained on the phantom set")
    parser.add_argument("--train-reference", metavar="DIR", help="train the reference models into DIR first")
    parser.add_argument("--methods", help="comma-separated (default: both of each family's)")
    parser.add_argument("--also-layer", action="append", default=[],
                        help="also Grad-CAM this layer where a CNN has it (e.g. conv4_block2_out)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="hit within this many pixels of the box")
    parser.add_argument("--sanity", type=int, default=0, metavar="N", help="randomisation check on N test images")
    parser.add_argument("--max-images", type=int, help="use only the first N test images")
    parser.add_argument("--per-finding", action="store_true", help="also print per-finding tables")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # every randomised copy traces its own function; that is expected
    runs = [Path(r) for r in args.runs]
    if args.train_reference:
        runs += train_reference(Path(args.train_reference))
    if not runs:
        raise ConfigError("give run folders, or --train-reference DIR")
    methods = args.methods.split(",") if args.methods else None
    results = [evaluate_run(run, methods, args.also_layer, args.tolerance, args.sanity, args.max_images)
               for run in runs]
    print_tables(results, args.per_finding)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
