"""Phantom ChestMNIST: synthetic frontal (PA) chest radiographs with known findings, made offline.

Each image is a smooth "attenuation" map built from simple shapes in anatomical coordinates
(x to the image right = the patient's left, y downwards, both in [-1, 1] for an unjittered body):
soft tissue of the thorax, two dark lung fields, the mediastinum and a heart shadow biased to the
image right, posterior ribs, clavicles, spine, trachea, hila with vessels, diaphragm domes. The 14
ChestMNIST findings are drawn where a radiologist would look for them, and a box per finding per
image records where each was drawn (for Grad-CAM pointing-game checks).

The map is rendered at an internal size (a whole multiple of the target size, so small sizes come
out area-downsampled like MedMNIST's resized radiographs), then passed through a random exposure
(auto-windowed on the image mean, so the mean carries no label information) and quantum noise.

Determinism: every image draws all its random numbers from its own generator, seeded from
(seed, split, index), so image i is the same whatever chunk it is generated in, splits are
independent streams, and the same seed gives bit-identical arrays. Numpy only (no TensorFlow).

Prevalences are deliberately higher than ChestMNIST's (see ``PREVALENCE`` and
``CHESTMNIST_PREVALENCE``) so that every label is learnable from a few thousand images.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

PHANTOM_LABELS = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
)
SIZES = (28, 64, 128, 224)
DEFAULT_COUNTS = {"train": 4000, "val": 800, "test": 800}

# --- How findings co-occur ------------------------------------------------------------------
# Three hidden conditions drive the correlated findings: heart failure (cardiomegaly, effusion,
# edema), infection (pneumonia, consolidation, infiltration, atelectasis) and chronic lung
# disease (emphysema, fibrosis, pleural thickening). Each finding is present with probability
# base + boost * (its condition is present), so its marginal rate is exactly base + boost * rate.
CONDITION_RATES = {"heart_failure": 0.12, "infection": 0.15, "chronic_lung": 0.12}
FINDING_MODEL = {  # name: (base rate, driving condition or None, extra rate with the condition)
    "atelectasis": (0.11, "infection", 0.25),
    "cardiomegaly": (0.05, "heart_failure", 0.65),
    "effusion": (0.07, "heart_failure", 0.60),
    "infiltration": (0.17, "infection", 0.40),
    "mass": (0.06, None, 0.0),
    "nodule": (0.08, None, 0.0),
    "pneumonia": (0.02, "infection", 0.45),
    "pneumothorax": (0.05, None, 0.0),
    "consolidation": (0.03, "infection", 0.40),
    "edema": (0.02, "heart_failure", 0.55),
    "emphysema": (0.02, "chronic_lung", 0.45),
    "fibrosis": (0.02, "chronic_lung", 0.40),
    "pleural": (0.03, "chronic_lung", 0.30),
    "hernia": (0.04, None, 0.0),
}
_CONDITIONS = tuple(CONDITION_RATES)


def _marginal(name: str) -> float:
    base, condition, boost = FINDING_MODEL[name]
    return base + (boost * CONDITION_RATES[condition] if condition else 0.0)


def _no_finding_rate() -> float:
    """Exact P(no label), summing over the 2^3 states of the hidden conditions."""
    total = 0.0
    for state in itertools.product((0, 1), repeat=len(_CONDITIONS)):
        p_state = np.prod([CONDITION_RATES[c] if s else 1 - CONDITION_RATES[c]
                           for c, s in zip(_CONDITIONS, state)])
        present = dict(zip(_CONDITIONS, state))
        p_none = np.prod([1 - base - (boost if cond and present[cond] else 0.0)
                          for base, cond, boost in FINDING_MODEL.values()])
        total += p_state * p_none
    return float(total)


# Expected fraction of images with each label (exact under the model above).
PREVALENCE = {name: round(_marginal(name), 6) for name in PHANTOM_LABELS}
NO_FINDING_RATE = round(_no_finding_rate(), 6)
# For comparison: the real rates in NIH ChestX-ray14 (all 112,120 images; ChestMNIST is built
# from it). The phantom's are several times higher on purpose, hernia most of all.
CHESTMNIST_PREVALENCE = {
    "atelectasis": 0.103, "cardiomegaly": 0.025, "effusion": 0.119, "infiltration": 0.177,
    "mass": 0.052, "nodule": 0.056, "pneumonia": 0.013, "pneumothorax": 0.047,
    "consolidation": 0.042, "edema": 0.021, "emphysema": 0.022, "fibrosis": 0.015,
    "pleural": 0.030, "hernia": 0.002,
}

# Random textures are drawn on coarse grids (in image coordinates) and smoothly upsampled, so
# they look the same at every output size.
_MOTTLE_GRID = 20   # patchy/mottled texture of airspace disease, reticulation warp
_HABITUS_GRID = 5   # slow soft-tissue variation (breasts, body habitus, scatter)
_PIXEL_BUDGET = 1 << 21  # pixels per internal render batch: bounds memory (~8 MB per field)


# ============================================================================================
# Random draws (one generator per image)
# ============================================================================================

def _split_key(split: str) -> int:
    # crc32, not hash(): stable across processes and Python versions.
    return zlib.crc32(split.encode("utf-8"))


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that all of image ``index``'s randomness comes from."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(_split_key(split), int(index)))
    return np.random.Generator(np.random.PCG64(sequence))


def draw_labels(rng: np.random.Generator) -> np.ndarray:
    """Hidden conditions first, then each finding given its condition (always 17 draws)."""
    conditions = dict(zip(_CONDITIONS, rng.random(len(_CONDITIONS)) < list(CONDITION_RATES.values())))
    u = rng.random(len(PHANTOM_LABELS))
    labels = np.zeros(len(PHANTOM_LABELS), np.uint8)
    for k, name in enumerate(PHANTOM_LABELS):
        base, condition, boost = FINDING_MODEL[name]
        labels[k] = u[k] < base + (boost if condition and conditions[condition] else 0.0)
    return labels


def draw_anatomy(rng: np.random.Generator) -> dict:
    """Per-image variation of the normal chest: pose, body build, organ sizes, exposure."""
    u = rng.uniform
    scale = u(0.90, 1.04)
    return {
        # pose: anatomical coords -> image coords is scale, rotate, shift
        "scale_x": scale * u(0.95, 1.05), "scale_y": scale * u(0.95, 1.05),
        "shift_x": u(-0.06, 0.06), "shift_y": u(-0.05, 0.06), "rotation": u(-0.09, 0.09),
        # lungs (side 0 = patient's right = image left; side 1 = patient's left)
        "lung_cx0": u(0.31, 0.35), "lung_cx1": u(0.31, 0.35),
        "lung_ax0": u(0.47, 0.53), "lung_ax1": u(0.45, 0.51),
        "lung_cy": u(0.22, 0.28), "lung_ay": u(0.94, 1.02),
        "lung_medial0": u(0.08, 0.10), "lung_medial1": u(0.07, 0.09),
        "lucency": u(0.56, 0.68),
        # diaphragm: the right dome sits higher than the left
        "dome_top0": u(0.36, 0.44), "dome_drop1": u(0.02, 0.08), "dome_peak": u(0.32, 0.42),
        "dome_curve": u(0.75, 1.05),
        # heart and mediastinum
        "heart_cx": u(0.09, 0.14), "heart_cy": u(0.33, 0.39), "heart_hw": u(0.33, 0.37),
        "heart_hh": u(0.22, 0.26), "heart_tilt": u(0.3, 0.5), "knob_r": u(0.05, 0.07),
        # bones
        "rib_spacing": u(0.125, 0.145), "rib_phase": u(0, 1), "rib_curve": u(0.75, 0.95),
        "rib_density": u(0.09, 0.14), "clavicle_y": u(-0.72, -0.64), "clavicle_slope": u(-0.30, -0.18),
        # vessels and hila
        "hilum_y0": u(-0.10, -0.04), "hilum_y1": u(-0.14, -0.08), "vessel_phase": u(0, 6.3),
        "vessel_density": u(0.16, 0.24),
        # stomach gas under the left dome (present in about half the films)
        "gastric_r": u(0.03, 0.07) * (u(0, 1) < 0.5), "gastric_x": u(0.30, 0.50),
        # soft tissue and exposure
        "soft_density": u(0.92, 1.06), "habitus_amp": u(0.02, 0.06),
        "gain": u(0.52, 0.68), "level": u(0.44, 0.56), "gamma": u(0.85, 1.15),
        "noise_sd": u(0.010, 0.025),
    }


def _side(rng) -> float:
    return float(rng.random() < 0.5)


def draw_finding_params(rng: np.random.Generator) -> dict:
    """Shape parameters of every finding, drawn whether or not it is present (a fixed number of
    draws keeps each image's stream simple); only present findings are drawn into the image."""
    u = rng.uniform
    p = {
        # atelectasis: plate-like band, raised hemidiaphragm, mediastinum pulled towards it
        "atel_side": _side(rng), "atel_xm": u(0.35, 0.55), "atel_above_dome": u(0.10, 0.24),
        "atel_len": u(0.24, 0.36), "atel_thick": u(0.045, 0.065), "atel_tilt": u(-0.35, 0.15),
        "atel_raise": u(0.06, 0.12), "atel_shift": u(0.02, 0.04),
        # cardiomegaly: cardiothoracic ratio well above 0.5
        "cardio_widen": u(1.32, 1.55), "cardio_heighten": u(1.05, 1.2),
        # effusion: which side(s), fluid height, meniscus
        "eff_mode": u(0, 1), "eff_h0": u(0.16, 0.32), "eff_h1": u(0.16, 0.32),
        "eff_meniscus": u(0.35, 0.6),
        # infiltration: 1-3 hazy ill-defined patches
        "inf_count": u(0, 1),
        # mass and nodules: round opacities in a lung field
        "mass_side": _side(rng), "mass_xm": u(0.32, 0.60), "mass_y": u(-0.45, 0.18),
        "mass_r": u(0.10, 0.15), "mass_lobes": u(0.0, 0.12), "mass_phase": u(0, 6.3),
        "nod_count": u(0, 1),
        # pneumonia: mottled patch in a mid/lower zone
        "pna_side": _side(rng), "pna_bilateral": u(0, 1), "pna_xm": u(0.36, 0.58),
        "pna_y": u(-0.15, 0.25), "pna_r": u(0.16, 0.22), "pna_amp": u(0.75, 1.0),
        # pneumothorax: apical-lateral rim of air beyond a visible visceral pleural line
        "ptx_side": _side(rng), "ptx_depth": u(0.11, 0.19), "ptx_line": u(0.25, 0.4),
        # consolidation: dense homogeneous opacity with a sharp fissural edge
        "cons_side": _side(rng), "cons_lower": u(0, 1), "cons_xm": u(0.38, 0.58),
        "cons_fissure": u(-0.15, 0.05), "cons_r": u(0.22, 0.30), "cons_amp": u(0.9, 1.05),
        # edema: bilateral perihilar (bat-wing) haze and Kerley lines
        "edema_amp": u(0.45, 0.65), "edema_spread": u(0.22, 0.30),
        # emphysema: hyperinflation, flat low domes, hyperlucency, bullae
        "emph_drop": u(0.10, 0.16), "emph_flatten": u(0.15, 0.35), "emph_lucency": u(1.35, 1.55),
        "emph_bulla_side": _side(rng), "emph_bulla_xm": u(0.35, 0.6), "emph_bulla_y": u(-0.55, -0.3),
        "emph_bulla_r": u(0.07, 0.11),
        # fibrosis: coarse reticulation, basal and peripheral (or upper zones), volume loss
        "fib_spacing": u(0.12, 0.16), "fib_angle": u(0, 1.57), "fib_amp": u(0.6, 0.8),
        "fib_upper": u(0, 1), "fib_raise": u(0.02, 0.05),
        # pleural thickening: a smooth rim along the lateral chest wall and apex
        "pl_mode": u(0, 1), "pl_thick": u(0.05, 0.08), "pl_low": u(0.0, 0.3),
        # hernia: retrocardiac gas bubble with an air-fluid level, just above the diaphragm
        "hernia_x": u(0.02, 0.16), "hernia_r": u(0.08, 0.12), "hernia_level": u(-0.2, 0.3),
    }
    for k in range(3):  # infiltration patches
        p |= {f"inf_side{k}": _side(rng), f"inf_xm{k}": u(0.3, 0.65), f"inf_y{k}": u(-0.5, 0.25),
              f"inf_r{k}": u(0.12, 0.20), f"inf_amp{k}": u(0.30, 0.45)}
    for k in range(2):  # nodules
        p |= {f"nod_side{k}": _side(rng), f"nod_xm{k}": u(0.25, 0.65), f"nod_y{k}": u(-0.55, 0.25),
              f"nod_r{k}": u(0.045, 0.065)}
    return p


def draw_case(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one image, in a fixed order: labels, anatomy, finding shapes,
    texture grids, then pixel noise (the only draw that depends on the size)."""
    case = {"labels": draw_labels(rng)}
    case |= draw_anatomy(rng)
    case |= draw_finding_params(rng)
    case["mottle"] = rng.standard_normal((_MOTTLE_GRID, _MOTTLE_GRID)).astype(np.float32)
    case["habitus"] = rng.standard_normal((_HABITUS_GRID, _HABITUS_GRID)).astype(np.float32)
    case["noise"] = rng.standard_normal((size, size), dtype=np.float32)
    return case


def _stack_cases(cases: list[dict]) -> dict:
    return {key: np.stack([np.asarray(c[key]) for c in cases]).astype(
        np.uint8 if key == "labels" else np.float32) for key in cases[0]}


# ============================================================================================
# Geometry helpers
# ============================================================================================

def _smoothstep(x, lo, hi):
    """0 below lo, 1 above hi, smooth in between (lo > hi gives the falling version)."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _col(values):
    """(B,) parameters -> (B, 1, 1), to broadcast over a batch of (B, H, W) fields."""
    return np.asarray(values, np.float32)[:, None, None]


def _upsample_weights(grid: int, size: int) -> np.ndarray:
    """(size, grid) weights that smoothly interpolate a coarse grid to ``size`` samples."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (grid - 1)
    w = np.exp(-(((pos[:, None] - np.arange(grid)[None, :]) / 0.75) ** 2))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _upsample(grids: np.ndarray, size: int) -> np.ndarray:
    """(B, g, g) coarse random grids -> (B, size, size) smooth fields, one image at a time (a
    per-image matmul keeps each image's result independent of the batch it is in)."""
    w = _upsample_weights(grids.shape[1], size)
    return np.stack([w @ g @ w.T for g in grids]).astype(np.float32)


class Frame:
    """Pixel grids of one render batch in anatomical coordinates, and the normal anatomy's
    shared fields (lung masks, distances to the lung edges), which findings draw into."""

    def __init__(self, p: dict, render: int):
        self.p, self.render = p, render
        c = (np.arange(render, dtype=np.float32) + 0.5) / render * 2.0 - 1.0
        dx = c[None, None, :] - _col(p["shift_x"])
        dy = c[None, :, None] - _col(p["shift_y"])
        cos, sin = _col(np.cos(p["rotation"])), _col(np.sin(p["rotation"]))
        self.x = (cos * dx + sin * dy) / _col(p["scale_x"])
        self.y = (-sin * dx + cos * dy) / _col(p["scale_y"])
        self.on_left = self.x > 0          # patient's left = image right
        self.xm = np.abs(self.x)           # distance from the midline, mirrored for both sides

    def by_side(self, right_values, left_values, idx=None):
        """Per-pixel choice of a per-image parameter according to the pixel's side."""
        side = self.on_left if idx is None else self.on_left[idx]
        return np.where(side, _col(left_values), _col(right_values))

    def sub(self, name, idx):
        return getattr(self, name)[idx]


# ============================================================================================
# Normal anatomy
# ============================================================================================

def dome_height(fr: Frame, xm):
    """y of the diaphragm under each pixel column: a parabola per side, peaking mid-lung."""
    p = fr.p
    top = fr.by_side(p["dome_top0"], p["dome_top1"])
    return top + _col(p["dome_curve"]) * (xm - _col(p["dome_peak"])) ** 2


def draw_thorax(fr: Frame) -> np.ndarray:
    """Soft tissue of the neck, shoulders, chest wall and abdomen (thicker in the middle)."""
    p, x, y, xm = fr.p, fr.x, fr.y, fr.xm
    shoulder_line = -0.98 + 0.30 * np.clip(xm / 0.92, 0, 1) ** 3
    body = _smoothstep(0.95 - xm, 0.0, 0.03) * _smoothstep(y - shoulder_line, 0.0, 0.05)
    neck = _smoothstep(0.22 - xm, 0.0, 0.04) * (y < -0.8)
    body = np.maximum(body, neck)
    thickness = 0.82 + 0.18 * (1.0 - np.clip(x / 0.95, -1, 1) ** 2)
    return body * thickness * _col(p["soft_density"])


def lung_fields(fr: Frame):
    """Both lungs: egg-shaped outlines (widest at the costophrenic angles), cut medially by the
    mediastinum and below by the domes. Returns (alpha, distance to the outer edge, dome y)."""
    p, xm, y = fr.p, fr.xm, fr.y
    cx = fr.by_side(p["lung_cx0"], p["lung_cx1"])
    ax = fr.by_side(p["lung_ax0"], p["lung_ax1"])
    r = np.sqrt(((xm - cx) / ax) ** 2 + ((y - _col(p["lung_cy"])) / _col(p["lung_ay"])) ** 2)
    outer = (1.0 - r) * ax                                  # ~distance to the lateral/apical edge
    dome = dome_height(fr, xm)
    medial = xm - fr.by_side(p["lung_medial0"], p["lung_medial1"])
    margin = np.minimum(np.minimum(outer, dome - y), medial)
    return _smoothstep(margin, -0.008, 0.012), outer, dome


def draw_heart(fr: Frame) -> np.ndarray:
    """Heart shadow: a tilted ellipse right of centre (apex to the patient's left), sitting on
    the diaphragm, plus the aortic knob above it."""
    p = fr.p
    dx, dy = fr.x - _col(p["heart_cx"]), fr.y - _col(p["heart_cy"])
    cos, sin = _col(np.cos(p["heart_tilt"])), _col(np.sin(p["heart_tilt"]))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    r = np.sqrt((u / _col(p["heart_hw"])) ** 2 + (v / _col(p["heart_hh"])) ** 2)
    heart = _smoothstep(r, 1.06, 0.9)
    # the aortic knob: a bulge of the left mediastinal border, not a separate round shadow
    knob_d = np.sqrt((fr.x - 0.07 - _col(p["mediastinal_shift"])) ** 2 + ((fr.y + 0.36) * 0.7) ** 2)
    knob = _smoothstep(knob_d / _col(p["knob_r"] + 0.03), 1.1, 0.7)
    return np.maximum(heart, knob)


def draw_trachea(fr: Frame) -> np.ndarray:
    """Air column of the trachea (lucent) down to the carina, following the mediastinum."""
    d = np.abs(fr.x - _col(fr.p["mediastinal_shift"]))
    return _smoothstep(d, 0.035, 0.02) * _smoothstep(fr.y, -0.22, -0.32)


def draw_spine(fr: Frame) -> np.ndarray:
    """Vertebral column through the mediastinum, with faint disc spaces."""
    band = _smoothstep(fr.xm, 0.065, 0.04)
    discs = 0.8 + 0.2 * np.cos(fr.y * (2 * np.pi / 0.105))
    return band * discs * 0.22


def draw_ribs(fr: Frame) -> np.ndarray:
    """Posterior ribs: bright bands rising gently from the spine and curving down laterally,
    spaced a little wider lower down; faint anterior ribs slope the other way."""
    p, xm, y = fr.p, fr.xm, fr.y
    course = -0.36 * xm + _col(p["rib_curve"]) * xm * xm
    t = np.maximum(y - course + 1.0, 0.0) ** 0.92 / _col(p["rib_spacing"]) + _col(p["rib_phase"])
    wave = np.cos(2 * np.pi * t)
    # a rib shows as a band with brighter cortical margins
    posterior = np.clip((wave - 0.2) / 0.8, 0, 1) ** 0.5 * (1.0 - 0.35 * np.clip((wave - 0.75) / 0.25, 0, 1))
    anterior_t = (y + 0.38 * xm + 1.0) / (_col(p["rib_spacing"]) * 1.3)
    anterior = np.clip((np.cos(2 * np.pi * anterior_t) - 0.3) / 0.7, 0, 1) * 0.35
    cage = (_smoothstep(xm, 0.92, 0.8) * _smoothstep(xm, 0.04, 0.09)
            * _smoothstep(y, -0.9, -0.8) * _smoothstep(y, 0.75, 0.6))
    return (posterior + anterior * _smoothstep(xm, 0.15, 0.35)) * cage * _col(p["rib_density"])


def draw_clavicles(fr: Frame) -> np.ndarray:
    """Clavicles: oblique S-shaped bands from the sternal notch out to the shoulders."""
    p, xm = fr.p, fr.xm
    centre = _col(p["clavicle_y"]) + _col(p["clavicle_slope"]) * (xm - 0.07) + 0.12 * (xm - 0.35) ** 2
    band = _smoothstep(np.abs(fr.y - centre), 0.035, 0.018)
    return band * _smoothstep(xm, 0.05, 0.09) * _smoothstep(xm, 0.72, 0.62) * 0.24


def draw_vessels(fr: Frame, mottle: np.ndarray) -> np.ndarray:
    """Hila and the pulmonary vessels fanning out from them, fading towards the periphery."""
    p, xm, y = fr.p, fr.xm, fr.y
    dx = xm - 0.2
    dy = y - fr.by_side(p["hilum_y0"], p["hilum_y1"])
    d = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, dx)
    streaks = (0.5 + 0.5 * np.cos(13.0 * angle + 7.0 * d + _col(p["vessel_phase"]) + 2.0 * mottle)) ** 8
    hilum = np.exp(-(d * d) / 0.008)
    return (streaks * np.exp(-d / 0.26) + 0.9 * hilum) * _col(p["vessel_density"])


def draw_gastric_bubble(fr: Frame, dome: np.ndarray) -> np.ndarray:
    """Stomach gas under the left dome (lucency, subtracted from the density)."""
    p = fr.p
    centre_y = _col(p["dome_top1"] + 0.12)
    d = np.sqrt((fr.x - _col(p["gastric_x"])) ** 2 + (fr.y - centre_y) ** 2)
    r = _col(p["gastric_r"]) + 1e-6
    return _smoothstep(d / r, 1.0, 0.6) * (fr.y > dome) * 0.2


# ============================================================================================
# Findings: each returns the fields it adds (opacity replaces lung air; lucency scales it;
# density adds directly) and a mask of where it is drawn, for the boxes. ``idx`` picks the
# images of the batch that have the finding.
# ============================================================================================

class Canvas:
    """What findings draw into, for a render batch."""

    def __init__(self, shape):
        self.opacity = np.zeros(shape, np.float32)      # fraction of lung air replaced (0..1)
        self.lucency = np.ones(shape, np.float32)       # multiplies the lung's darkness
        self.density = np.zeros(shape, np.float32)      # added directly (lines, rims, gas < 0)
        self.no_markings = np.zeros(shape, np.float32)  # where vessels must not show


def _blob(x, y, cx, cy, r, sharpness=1.0):
    """Round opacity of radius r: a soft disc (sharpness>1 gives a crisper edge)."""
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    return _smoothstep(d, 1.0 + 0.25 / sharpness, 1.0 - 0.25 / sharpness)


def _signed_x(side, xm):
    """Anatomical x of a point ``xm`` from the midline on a side (0 = patient's right)."""
    return np.where(np.asarray(side) > 0.5, xm, -np.asarray(xm))


def draw_atelectasis(fr, cv, idx, lung):
    """Plate-like (discoid) atelectasis: a bright linear band in the lower zone, above the raised
    hemidiaphragm of the same side (the volume loss is applied to the domes beforehand)."""
    p = {k: v[idx] for k, v in fr.p.items() if k.startswith("atel") or k.startswith("dome")}
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    side = p["atel_side"]
    cx = _col(_signed_x(side, p["atel_xm"]))
    dome_top = np.where(side > 0.5, p["dome_top1"], p["dome_top0"])
    cy = _col(dome_top - p["atel_above_dome"])
    tilt = _col(p["atel_tilt"] * np.where(side > 0.5, 1.0, -1.0))
    cos, sin = np.cos(tilt), np.sin(tilt)
    u, v = cos * (x - cx) + sin * (y - cy), -sin * (x - cx) + cos * (y - cy)
    band = (_smoothstep(np.abs(v), _col(p["atel_thick"]) * 0.5 + 0.01, _col(p["atel_thick"]) * 0.5 - 0.01)
            * _smoothstep(np.abs(u), _col(p["atel_len"]) * 0.5, _col(p["atel_len"]) * 0.5 - 0.06))
    band *= lung
    cv.opacity[idx] += band
    cv.density[idx] += 0.12 * band
    # the box also covers the lifted dome under the band, the other half of the sign
    raised = (np.abs(x - cx) < _col(p["atel_len"]) * 0.5) & (y > cy) & (y < cy + _col(p["atel_above_dome"]) + 0.05)
    return np.maximum(band > 0.3, raised)


def draw_effusion(fr, cv, idx, lung, dome):
    """Pleural effusion: dense basal opacity on one or both sides whose upper surface is a
    meniscus climbing the lateral chest wall, blunting the costophrenic angle and hiding the
    dome."""
    p = fr.p
    x, y, xm = fr.sub("x", idx), fr.sub("y", idx), fr.sub("xm", idx)
    mode = p["eff_mode"][idx]
    has_right, has_left = mode < 0.75, mode >= 0.45     # 45% right, 30% left, 25% both
    on_left = fr.on_left[idx]
    present = np.where(on_left, _col(has_left), _col(has_right))
    height = np.where(on_left, _col(p["eff_h1"][idx]), _col(p["eff_h0"][idx]))
    base = np.where(on_left, _col(p["dome_top1"][idx]), _col(p["dome_top0"][idx])) + 0.14
    lateral = np.clip((xm - 0.1) / 0.72, 0, 1)
    surface = base - height * (1.0 - _col(p["eff_meniscus"][idx]) * (1 - lateral ** 2))
    fluid = _smoothstep(y - surface, -0.015, 0.03) * present * _smoothstep(xm, 0.08, 0.14)
    fluid *= _smoothstep(0.86 - xm, 0.0, 0.03)
    cv.opacity[idx] += fluid
    cv.density[idx] += 0.15 * fluid * (y < dome)
    return (fluid > 0.3) & ((lung > 0.05) | (y < dome + 0.02))


def draw_infiltration(fr, cv, idx, mottle):
    """Infiltration: 1-3 faint, ill-defined hazy patches anywhere in the lungs."""
    p = fr.p
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    count = 1 + (p["inf_count"][idx] > 0.45) + (p["inf_count"][idx] > 0.8)
    haze = np.zeros_like(x)
    for k in range(3):
        cx = _col(_signed_x(p[f"inf_side{k}"][idx], p[f"inf_xm{k}"][idx]))
        cy, r = _col(p[f"inf_y{k}"][idx]), _col(p[f"inf_r{k}"][idx])
        patch = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (r * r)) * _col(p[f"inf_amp{k}"][idx])
        haze = np.maximum(haze, patch * _col(k < count))
    haze *= 0.85 + 0.3 * np.tanh(mottle)
    cv.opacity[idx] += haze
    return haze > 0.1


def _round_opacity(fr, cv, idx, cx, cy, r, lobulation=None, phase=None):
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    radius = _col(r)
    if lobulation is not None:  # lobulated outline: radius varies with angle
        angle = np.arctan2(y - _col(cy), x - _col(cx))
        radius = radius * (1.0 + _col(lobulation) * np.cos(5.0 * angle + _col(phase)))
    disc = _blob(x, y, _col(cx), _col(cy), radius, sharpness=2.5)
    cv.opacity[idx] += disc
    cv.density[idx] += 0.18 * disc
    return disc


def draw_mass(fr, cv, idx):
    """Mass: one large (>3 cm) round, lobulated, well-defined opacity in a lung field."""
    p = fr.p
    cx = _signed_x(p["mass_side"][idx], p["mass_xm"][idx])
    disc = _round_opacity(fr, cv, idx, cx, p["mass_y"][idx], p["mass_r"][idx],
                          p["mass_lobes"][idx], p["mass_phase"][idx])
    return disc > 0.3


def draw_nodule(fr, cv, idx):
    """Nodules: one or two small, dense, sharply defined round opacities."""
    p = fr.p
    count = 1 + (p["nod_count"][idx] > 0.6)
    mask = np.zeros((len(idx), fr.render, fr.render), bool)
    for k in range(2):
        cx = _signed_x(p[f"nod_side{k}"][idx], p[f"nod_xm{k}"][idx])
        r = p[f"nod_r{k}"][idx] * (k < count)  # radius 0 draws nothing
        disc = _round_opacity(fr, cv, idx, cx, p[f"nod_y{k}"][idx], np.maximum(r, 1e-4))
        cv.density[idx] += 0.15 * disc
        mask |= disc > 0.3
    return mask


def draw_pneumonia(fr, cv, idx, mottle):
    """Pneumonia: patchy, mottled airspace opacity in a mid or lower zone (both lungs in a
    quarter of cases): dense spots within a looser haze."""
    p = fr.p
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    side = p["pna_side"][idx]
    total = np.zeros_like(x)
    for lung_side, present in ((side, np.ones_like(side)), (1 - side, p["pna_bilateral"][idx] < 0.25)):
        cx = _col(_signed_x(lung_side, p["pna_xm"][idx]))
        envelope = np.exp(-((x - cx) ** 2 + (y - _col(p["pna_y"][idx])) ** 2) / _col(p["pna_r"][idx]) ** 2)
        total = np.maximum(total, envelope * _col(present))
    patchy = total * (0.35 + 0.9 * np.clip(mottle + 0.3, 0, 1.2)) * _col(p["pna_amp"][idx])
    cv.opacity[idx] += patchy
    return total > 0.3


def draw_pneumothorax(fr, cv, idx, lung, outer):
    """Pneumothorax: the lung has fallen away from the apex and lateral wall; beyond the thin
    visceral pleural line there is only air: darker, with no lung markings."""
    p = fr.p
    y = fr.sub("y", idx)
    on_left = fr.on_left[idx]
    this_side = np.where(on_left, _col(p["ptx_side"][idx] > 0.5), _col(p["ptx_side"][idx] <= 0.5))
    # deepest at the apex, tapering towards the base
    apex = _col(p["lung_cy"][idx] - p["lung_ay"][idx])
    taper = 1.0 - 0.6 * np.clip((y - apex) / 1.1, 0, 1)
    depth = _col(p["ptx_depth"][idx]) * taper
    edge_gap = outer - depth
    air = _smoothstep(edge_gap, 0.006, -0.006) * lung * this_side
    pleural_line = np.exp(-(edge_gap / 0.008) ** 2) * lung * this_side * _smoothstep(edge_gap, -0.02, 0.0)
    cv.lucency[idx] *= 1.0 + 0.45 * air
    cv.no_markings[idx] = np.maximum(cv.no_markings[idx], air)
    cv.density[idx] += _col(p["ptx_line"][idx]) * pleural_line
    return air > 0.5


def draw_consolidation(fr, cv, idx, lung, mottle):
    """Consolidation: dense, homogeneous lobar opacity with a sharp straight edge where it meets
    a fissure (upper or lower lobe of one lung)."""
    p = fr.p
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    side = p["cons_side"][idx]
    lower = p["cons_lower"][idx] < 0.6
    cx = _col(_signed_x(side, p["cons_xm"][idx]))
    fissure = _col(p["cons_fissure"][idx])
    # lower lobe lies below the fissure, upper lobe above it
    beyond_fissure = np.where(_col(lower), y - fissure, fissure - y)
    cy = fissure + np.where(_col(lower), 1.0, -1.0) * _col(p["cons_r"][idx]) * 0.55
    envelope = _smoothstep(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / _col(p["cons_r"][idx]), 1.15, 0.7)
    lobe = envelope * _smoothstep(beyond_fissure, -0.004, 0.008)
    dense = lobe * lung * _col(p["cons_amp"][idx]) * (1.0 + 0.05 * mottle)
    cv.opacity[idx] += dense
    cv.density[idx] += 0.1 * dense
    return dense > 0.3


def draw_edema(fr, cv, idx, lung, mottle):
    """Pulmonary edema: symmetric bat-wing haze around both hila, with Kerley B lines at the
    lateral bases."""
    p = fr.p
    xm, y = fr.sub("xm", idx), fr.sub("y", idx)
    hilum_y = fr.by_side(p["hilum_y0"][idx], p["hilum_y1"][idx], idx)
    spread = _col(p["edema_spread"][idx])
    wing = np.exp(-((xm - 0.24) / (spread * 1.1)) ** 2 - ((y - hilum_y) / (spread * 1.5)) ** 2)
    haze = wing * _col(p["edema_amp"][idx]) * (0.9 + 0.2 * np.tanh(mottle)) * lung
    kerley = (np.clip(np.cos(y * (2 * np.pi / 0.04)) - 0.6, 0, 1) * 2.5
              * _smoothstep(xm, 0.62, 0.72) * _smoothstep(y, 0.05, 0.2) * lung * 0.25)
    cv.opacity[idx] += haze + kerley
    return (haze > 0.15 * _col(p["edema_amp"][idx])) | (kerley > 0.1)


def draw_emphysema(fr, cv, idx, lung):
    """Emphysema: hyperlucent lungs (overexpanded, flat low domes: applied to the geometry
    beforehand) with sparse peripheral vessels and thin-walled upper-zone bullae."""
    p = fr.p
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    cv.lucency[idx] *= 1.0 + (_col(p["emph_lucency"][idx]) - 1.0) * lung
    cv.no_markings[idx] = np.maximum(cv.no_markings[idx], 0.6 * lung * _smoothstep(fr.sub("xm", idx), 0.4, 0.6))
    cx = _col(_signed_x(p["emph_bulla_side"][idx], p["emph_bulla_xm"][idx]))
    d = np.sqrt((x - cx) ** 2 + (y - _col(p["emph_bulla_y"][idx])) ** 2) / _col(p["emph_bulla_r"][idx])
    bulla = _smoothstep(d, 1.0, 0.85) * lung
    wall = np.exp(-((d - 1.0) / 0.08) ** 2) * lung
    cv.lucency[idx] *= 1.0 + 0.25 * bulla
    cv.no_markings[idx] = np.maximum(cv.no_markings[idx], bulla)
    cv.density[idx] += 0.12 * wall
    return lung > 0.5


def draw_fibrosis(fr, cv, idx, lung, mottle):
    """Fibrosis: coarse reticular (net-like) lines, peripheral and basal (upper zones in a
    fifth of cases), with some volume loss applied to the domes beforehand."""
    p = fr.p
    x, y, xm = fr.sub("x", idx), fr.sub("y", idx), fr.sub("xm", idx)
    angle = _col(p["fib_angle"][idx])
    warp = 0.07 * mottle
    u = (np.cos(angle) * x + np.sin(angle) * y + warp) / _col(p["fib_spacing"][idx])
    v = (-np.sin(angle) * x + np.cos(angle) * y - warp) / _col(p["fib_spacing"][idx])
    net = np.maximum(np.cos(2 * np.pi * u), np.cos(2 * np.pi * v))
    lines = np.clip((net - 0.7) / 0.3, 0, 1)
    upper = _col(p["fib_upper"][idx] < 0.2)
    zone = np.where(upper, _smoothstep(y, -0.1, -0.3), _smoothstep(y, -0.15, 0.1))
    zone = zone * _smoothstep(xm, 0.22, 0.42) * lung
    reticulation = lines * zone * _col(p["fib_amp"][idx])
    cv.opacity[idx] += reticulation + 0.12 * zone
    return zone > 0.3


def draw_pleural_thickening(fr, cv, idx, lung, outer):
    """Pleural thickening: a smooth soft-tissue rim lining the lateral chest wall and apex, on
    one side or both."""
    p = fr.p
    y, xm = fr.sub("y", idx), fr.sub("xm", idx)
    mode = p["pl_mode"][idx]
    on_left = fr.on_left[idx]
    present = np.where(on_left, _col(mode >= 0.4), _col(mode < 0.7))   # 40% R, 30% L, 30% both
    thick = _col(p["pl_thick"][idx])
    rim = _smoothstep(outer, thick + 0.01, thick - 0.01) * lung * present
    rim *= _smoothstep(xm, 0.2, 0.35) * _smoothstep(y, 0.45 - _col(p["pl_low"][idx]), 0.3 - _col(p["pl_low"][idx]))
    cv.opacity[idx] += rim
    cv.density[idx] += 0.1 * rim
    return rim > 0.3


def draw_hernia(fr, cv, idx):
    """Hiatus hernia: a retrocardiac gas bubble with an air-fluid level and a soft-tissue wall,
    just above the diaphragm behind the heart."""
    p = fr.p
    x, y = fr.sub("x", idx), fr.sub("y", idx)
    r = _col(p["hernia_r"][idx])
    cx = _col(p["hernia_x"][idx] + p["mediastinal_shift"][idx])
    cy = _col(np.minimum(p["dome_top0"][idx], p["dome_top1"][idx]) + 0.06) - r
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    sac = _smoothstep(d, 1.08, 0.95)
    level = cy + _col(p["hernia_level"][idx]) * r
    gas = _smoothstep(d, 0.9, 0.78) * _smoothstep(y, level + 0.01, level - 0.01)
    wall = np.exp(-((d - 0.95) / 0.1) ** 2)
    cv.density[idx] += 0.2 * wall + 0.12 * sac - 0.55 * gas
    return sac > 0.3


def apply_volume_changes(p: dict, labels: np.ndarray) -> dict:
    """Findings that change the normal geometry (heart size, dome heights, lung size) act on the
    parameters before anything is drawn."""
    p = dict(p)
    has = {name: labels[:, k].astype(bool) for k, name in enumerate(PHANTOM_LABELS)}
    p["heart_hw"] = p["heart_hw"] * np.where(has["cardiomegaly"], p["cardio_widen"], 1.0)
    p["heart_hh"] = p["heart_hh"] * np.where(has["cardiomegaly"], p["cardio_heighten"], 1.0)
    p["heart_cx"] = p["heart_cx"] + np.where(has["cardiomegaly"], 0.05, 0.0)
    p["dome_top1"] = p["dome_top0"] + p["dome_drop1"]
    # emphysema: hyperinflated, flattened domes; narrow vertical heart
    drop = np.where(has["emphysema"], p["emph_drop"], 0.0)
    p["dome_top0"], p["dome_top1"] = p["dome_top0"] + drop, p["dome_top1"] + drop
    p["lung_ay"] = p["lung_ay"] + 0.6 * drop
    p["lung_cy"] = p["lung_cy"] + 0.5 * drop
    p["dome_curve"] = p["dome_curve"] * np.where(has["emphysema"], p["emph_flatten"], 1.0)
    p["heart_hw"] = p["heart_hw"] * np.where(has["emphysema"] & ~has["cardiomegaly"], 0.88, 1.0)
    # fibrosis: small lungs
    lift = np.where(has["fibrosis"], p["fib_raise"], 0.0)
    p["dome_top0"], p["dome_top1"] = p["dome_top0"] - lift, p["dome_top1"] - lift
    # atelectasis: the hemidiaphragm of the collapsed side rises, the mediastinum moves to it
    atel_raise = np.where(has["atelectasis"], p["atel_raise"], 0.0)
    left = p["atel_side"] > 0.5
    p["dome_top0"] = p["dome_top0"] - np.where(left, 0.0, atel_raise)
    p["dome_top1"] = p["dome_top1"] - np.where(left, atel_raise, 0.0)
    shift = np.where(has["atelectasis"], p["atel_shift"] * np.where(left, 1.0, -1.0), 0.0)
    p["mediastinal_shift"] = shift.astype(np.float32)
    p["heart_cx"] = p["heart_cx"] + shift
    for side in ("0", "1"):  # the mediastinum's edges move with it
        sign = -1.0 if side == "0" else 1.0
        p["lung_medial" + side] = p["lung_medial" + side] + sign * shift
    return {k: np.asarray(v, np.float32) if k != "labels" else v for k, v in p.items()}


# ============================================================================================
# Rendering a batch
# ============================================================================================

def _mask_boxes(mask: np.ndarray, factor: int) -> np.ndarray:
    """(b, R, R) bool masks -> (b, 4) boxes (x0, y0, x1, y1) in output pixels; NaN if empty."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    boxes = np.full((mask.shape[0], 4), np.nan, np.float32)
    for i in range(mask.shape[0]):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = (xs[0] / factor, ys[0] / factor, (xs[-1] + 1) / factor, (ys[-1] + 1) / factor)
    return boxes


def _render_factor(size: int) -> int:
    """Internal supersampling: small sizes are drawn larger and area-downsampled."""
    return {28: 4, 64: 2}.get(size, 1)


def render_batch(p: dict, size: int):
    """Render stacked cases -> (images uint8 (B,size,size), boxes float32 (B,14,4))."""
    factor = _render_factor(size)
    render = size * factor
    labels = p["labels"]
    p = apply_volume_changes(p, labels)
    fr = Frame(p, render)
    batch = len(labels)
    mottle = _upsample(p["mottle"], render)
    habitus = _upsample(p["habitus"], render)

    soft = draw_thorax(fr)
    lung, outer, dome = lung_fields(fr)
    heart = draw_heart(fr)
    bones = draw_spine(fr) + draw_ribs(fr) + draw_clavicles(fr)
    vessels = draw_vessels(fr, mottle) * lung

    cv = Canvas(lung.shape)
    masks = {}
    has = {name: np.flatnonzero(labels[:, k]) for k, name in enumerate(PHANTOM_LABELS)}
    finders = {
        "atelectasis": lambda i: draw_atelectasis(fr, cv, i, lung[i]),
        "cardiomegaly": lambda i: heart[i] > 0.5,
        "effusion": lambda i: draw_effusion(fr, cv, i, lung[i], dome[i]),
        "infiltration": lambda i: draw_infiltration(fr, cv, i, mottle[i]),
        "mass": lambda i: draw_mass(fr, cv, i),
        "nodule": lambda i: draw_nodule(fr, cv, i),
        "pneumonia": lambda i: draw_pneumonia(fr, cv, i, mottle[i]),
        "pneumothorax": lambda i: draw_pneumothorax(fr, cv, i, lung[i], outer[i]),
        "consolidation": lambda i: draw_consolidation(fr, cv, i, lung[i], mottle[i]),
        "edema": lambda i: draw_edema(fr, cv, i, lung[i], mottle[i]),
        "emphysema": lambda i: draw_emphysema(fr, cv, i, lung[i]),
        "fibrosis": lambda i: draw_fibrosis(fr, cv, i, lung[i], mottle[i]),
        "pleural": lambda i: draw_pleural_thickening(fr, cv, i, lung[i], outer[i]),
        "hernia": lambda i: draw_hernia(fr, cv, i),
    }
    boxes = np.full((batch, len(PHANTOM_LABELS), 4), np.nan, np.float32)
    for k, name in enumerate(PHANTOM_LABELS):
        idx = has[name]
        if len(idx):
            mask = finders[name](idx)
            found = _mask_boxes(mask, factor)
            # a finding always gets a box; if its mask were empty, the whole image is the box
            found[np.isnan(found[:, 0])] = (0, 0, size, size)
            boxes[idx, k] = found

    # compose: lung air darkens, whatever fills the air (heart, vessels, disease) takes it back
    filling = heart + vessels * (1.0 - cv.no_markings) + cv.opacity
    # the lung is thickest (darkest) in its middle; chest wall and breasts overlap its edges
    depth = 0.72 + 0.28 * _smoothstep(outer, 0.0, 0.18)
    air = lung * depth * np.clip(1.0 - filling, 0.0, 1.0) * _col(p["lucency"]) * cv.lucency
    density = (soft * (1.0 + _col(p["habitus_amp"]) * habitus) + bones + 0.12 * heart
               + cv.density - air - 0.28 * draw_trachea(fr) - draw_gastric_bubble(fr, dome))
    return density, boxes


def expose(density: np.ndarray, p: dict, size: int) -> np.ndarray:
    """Area-downsample to the output size, then film: auto-windowing around the image mean (so
    the mean brightness is set by the exposure draw, not by the findings), a random gain and
    gamma, quantum noise, 8-bit quantisation."""
    batch, render = density.shape[0], density.shape[1]
    factor = render // size
    if factor > 1:
        density = density.reshape(batch, size, factor, size, factor).mean(axis=(2, 4))
    mean = density.reshape(batch, -1).mean(axis=1)
    film = _col(p["level"]) + _col(p["gain"]) * (density - _col(mean))
    film = np.clip(film, 0.0, 1.0) ** _col(p["gamma"])
    noise_sd = _col(p["noise_sd"]) * np.float32(np.sqrt(size / 224.0))
    film = film + noise_sd * p["noise"]
    return np.clip(np.rint(film * 255.0), 0, 255).astype(np.uint8)


# ============================================================================================
# Public API
# ============================================================================================

def _check_size(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} (the MedMNIST sizes), got {size!r}")
    return int(size)


def generate_split(size: int, n: int, seed: int, split: str = "train", start: int = 0):
    """Images ``start .. start+n-1`` of a split.

    Returns (images uint8 (n, size, size), labels uint8 (n, 14), boxes float32 (n, 14, 4)); boxes
    are (x0, y0, x1, y1) in pixels of the output image, NaN where the finding is absent. Image i
    depends only on (seed, split, i, size), never on ``n`` or ``start``.
    """
    size = _check_size(size)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    images = np.zeros((n, size, size), np.uint8)
    labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
    boxes = np.full((n, len(PHANTOM_LABELS), 4), np.nan, np.float32)
    render = size * _render_factor(size)
    per_batch = max(1, _PIXEL_BUDGET // (render * render))
    for lo in range(0, n, per_batch):
        hi = min(n, lo + per_batch)
        cases = [draw_case(image_rng(seed, split, start + i), size) for i in range(lo, hi)]
        p = _stack_cases(cases)
        density, boxes[lo:hi] = render_batch(p, size)
        images[lo:hi] = expose(density, p, size)
        labels[lo:hi] = p["labels"]
    return images, labels, boxes


def boxes_path(npz_path) -> Path:
    """Where the boxes of a phantom npz live: ``<stem>_boxes.npz`` beside it."""
    path = Path(npz_path)
    return path.with_name(path.stem + "_boxes.npz")


def _write_npy_header(stream, shape, dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    np.lib.format.write_array_header_1_0(stream, header)


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as stream:
        _write_npy_header(stream, array.shape, array.dtype)
        stream.write(np.ascontiguousarray(array).tobytes())


def _temp_beside(path: Path):
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(temp)


def write_phantom(path, size: int = 28, counts: dict | None = None, seed: int = 0,
                  chunk: int = 1024) -> Path:
    """Write a phantom ChestMNIST npz (MedMNIST format) and its boxes file; return the npz path.

    Images are generated ``chunk`` at a time and streamed into the archive (ZIP_STORED, zip64),
    so a large 224 px split never sits whole in memory. Both files are written to temporaries in
    the same folder and renamed into place (boxes first), so a reader never sees a partial file.
    """
    size = _check_size(size)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    npz_temp, boxes_temp = _temp_beside(path), _temp_beside(boxes_path(path))
    try:
        all_labels, all_boxes = {}, {}
        with zipfile.ZipFile(npz_temp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for split, n in counts.items():
                labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
                boxes = np.zeros((n, len(PHANTOM_LABELS), 4), np.float32)
                with archive.open(f"{split}_images.npy", "w", force_zip64=True) as stream:
                    _write_npy_header(stream, (n, size, size), np.uint8)
                    for lo in range(0, n, chunk):
                        hi = min(n, lo + chunk)
                        images, labels[lo:hi], boxes[lo:hi] = generate_split(size, hi - lo, seed, split, lo)
                        stream.write(images.tobytes())
                all_labels[split], all_boxes[split] = labels, boxes
            for split, labels in all_labels.items():
                _write_member(archive, f"{split}_labels", labels)
        with open(boxes_temp, "wb") as stream:  # a file object: savez would append ".npz" to a name
            np.savez(stream, label_names=np.array(PHANTOM_LABELS),
                     **{f"{split}_boxes": b for split, b in all_boxes.items()})
        os.replace(boxes_temp, boxes_path(path))
        os.replace(npz_temp, path)
    finally:
        for temp in (npz_temp, boxes_temp):
            temp.unlink(missing_ok=True)
    return path
