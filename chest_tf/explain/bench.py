"""The localisation benchmark: ``python -m chest_tf.explain bench RUN_DIR [--methods ...]``.

Over the test split of a phantom version-2 set (``chest_tf.data.phantom``: findings placed
broadly, a per-pixel mask for each), for every explanation method that applies to the run's model
and every drawn finding with a meaningful location (``phantom.LOCALISABLE``; hernia, whose site is
fixed, is reported apart; cardiomegaly, edema, emphysema and fibrosis are left out):

- pointing game: the map's peak within ``tolerance`` px of the finding's mask (Zhang et al.'s
  15 px at 224, scaled: 1.9 px at 28), and strictly inside it;
- energy-based pointing game: the share of the map's mass inside the mask;
- mask IoU: the map binarised at the threshold with the best mean IoU on validation images;
- faithfulness: deletion and insertion AUC (Petsiuk et al. 2018) on the instances the model
  detects (probability >= 0.5): the target's probability as the most salient pixels are
  replaced by a blurred copy (deletion; lower is better) or put back into it (insertion; higher
  is better), beside the same curves in a random pixel order;
- 95% bootstrap intervals over instances, beside a uniformly random point (anywhere, or in the
  lungs) and the image-blind location prior (the peak of each finding's mean training mask:
  fitted on the train split only);
- the randomisation checks of Adebayo et al. (2018): maps of copies with weights re-initialised
  from the output down (cascading) and in full, and (``label_random=``) of the same architecture
  trained on permuted labels (``--dataset phantom2_randlabels``), compared with the trained
  model's by Spearman rank correlation and SSIM. A method passes a check when its mean Spearman
  is at most ``PASS_SPEARMAN`` (0.2); one that does not is reported as failing;
- on a shortcut-mode set (``phantom2_shortcut``): how much of the shortcut label's maps lands on
  the marker, and the label's AUC on validation (marker correlated) and test (not).

``run_bench`` returns everything as one dict; ``write_report`` writes ``report.md``,
``bench.json`` and, per method, ``examples_<method>.png`` (examples with the ground-truth
outlines).
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chest_tf.data import download, npz, phantom
from chest_tf.data.info import get_info
from chest_tf.errors import ConfigError
from chest_tf.evaluation.metrics import roc_auc_columns, sigmoid
from chest_tf.explain.checks import (
    best_threshold,
    bootstrap_mean,
    box_masks,
    deletion_insertion,
    dilate,
    load_phantom_split,
    map_similarity,
    mask_iou,
    mask_prior,
    pixel_orders,
    pointing_tolerance,
    sanity_check,
    score_masks,
)
from chest_tf.explain.methods import METHOD_TITLES, Explainer, blur, family_methods, prepare_images
from chest_tf.explain.render import save_example_grid
from chest_tf.files import atomic_path, write_json_atomic
from chest_tf.runs import read_run_dir, resolve_model

PASS_SPEARMAN = 0.2
REPORT_DIR = "explain_bench"


@dataclass
class BenchSettings:
    """What the benchmark runs. ``methods``: default every method for the model's family;
    ``max_images``: the first N test images (default all); ``val_images``: validation images for
    the IoU threshold; ``tolerance``: pointing-game tolerance in px (default
    ``pointing_tolerance(size)``); ``faithfulness``: detected instances for deletion/insertion
    (first N); ``sanity``: instances for the randomisation checks; ``label_random``: run dir of
    the same architecture trained on permuted labels; ``examples``: instances per figure."""

    methods: Sequence[str] | None = None
    max_images: int | None = None
    val_images: int = 400
    tolerance: float | None = None
    bootstrap: int = 1000
    steps: int = 16
    faithfulness: int = 300
    sanity: int = 32
    cascade: bool = True
    label_random: str | None = None
    examples: int = 8
    seed: int = 0
    batch_size: int = 64
    options: dict = field(default_factory=dict)


@dataclass
class Split:
    images: np.ndarray      # float32 model input (N, H, W, C)
    uint8: np.ndarray       # as stored (N, H, W)
    labels: np.ndarray      # recorded (N, 14)
    masks: phantom.FindingMasks


def run_npz(run_dir) -> tuple[Path, str]:
    """The npz a run trained on and its dataset name; it must be a phantom version-2 set."""
    config, _ = read_run_dir(run_dir)
    data = config.data
    if not data.dataset.startswith("phantom2"):
        raise ConfigError(f"{run_dir} was trained on {data.dataset!r}; the localisation benchmark needs a phantom "
                          "version-2 set (--dataset phantom2, phantom2_hard, phantom2_shortcut), which has masks")
    path = Path(data.npz).expanduser() if data.npz else download.npz_path(get_info(data.dataset), int(data.size),
                                                                          data.data_dir)
    if not path.is_file() or not phantom.masks_path(path).is_file():
        raise ConfigError(f"no phantom npz with masks at {path}; train once on {data.dataset} (it is generated "
                          "on first use) or point --npz at it")
    return path, data.dataset


def load_split(npz_path: Path, split: str, model, limit: int | None = None) -> Split:
    images = npz.read_array(npz_path, f"{split}_images")
    labels = npz.read_array(npz_path, f"{split}_labels")
    masks = phantom.read_masks(npz_path, split)
    if limit is not None and limit < len(images):
        keep = masks.index[:, 0] < limit
        masks = phantom.FindingMasks(masks.size, masks.drawn[:limit], masks.index[keep], masks.bits[keep],
                                     masks.distractor_bits[:limit], masks.marker[:limit], masks.marker_bits[:limit],
                                     masks.lung_bits[:limit], masks.kinds, masks.variant)
        images, labels = images[:limit], labels[:limit]
    if masks.size != images.shape[1]:
        raise ConfigError(f"{npz_path}: masks are {masks.size} px for {images.shape[1]} px images")
    return Split(prepare_images(images, model), images, labels, masks)


def instances(masks: phantom.FindingMasks, kinds: Sequence[str] = ("focal",)) -> np.ndarray:
    """Rows of ``masks.index`` whose finding's location kind is in ``kinds``."""
    wanted = [k for k, name in enumerate(phantom.PHANTOM_LABELS) if phantom.LOCATION_KINDS[name] in kinds]
    return np.flatnonzero(np.isin(masks.index[:, 1], wanted))


