"""Pictures of heatmaps: an overlay blended over the X-ray (``blend_overlay``, also what the
TensorBoard panel shows), a two-panel PNG per explained finding (``save_overlay``) and a contact
sheet of many (``save_contact_sheet``). Figures are drawn on matplotlib's Agg canvas directly, so
no pyplot state or display backend is involved."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from keras import ops
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chest_tf.explain.methods import METHOD_TITLES

OVERLAY_CMAP = "jet"
MAX_ALPHA = 0.6


def _display_image(image_uint8: np.ndarray) -> np.ndarray:
    image = np.asarray(image_uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def blend_overlay(image_uint8: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) image and a [0, 1] heatmap (any size) -> float32 RGB (H, W, 3) in [0, 1]:
    the colour-mapped heatmap blended over the image with opacity rising with the heat (up to
    ``MAX_ALPHA``), so cold regions show the plain X-ray. Nearest-neighbour resize of the heatmap
    when sizes differ (callers pass it at the image size when they care)."""
    image = _display_image(image_uint8).astype(np.float32) / 255.0
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != rgb.shape[:2]:
        ys = (np.arange(rgb.shape[0]) * heat.shape[0] // rgb.shape[0])
        xs = (np.arange(rgb.shape[1]) * heat.shape[1] // rgb.shape[1])
        heat = heat[ys][:, xs]
    colour = matplotlib.colormaps[OVERLAY_CMAP](np.clip(heat, 0, 1))[..., :3].astype(np.float32)
    alpha = (MAX_ALPHA * np.clip(heat, 0, 1))[..., None]
    return (1 - alpha) * rgb + alpha * colour


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) map to (height, width), bilinear (half-pixel centres), clipped to [0, 1]."""
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape == (height, width):
        return heatmap
    out = ops.image.resize(heatmap[None, ..., None], (height, width), interpolation="bilinear")
    return np.clip(ops.convert_to_numpy(out)[0, ..., 0], 0.0, 1.0)


@dataclass
class Panel:
    """One explained (image, finding)."""

    image: np.ndarray  # uint8 (H, W, C) as read
    heatmap: np.ndarray  # (h, w) at the model's input size, [0, 1]
    finding: str
    prob: float
    method: str
    source: str  # file name or caption
    extra: dict = field(default_factory=dict)

    def title(self) -> str:
        return f"{self.finding}  p={self.prob:.3f}"


def _draw_panel(ax, panel: Panel, overlay: bool, title: str | None) -> None:
    image = _display_image(panel.image)
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest" if max(height, width) < 256 else "antialiased")
    if overlay:
        heat = resize_heatmap(panel.heatmap, height, width)
        rgba = matplotlib.colormaps[OVERLAY_CMAP](heat)
        rgba[..., 3] = MAX_ALPHA * heat
        ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_overlay(panel: Panel, path: str | Path) -> Path:
    """Two panels (the X-ray; the heatmap over it, with a colour bar), titled with the finding,
    its probability, the method and the file."""
    fig = Figure(figsize=(7.2, 3.9), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _draw_panel(left, panel, overlay=False, title="X-ray")
    empty = not np.any(panel.heatmap > 0)
    _draw_panel(right, panel, overlay=True,
                title=METHOD_TITLES[panel.method] + (": no positive evidence (empty map)" if empty else ""))
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=OVERLAY_CMAP)
    fig.colorbar(mappable, ax=right, fraction=0.046, pad=0.03, label="relevance")
    fig.suptitle(f"{panel.finding}: p = {panel.prob:.3f}\n{panel.source}", fontsize=11)
    return _save_figure(fig, path)


def save_contact_sheet(panels: Sequence[Panel], path: str | Path, columns: int | None = None,
                       title: str | None = None) -> Path:
    """All panels' overlays on one page, each captioned with its file, finding and probability."""
    n = len(panels)
    columns = columns or min(n, 5)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        empty = "" if np.any(panel.heatmap > 0) else " (empty)"
        _draw_panel(ax, panel, overlay=True, title=f"{_short(panel.source)}\n{panel.title()}{empty}")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save_figure(fig, path)


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def _save_figure(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.clear()
    return path


def save_example_grid(images, heatmaps, masks, findings: Sequence[str], hits, path: str | Path,
                      title: str | None = None) -> Path:
    """Benchmark examples: per column an X-ray (uint8 (H, W)) with its finding's ground-truth mask
    outlined (top) and the heatmap over it with the outline and the map's peak (bottom; x: a hit,
    o: a miss)."""
    n = len(images)
    fig = Figure(figsize=(1.9 * max(n, 1), 4.3), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, max(n, 1), squeeze=False)
    for j in range(n):
        image = _display_image(images[j])
        height, width = image.shape[:2]
        heat = resize_heatmap(heatmaps[j], height, width)
        for row, ax in enumerate(axes[:, j]):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if row == 1:
                rgba = matplotlib.colormaps[OVERLAY_CMAP](heat)
                rgba[..., 3] = MAX_ALPHA * heat
                ax.imshow(rgba, interpolation="nearest")
                if heat.max() > 0:
                    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
                    ax.plot(px, py, "x" if hits[j] else "o", color="white", markersize=7, markeredgewidth=2,
                            fillstyle="none")
            if np.asarray(masks[j]).any():
                ax.contour(np.asarray(masks[j], np.float32), levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(findings[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)
