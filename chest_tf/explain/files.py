"""Explaining image files: read them as predict does, pick the findings to explain (named labels
or the most probable ones), and write an overlay PNG per image and finding, a contact sheet and
``explanations.json`` (file, finding, probability, method, heatmap peak in the file's pixels)."""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chest_tf import imageio
from chest_tf.errors import ChestTFError, ConfigError
from chest_tf.evaluation.metrics import sigmoid, softmax
from chest_tf.explain.checks import peak_pixels
from chest_tf.explain.methods import METHOD_TITLES, Explainer, prepare_images
from chest_tf.explain.render import Panel, resize_heatmap, save_contact_sheet, save_overlay
from chest_tf.files import write_json_atomic


@dataclass
class Target:
    """What to explain for one image: output ``index`` (with ``sign``), its display name, its probability."""

    index: int
    sign: float
    name: str
    prob: float


def output_probabilities(logits: np.ndarray, metadata: dict) -> np.ndarray:
    """Probabilities by the export metadata's activation, with the metrics module's (overflow-safe)
    sigmoid and softmax."""
    if metadata.get("activation", "sigmoid") == "softmax":
        return softmax(logits, axis=-1)
    return sigmoid(logits)


def choose_targets(probs: np.ndarray, metadata: dict, labels: Sequence[str] | None = None,
                   top_k: int | None = None) -> list[Target]:
    """The findings to explain for one image's probabilities: the named ``labels`` (output names,
    or for a one-logit binary model either class name), else the ``top_k`` most probable outputs
    (default 1; for a one-logit binary model its two classes, so top-1 is the predicted class)."""
    names = list(metadata["output_names"])
    if labels:
        targets = []
        classes = list(metadata.get("class_names") or [])
        for label in labels:
            key = label.strip().lower()
            lowered = [n.lower() for n in names]
            if key in lowered:
                k = lowered.index(key)
                targets.append(Target(k, 1.0, names[k], float(probs[k])))
            elif len(names) == 1 and len(classes) == 2 and key == classes[0].lower():
                targets.append(Target(0, -1.0, classes[0], float(1.0 - probs[0])))
            else:
                known = names + ([classes[0]] if len(names) == 1 and len(classes) == 2 else [])
                raise ConfigError(f"unknown label '{label}'; this model's outputs: {', '.join(known)}")
        return targets
    k = 1 if top_k is None else top_k
    if k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {k}")
    classes = list(metadata.get("class_names") or [])
    if len(names) == 1 and len(classes) == 2:
        # One-logit binary model: rank both classes (the negative one is the negated logit).
        both = [Target(0, 1.0, names[0], float(probs[0])), Target(0, -1.0, classes[0], float(1.0 - probs[0]))]
        return sorted(both, key=lambda t: -t.prob)[:k]
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [Target(int(i), 1.0, names[int(i)], float(probs[int(i)])) for i in order]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def explain_files(model, metadata: dict, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  labels: Sequence[str] | None = None, top_k: int | None = None, method: str | None = None,
                  layer: str | None = None, max_pixels: int | None = None, contact_sheet: bool = True,
                  err=None) -> dict[str, Any]:
    """Explain image files (folders walked as predict does) into ``out_dir``; returns the summary
    written to ``explanations.json``. Unreadable files are reported on ``err`` and skipped."""
    err = err if err is not None else sys.stderr
    paths = imageio.find_images(inputs)
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, inputs))} ({', '.join(imageio.IMAGE_EXTENSIONS)})")
    explainer = Explainer(model, method, layer=layer)
    method_tag = explainer.method.replace("+", "p")  # gradcam++ -> gradcampp in file names
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels, results, errors = [], [], []
    used_names: set[str] = set()
    for path in paths:
        try:
            image = imageio.read_image(path, max_pixels or imageio.DEFAULT_MAX_PIXELS)
        except ChestTFError as exc:
            errors.append({"file": str(path), "error": str(exc)})
            print(f"error: {exc}", file=err, flush=True)
            continue
        x = prepare_images(image[None], model)
        probs = output_probabilities(explainer.logits(x)[0], metadata)
        targets = choose_targets(probs, metadata, labels, top_k)
        maps = explainer.heatmaps(np.repeat(x, len(targets), axis=0), [t.index for t in targets],
                                  [t.sign for t in targets])
        stem = _slug(path.stem)
        while stem in used_names:
            stem += "_"
        used_names.add(stem)
        height, width = image.shape[:2]
        for target, heatmap in zip(targets, maps):
            panel = Panel(image, heatmap, target.name, target.prob, explainer.method, path.name)
            overlay = save_overlay(panel, out_dir / f"{stem}_{_slug(target.name)}_{method_tag}.png")
            full = resize_heatmap(heatmap, height, width)
            py, px = np.unravel_index(int(peak_pixels(full[None])[0]), full.shape)
            results.append({"file": str(path), "width": int(width), "height": int(height), "finding": target.name,
                            "output_index": target.index, "sign": target.sign, "prob": target.prob,
                            "method": explainer.method, "layer": explainer.layer, "overlay": str(overlay),
                            "peak_xy": [int(px), int(py)] if heatmap.max() > 0 else None,
                            "empty_map": bool(heatmap.max() <= 0)})
            panels.append(panel)
    sheet = None
    if contact_sheet and len(panels) > 1:
        title = f"{METHOD_TITLES[explainer.method]} - {metadata.get('arch') or model.name}"
        sheet = str(save_contact_sheet(panels, out_dir / "contact_sheet.png", title=title))
    summary = {"model": {"name": model.name, "arch": metadata.get("arch"), "dataset": metadata.get("dataset"),
                         "input": [explainer.height, explainer.width, explainer.channels]},
               "method": explainer.method, "layer": explainer.layer, "results": results, "contact_sheet": sheet,
               "errors": errors}
    write_json_atomic(out_dir / "explanations.json", summary)
    return summary