def _ci(values, settings: BenchSettings) -> list[float]:
    return list(bootstrap_mean(np.asarray(values, np.float64), settings.bootstrap, settings.seed))


def _probabilities(explainer: Explainer, images: np.ndarray, batch_size: int) -> np.ndarray:
    return sigmoid(explainer.logits(images, batch_size=batch_size).astype(np.float64))


def fit_prior(npz_path) -> np.ndarray:
    """The image-blind location prior of a version-2 phantom npz: per finding (K, H, W), the mean
    of its masks over the train split, which is the only split it reads."""
    train = phantom.read_masks(npz_path, "train")
    return mask_prior(train.masks(), train.index[:, 1], len(phantom.PHANTOM_LABELS))


def prior_baselines(prior: np.ndarray, test_masks: np.ndarray, test_findings: np.ndarray, lungs: np.ndarray,
                    tolerance: float) -> dict[str, np.ndarray]:
    """Per test instance: the image-blind prior's scores (``score_masks`` of each finding's prior
    map, ``fit_prior``) and the uniform baselines: a random point anywhere (``area``) or in the
    lungs (``lung_area``: the share of lung pixels within the tolerance of the mask)."""
    scores = score_masks(prior[test_findings], test_masks, tolerance)
    grown = dilate(test_masks, tolerance)
    scores["lung_area"] = (grown & lungs).sum(axis=(1, 2)) / np.maximum(lungs.sum(axis=(1, 2)), 1)
    return scores


