"""Do the heatmaps explain the model? The checks of issue 7 (``pipelines/pointing_game.py`` runs
them on phantom run folders).

- ``pointing_game``: on images with known finding boxes (the phantom set's), the heatmap's peak
  inside the finding's box and the share of heatmap mass inside it, beside a random point's hit
  rate (the box's area share), an image-blind location prior (``location_prior``,
  ``prior_pointing_game``) and the ceiling the map's native resolution allows
  (``reachable_peaks``).
- ``sanity_check`` (Adebayo et al. 2018): the Spearman correlation of heatmaps with those of
  copies whose weights are re-initialised, cascading from the output and in full.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from chest_tf.data import download, phantom
from chest_tf.data.info import get_info
from chest_tf.errors import ConfigError
from chest_tf.evaluation.metrics import midranks
from chest_tf.explain.methods import (
    CNN_METHODS,
    DEFAULT_BATCH_SIZE,
    SINGLE_LAYER_CAMS,
    Explainer,
    blur,
    prepare_images,
    upsample_and_normalize,
)
from chest_tf.runs import read_run_dir


# ----------------------------------------------------------------------------------------------
# Pointing game on known finding locations
# ----------------------------------------------------------------------------------------------
def box_masks(boxes, height: int, width: int, tolerance: float = 0.0) -> np.ndarray:
    """(..., 4) boxes (x0, y0, x1, y1) in pixels (x1, y1 exclusive) -> (..., H, W) bool masks of
    the pixels whose centre lies in the box (``tolerance`` > 0: within that many pixels of it,
    Euclidean, as Zhang et al.'s pointing game allows); NaN boxes give empty masks."""
    boxes = np.asarray(boxes, np.float32)
    cx = np.arange(width, dtype=np.float32) + 0.5
    cy = np.arange(height, dtype=np.float32) + 0.5
    with np.errstate(invalid="ignore"):
        if tolerance <= 0:
            in_x = (cx >= boxes[..., 0:1]) & (cx < boxes[..., 2:3])  # (..., W)
            in_y = (cy >= boxes[..., 1:2]) & (cy < boxes[..., 3:4])  # (..., H)
            masks = in_y[..., :, None] & in_x[..., None, :]
        else:
            dx = np.maximum(np.maximum(boxes[..., 0:1] - cx, cx - boxes[..., 2:3]), 0.0)
            dy = np.maximum(np.maximum(boxes[..., 1:2] - cy, cy - boxes[..., 3:4]), 0.0)
            masks = dy[..., :, None] ** 2 + dx[..., None, :] ** 2 <= tolerance**2
    # A box narrower than a pixel may hold no pixel centre: it still covers the pixel of its centre.
    flat_boxes, flat_masks = boxes.reshape(-1, 4), masks.reshape(-1, height, width)
    for i in np.flatnonzero(~np.isnan(flat_boxes[:, 0]) & ~flat_masks.any(axis=(1, 2))):
        x0, y0, x1, y1 = flat_boxes[i]
        col = int(np.clip(np.floor((x0 + x1) / 2), 0, width - 1))
        row = int(np.clip(np.floor((y0 + y1) / 2), 0, height - 1))
        flat_masks[i, row, col] = True
    return masks


def peak_pixels(heatmaps, rtol: float = 1e-6) -> np.ndarray:
    """(B, H, W) maps -> (B,) flat index of each map's peak. Ties (pixels within ``rtol`` of the
    maximum, e.g. the flat border a bilinear upsampling leaves around a border cell) go to the
    tied pixel nearest the tied pixels' centroid (first in row-major order if still tied), so a
    plateau points at its middle, not at its top-left corner."""
    heatmaps = np.asarray(heatmaps, np.float64)
    n, _, width = heatmaps.shape
    flat = heatmaps.reshape(n, -1)
    peaks = flat.argmax(axis=1) if n else np.zeros(0, np.int64)
    top = flat.max(axis=1) if n else np.zeros(0)
    for i in range(n):
        tied = np.flatnonzero(flat[i] >= top[i] - rtol * max(abs(top[i]), 1e-30))
        if len(tied) > 1:
            ys, xs = np.divmod(tied, width)
            d = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
            peaks[i] = tied[int(np.argmin(d))]
    return peaks


def score_heatmaps(heatmaps, masks, hit_masks=None, reachable=None) -> dict[str, np.ndarray]:
    """Per map: ``hit`` (the peak pixel, ``peak_pixels``, lies in ``hit_masks``,
    default ``masks``; an all-zero map is a miss), ``energy`` (heatmap mass in ``masks`` / total
    mass; 0 for an all-zero map), ``area`` (the hit mask's share of the image: the expected hit
    rate of a uniformly random point), ``box_area`` (the box's share: the energy share of a
    uniform map), ``empty`` (all-zero map), and with ``reachable`` ((H, W) bool, the pixels
    where a map of the method's native resolution can peak) ``ceiling``: the hit mask holds a
    reachable pixel."""
    heatmaps = np.asarray(heatmaps, np.float64)
    masks = np.asarray(masks, bool)
    hit_masks = masks if hit_masks is None else np.asarray(hit_masks, bool)
    n = len(heatmaps)
    flat, mflat, hflat = heatmaps.reshape(n, -1), masks.reshape(n, -1), hit_masks.reshape(n, -1)
    total = flat.sum(axis=1)
    empty = total <= 0
    peak = peak_pixels(heatmaps) if n else np.zeros(0, int)
    hit = hflat[np.arange(n), peak] & ~empty
    energy = np.where(empty, 0.0, (flat * mflat).sum(axis=1) / np.where(empty, 1.0, total))
    out = {"hit": hit, "energy": energy, "area": hflat.mean(axis=1), "box_area": mflat.mean(axis=1),
           "empty": empty}
    if reachable is not None:
        out["ceiling"] = (hflat & np.asarray(reachable, bool).reshape(1, -1)).any(axis=1)
    return out


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _summary(scores: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(scores["hit"])
    hits = int(scores["hit"].sum())

    def mean(key):
        return float(scores[key].mean()) if n and key in scores else float("nan")

    return {
        "n": n,
        "hits": hits,
        "hit_rate": hits / n if n else float("nan"),
        "hit_rate_ci95": list(wilson_interval(hits, n)),
        "energy_in_box": mean("energy"),
        "random_baseline": mean("area"),
        "uniform_energy_baseline": mean("box_area"),
        "resolution_ceiling": mean("ceiling"),
        "empty_maps": int(scores["empty"].sum()),
    }


def native_grid(explainer: Explainer) -> tuple[int, int]:
    """(h, w) of the map a method computes before upsampling: the feature map (single-layer CAMs;
    LayerCAM: its finest stage), the patch grid (rollout), the occlusion windows' positions, or
    the input itself (gradient methods)."""
    if explainer.method in CNN_METHODS:
        shape = explainer._graph.outputs[0].shape
        return int(shape[1]), int(shape[2])
    if explainer.method in ("rollout", "grad-rollout"):
        return explainer.grid
    if explainer.method == "occlusion":
        return (len(range(0, explainer.height - explainer.window + 1, explainer.stride)),
                len(range(0, explainer.width - explainer.window + 1, explainer.stride)))
    return explainer.height, explainer.width


def reachable_peaks(explainer: Explainer) -> np.ndarray:
    """(H, W) bool: pixels where the upsampled map of a single active cell of the native grid
    peaks. An upsampled map peaks at (or next to) its largest cell, so no heatmap of this method
    can point finer than these pixels; the pointing game's ``resolution_ceiling`` is the share of
    boxes that hold one."""
    h, w = native_grid(explainer)
    deltas = np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)
    maps = ops.convert_to_numpy(upsample_and_normalize(deltas, (explainer.height, explainer.width)))
    reachable = np.zeros((explainer.height, explainer.width), bool)
    peaks = peak_pixels(maps)
    reachable.reshape(-1)[peaks] = True
    return reachable


def pointing_game(model, images, labels, boxes, method: str | None = None, *,
                  label_names: Sequence[str] | None = None, findings: Sequence[int] | None = None,
                  layer: str | None = None, tolerance: float = 0.0,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Pointing game and energy-in-box over every (image, finding) where the finding is present.

    ``images``: float32 model input (B, H, W, C) (or uint8, prepared with ``prepare_images``);
    ``labels``: (B, K) 0/1; ``boxes``: (B, K, 4) (x0, y0, x1, y1) in input pixels, NaN where
    absent (the phantom set's ``*_boxes``). Output k is explained for finding k. ``tolerance``:
    a peak within that many pixels of the box counts as a hit (default 0: inside it).

    Returns {"method", "layer", "native_grid", "tolerance", "overall": summary over all
    instances (micro), "macro": means of the per-finding figures, "per_finding": {name: summary}},
    where a summary holds n, hits, hit_rate (+ 95% Wilson interval), energy_in_box (mean share of
    the heatmap's mass inside the box), random_baseline (mean share of the image where a hit
    counts = the expected hit rate of a uniformly random point), uniform_energy_baseline (mean box
    area share = the energy share of a uniform map; equal to random_baseline at tolerance 0),
    resolution_ceiling (share of instances whose box can hold the peak of a map of the method's
    native resolution, see ``reachable_peaks``) and empty_maps (all-zero heatmaps, counted as
    misses).
    """
    explainer = Explainer(model, method, layer=layer)
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prepare_images(images, model)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    if labels.ndim != 2 or boxes.shape != (len(labels), labels.shape[1], 4) or len(images) != len(labels):
        raise ConfigError(f"labels {labels.shape} and boxes {boxes.shape} must be (B, K) and (B, K, 4) "
                          f"for {len(images)} images")
    k_all = labels.shape[1]
    if explainer.num_outputs != k_all:
        raise ConfigError(f"{model.name} has {explainer.num_outputs} outputs for {k_all} findings")
    names = list(label_names) if label_names is not None else [str(k) for k in range(k_all)]
    present = (labels > 0) & ~np.isnan(boxes[..., 0])
    rows, cols = np.nonzero(present)
    if findings is not None:
        keep = np.isin(cols, list(findings))
        rows, cols = rows[keep], cols[keep]
    height, width = explainer.height, explainer.width
    heatmaps = explainer.heatmaps(images[rows], cols, batch_size=batch_size) if len(rows) else \
        np.zeros((0, height, width), np.float32)
    masks = box_masks(boxes[rows, cols], height, width)
    hit_masks = box_masks(boxes[rows, cols], height, width, tolerance) if tolerance > 0 else masks
    scores = score_heatmaps(heatmaps, masks, hit_masks, reachable_peaks(explainer))
    per_finding = {}
    for k in sorted(set(cols.tolist())):
        sel = cols == k
        per_finding[names[k]] = _summary({key: v[sel] for key, v in scores.items()})
    macro = {key: float(np.mean([s[key] for s in per_finding.values()])) if per_finding else float("nan")
             for key in ("hit_rate", "energy_in_box", "random_baseline", "resolution_ceiling")}
    return {"method": explainer.method, "layer": explainer.layer, "native_grid": list(native_grid(explainer)),
            "tolerance": float(tolerance), "overall": _summary(scores), "macro": macro,
            "per_finding": per_finding}


def location_prior(labels, boxes, height: int, width: int) -> np.ndarray:
    """(K, H, W): per finding, the mean box mask over the images where it is present (where
    findings usually are), from a training split. Its peak is the image-blind 'always point at the
    usual place' baseline of the pointing game."""
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    prior = np.zeros((labels.shape[1], height, width), np.float64)
    for k in range(labels.shape[1]):
        present = (labels[:, k] > 0) & ~np.isnan(boxes[:, k, 0])
        if present.any():
            prior[k] = box_masks(boxes[present, k], height, width).mean(axis=0)
    return prior


def prior_pointing_game(prior, labels, boxes, *, label_names: Sequence[str] | None = None,
                        tolerance: float = 0.0, grid: tuple[int, int] | None = None) -> dict[str, Any]:
    """The pointing game played by ``prior`` ((K, H, W), e.g. ``location_prior`` of the train
    split) on (labels, boxes): the same map for every image. ``grid`` (h, w): first reduce the
    prior to that resolution (area average) and upsample it as the explainers do, for a
    comparison at a method's native resolution (``native_grid``). Returns {"overall", "macro",
    "per_finding"} with the summaries of ``pointing_game``."""
    prior = np.asarray(prior, np.float64)
    if grid is not None:
        size = prior.shape[1:]
        coarse = ops.image.resize(prior[..., None].astype(np.float32), tuple(grid), interpolation="area")
        prior = ops.convert_to_numpy(upsample_and_normalize(coarse[..., 0], size)).astype(np.float64)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, np.float32)
    _, height, width = prior.shape
    rows, cols = np.nonzero((labels > 0) & ~np.isnan(boxes[..., 0]))
    masks = box_masks(boxes[rows, cols], height, width)
    hit_masks = box_masks(boxes[rows, cols], height, width, tolerance) if tolerance > 0 else masks
    scores = score_heatmaps(prior[cols], masks, hit_masks)
    names = list(label_names) if label_names is not None else [str(k) for k in range(labels.shape[1])]
    per_finding = {names[k]: _summary({key: v[cols == k] for key, v in scores.items()})
                   for k in sorted(set(cols.tolist()))}
    macro = {key: float(np.mean([s[key] for s in per_finding.values()])) if per_finding else float("nan")
             for key in ("hit_rate", "energy_in_box", "random_baseline")}
    return {"overall": _summary(scores), "macro": macro, "per_finding": per_finding}


def load_phantom_split(npz_path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels (N, 14), boxes (N, 14, 4)) of a phantom npz and the boxes
    file beside it (``chest_tf.data.phantom.boxes_path``)."""
    npz_path = Path(npz_path)
    boxes_file = phantom.boxes_path(npz_path)
    if not npz_path.is_file():
        raise ConfigError(f"no phantom npz at {npz_path}")
    if not boxes_file.is_file():
        raise ConfigError(f"no boxes file {boxes_file} beside {npz_path} (is it a phantom set?)")
    with np.load(npz_path) as data, np.load(boxes_file) as box_data:
        key = f"{split}_boxes"
        if f"{split}_images" not in data or key not in box_data:
            raise ConfigError(f"{npz_path} or its boxes file has no '{split}' split")
        images, labels, boxes = data[f"{split}_images"], data[f"{split}_labels"], box_data[key]
    if len(boxes) != len(images):
        raise ConfigError(f"{boxes_file} holds {len(boxes)} {split} boxes for {len(images)} images")
    return images, labels, boxes


def run_phantom_npz(run_dir) -> Path:
    """The phantom npz a run trained on (its config's data.npz, or DATA_DIR/phantom[_SIZE].npz)."""
    config, _ = read_run_dir(run_dir)
    data = config.data
    if not get_info(data.dataset).generated:
        raise ConfigError(f"{run_dir} was trained on {data.dataset!r}; the pointing game needs the "
                          "phantom set's finding boxes")
    if data.npz:
        return Path(data.npz).expanduser()
    return download.npz_path(get_info(data.dataset), int(data.size), data.data_dir)


# ----------------------------------------------------------------------------------------------
# Sanity check (Adebayo et al. 2018): heatmaps must depend on the learned weights
# ----------------------------------------------------------------------------------------------
def weight_groups(model) -> list[tuple[str, list[str]]]:
    """The model's weighted layers grouped by name prefix (``conv5``, ``pool4``,
    ``encoder_block4``, ``predictions`` ...), from the output back to the input: the steps of a
    cascading randomisation."""
    groups: list[tuple[str, list[str]]] = []
    for layer in reversed(model.layers):
        if not layer.weights:
            continue
        prefix = re.match(r"[a-z]+_block\d+|[^_]+", layer.name).group(0)
        if groups and groups[-1][0] == prefix:
            groups[-1][1].append(layer.name)
        else:
            groups.append((prefix, [layer.name]))
    return groups


def randomized_copy(model, randomize: Sequence[str] | None = None, *, seed: int = 0):
    """A copy of ``model`` with the layers named in ``randomize`` (all weighted layers when None)
    re-initialised by their own initialisers, the others keeping the trained weights. BatchNorm
    layers that are re-initialised get their initial statistics (mean 0, variance 1). Seeds the
    global Keras/TF/numpy RNGs with ``seed`` (``keras.utils.set_random_seed``). ``model`` itself
    is untouched."""
    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(model)
    if randomize is None:
        return fresh
    chosen = set(randomize)
    unknown = chosen - {layer.name for layer in model.layers}
    if unknown:
        raise ConfigError(f"{model.name} has no layer(s) {sorted(unknown)}")
    for layer in model.layers:
        if layer.weights and layer.name not in chosen:
            fresh.get_layer(layer.name).set_weights(layer.get_weights())
    return fresh


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (B, ...) x (B, ...) -> (B,), mid-ranks for
    ties; NaN where either map is constant."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        ra, rb = midranks(a[i]), midranks(b[i])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
        if denom > 0:
            out[i] = float((ra * rb).sum() / denom)
    return out


def sanity_check(model, images, targets, method: str | None = None, *, seed: int = 0, cascade: bool | int = True,
                 layer: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, options: dict | None = None,
                 reference=None) -> dict[str, Any]:
    """Similarity between the trained model's heatmaps and those of copies with re-initialised
    weights (Adebayo et al. 2018, model randomisation): cascading from the output
    (``weight_groups`` order, each step adding the next group; ``cascade=N``: the first N steps
    only, False: none) and in full. Per image: Spearman rank correlation and SSIM; then the mean
    (and median). Heatmaps that explain the model should decorrelate; a method that mostly
    reflects the input would not. ``reference``: the trained model's maps when already computed.

    Returns {"method", "n", "steps": [{"randomized": "predictions" / "... + conv5" / "all
    (full re-initialisation)", "spearman_mean", "spearman_median", "abs_spearman_mean",
    "ssim_mean", "constant_maps"}, ...]}."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prepare_images(images, model)
    options = dict(options or {})
    explainer = Explainer(model, method, layer=layer, **options)
    if reference is None:
        reference = explainer.heatmaps(images, targets, batch_size=batch_size)
    steps = []
    plan: list[tuple[str, list[str] | None]] = []
    if cascade:
        done: list[str] = []
        groups = weight_groups(model)
        if not isinstance(cascade, bool):
            groups = groups[:int(cascade)]
        for prefix, names in groups:
            done = done + names
            plan.append((prefix, list(done)))
    plan.append(("all", None))
    seen_prefixes: list[str] = []
    single_layer = explainer.layer if explainer.method in SINGLE_LAYER_CAMS else None
    for prefix, names in plan:
        copy = randomized_copy(model, names, seed=seed)
        maps = Explainer(copy, explainer.method, layer=single_layer, **options).heatmaps(
            images, targets, batch_size=batch_size)
        if prefix != "all":
            seen_prefixes.append(prefix)
        steps.append({"randomized": "all (full re-initialisation)" if prefix == "all" else " + ".join(seen_prefixes),
                      "groups": len(seen_prefixes) if prefix != "all" else None, **map_similarity(reference, maps)})
    return {"method": explainer.method, "layer": explainer.layer, "n": len(images), "steps": steps}


def map_similarity(a, b) -> dict[str, Any]:
    """Mean/median Spearman, mean |Spearman| and mean SSIM of pairs of maps (B, H, W)."""
    rho = spearman(a, b)
    structural = ssim(a, b)
    return {"spearman_mean": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
            "spearman_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else float("nan"),
            "abs_spearman_mean": float(np.nanmean(np.abs(rho))) if np.isfinite(rho).any() else float("nan"),
            "ssim_mean": float(np.mean(structural)),
            "constant_maps": int(np.isnan(rho).sum())}


# ----------------------------------------------------------------------------------------------
# Masks (phantom version 2): pointing game with a tolerance, energy, IoU, the location prior
# ----------------------------------------------------------------------------------------------
def pointing_tolerance(size: int) -> float:
    """The pointing game's default tolerance for an image ``size`` px wide: Zhang et al.'s 15 px
    at 224 px (Top-down neural attention by excitation backprop, IJCV 2018), scaled."""
    return 15.0 * size / 224.0


def dilate(masks, radius: float) -> np.ndarray:
    """(..., H, W) bool masks grown by every pixel whose centre lies within ``radius`` pixels
    (Euclidean) of a mask pixel's centre; ``radius`` < 1 leaves them as they are."""
    masks = np.asarray(masks, bool)
    r = int(math.floor(radius))
    if r < 1:
        return masks.copy()
    height, width = masks.shape[-2:]
    out = masks.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                ys, yd = (slice(0, height - dy), slice(dy, height)) if dy >= 0 else (slice(-dy, height), slice(0, height + dy))
                xs, xd = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
                out[..., yd, xd] |= masks[..., ys, xs]
    return out


def mask_prior(masks, findings, num_findings: int) -> np.ndarray:
    """(K, H, W): per finding, the mean of its masks (``masks`` (M, H, W), ``findings`` (M,) the
    finding of each), fitted on a training split: where each finding usually is. Its peak is the
    image-blind 'always point at the usual place' baseline."""
    masks = np.asarray(masks, bool)
    findings = np.asarray(findings)
    prior = np.zeros((num_findings, *masks.shape[1:]), np.float64)
    for k in range(num_findings):
        sel = findings == k
        if sel.any():
            prior[k] = masks[sel].mean(axis=0)
    return prior


def mask_iou(heatmaps, masks, threshold: float) -> np.ndarray:
    """(M,) IoU of each map binarised at ``threshold`` (maps in [0, 1]; pixels >= threshold, and
    > 0) with its mask."""
    heatmaps = np.asarray(heatmaps, np.float32)
    masks = np.asarray(masks, bool)
    on = (heatmaps >= threshold) & (heatmaps > 0)
    inter = (on & masks).sum(axis=(1, 2))
    union = (on | masks).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


IOU_THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


def best_threshold(heatmaps, masks, thresholds: Sequence[float] = IOU_THRESHOLDS) -> tuple[float, float]:
    """(threshold, mean IoU) of the threshold with the best mean IoU (chosen on validation)."""
    scores = [float(np.mean(mask_iou(heatmaps, masks, t))) if len(masks) else float("nan") for t in thresholds]
    best = int(np.nanargmax(scores)) if len(masks) else 0
    return float(thresholds[best]), scores[best]


def score_masks(heatmaps, masks, tolerance: float) -> dict[str, np.ndarray]:
    """Per (map, mask): ``hit`` (the peak, ``peak_pixels``, lies within ``tolerance`` px of the
    mask; an all-zero map misses), ``strict_hit`` (inside the mask itself), ``energy`` (map mass in
    the mask / total; the energy-based pointing game), ``area`` (the tolerance-grown mask's share:
    the hit rate of a uniformly random point), ``strict_area`` and ``mask_area`` (the mask's share:
    the energy of a uniform map)."""
    masks = np.asarray(masks, bool)
    grown = dilate(masks, tolerance)
    scores = score_heatmaps(heatmaps, masks, grown)
    strict = score_heatmaps(heatmaps, masks, masks)
    return {"hit": scores["hit"], "strict_hit": strict["hit"], "energy": scores["energy"], "area": scores["area"],
            "strict_area": strict["area"], "mask_area": scores["box_area"], "empty": scores["empty"]}


def bootstrap_mean(values, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means) of ``values`` (NaN-free)."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for lo in range(0, n_resamples, 200):
        hi = min(n_resamples, lo + 200)
        means[lo:hi] = values[rng.integers(0, len(values), size=(hi - lo, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


# ----------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion (Petsiuk et al. 2018, RISE)
# ----------------------------------------------------------------------------------------------
def pixel_orders(heatmaps, seed: int = 0, random: bool = False) -> np.ndarray:
    """(B, H*W) pixel indices, most salient first (ties broken at random, seeded); ``random``:
    a random order per map (the baseline)."""
    heatmaps = np.asarray(heatmaps, np.float64)
    n = len(heatmaps)
    rng = np.random.default_rng(seed)
    jitter = rng.random((n, heatmaps[0].size))
    if random:
        return np.argsort(jitter, axis=1)
    flat = heatmaps.reshape(n, -1)
    return np.lexsort((jitter, -flat), axis=1) if n else np.zeros((0, 0), np.int64)


def deletion_insertion(predict, images, targets, orders, reference, steps: int = 16,
                       batch_size: int = 256) -> dict[str, np.ndarray]:
    """Deletion and insertion curves. ``predict(x) -> (B, K) probabilities``; ``images`` (B, H, W,
    C); ``orders`` (B, H*W) from ``pixel_orders``; ``reference`` (B, H, W, C) the images with the
    information removed (``methods.blur``). Deletion replaces the first 0, 1/steps, ..., all pixels of
    each order with the reference; insertion starts from the reference and puts them back. The
    target's probability is read at each of the steps + 1 points; an AUC is the curve's mean
    under the trapezoid rule over [0, 1]. Returns {"deletion", "insertion": (B, steps + 1) curves,
    "deletion_auc", "insertion_auc": (B,)}."""
    images = np.asarray(images, np.float32)
    reference = np.asarray(reference, np.float32)
    n, height, width, _ = images.shape
    pixels = height * width
    targets = np.asarray(targets, np.int64)
    counts = np.round(np.linspace(0, pixels, steps + 1)).astype(np.int64)
    rank = np.empty((n, pixels), np.int64)
    rank[np.arange(n)[:, None], orders] = np.arange(pixels)[None, :]
    curves = {"deletion": np.zeros((n, steps + 1)), "insertion": np.zeros((n, steps + 1))}
    for kind in curves:
        batch, where = [], []
        for s, count in enumerate(counts):
            removed = (rank < count).reshape(n, height, width, 1)
            mixed = np.where(removed, reference, images) if kind == "deletion" else np.where(removed, images, reference)
            batch.append(mixed)
            where.append(s)
            if sum(len(b) for b in batch) >= batch_size or s == steps:
                stacked = np.concatenate(batch)
                probs = np.asarray(predict(stacked))
                picked = probs.reshape(len(batch), n, -1)[:, np.arange(n), targets]
                for j, step in enumerate(where):
                    curves[kind][:, step] = picked[j]
                batch, where = [], []
    trapezoid = np.full(steps + 1, 1.0 / steps)
    trapezoid[[0, -1]] *= 0.5
    return {**curves, "deletion_auc": curves["deletion"] @ trapezoid, "insertion_auc": curves["insertion"] @ trapezoid}


# ----------------------------------------------------------------------------------------------
# Map similarity: SSIM (Wang et al. 2004) for the randomisation checks
# ----------------------------------------------------------------------------------------------
def ssim(a, b, sigma: float = 1.5, data_range: float = 1.0) -> np.ndarray:
    """(B,) mean structural similarity of each pair of maps (B, H, W), with a Gaussian window of
    ``sigma`` px (11 x 11 at the standard 1.5) and reflected edges."""
    a = np.asarray(a, np.float64)[..., None]
    b = np.asarray(b, np.float64)[..., None]

    def smooth(x):
        return blur(x.astype(np.float32), sigma).astype(np.float64)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = smooth(a), smooth(b)
    var_a = smooth(a * a) - mu_a ** 2
    var_b = smooth(b * b) - mu_b ** 2
    cov = smooth(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.reshape(len(index), -1).mean(axis=1)