def run_bench(run_dir, settings: BenchSettings | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The benchmark of one run folder (see the module docstring); returns the figures as a dict."""
    settings = settings or BenchSettings()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    npz_path, dataset = run_npz(run_dir)          # before loading anything: a one-line error for other data
    model = resolve_model(run_dir).model
    methods = list(settings.methods or family_methods(model))
    for method in methods:
        Explainer(model, method)  # one-line error for a method that does not fit the model, before any work
    test = load_split(npz_path, "test", model, settings.max_images)
    val = load_split(npz_path, "val", model, settings.val_images)
    prior_maps = fit_prior(npz_path)
    size = test.uint8.shape[1]
    tolerance = pointing_tolerance(size) if settings.tolerance is None else float(settings.tolerance)
    rows = instances(test.masks)
    fixed_rows = instances(test.masks, ("fixed",))
    val_rows = instances(val.masks)
    image_of, finding_of = test.masks.index[rows, 0], test.masks.index[rows, 1]
    test_masks = test.masks.masks(rows)
    lungs = test.masks.lungs(image_of)
    log(f"{run_dir}: {model.name} on {dataset} {size} px, {len(test.uint8)} test images, {len(rows)} localisable "
        f"findings (+{len(fixed_rows)} fixed-site), {len(val_rows)} on {len(val.uint8)} val images for the IoU threshold")

    base = prior_baselines(prior_maps, test_masks, finding_of, lungs, tolerance)
    prior_threshold, _ = best_threshold(prior_maps[val.masks.index[val_rows, 1]], val.masks.masks(val_rows))
    base["iou"] = mask_iou(prior_maps[finding_of], test_masks, prior_threshold)

    # the model's outputs on the test images: AUC and which instances it detects
    probe = Explainer(model, methods[0])
    test_probs = _probabilities(probe, test.images, settings.batch_size)
    auc = roc_auc_columns(test.labels, test_probs)
    found = test_probs[image_of, finding_of] >= 0.5   # the instances the model detects
    detected = np.flatnonzero(found)[:settings.faithfulness]
    reference = blur(test.images[image_of[detected]], max(1.0, size / 10))

    def predict(x):
        return _probabilities(probe, x, 256)

    random_curves = deletion_insertion(predict, test.images[image_of[detected]], finding_of[detected],
                                       pixel_orders(np.zeros((len(detected), size, size)), settings.seed, random=True),
                                       reference, settings.steps)
    sanity_rows = rows[:settings.sanity]
    label_model = resolve_model(settings.label_random).model if settings.label_random else None

    results = {}
    for method in methods:
        t0 = time.perf_counter()
        explainer = Explainer(model, method, **settings.options.get(method, {}))
        maps = explainer.heatmaps(test.images[image_of], finding_of, batch_size=settings.batch_size)
        val_maps = explainer.heatmaps(val.images[val.masks.index[val_rows, 0]], val.masks.index[val_rows, 1],
                                      batch_size=settings.batch_size)
        threshold, val_iou = best_threshold(val_maps, val.masks.masks(val_rows))
        scores = score_masks(maps, test_masks, tolerance)
        iou = mask_iou(maps, test_masks, threshold)
        faith = deletion_insertion(predict, test.images[image_of[detected]], finding_of[detected],
                                   pixel_orders(maps[detected], settings.seed), reference, settings.steps)
        fixed = {}
        if len(fixed_rows):
            fixed_maps = explainer.heatmaps(test.images[test.masks.index[fixed_rows, 0]],
                                            test.masks.index[fixed_rows, 1], batch_size=settings.batch_size)
            fixed = {"n": len(fixed_rows),
                     "hit_rate": float(score_masks(fixed_maps, test.masks.masks(fixed_rows), tolerance)["hit"].mean())}
        sanity_images = test.images[test.masks.index[sanity_rows, 0]]
        sanity_targets = test.masks.index[sanity_rows, 1]
        # computed afresh (not taken from ``maps``), so that SmoothGrad's noise is drawn alike for the
        # trained and the randomised models
        sanity_reference = explainer.heatmaps(sanity_images, sanity_targets, batch_size=settings.batch_size)
        checks = sanity_check(model, sanity_images, sanity_targets, method, seed=settings.seed,
                              cascade=settings.cascade, options=settings.options.get(method, {}),
                              reference=sanity_reference, batch_size=settings.batch_size)
        if label_model is not None:
            random_maps = Explainer(label_model, method, **settings.options.get(method, {})).heatmaps(
                sanity_images, sanity_targets, batch_size=settings.batch_size)
            checks["label_randomisation"] = map_similarity(sanity_reference, random_maps)
        full = checks["steps"][-1]["spearman_mean"]
        label_rho = checks.get("label_randomisation", {}).get("spearman_mean")
        checks["passes_model_randomisation"] = bool(np.isfinite(full) and full <= PASS_SPEARMAN)
        checks["passes_label_randomisation"] = None if label_rho is None else bool(
            np.isfinite(label_rho) and label_rho <= PASS_SPEARMAN)
        results[method] = {
            "title": METHOD_TITLES[method], "layer": explainer.layer,
            "hit_rate": _ci(scores["hit"], settings), "strict_hit_rate": _ci(scores["strict_hit"], settings),
            "hit_rate_detected": _ci(scores["hit"][found], settings),
            "energy": _ci(scores["energy"], settings), "iou": _ci(iou, settings), "iou_threshold": threshold,
            "val_iou": val_iou, "deletion_auc": _ci(faith["deletion_auc"], settings),
            "insertion_auc": _ci(faith["insertion_auc"], settings),
            "deletion_vs_random": float(np.mean(faith["deletion_auc"]) / np.mean(random_curves["deletion_auc"])),
            "per_finding": _per_finding(finding_of, scores["hit"]), "empty_maps": int(scores["empty"].sum()),
            "fixed_site": fixed, "randomisation": checks, "seconds": time.perf_counter() - t0,
            "_maps": maps, "_hits": scores["hit"],
        }
        log(f"  {method}: pointing game {results[method]['hit_rate'][0]:.3f}, energy {results[method]['energy'][0]:.3f}, "
            f"IoU {results[method]['iou'][0]:.3f}, deletion {results[method]['deletion_auc'][0]:.3f} "
            f"(random {np.mean(random_curves['deletion_auc']):.3f}), full re-init Spearman {full:.2f}"
            + ("" if label_rho is None else f", label randomisation {label_rho:.2f}")
            + f" [{results[method]['seconds']:.0f} s]")

    shortcut = _shortcut_analysis(model, methods, test, val, settings, tolerance) \
        if test.masks.variant.get("shortcut") else None
    config, _ = read_run_dir(run_dir)
    return {
        "run_dir": str(run_dir), "arch": config.model.arch, "model": model.name, "dataset": dataset, "size": size,
        "npz": str(npz_path), "variant": test.masks.variant, "settings": {**asdict(settings), "tolerance": tolerance},
        "n_test_images": len(test.uint8), "n_instances": len(rows), "n_detected": len(detected),
        "n_found": int(found.sum()),
        "test_auc": float(np.nanmean(auc)), "test_auc_per_label": dict(zip(phantom.PHANTOM_LABELS, map(float, auc))),
        "baselines": {
            "uniform_image": {"hit_rate": _ci(base["area"], settings), "strict_hit_rate": _ci(base["strict_area"], settings),
                              "energy": _ci(base["mask_area"], settings),
                              "iou": _ci(test_masks.mean(axis=(1, 2)), settings)},
            "uniform_lungs": {"hit_rate": _ci(base["lung_area"], settings)},
            "prior": {"hit_rate": _ci(base["hit"], settings), "strict_hit_rate": _ci(base["strict_hit"], settings),
                      "hit_rate_detected": _ci(base["hit"][found], settings),
                      "energy": _ci(base["energy"], settings), "iou": _ci(base["iou"], settings),
                      "iou_threshold": prior_threshold},
            "random_order": {"deletion_auc": _ci(random_curves["deletion_auc"], settings),
                             "insertion_auc": _ci(random_curves["insertion_auc"], settings)},
            "per_finding": {"prior": _per_finding(finding_of, base["hit"]),
                            "uniform_image": _per_finding(finding_of, base["area"]),
                            "uniform_lungs": _per_finding(finding_of, base["lung_area"])},
        },
        "methods": results, "shortcut": shortcut,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores",
        "seconds": time.perf_counter() - started,
        "_examples": {"images": test.uint8[image_of], "masks": test_masks, "findings": finding_of},
    }


def _per_finding(findings: np.ndarray, values: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for k, name in enumerate(phantom.PHANTOM_LABELS):
        sel = findings == k
        if sel.any():
            out[name] = {"n": int(sel.sum()), "mean": float(np.mean(values[sel]))}
    return out


def _shortcut_analysis(model, methods, test: Split, val: Split, settings: BenchSettings, tolerance: float) -> dict:
    """On the test images that carry the shortcut marker: the share of the shortcut label's map
    inside the marker and how often its peak lands on it; the label's AUC on val (marker
    correlated with it) and test (not), and on test with and without the marker."""
    label = test.masks.variant["shortcut"]
    k = phantom.PHANTOM_LABELS.index(label)
    probe = Explainer(model, methods[0])
    val_probs = _probabilities(probe, val.images, settings.batch_size)[:, k]
    test_probs = _probabilities(probe, test.images, settings.batch_size)[:, k]
    marked = np.flatnonzero(test.masks.marker)
    marker_masks = test.masks.marker_masks(marked)
    out = {"label": label, "val_auc": float(roc_auc_columns(val.labels[:, k:k + 1], val_probs[:, None])[0]),
           "test_auc": float(roc_auc_columns(test.labels[:, k:k + 1], test_probs[:, None])[0]),
           "marked_test_images": len(marked), "marker_area": float(marker_masks.mean()),
           "mean_prob_marked": float(test_probs[marked].mean()) if len(marked) else float("nan"),
           "mean_prob_unmarked": float(np.delete(test_probs, marked).mean()),
           "label_rate_marked": float(test.labels[marked, k].mean()) if len(marked) else float("nan"),
           "methods": {}}
    for method in methods:
        maps = Explainer(model, method, **settings.options.get(method, {})).heatmaps(
            test.images[marked], k, batch_size=settings.batch_size)
        scores = score_masks(maps, marker_masks, tolerance)
        out["methods"][method] = {"on_marker": float(scores["hit"].mean()), "energy_on_marker": float(scores["energy"].mean())}
    out["uniform_on_marker"] = float(score_masks(np.ones_like(marker_masks, np.float32), marker_masks, tolerance)["area"].mean())
    return out


# ----------------------------------------------------------------------------------------------
# Tables and the report
# ----------------------------------------------------------------------------------------------
def _times(value: float, baseline: float) -> str:
    """"2.4x", or "n/a x" when the baseline is 0 or undefined (a handful of images)."""
    return f"{value / baseline:.1f}x" if baseline and np.isfinite(baseline) else "n/a x"


def _fmt(ci, digits: int = 3) -> str:
    if ci is None:
        return "-"
    mean, lo, hi = ci
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _verdict(checks: dict) -> str:
    model_ok = checks["passes_model_randomisation"]
    label_ok = checks["passes_label_randomisation"]
    if label_ok is None:
        return "passes (model)" if model_ok else "**fails** (model)"
    if model_ok and label_ok:
        return "passes"
    failed = [name for name, ok in (("model", model_ok), ("labels", label_ok)) if not ok]
    return f"**fails** ({', '.join(failed)})"


def format_tables(result: dict) -> str:
    """The benchmark's tables as markdown (what the command prints and report.md holds)."""
    b = result["baselines"]
    settings = result["settings"]
    lines = [f"Localisable findings: {result['n_instances']} (image, finding) pairs on {result['n_test_images']} test "
             f"images of {result['dataset']} at {result['size']} px; pointing-game tolerance "
             f"{settings['tolerance']:.2f} px; deletion/insertion on {result['n_detected']} detected instances, "
             f"{settings['steps']} steps; 95% bootstrap intervals ({settings['bootstrap']} resamples). "
             f"Test AUC of the model: {result['test_auc']:.3f}. \"detected\": the {result.get('n_found', 0)} instances "
             f"the model finds (probability at least 0.5).", "",
             "| method | pointing game | pointing game, detected | strict (inside mask) | energy in mask | "
             "IoU (threshold from val) | deletion AUC (lower better) | insertion AUC | randomisation checks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, r in result["methods"].items():
        lines.append(f"| {r['title']} | {_fmt(r['hit_rate'])} | {_fmt(r.get('hit_rate_detected'))} | "
                     f"{_fmt(r['strict_hit_rate'])} | {_fmt(r['energy'])} | "
                     f"{_fmt(r['iou'])} ({r['iou_threshold']:.2f}) | {_fmt(r['deletion_auc'])} | "
                     f"{_fmt(r['insertion_auc'])} | {_verdict(r['randomisation'])} |")
    lines.append(f"| uniform random point (image) | {_fmt(b['uniform_image']['hit_rate'])} | | "
                 f"{_fmt(b['uniform_image']['strict_hit_rate'])} | {_fmt(b['uniform_image']['energy'])} | "
                 f"{_fmt(b['uniform_image']['iou'])} (whole image) | | | |")
    lines.append(f"| uniform random point (lungs) | {_fmt(b['uniform_lungs']['hit_rate'])} | | | | | | | |")
    lines.append(f"| image-blind prior (train masks) | {_fmt(b['prior']['hit_rate'])} | "
                 f"{_fmt(b['prior'].get('hit_rate_detected'))} | {_fmt(b['prior']['strict_hit_rate'])} | "
                 f"{_fmt(b['prior']['energy'])} | {_fmt(b['prior']['iou'])} ({b['prior']['iou_threshold']:.2f}) | | | |")
    lines.append(f"| random pixel order | | | | | | {_fmt(b['random_order']['deletion_auc'])} | "
                 f"{_fmt(b['random_order']['insertion_auc'])} | |")
    best = max(result["methods"], key=lambda m: result["methods"][m]["hit_rate"][0])
    prior = b["prior"]["hit_rate"][0]
    r = result["methods"][best]
    lowest = min(result["methods"], key=lambda m: result["methods"][m]["deletion_auc"][0])
    lines += ["", f"Best pointing game: {r['title']} {r['hit_rate'][0]:.3f} = {_times(r['hit_rate'][0], prior)} the "
              f"image-blind prior ({prior:.3f}) and {_times(r['hit_rate'][0], b['uniform_image']['hit_rate'][0])} a "
              f"uniform random point ({b['uniform_image']['hit_rate'][0]:.3f}). Lowest deletion AUC: "
              f"{result['methods'][lowest]['title']} {result['methods'][lowest]['deletion_auc'][0]:.3f}, "
              f"{100 * (1 - result['methods'][lowest]['deletion_vs_random']):.0f}% below random-order deletion "
              f"({b['random_order']['deletion_auc'][0]:.3f})."]

    names = list(result["methods"])
    lines += ["", "Pointing-game hit rate per finding:", "",
              "| finding | n | " + " | ".join(result["methods"][m]["title"] for m in names)
              + " | prior | uniform (image) | uniform (lungs) |",
              "|---|---|" + "---|" * (len(names) + 3)]
    per = b["per_finding"]
    for finding, stats in per["prior"].items():
        cells = [f"{result['methods'][m]['per_finding'][finding]['mean']:.2f}" for m in names]
        lines.append(f"| {finding} | {stats['n']} | " + " | ".join(cells)
                     + f" | {stats['mean']:.2f} | {per['uniform_image'][finding]['mean']:.2f} | "
                     f"{per['uniform_lungs'][finding]['mean']:.2f} |")
    fixed = [(m, r["fixed_site"]) for m, r in result["methods"].items() if r["fixed_site"]]
    if fixed:
        lines += ["", f"Fixed-site finding (hernia, always behind the heart; not in the scores above), "
                  f"n = {fixed[0][1]['n']}: " + ", ".join(f"{result['methods'][m]['title']} {f['hit_rate']:.2f}"
                                                         for m, f in fixed)]

    first = next(iter(result["methods"].values()))["randomisation"]
    steps = [s["randomized"].split(" + ")[-1] if s["groups"] else "all" for s in first["steps"]]
    lines += ["", f"Randomisation checks (Adebayo et al. 2018) on {first['n']} instances: mean Spearman / SSIM of "
              "each method's maps against the trained model's; cascading re-initialisation from the output "
              f"(each column adds a group), full re-initialisation, and a model trained on permuted labels. A method "
              f"passes a check when its mean Spearman is at most {PASS_SPEARMAN}.", "",
              "| method | " + " | ".join(f"+{s}" if s != "all" else "full re-init" for s in steps)
              + " | label randomisation | verdict |",
              "|---|" + "---|" * (len(steps) + 2)]
    for method, r in result["methods"].items():
        checks = r["randomisation"]
        cells = [f"{s['spearman_mean']:.2f} / {s['ssim_mean']:.2f}" for s in checks["steps"]]
        label = checks.get("label_randomisation")
        label_cell = f"{label['spearman_mean']:.2f} / {label['ssim_mean']:.2f}" if label else "not run"
        lines.append(f"| {r['title']} | " + " | ".join(cells) + f" | {label_cell} | {_verdict(checks)} |")

    shortcut = result.get("shortcut")
    if shortcut:
        lines += ["", f"Shortcut marker ({shortcut['label']}): in train and val it marks "
                  f"{int(100 * phantom.SHORTCUT_WITH)}% of the {shortcut['label']} images and "
                  f"{int(100 * phantom.SHORTCUT_WITHOUT)}% of the others; in test it appears at random. "
                  f"{shortcut['label']} AUC: val {shortcut['val_auc']:.3f}, test {shortcut['test_auc']:.3f}. "
                  f"Mean predicted probability on test images with the marker {shortcut['mean_prob_marked']:.3f} "
                  f"(of which {100 * shortcut['label_rate_marked']:.0f}% have the label), without "
                  f"{shortcut['mean_prob_unmarked']:.3f}.", "",
                  f"Maps of {shortcut['label']} on the {shortcut['marked_test_images']} test images with the marker:", "",
                  "| method | peak on the marker | energy on the marker |", "|---|---|---|"]
        for method, s in shortcut["methods"].items():
            lines.append(f"| {METHOD_TITLES[method]} | {s['on_marker']:.2f} | {s['energy_on_marker']:.2f} |")
        lines.append(f"| uniform random point | {shortcut['uniform_on_marker']:.2f} | {shortcut['marker_area']:.3f} |")
    return "\n".join(lines)


def write_report(result: dict, out_dir, command: str | None = None) -> Path:
    """``report.md``, ``bench.json`` and ``examples_<method>.png`` into ``out_dir``; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = result["_examples"]
    chosen = _example_rows(examples["findings"], result["settings"]["examples"])
    figures = {}
    for method, r in result["methods"].items():
        path = out_dir / f"examples_{method.replace('+', 'p')}.png"
        save_example_grid(examples["images"][chosen], r["_maps"][chosen], examples["masks"][chosen],
                          [phantom.PHANTOM_LABELS[k] for k in examples["findings"][chosen]], r["_hits"][chosen],
                          path, title=f"{r['title']} - {result['arch']} on {result['dataset']} {result['size']} px")
        figures[method] = path.name
    text = [f"# Localisation benchmark: {result['arch']} on {result['dataset']} ({result['size']} px)", "",
            f"Run: `{result['run_dir']}`; data: `{result['npz']}` (variant {json.dumps(result['variant'])}). "
            f"Machine: {result['machine']}; {result['seconds']:.0f} s.", ""]
    if command:
        text += [f"Command: `{command}`", ""]
    text += [format_tables(result), "", "## Examples", "",
             "Top: the X-ray with the finding's mask outlined; bottom: the map over it, the peak marked "
             "(x: a hit within the tolerance, o: a miss).", ""]
    text += [f"![{result['methods'][m]['title']}]({name})" for m, name in figures.items()]
    report = out_dir / "report.md"
    with atomic_path(report) as temp:
        Path(temp).write_text("\n".join(text) + "\n")
    write_json_atomic(out_dir / "bench.json", _public(result))
    return report


def _example_rows(findings: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` instances, one per finding in turn (round robin), in order."""
    order: list[int] = []
    pools = {k: list(np.flatnonzero(findings == k)) for k in np.unique(findings)}
    while len(order) < count and any(pools.values()):
        for k in list(pools):
            if pools[k] and len(order) < count:
                order.append(pools[k].pop(0))
    return np.array(order, np.int64)


def _public(value):
    """``result`` without the arrays kept for the figures (keys starting with "_")."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _box_instances(npz_path, split: str):
    """Version 1 (boxes only): (masks from the boxes, findings) of a split's present findings."""
    images, labels, boxes = load_phantom_split(npz_path, split)
    rows, cols = np.nonzero((labels > 0) & ~np.isnan(boxes[..., 0]))
    size = images.shape[1]
    return box_masks(boxes[rows, cols], size, size), cols, size


def prior_table(npz_path, tolerance: float | None = None) -> dict[str, Any]:
    """Per finding of a phantom npz: the image-blind prior's pointing-game hit rate on the test
    split (fitted on the train split's masks only) next to a uniformly random point anywhere and
    in the lungs. A version-1 file (no masks) is scored on its boxes (no lung fields: no
    in-lung baseline)."""
    if phantom.masks_path(npz_path).is_file():
        test = phantom.read_masks(npz_path, "test")
        size, masks, findings = test.size, test.masks(), test.index[:, 1]
        prior, lungs, kind = fit_prior(npz_path), test.lungs(test.index[:, 0]), "masks"
    else:
        masks, findings, size = _box_instances(npz_path, "test")
        train_masks, train_findings, _ = _box_instances(npz_path, "train")
        prior = mask_prior(train_masks, train_findings, len(phantom.PHANTOM_LABELS))
        lungs, kind = np.zeros_like(masks), "boxes"
    tolerance = pointing_tolerance(size) if tolerance is None else tolerance
    base = prior_baselines(prior, masks, findings, lungs, tolerance)
    if kind == "boxes":
        base["lung_area"] = np.full(len(masks), np.nan)
    rows = {}
    for k, name in enumerate(phantom.PHANTOM_LABELS):
        sel = findings == k
        if sel.any():
            rows[name] = {"kind": phantom.LOCATION_KINDS[name], "n": int(sel.sum()), "prior": float(base["hit"][sel].mean()),
                          "uniform_image": float(base["area"][sel].mean()),
                          "uniform_lungs": float(base["lung_area"][sel].mean())}
    focal = np.isin(findings, [phantom.PHANTOM_LABELS.index(n) for n in phantom.LOCALISABLE])
    overall = {"n": int(focal.sum()), "prior": float(base["hit"][focal].mean()),
               "uniform_image": float(base["area"][focal].mean()), "uniform_lungs": float(base["lung_area"][focal].mean())}
    return {"tolerance": tolerance, "size": size, "scored_on": kind, "per_finding": rows, "localisable": overall}


def format_prior_table(table: dict) -> str:
    lines = [f"Image-blind prior (peak of each finding's mean train {'mask' if table['scored_on'] == 'masks' else 'box'}) vs a uniformly random "
             f"point, test split, {table['size']} px, tolerance {table['tolerance']:.2f} px, scored on the "
             f"{table['scored_on']}:", "",
             "| finding | location | n | prior | uniform (image) | uniform (lungs) |", "|---|---|---|---|---|---|"]
    for name, r in table["per_finding"].items():
        lungs = "-" if not np.isfinite(r["uniform_lungs"]) else f"{r['uniform_lungs']:.3f}"
        lines.append(f"| {name} | {r['kind']} | {r['n']} | {r['prior']:.3f} | {r['uniform_image']:.3f} | {lungs} |")
    o = table["localisable"]
    lungs = "-" if not np.isfinite(o["uniform_lungs"]) else f"{o['uniform_lungs']:.3f}"
    lines.append(f"| **localisable (focal) findings** | | {o['n']} | **{o['prior']:.3f}** | {o['uniform_image']:.3f} | "
                 f"{lungs} |")
    lines.append("")
    lines.append(f"The prior hits {o['prior'] / o['uniform_image']:.1f}x as often as a random point anywhere"
                 + ("" if not np.isfinite(o["uniform_lungs"]) else
                    f" and {o['prior'] / o['uniform_lungs']:.1f}x a random point in the lungs") + ".")
    return "\n".join(lines)
