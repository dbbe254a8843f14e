"""Phantom ChestMNIST: synthetic frontal (PA) chest radiographs with known findings, made offline.

Each image is a smooth "attenuation" map built from simple shapes in anatomical coordinates
(x to the image right = the patient's left, y downwards, both in [-1, 1] for an unjittered body):
soft tissue of the thorax, two dark lung fields, the mediastinum and a heart shadow biased to the
image right, posterior ribs, clavicles, spine, trachea, hila with vessels, diaphragm domes. The 14
ChestMNIST findings are drawn where a radiologist would look for them, and a box per finding per
image records where each was drawn (for Grad-CAM pointing-game checks).

The map is rendered at an internal size (twice the target for 28 and 64 px, so small sizes come
out area-downsampled like MedMNIST's resized radiographs), then passed through a random exposure
(auto-windowed on the image mean, so the mean carries no label information) and quantum noise.
Pose (shift, scale, rotation), body build, lung density and exposure vary widely from image to
image so that no single pixel predicts a label well, while the findings stay visible at 28 px.

Determinism: every image draws all its random numbers from its own generator, seeded from
(seed, split, index), so image i is the same whatever chunk it is generated in, splits are
independent streams, and the same seed gives bit-identical arrays (on one platform: float32
transcendental functions may differ in the last bit between CPUs). Numpy only (no TensorFlow).

Label rates (``PREVALENCE``, exact under the co-occurrence model below) against the real rates of
NIH ChestX-ray14, from which ChestMNIST is made (``CHESTMNIST_PREVALENCE``). The phantom's are
deliberately higher, so that every label is learnable from a few thousand images:

    label          phantom  real      label          phantom  real
    atelectasis     14.8%   10.3%     pneumothorax     5.0%    4.7%
    cardiomegaly    12.8%    2.5%     consolidation    9.0%    4.2%
    effusion        14.2%   11.9%     edema            8.6%    2.1%
    infiltration    23.0%   17.7%     emphysema        7.4%    2.2%
    mass             6.0%    5.2%     fibrosis         6.8%    1.5%
    nodule           8.0%    5.6%     pleural          6.6%    3.0%
    pneumonia        8.8%    1.3%     hernia           4.0%    0.2%
    no finding      31.1%   53.8%

Usage::

    images, labels, boxes = generate_split(28, 1000, seed=0, split="train")
    write_phantom("phantom_28.npz", size=28)        # + phantom_28_boxes.npz beside it
"""
from __future__ import annotations

import contextlib
import itertools
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chest_tf.data.info import SIZES
from chest_tf.files import atomic_path

PHANTOM_LABELS = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
)
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
_HABITUS_GRID = 5   # slow variation of soft tissue and lung density (breasts, habitus, scatter)
# Pixels per internal render batch: fields of ~0.5 MB stay in cache, which is faster than
# big arrays, and memory stays small whatever the chunk.
_PIXEL_BUDGET = 1 << 17


# ============================================================================================
# Random draws: one generator per image, one vector of uniforms mapped onto parameter ranges
# ============================================================================================

# Normal anatomy and exposure: (low, high) of a uniform draw per image. "_0"/"_1" suffixes are
# the patient's right (image left) and left (image right).
ANATOMY_RANGES = {
    # pose: anatomical -> image coordinates is scale, rotate, shift. Generous, like real films,
    # so that no fixed pixel sits on the same anatomy in every image.
    "scale": (0.84, 1.08), "aspect_x": (0.95, 1.05), "aspect_y": (0.95, 1.05),
    "shift_x": (-0.11, 0.11), "shift_y": (-0.09, 0.11), "rotation": (-0.12, 0.12),
    # lungs: egg-shaped outlines widest at the bases
    "lung_cx_0": (0.31, 0.35), "lung_cx_1": (0.31, 0.35), "lung_ax_0": (0.47, 0.53),
    "lung_ax_1": (0.45, 0.51), "lung_cy": (0.22, 0.28), "lung_ay": (0.94, 1.02),
    "lung_medial_0": (0.08, 0.10), "lung_medial_1": (0.07, 0.09),
    "lucency": (0.45, 0.75),         # how dark aerated lung is (habitus, kV, inspiration)
    "lung_haze": (0.0, 0.16),        # patchy normal variation of lung density
    # diaphragm: the right dome sits higher than the left; depth of inspiration varies
    "dome_top_0": (0.33, 0.47), "dome_drop_1": (0.02, 0.08), "dome_peak": (0.32, 0.42),
    "dome_curve": (0.75, 1.05),
    # heart (cardiothoracic ratio about 0.40-0.47) and mediastinum
    "heart_cx": (0.07, 0.15), "heart_cy": (0.31, 0.41), "heart_hw": (0.31, 0.39),
    "heart_hh": (0.22, 0.26), "heart_tilt": (0.3, 0.5), "knob_r": (0.05, 0.07),
    # bones
    "rib_spacing": (0.125, 0.145), "rib_phase": (0.0, 1.0), "rib_curve": (0.75, 0.95),
    "rib_density": (0.07, 0.12), "clavicle_y": (-0.72, -0.64), "clavicle_slope": (-0.30, -0.18),
    # hila and vessels
    "hilum_y_0": (-0.10, -0.04), "hilum_y_1": (-0.14, -0.08), "hilum_size": (0.006, 0.012),
    "vessel_phase": (0.0, 6.283), "vessel_density": (0.08, 0.22),
    # stomach gas under the left dome, in about half the films
    "gastric_present": (0.0, 1.0), "gastric_r": (0.03, 0.07), "gastric_x": (0.30, 0.50),
    # soft tissue and film
    "soft_density": (0.92, 1.06), "habitus_amp": (0.03, 0.08),
    "gain": (0.52, 0.68), "level": (0.42, 0.58), "gamma": (0.85, 1.15), "noise_sd": (0.010, 0.025),
}

# Shape of every finding, drawn for every image (present or not: a fixed number of draws).
# Side-like entries are uniforms compared with a threshold where they are used.
FINDING_RANGES = {
    # atelectasis: plate-like band and a raised hemidiaphragm (volume loss)
    "atel_side": (0, 1), "atel_xm": (0.35, 0.55), "atel_above_dome": (0.10, 0.24),
    "atel_len": (0.24, 0.36), "atel_thick": (0.045, 0.065), "atel_tilt": (-0.35, 0.15),
    "atel_raise": (0.04, 0.10),
    # cardiomegaly: cardiothoracic ratio well above 0.5
    "cardio_widen": (1.22, 1.5), "cardio_heighten": (1.05, 1.2), "cardio_shift": (-0.02, 0.08),
    # effusion: side(s), fluid height, meniscus
    "eff_mode": (0, 1), "eff_h_0": (0.14, 0.30), "eff_h_1": (0.14, 0.30), "eff_meniscus": (0.35, 0.6),
    # infiltration: 1-3 hazy patches
    "inf_count": (0, 1),
    **{f"inf_{k}_{q}": r for k in range(3) for q, r in (
        ("side", (0, 1)), ("xm", (0.3, 0.65)), ("y", (-0.5, 0.25)), ("r", (0.12, 0.20)),
        ("amp", (0.35, 0.55)))},
    # mass: one large round lobulated opacity
    "mass_side": (0, 1), "mass_xm": (0.32, 0.60), "mass_y": (-0.45, 0.18), "mass_r": (0.10, 0.15),
    "mass_lobes": (0.0, 0.12), "mass_phase": (0.0, 6.283),
    # nodules: one or two small dense round opacities
    "nod_count": (0, 1),
    **{f"nod_{k}_{q}": r for k in range(2) for q, r in (
        ("side", (0, 1)), ("xm", (0.25, 0.65)), ("y", (-0.55, 0.25)), ("r", (0.045, 0.065)))},
    # pneumonia: mottled patch in a mid/lower zone, sometimes both lungs
    "pna_side": (0, 1), "pna_bilateral": (0, 1), "pna_xm": (0.28, 0.65), "pna_y": (-0.38, 0.3),
    "pna_r": (0.14, 0.22), "pna_amp": (0.7, 1.0),
    # pneumothorax: apical-lateral rim of air beyond a visible visceral pleural line
    "ptx_side": (0, 1), "ptx_depth": (0.11, 0.19), "ptx_line": (0.25, 0.4),
    # consolidation: dense homogeneous opacity with a sharp fissural edge
    "cons_side": (0, 1), "cons_lower": (0, 1), "cons_xm": (0.32, 0.62),
    "cons_fissure": (-0.25, 0.1), "cons_r": (0.22, 0.30), "cons_amp": (0.9, 1.05),
    # edema: bilateral perihilar (bat-wing) haze and Kerley B lines
    "edema_amp": (0.18, 0.34), "edema_spread": (0.18, 0.30),
    # emphysema: hyperinflation, flat low domes, hyperlucency, bullae
    "emph_drop": (0.04, 0.09), "emph_flatten": (0.15, 0.35), "emph_lucency": (1.1, 1.3),
    "emph_bulla_side": (0, 1), "emph_bulla_xm": (0.35, 0.6), "emph_bulla_y": (-0.55, -0.3),
    "emph_bulla_r": (0.07, 0.11),
    # fibrosis: coarse reticulation (honeycombing), basal and peripheral or upper zone
    "fib_spacing": (0.10, 0.13), "fib_angle": (0.0, 1.57), "fib_amp": (0.6, 0.8),
    "fib_upper": (0, 1),
    # pleural thickening: smooth rim along the lateral chest wall and apex
    "pl_mode": (0, 1), "pl_thick": (0.05, 0.08), "pl_low": (0.0, 0.3),
    # hernia: retrocardiac gas bubble with an air-fluid level, just above the diaphragm
    "hernia_x": (-0.02, 0.16), "hernia_r": (0.08, 0.12), "hernia_level": (-0.2, 0.3),
}
_RANGES = {**ANATOMY_RANGES, **FINDING_RANGES}
_RANGE_LOW = np.array([lo for lo, _ in _RANGES.values()], np.float64)
_RANGE_SPAN = np.array([hi - lo for lo, hi in _RANGES.values()], np.float64)


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


def draw_case(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one image, in a fixed order: labels, shape parameters (as
    uniforms), texture grids, then pixel noise (the only draw that depends on the size)."""
    return {
        "labels": draw_labels(rng),
        "uniforms": rng.random(len(_RANGES)),
        "mottle": rng.standard_normal((_MOTTLE_GRID, _MOTTLE_GRID), dtype=np.float32),
        "habitus": rng.standard_normal((_HABITUS_GRID, _HABITUS_GRID), dtype=np.float32),
        "noise": rng.standard_normal((size, size), dtype=np.float32),
    }


def stack_cases(cases: list[dict]) -> dict:
    """Cases -> one dict of per-image arrays: parameters by name (B,), grids (B, g, g)."""
    p = {key: np.stack([c[key] for c in cases]) for key in cases[0] if key != "uniforms"}
    values = (_RANGE_LOW + _RANGE_SPAN * np.stack([c["uniforms"] for c in cases])).astype(np.float32)
    p |= {name: values[:, j] for j, name in enumerate(_RANGES)}
    return p


# ============================================================================================
# Field helpers. Fields are float32 (B, H, W); per-image parameters broadcast as (B, 1, 1).
# ============================================================================================

def _col(values):
    """(B,) parameters -> (B, 1, 1), to broadcast over a batch of fields."""
    return np.asarray(values, np.float32)[:, None, None]


def _ramp(x, lo, hi):
    """0 at lo, 1 at hi, linear in between (lo > hi gives the falling version). Cheaper than a
    smoothstep, and edges are only a pixel or two wide anyway."""
    t = x - lo
    t *= 1.0 / (hi - lo)
    return np.clip(t, 0.0, 1.0, out=t)


def _upsample_taps(grid: int, size: int):
    """For each of ``size`` output samples, the 4 coarse-grid indices and cubic B-spline weights
    that smooth a random grid into a field (weights scaled to keep unit variance everywhere)."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (grid - 1)
    base = np.floor(pos).astype(int)
    frac = pos - base
    weights = np.stack([(1 - frac) ** 3, 3 * frac ** 3 - 6 * frac ** 2 + 4,
                        -3 * frac ** 3 + 3 * frac ** 2 + 3 * frac + 1, frac ** 3]) / 6.0
    weights /= np.sqrt((weights ** 2).sum(axis=0, keepdims=True))
    taps = np.clip(base[None, :] + np.arange(-1, 3)[:, None], 0, grid - 1)
    return taps, weights.astype(np.float32)


def _upsample(grids: np.ndarray, size: int) -> np.ndarray:
    """(B, g, g) coarse random grids (unit normal) -> (B, size, size) smooth unit-variance
    fields. Elementwise sums (no BLAS), so each image's field is the same in any batch."""
    taps, weights = _upsample_taps(grids.shape[1], size)
    # columns first on the small grid, then whole rows (cheap contiguous gathers) at full size
    cols = sum(grids[:, :, t] * w for t, w in zip(taps, weights))
    out = cols[:, taps[0], :] * weights[0][:, None]
    for t, w in zip(taps[1:], weights[1:]):
        out += cols[:, t, :] * w[:, None]
    return out


def _signed_x(side, xm):
    """Anatomical x of a point ``xm`` from the midline on a side (side >= 0.5: patient's left)."""
    return np.where(side >= 0.5, xm, -xm)


def _disc(x, y, cx, cy, r, edge=0.15):
    """Round opacity of radius r with an edge ``edge * r`` wide."""
    d2 = ((x - cx) ** 2 + (y - cy) ** 2) / (r * r)
    return _ramp(d2, (1.0 + edge) ** 2, (1.0 - edge) ** 2)


def _gauss(x, y, cx, cy, r):
    """Soft, ill-defined patch of scale r (haze)."""
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (r * r))


class Frame:
    """One render batch: pixel grids in anatomical coordinates, the per-image parameters, and
    the normal anatomy's shared fields that findings draw against."""

    def __init__(self, p: dict, render: int):
        self.p, self.render = p, render
        c = (np.arange(render, dtype=np.float32) + 0.5) * (2.0 / render) - 1.0
        dx = c[None, None, :] - _col(p["shift_x"])
        dy = c[None, :, None] - _col(p["shift_y"])
        cos, sin = _col(np.cos(p["rotation"])), _col(np.sin(p["rotation"]))
        sx, sy = _col(p["scale"] * p["aspect_x"]), _col(p["scale"] * p["aspect_y"])
        self.x = (cos / sx) * dx + (sin / sx) * dy
        self.y = (cos / sy) * dy - (sin / sy) * dx
        self.on_left = self.x > 0          # patient's left = image right
        self.xm = np.abs(self.x)           # distance from the midline, the same on both sides

    def by_side(self, name, idx=None):
        """Per-pixel value of a two-sided parameter (``name_0`` right, ``name_1`` left)."""
        right, left = self.p[name + "_0"], self.p[name + "_1"]
        side = self.on_left
        if idx is not None:
            right, left, side = right[idx], left[idx], side[idx]
        return np.where(side, _col(left), _col(right))

    FIELDS = ("x", "y", "xm", "on_left")

    def at(self, idx, *names):
        """Fields, or per-image parameters as (b, 1, 1), restricted to the images ``idx``."""
        out = [getattr(self, name)[idx] if name in self.FIELDS else _col(self.p[name][idx])
               for name in names]
        return out if len(out) > 1 else out[0]


# ============================================================================================
# Normal anatomy
# ============================================================================================

def draw_thorax(fr: Frame) -> np.ndarray:
    """Soft tissue of the neck, shoulders, chest wall and abdomen, thicker in the middle."""
    x, y, xm = fr.x, fr.y, fr.xm
    shoulder_line = np.minimum(xm, 0.92) ** 3 * 0.39 - 0.98
    body = _ramp(np.minimum(0.95 - xm, y - shoulder_line), -0.015, 0.015)
    thickness = 1.0 - 0.2 * x * x
    return body * thickness * _col(fr.p["soft_density"])


def lung_fields(fr: Frame):
    """Both lungs: egg-shaped outlines (widest at the costophrenic angles), cut medially by the
    mediastinum and below by the domes. Returns (alpha, distance to the outer edge, dome y)."""
    p, xm, y = fr.p, fr.xm, fr.y
    ax = fr.by_side("lung_ax")
    r2 = ((xm - fr.by_side("lung_cx")) / ax) ** 2 + ((y - _col(p["lung_cy"])) / _col(p["lung_ay"])) ** 2
    outer = (1.0 - np.sqrt(r2)) * ax                  # ~distance to the lateral/apical edge
    dome = fr.by_side("dome_top") + _col(p["dome_curve"]) * (xm - _col(p["dome_peak"])) ** 2
    margin = np.minimum(np.minimum(outer, dome - y), xm - fr.by_side("lung_medial"))
    return _ramp(margin, -0.008, 0.012), outer, dome


def draw_heart(fr: Frame) -> np.ndarray:
    """Heart shadow: a tilted ellipse right of the image centre (apex to the patient's left),
    sitting on the diaphragm, with the aortic knob bulging the mediastinum above it."""
    p = fr.p
    dx, dy = fr.x - _col(p["heart_cx"]), fr.y - _col(p["heart_cy"])
    cos, sin = _col(np.cos(p["heart_tilt"])), _col(np.sin(p["heart_tilt"]))
    u = (cos * dx + sin * dy) / _col(p["heart_hw"])
    v = (cos * dy - sin * dx) / _col(p["heart_hh"])
    heart = _ramp(u * u + v * v, 1.12, 0.85)
    knob_x = fr.x - 0.05
    knob_y = (fr.y + 0.36) * 0.8
    knob = _ramp((knob_x * knob_x + knob_y * knob_y) / _col(p["knob_r"] + 0.02) ** 2, 1.3, 0.6)
    return np.maximum(heart, knob, out=heart)


def draw_trachea(fr: Frame) -> np.ndarray:
    """Air column of the trachea (lucent) in the midline, down to the carina."""
    d = np.abs(fr.x)
    return _ramp(d, 0.035, 0.02) * _ramp(fr.y, -0.22, -0.32)


def draw_spine(fr: Frame) -> np.ndarray:
    """Vertebral column through the mediastinum, with faint disc spaces."""
    discs = np.cos(fr.y * np.float32(2 * np.pi / 0.105))
    discs *= 0.045
    discs += 0.18
    return _ramp(fr.xm, 0.065, 0.04) * discs


def draw_ribs(fr: Frame) -> np.ndarray:
    """Posterior ribs (the ones that show on a PA film): bright bands rising gently from the
    spine and curving down laterally, spaced a little wider lower down."""
    p, xm, y = fr.p, fr.xm, fr.y
    t = xm * (0.36 - _col(p["rib_curve"]) * xm)
    t += y
    t *= 1.0 - 0.05 * y
    t *= _col(np.float32(2 * np.pi) / p["rib_spacing"])
    t += _col(np.float32(2 * np.pi) * p["rib_phase"])
    ribs = np.cos(t, out=t)
    ribs -= 0.2
    ribs = np.sqrt(np.clip(ribs, 0.0, None, out=ribs), out=ribs)
    cage = np.minimum(np.minimum(0.92 - xm, xm - 0.04), np.minimum(y + 0.9, 0.75 - y))
    ribs *= _ramp(cage, 0.0, 0.08)
    ribs *= _col(p["rib_density"])
    return ribs


def draw_clavicles(fr: Frame) -> np.ndarray:
    """Clavicles: oblique gently curved bands from the sternal notch out to the shoulders."""
    p, xm = fr.p, fr.xm
    centre = _col(p["clavicle_y"]) + _col(p["clavicle_slope"]) * (xm - 0.07) + 0.12 * (xm - 0.35) ** 2
    band = _ramp(np.abs(fr.y - centre), 0.035, 0.02)
    return band * _ramp(np.minimum(xm - 0.05, 0.7 - xm), 0.0, 0.05) * 0.24


def draw_vessels(fr: Frame, mottle: np.ndarray) -> np.ndarray:
    """Hila and the pulmonary vessels fanning out from them, fading towards the periphery."""
    p = fr.p
    dx = fr.xm - 0.2
    dy = fr.y - fr.by_side("hilum_y")
    d2 = dx * dx
    d2 += dy * dy
    d = np.sqrt(d2)
    angle = np.arctan2(dy, dx, out=dy)
    angle *= 11.0
    angle += 9.0 * d
    angle += 3.0 * mottle
    angle += _col(p["vessel_phase"])
    streaks = np.cos(angle, out=angle)
    streaks += 1.0
    for _ in range(3):  # (1 + cos)^8: thin bright lines (scaled back by 1/256 below)
        streaks *= streaks
    fade = np.clip(1.0 - 1.4 * d, 0.0, None, out=d)
    fade *= fade
    streaks *= fade
    hilum = np.clip(1.0 - d2 / _col(2.5 * p["hilum_size"]), 0.0, None, out=d2)
    hilum *= hilum
    streaks *= 1.0 / 256.0
    streaks += 0.9 * hilum
    streaks *= _col(p["vessel_density"])
    return streaks


def draw_gastric_bubble(fr: Frame, idx, dome) -> np.ndarray:
    """Stomach gas under the left dome (a lucency)."""
    x, y = fr.at(idx, "x", "y")
    cy = fr.at(idx, "dome_top_1") + 0.12
    bubble = _disc(x, y, fr.at(idx, "gastric_x"), cy, fr.at(idx, "gastric_r"), edge=0.3)
    return bubble * (y > dome)


# ============================================================================================
# Findings. Each draws into the Canvas for the images ``idx`` that have it and returns a mask
# of where it is drawn (for the boxes). Opacity replaces lung air, lucency scales the lung's
# darkness, density is added directly (lines, rims; gas is negative).
# ============================================================================================

class Canvas:
    """What findings draw into, for a render batch."""

    def __init__(self, shape):
        self.opacity = np.zeros(shape, np.float32)      # fraction of lung air replaced (0..1)
        self.lucency = np.ones(shape, np.float32)       # multiplies the lung's darkness
        self.density = np.zeros(shape, np.float32)      # added directly
        self.markings = np.ones(shape, np.float32)      # 0 where vessels must not show


def draw_atelectasis(fr, cv, idx, lung, dome):
    """Plate-like (discoid) atelectasis: a bright linear band in the lower zone, above the raised
    hemidiaphragm of the same side (the volume loss is applied to the domes beforehand)."""
    x, y, side, xm, above, length, thick, tilt = fr.at(
        idx, "x", "y", "atel_side", "atel_xm", "atel_above_dome", "atel_len", "atel_thick", "atel_tilt")
    left = side >= 0.5
    cx = np.where(left, xm, -xm)
    cy = np.where(left, fr.at(idx, "dome_top_1"), fr.at(idx, "dome_top_0")) - above
    tilt = np.where(left, tilt, -tilt)
    cos, sin = np.cos(tilt), np.sin(tilt)
    u = cos * (x - cx) + sin * (y - cy)
    v = cos * (y - cy) - sin * (x - cx)
    band = _ramp(np.abs(v), thick * 0.5 + 0.01, thick * 0.5 - 0.01)
    band *= _ramp(np.abs(u), length * 0.5, length * 0.5 - 0.06)
    band *= lung
    cv.opacity[idx] += band
    cv.density[idx] += 0.12 * band
    # the box also covers the strip of lung lost under the raised dome: the other half of the sign
    raised_by = fr.at(idx, "atel_raise")
    xm = fr.at(idx, "xm")
    lost = ((fr.on_left[idx] == left) & (y > dome - 0.01) & (y < dome + raised_by)
            & (xm > 0.1) & (xm < 0.85))
    return (band > 0.3) | lost


def draw_effusion(fr, cv, idx, lung, dome):
    """Pleural effusion: dense basal opacity on one or both sides whose upper surface is a
    meniscus climbing the lateral chest wall, blunting the costophrenic angle, hiding the dome."""
    y, xm, mode, meniscus = fr.at(idx, "y", "xm", "eff_mode", "eff_meniscus")
    on_left = fr.on_left[idx]
    present = np.where(on_left, mode >= 0.45, mode < 0.75)   # 45% right, 25% left, 30% both
    height = fr.by_side("eff_h", idx)
    # the fluid rises from the costophrenic angle, the lowest lateral point of the lung
    curve, peak = fr.at(idx, "dome_curve", "dome_peak")
    base = fr.by_side("dome_top", idx) + curve * (0.78 - peak) ** 2 + 0.03
    lateral = np.clip((xm - 0.1) * (1 / 0.72), 0.0, 1.0)
    surface = base - height * (1.0 - meniscus * (1.0 - lateral * lateral))
    fluid = _ramp(y - surface, -0.015, 0.03) * present
    fluid *= _ramp(np.minimum(xm - 0.08, 0.86 - xm), 0.0, 0.04)
    cv.opacity[idx] += fluid
    cv.density[idx] += 0.15 * fluid * (y < dome)
    return (fluid > 0.3) & ((lung > 0.05) | (y < dome + 0.02))


def draw_infiltration(fr, cv, idx, mottle):
    """Infiltration: 1-3 faint, ill-defined hazy patches anywhere in the lungs."""
    x, y, count_u = fr.at(idx, "x", "y", "inf_count")
    count = 1 + (count_u > 0.45) + (count_u > 0.8)
    haze = np.zeros_like(x)
    for k in range(3):
        side, xm, cy, r, amp = fr.at(idx, *(f"inf_{k}_{q}" for q in ("side", "xm", "y", "r", "amp")))
        patch = _gauss(x, y, _signed_x(side, xm), cy, r) * (amp * (k < count))
        np.maximum(haze, patch, out=haze)
    haze *= 0.85 + 0.3 * np.tanh(mottle)
    cv.opacity[idx] += haze
    return haze > 0.05


def _round_opacity(fr, cv, idx, x, y, cx, cy, r):
    disc = _disc(x, y, cx, cy, r)
    cv.opacity[idx] += disc
    cv.density[idx] += 0.25 * disc
    return disc


def draw_mass(fr, cv, idx):
    """Mass: one large (>3 cm) round, lobulated, well-defined opacity in a lung field."""
    x, y, side, xm, cy, r, lobes, phase = fr.at(
        idx, "x", "y", "mass_side", "mass_xm", "mass_y", "mass_r", "mass_lobes", "mass_phase")
    cx = _signed_x(side, xm)
    radius = r * (1.0 + lobes * np.cos(5.0 * np.arctan2(y - cy, x - cx) + phase))
    return _round_opacity(fr, cv, idx, x, y, cx, cy, radius) > 0.3


def draw_nodule(fr, cv, idx):
    """Nodules: one or two small, dense, sharply defined round opacities."""
    x, y, count_u = fr.at(idx, "x", "y", "nod_count")
    mask = np.zeros(x.shape, bool)
    for k in range(2):
        side, xm, cy, r = fr.at(idx, *(f"nod_{k}_{q}" for q in ("side", "xm", "y", "r")))
        disc = _disc(x, y, _signed_x(side, xm), cy, r)
        disc *= (k == 0) | (count_u > 0.6)            # a second nodule in 40% of cases
        cv.opacity[idx] += disc
        cv.density[idx] += 0.35 * disc                # denser than soft tissue (often calcified)
        mask |= disc > 0.3
    return mask


def draw_pneumonia(fr, cv, idx, mottle):
    """Pneumonia: patchy, mottled airspace opacity in a mid or lower zone (both lungs in a
    quarter of cases): denser spots within a looser haze."""
    x, y, side, bilateral, xm, cy, r, amp = fr.at(
        idx, "x", "y", "pna_side", "pna_bilateral", "pna_xm", "pna_y", "pna_r", "pna_amp")
    cx = _signed_x(side, xm)
    extent = np.maximum(_gauss(x, y, cx, cy, r), _gauss(x, y, -cx, cy, r) * (bilateral < 0.25))
    patchy = extent * (0.35 + 0.9 * np.clip(mottle + 0.3, 0.0, 1.2)) * amp
    cv.opacity[idx] += patchy
    return extent > 0.15


def draw_pneumothorax(fr, cv, idx, lung, outer):
    """Pneumothorax: the lung has fallen away from the apex and lateral wall; beyond the thin
    visceral pleural line there is only air: darker, with no lung markings."""
    y, side, depth, line, cy, ay = fr.at(idx, "y", "ptx_side", "ptx_depth", "ptx_line", "lung_cy", "lung_ay")
    this_side = fr.on_left[idx] == (side >= 0.5)
    taper = 1.0 - 0.6 * np.clip((y - (cy - ay)) * (1 / 1.1), 0.0, 1.0)   # deepest at the apex
    gap = outer - depth * taper
    air = _ramp(gap, 0.006, -0.006) * lung * this_side
    pleural_line = np.clip(1.0 - (gap * (1 / 0.012)) ** 2, 0.0, None) * lung * this_side
    cv.lucency[idx] *= 1.0 + 0.35 * air
    cv.markings[idx] *= 1.0 - air
    cv.density[idx] += line * pleural_line
    return air > 0.5


def draw_consolidation(fr, cv, idx, lung, mottle):
    """Consolidation: dense, homogeneous lobar opacity with a sharp straight edge where it meets
    a fissure (upper or lower lobe of one lung)."""
    x, y, side, lower_u, xm, fissure, r, amp = fr.at(
        idx, "x", "y", "cons_side", "cons_lower", "cons_xm", "cons_fissure", "cons_r", "cons_amp")
    lower = lower_u < 0.6                                 # lower lobes more often
    cx = _signed_x(side, xm)
    beyond_fissure = np.where(lower, y - fissure, fissure - y)
    cy = fissure + np.where(lower, 0.55, -0.55) * r
    lobe = _disc(x, y, cx, cy, r, edge=0.25) * _ramp(beyond_fissure, -0.004, 0.008)
    dense = lobe * lung * amp * (1.0 + 0.05 * mottle)
    cv.opacity[idx] += dense
    cv.density[idx] += 0.1 * dense
    return dense > 0.3


def draw_edema(fr, cv, idx, lung, mottle):
    """Pulmonary edema: symmetric bat-wing haze around both hila, with Kerley B lines at the
    lateral bases."""
    xm, y, amp, spread = fr.at(idx, "xm", "y", "edema_amp", "edema_spread")
    hilum_y = fr.by_side("hilum_y", idx)
    wing = np.exp(-((xm - 0.24) / (spread * 1.1)) ** 2 - ((y - hilum_y) / (spread * 1.5)) ** 2)
    haze = wing * amp * (0.9 + 0.2 * np.tanh(mottle)) * lung
    kerley = (np.clip(np.cos(y * np.float32(2 * np.pi / 0.04)) - 0.6, 0.0, None)
              * _ramp(xm, 0.62, 0.72) * _ramp(y, 0.05, 0.2) * lung * 0.6)
    cv.opacity[idx] += haze + kerley
    return (wing > 0.15) & (lung > 0.5) | (kerley > 0.1)


def draw_emphysema(fr, cv, idx, lung):
    """Emphysema: hyperlucent lungs (overexpanded, flat low domes: applied to the geometry
    beforehand) with sparse peripheral vessels and a thin-walled upper-zone bulla."""
    x, y, xm, lucency, side, bxm, by, br = fr.at(
        idx, "x", "y", "xm", "emph_lucency", "emph_bulla_side", "emph_bulla_xm", "emph_bulla_y", "emph_bulla_r")
    cv.lucency[idx] *= 1.0 + (lucency - 1.0) * lung
    cv.markings[idx] *= 1.0 - 0.6 * lung * _ramp(xm, 0.4, 0.6)
    d = np.sqrt((x - _signed_x(side, bxm)) ** 2 + (y - by) ** 2) / br
    bulla = _ramp(d, 1.0, 0.85) * lung
    wall = np.clip(1.0 - ((d - 1.0) * (1 / 0.1)) ** 2, 0.0, None) * lung
    cv.lucency[idx] *= 1.0 + 0.25 * bulla
    cv.markings[idx] *= 1.0 - bulla
    cv.density[idx] += 0.12 * wall
    return lung > 0.5


def draw_fibrosis(fr, cv, idx, lung, mottle):
    """Fibrosis: coarse reticulation (honeycombing: bright walls around lucent cysts),
    peripheral and basal (upper zones in a fifth of cases), with volume loss applied to the
    domes beforehand."""
    x, y, xm, angle, spacing, amp, upper = fr.at(
        idx, "x", "y", "xm", "fib_angle", "fib_spacing", "fib_amp", "fib_upper")
    warp = 0.025 * mottle
    freq = np.float32(2 * np.pi) / spacing
    u = (np.cos(angle) * x + np.sin(angle) * y + warp) * freq
    v = (np.cos(angle) * y - np.sin(angle) * x - warp) * freq
    net = np.maximum(np.cos(u), np.cos(v))
    walls = np.clip((net - 0.7) * (1 / 0.3), 0.0, 1.0)
    zone = np.where(upper < 0.2, _ramp(y, -0.1, -0.3), _ramp(y, -0.15, 0.1))
    zone *= _ramp(xm, 0.22, 0.42) * lung
    cv.opacity[idx] += walls * zone * amp
    cv.lucency[idx] *= 1.0 + 0.25 * (1.0 - walls) * zone   # cysts between the walls
    return zone > 0.3


def draw_pleural_thickening(fr, cv, idx, lung, outer):
    """Pleural thickening: a smooth soft-tissue rim lining the lateral chest wall and apex, on
    one side or both."""
    y, xm, mode, thick, low = fr.at(idx, "y", "xm", "pl_mode", "pl_thick", "pl_low")
    present = np.where(fr.on_left[idx], mode >= 0.4, mode < 0.7)   # 40% R, 30% L, 30% both
    rim = _ramp(outer, thick + 0.01, thick - 0.01) * lung * present
    rim *= _ramp(xm, 0.2, 0.35) * _ramp(y, 0.45 - low, 0.3 - low)
    cv.opacity[idx] += rim
    cv.density[idx] += 0.1 * rim
    return rim > 0.3


def draw_hernia(fr, cv, idx):
    """Hiatus hernia: a retrocardiac gas bubble with an air-fluid level and a soft-tissue wall,
    just above the diaphragm behind the heart."""
    x, y, cx, r, level_u, top0, top1 = fr.at(
        idx, "x", "y", "hernia_x", "hernia_r", "hernia_level", "dome_top_0", "dome_top_1")
    cy = np.minimum(top0, top1) + 0.06 - r
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    sac = _ramp(d, 1.08, 0.95)
    level = cy + level_u * r
    gas = _ramp(d, 0.9, 0.78) * _ramp(y, level + 0.01, level - 0.01)
    wall = np.clip(1.0 - ((d - 0.95) * (1 / 0.12)) ** 2, 0.0, None)
    cv.density[idx] += 0.2 * wall + 0.12 * sac - 0.45 * gas
    return sac > 0.3


FINDING_DRAWERS = {
    "atelectasis": lambda fr, cv, i, f: draw_atelectasis(fr, cv, i, f["lung"][i], f["dome"][i]),
    "cardiomegaly": lambda fr, cv, i, f: f["heart"][i] > 0.5,   # drawn by draw_heart, enlarged
    "effusion": lambda fr, cv, i, f: draw_effusion(fr, cv, i, f["lung"][i], f["dome"][i]),
    "infiltration": lambda fr, cv, i, f: draw_infiltration(fr, cv, i, f["mottle"][i]),
    "mass": lambda fr, cv, i, f: draw_mass(fr, cv, i),
    "nodule": lambda fr, cv, i, f: draw_nodule(fr, cv, i),
    "pneumonia": lambda fr, cv, i, f: draw_pneumonia(fr, cv, i, f["mottle"][i]),
    "pneumothorax": lambda fr, cv, i, f: draw_pneumothorax(fr, cv, i, f["lung"][i], f["outer"][i]),
    "consolidation": lambda fr, cv, i, f: draw_consolidation(fr, cv, i, f["lung"][i], f["mottle"][i]),
    "edema": lambda fr, cv, i, f: draw_edema(fr, cv, i, f["lung"][i], f["mottle"][i]),
    "emphysema": lambda fr, cv, i, f: draw_emphysema(fr, cv, i, f["lung"][i]),
    "fibrosis": lambda fr, cv, i, f: draw_fibrosis(fr, cv, i, f["lung"][i], f["mottle"][i]),
    "pleural": lambda fr, cv, i, f: draw_pleural_thickening(fr, cv, i, f["lung"][i], f["outer"][i]),
    "hernia": lambda fr, cv, i, f: draw_hernia(fr, cv, i),
}


def apply_volume_changes(p: dict) -> dict:
    """Findings that change the normal geometry (heart size, dome heights, lung size) act on the
    parameters before anything is drawn."""
    p = dict(p)
    has = {name: p["labels"][:, k].astype(bool) for k, name in enumerate(PHANTOM_LABELS)}
    where = np.where
    # cardiomegaly: the heart widens (mostly to the patient's left) and lengthens
    p["heart_hw"] = p["heart_hw"] * where(has["cardiomegaly"], p["cardio_widen"], 1.0)
    p["heart_hh"] = p["heart_hh"] * where(has["cardiomegaly"], p["cardio_heighten"], 1.0)
    p["heart_cx"] = p["heart_cx"] + where(has["cardiomegaly"], p["cardio_shift"], 0.0)
    top0 = p["dome_top_0"]
    top1 = top0 + p["dome_drop_1"]
    # emphysema: hyperinflated lungs, low flat domes, a narrow vertical heart
    drop = where(has["emphysema"], p["emph_drop"], 0.0)
    top0, top1 = top0 + drop, top1 + drop
    p["lung_ay"] = p["lung_ay"] + 0.6 * drop
    p["lung_cy"] = p["lung_cy"] + 0.5 * drop
    p["dome_curve"] = p["dome_curve"] * where(has["emphysema"], p["emph_flatten"], 1.0)
    p["heart_hw"] = p["heart_hw"] * where(has["emphysema"] & ~has["cardiomegaly"], 0.88, 1.0)
    # atelectasis: volume loss lifts the hemidiaphragm of the collapsed side
    raise_ = where(has["atelectasis"], p["atel_raise"], 0.0)
    left = p["atel_side"] >= 0.5
    top0, top1 = top0 - where(left, 0.0, raise_), top1 - where(left, raise_, 0.0)
    p["dome_top_0"], p["dome_top_1"] = top0, top1
    return {k: v if k == "labels" else np.asarray(v, np.float32) for k, v in p.items()}


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
    """Internal supersampling: 28 and 64 px are drawn twice as large and area-downsampled."""
    return 2 if size <= 64 else 1


def render_density(p: dict, size: int):
    """Stacked cases -> (density (B, R, R) at the internal size, boxes (B, 14, 4) in output
    pixels). ``p`` must have been through ``apply_volume_changes``."""
    factor = _render_factor(size)
    render = size * factor
    fr = Frame(p, render)
    shared = {"mottle": _upsample(p["mottle"], render)}
    shared["lung"], shared["outer"], shared["dome"] = lung_fields(fr)
    shared["heart"] = draw_heart(fr)
    lung = shared["lung"]

    cv = Canvas(lung.shape)
    boxes = np.full((len(lung), len(PHANTOM_LABELS), 4), np.nan, np.float32)
    for k, name in enumerate(PHANTOM_LABELS):
        idx = np.flatnonzero(p["labels"][:, k])
        if len(idx):
            found = _mask_boxes(FINDING_DRAWERS[name](fr, cv, idx, shared), factor)
            found[np.isnan(found[:, 0])] = (0, 0, size, size)  # never expected; keeps the contract
            boxes[idx, k] = found
    return compose_density(fr, p, shared, cv), boxes


def compose_density(fr: Frame, p: dict, shared: dict, cv: Canvas) -> np.ndarray:
    """The film's density at the internal size from the normal anatomy (``shared``: mottle, lung,
    outer, dome, heart) and what the findings drew into ``cv``."""
    render = fr.render
    lung, heart = shared["lung"], shared["heart"]
    # lung air darkens the film; whatever fills the air (heart, vessels, disease) takes it back
    filling = draw_vessels(fr, shared["mottle"])
    filling *= cv.markings
    filling += heart
    filling += cv.opacity
    habitus = _upsample(p["habitus"], render)
    filling += _col(p["lung_haze"]) * habitus
    air = np.clip(1.0 - filling, 0.0, 1.0, out=filling)
    air *= lung
    depth = _ramp(shared["outer"], -0.07, 0.2)      # the lung is thickest (darkest) mid-field
    depth *= 0.28
    depth += 0.72
    air *= depth
    air *= cv.lucency
    air *= _col(p["lucency"])
    density = draw_thorax(fr)
    habitus *= _col(p["habitus_amp"])
    habitus += 1.0
    density *= habitus
    density += draw_spine(fr)
    density += draw_ribs(fr)
    density += draw_clavicles(fr)
    density += 0.12 * heart
    density += cv.density
    density -= air
    density -= 0.28 * draw_trachea(fr)
    gas = np.flatnonzero(p["gastric_present"] < 0.5)
    if len(gas):
        density[gas] -= 0.2 * draw_gastric_bubble(fr, gas, shared["dome"][gas])
    return density


def _area_downsample(density: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks, summed in a fixed order (bit-identical per image
    whatever the batch size)."""
    if factor == 1:
        return density
    out = np.zeros_like(density[:, ::factor, ::factor])
    for a in range(factor):
        for b in range(factor):
            out += density[:, a::factor, b::factor]
    out *= 1.0 / (factor * factor)
    return out


def expose(density: np.ndarray, p: dict, size: int) -> np.ndarray:
    """Film: auto-windowing around the image mean (so the mean brightness is set by the
    exposure draw, not by the findings), random gain and gamma, quantum noise, 8 bits."""
    mean = np.array([d.mean(dtype=np.float64) for d in density], np.float32)
    film = density - _col(mean)
    film *= _col(p["gain"])
    film += _col(p["level"])
    np.clip(film, 0.0, 1.0, out=film)
    film **= _col(p["gamma"])
    noise_sd = p["noise_sd"] * np.float32(np.sqrt(size / 224.0))
    film += _col(noise_sd) * p["noise"]
    film *= 255.0
    return np.clip(np.rint(film, out=film), 0, 255, out=film).astype(np.uint8)


# ============================================================================================
# Version 2: findings placed broadly, per-pixel masks, distractors, shortcut mode, difficulty
# ============================================================================================
# Version 1 (everything above) draws each finding where a radiologist would look first, which
# makes an image-blind "always point at the usual place" prior score 0.35-0.53 in the pointing
# game. Version 2 keeps the anatomy, the label model and the film, and changes what a
# localisation benchmark needs:
#
# - focal findings go anywhere anatomy allows (``LOCATION_KINDS``): nodules and masses anywhere
#   in either lung field, effusion on either or both sides at any height (or loculated along the
#   wall), consolidation / pneumonia in any of six lobe-like regions, plate atelectasis and
#   infiltrates anywhere in the lungs, pneumothorax on either side at the apex or laterally,
#   pleural thickening as a plaque at any height;
# - every drawn finding gets a per-pixel mask at the output size (``FindingMasks``): the pixels
#   it changes, so the pointing game and IoU score against what was drawn, not a box;
# - findings with no meaningful location (``"global"``: cardiomegaly, edema, emphysema,
#   fibrosis) and the one with a fixed site (``"fixed"``: hiatus hernia, always behind the heart)
#   are marked, and localisation scores leave them out;
# - film distractors unrelated to the labels: ECG electrodes and leads, a side marker, tubes and
#   lines, burnt-in text;
# - an optional shortcut marker that goes with one label in train and val but not in test;
# - a difficulty setting: "hard" draws the same cases with subtler findings (a fraction of the
#   contrast), more quantum noise and labels with about 10% errors, like NLP-mined labels.
#
# Every image draws from its own stream (spawn key (split, index, 2)), so version 2 images are
# independent of version 1's and the same seed gives the same images. The variants of one
# version share their draws: phantom2, phantom2_hard and phantom2_shortcut hold the same
# patients, positions and distractors; only contrast, noise, recorded labels or the marker differ.

LOCATION_KINDS = {
    "atelectasis": "focal", "cardiomegaly": "global", "effusion": "focal", "infiltration": "focal",
    "mass": "focal", "nodule": "focal", "pneumonia": "focal", "pneumothorax": "focal",
    "consolidation": "focal", "edema": "global", "emphysema": "global", "fibrosis": "global",
    "pleural": "focal", "hernia": "fixed",
}
LOCALISABLE = tuple(name for name in PHANTOM_LABELS if LOCATION_KINDS[name] == "focal")


@dataclass(frozen=True)
class Difficulty:
    """How hard a version-2 set is: the findings' contrast (1 = as drawn), the quantum noise
    (x the film's own) and the share of recorded positive labels that are wrong."""

    contrast: float = 1.0
    noise: float = 1.0
    label_noise: float = 0.0


DIFFICULTIES = {
    "standard": Difficulty(),
    "hard": Difficulty(contrast=0.45, noise=1.6, label_noise=0.10),
}


@dataclass(frozen=True)
class PhantomVariant:
    """One generated set: ``version`` 1 (the original generator, unchanged) or 2; ``difficulty``
    (version 2, ``DIFFICULTIES``); ``shortcut``: the label a marker goes with in train and val
    (not in test); ``random_labels``: each train (and val) image carries the labels of another
    train image (a fixed permutation), and val is a copy of the first train images: the model of
    Adebayo et al.'s data-randomisation check, checkpointed on how well it memorises."""

    name: str
    version: int = 1
    difficulty: str = "standard"
    shortcut: str | None = None
    random_labels: bool = False
    counts: tuple[tuple[str, int], ...] = tuple(DEFAULT_COUNTS.items())

    @property
    def default_counts(self) -> dict[str, int]:
        return dict(self.counts)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "difficulty": self.difficulty,
                "shortcut": self.shortcut, "random_labels": self.random_labels}


# Version 2's splits: twice version 1's training set, so that the small findings are learnt well
# enough for their maps to mean something.
V2_COUNTS = (("train", 8000), ("val", 1000), ("test", 1000))
VARIANTS = {v.name: v for v in (
    PhantomVariant("phantom", 1),
    PhantomVariant("phantom2", 2, counts=V2_COUNTS),
    PhantomVariant("phantom2_hard", 2, "hard", counts=V2_COUNTS),
    PhantomVariant("phantom2_shortcut", 2, shortcut="pneumonia", counts=V2_COUNTS),
    PhantomVariant("phantom2_randlabels", 2, random_labels=True,
                   counts=(("train", 2000), ("val", 500), ("test", 1000))),
)}
# Shortcut marker rates: in train and val it marks 85% of the images with the label and 5% of
# the others; in test it appears at the train's overall rate whatever the label.
SHORTCUT_WITH, SHORTCUT_WITHOUT = 0.85, 0.05


def get_variant(variant) -> PhantomVariant:
    """A ``PhantomVariant`` by name (``VARIANTS``), or the variant itself."""
    if isinstance(variant, PhantomVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown phantom variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def variant_for_path(path) -> PhantomVariant:
    """The variant a file is named after: the catalogue names files ``NAME.npz`` (28 px) and
    ``NAME_SIZE.npz``, so ``phantom2_hard_64.npz`` is ``phantom2_hard``; any other name is
    version 1."""
    stem = Path(path).name[:-4] if str(path).endswith(".npz") else Path(path).name
    base = re.sub(r"_(\d+)$", "", stem)
    return VARIANTS.get(base if base in VARIANTS and stem[len(base) + 1:] in ("", *map(str, SIZES)) else "phantom",
                        VARIANTS["phantom"])


FINDING_RANGES_V2 = {
    # nodules: one or two, anywhere in either lung field, any size in range
    "v2_nod_count": (0, 1),
    **{f"v2_nod_{k}_{q}": r for k in range(2) for q, r in (
        ("side", (0, 1)), ("u", (0, 1)), ("v", (0, 1)), ("r", (0.045, 0.08)))},
    # mass: anywhere in either lung
    "v2_mass_side": (0, 1), "v2_mass_u": (0, 1), "v2_mass_v": (0, 1), "v2_mass_r": (0.09, 0.18),
    "v2_mass_lobes": (0.0, 0.12), "v2_mass_phase": (0.0, 6.283),
    # effusion: right 40%, left 40%, both 20%; free (layering, any height) or loculated (25%)
    "v2_eff_mode": (0, 1), "v2_eff_h_0": (0.06, 0.42), "v2_eff_h_1": (0.06, 0.42),
    "v2_eff_meniscus": (0.35, 0.6), "v2_eff_loculated": (0, 1), "v2_eff_loc_v": (0, 1),
    "v2_eff_loc_len": (0.12, 0.22), "v2_eff_loc_thick": (0.07, 0.12),
    # pneumothorax: either side, apical or lateral (a lens at any height)
    "v2_ptx_side": (0, 1), "v2_ptx_kind": (0, 1), "v2_ptx_depth": (0.10, 0.20), "v2_ptx_line": (0.3, 0.45),
    "v2_ptx_v": (0, 1), "v2_ptx_len": (0.15, 0.3),
    # lobe-like regions: two "fissures" per lung split it into upper, middle and lower regions
    "v2_fiss_1": (-0.35, -0.15), "v2_fiss_2": (0.0, 0.15), "v2_fiss_tilt": (-0.15, 0.15),
    # consolidation: dense, filling part of one region, sharp at its fissures
    "v2_cons_side": (0, 1), "v2_cons_zone": (0, 1), "v2_cons_u": (0, 1), "v2_cons_v": (0, 1),
    "v2_cons_r": (0.16, 0.28), "v2_cons_amp": (0.85, 1.0),
    # pneumonia: patchy, in one region (a second, in the other lung, in 20%)
    "v2_pna_side": (0, 1), "v2_pna_zone": (0, 1), "v2_pna_u": (0, 1), "v2_pna_v": (0, 1),
    "v2_pna_r": (0.12, 0.2), "v2_pna_amp": (0.7, 1.0), "v2_pna_bilateral": (0, 1),
    "v2_pna_zone2": (0, 1), "v2_pna_u2": (0, 1), "v2_pna_v2": (0, 1),
    # atelectasis: a plate-like band anywhere in either lung, any tilt
    "v2_atel_side": (0, 1), "v2_atel_u": (0, 1), "v2_atel_v": (0, 1), "v2_atel_len": (0.16, 0.32),
    "v2_atel_thick": (0.05, 0.075), "v2_atel_tilt": (-0.5, 0.5),
    # infiltration: 1-3 hazy patches anywhere in the lungs
    "v2_inf_count": (0, 1),
    **{f"v2_inf_{k}_{q}": r for k in range(3) for q, r in (
        ("side", (0, 1)), ("u", (0, 1)), ("v", (0, 1)), ("r", (0.06, 0.11)), ("amp", (0.5, 0.75)))},
    # pleural thickening: a plaque along the chest wall at any height; right, left or both
    "v2_pl_mode": (0, 1), "v2_pl_v": (0, 1), "v2_pl_len": (0.15, 0.32), "v2_pl_thick": (0.05, 0.09),
}
DISTRACTOR_RANGES = {
    # ECG electrodes with their leads (35% of films; 2-4 electrodes)
    "d_ecg": (0, 1),
    **{f"d_ecg_{k}_{q}": r for k in range(4) for q, r in (
        ("x", (-0.8, 0.8)), ("y", (-0.75, 0.55)), ("angle", (0.0, 6.283)), ("len", (0.2, 0.6)),
        ("on", (0, 1)))},
    # side marker (an L or R) in an upper corner (70%)
    "d_marker": (0, 1), "d_marker_corner": (0, 1), "d_marker_x": (0.62, 0.84), "d_marker_y": (-0.86, -0.66),
    "d_marker_size": (0.07, 0.11), "d_marker_letter": (0, 1),
    # a tube or line (20%): nasogastric tube or central venous line
    "d_tube": (0, 1), "d_tube_kind": (0, 1), "d_tube_side": (0, 1), "d_tube_bend": (-0.12, 0.12),
    "d_tube_end": (0.1, 0.5),
    # burnt-in text at the top or bottom edge (30%)
    "d_text": (0, 1), "d_text_top": (0, 1), "d_text_x": (-0.85, 0.2), "d_text_count": (0, 1),
    "d_text_h": (0.04, 0.07), **{f"d_text_bit_{k}": (0, 1) for k in range(6)},
    # the shortcut marker's place (only drawn in shortcut mode): the lower band, below the lungs
    "sc_x": (-0.75, 0.75), "sc_y": (0.74, 0.88), "sc_size": (0.13, 0.17),
}
_RANGES_V2 = {**ANATOMY_RANGES, **FINDING_RANGES, **FINDING_RANGES_V2, **DISTRACTOR_RANGES}
_RANGE_V2_LOW = np.array([lo for lo, _ in _RANGES_V2.values()], np.float64)
_RANGE_V2_SPAN = np.array([hi - lo for lo, hi in _RANGES_V2.values()], np.float64)


def image_rng_v2(seed: int, split: str, index: int) -> np.random.Generator:
    """Version 2's stream for image ``index`` (independent of version 1's)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(_split_key(split), int(index), 2))
    return np.random.Generator(np.random.PCG64(sequence))


def draw_case_v2(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one version-2 image, in a fixed order whatever the variant: the
    drawn findings, shape and distractor parameters, label-noise and marker uniforms, textures,
    then pixel noise."""
    return {
        "drawn": draw_labels(rng),
        "uniforms": rng.random(len(_RANGES_V2)),
        "label_u": rng.random(len(PHANTOM_LABELS)),
        "marker_u": rng.random(1),
        "mottle": rng.standard_normal((_MOTTLE_GRID, _MOTTLE_GRID), dtype=np.float32),
        "habitus": rng.standard_normal((_HABITUS_GRID, _HABITUS_GRID), dtype=np.float32),
        "noise": rng.standard_normal((size, size), dtype=np.float32),
    }


def stack_cases_v2(cases: list[dict]) -> dict:
    p = {key: np.stack([c[key] for c in cases]) for key in cases[0] if key != "uniforms"}
    values = (_RANGE_V2_LOW + _RANGE_V2_SPAN * np.stack([c["uniforms"] for c in cases])).astype(np.float32)
    p |= {name: values[:, j] for j, name in enumerate(_RANGES_V2)}
    p["labels"] = p["drawn"]      # what apply_volume_changes and the drawers read: the truth
    p["marker_u"] = p["marker_u"][:, 0]
    return p


def noisy_labels(drawn: np.ndarray, label_u: np.ndarray, rate: float) -> np.ndarray:
    """Recorded labels with about ``rate`` of the positives wrong, like NLP-mined labels: a drawn
    finding goes unrecorded with probability ``rate``, and an absent one is recorded with the
    probability that adds as many false positives as were missed (each label's rate stays
    ``PREVALENCE``)."""
    if rate <= 0:
        return drawn.copy()
    prevalence = np.array([PREVALENCE[name] for name in PHANTOM_LABELS], np.float64)
    false_positive = rate * prevalence / (1.0 - prevalence)
    flip = np.where(drawn > 0, label_u < rate, label_u < false_positive)
    return (drawn.astype(bool) ^ flip).astype(np.uint8)


def apply_volume_changes_v2(p: dict, contrast: float) -> dict:
    """Cardiomegaly and emphysema change the geometry (as in version 1, scaled by the difficulty's
    contrast); version 2's atelectasis is a plate anywhere and leaves the domes alone."""
    p = dict(p)
    has = {name: p["drawn"][:, k].astype(bool) for k, name in enumerate(PHANTOM_LABELS)}
    where = np.where
    c = np.float32(contrast)
    p["heart_hw"] = p["heart_hw"] * where(has["cardiomegaly"], 1 + (p["cardio_widen"] - 1) * c, 1.0)
    p["heart_hh"] = p["heart_hh"] * where(has["cardiomegaly"], 1 + (p["cardio_heighten"] - 1) * c, 1.0)
    p["heart_cx"] = p["heart_cx"] + where(has["cardiomegaly"], p["cardio_shift"] * c, 0.0)
    drop = where(has["emphysema"], p["emph_drop"] * c, 0.0)
    top0 = p["dome_top_0"] + drop
    top1 = p["dome_top_0"] + p["dome_drop_1"] + drop
    p["lung_ay"] = p["lung_ay"] + 0.6 * drop
    p["lung_cy"] = p["lung_cy"] + 0.5 * drop
    p["dome_curve"] = p["dome_curve"] * where(has["emphysema"], 1 + (p["emph_flatten"] - 1) * c, 1.0)
    p["heart_hw"] = p["heart_hw"] * where(has["emphysema"] & ~has["cardiomegaly"], 1 - 0.12 * c, 1.0)
    p["dome_top_0"], p["dome_top_1"] = top0, top1
    return {k: v if k in ("labels", "drawn") else np.asarray(v, np.float32) for k, v in p.items()}


# --- where things can go ---------------------------------------------------------------------

def _side_param(fr, idx, name, left):
    """Per-image value of a two-sided anatomy parameter for the side ``left`` ((b, 1, 1) bool)."""
    right_v, left_v = fr.at(idx, name + "_0", name + "_1")
    return np.where(left, left_v, right_v)


def _fissures(fr, idx, xm):
    """The two lobe boundaries (upper/middle, middle/lower) as y at each pixel's distance from
    the midline: tilted lines, the same on both sides."""
    f1, f2, tilt = fr.at(idx, "v2_fiss_1", "v2_fiss_2", "v2_fiss_tilt")
    return f1 + tilt * (xm - 0.35), f2 + tilt * (xm - 0.35)


def _zone_limits(fr, idx, zone_u, left):
    """(top, bottom) y of a lobe-like region (zone_u < 1/3 upper, < 2/3 middle, else lower) at
    mid-lung, for placing a centre inside it."""
    cy, ay = fr.at(idx, "lung_cy", "lung_ay")
    f1, f2, _ = fr.at(idx, "v2_fiss_1", "v2_fiss_2", "v2_fiss_tilt")
    dome = _side_param(fr, idx, "dome_top", left)
    apex = cy - ay
    top = np.where(zone_u < 1 / 3, apex, np.where(zone_u < 2 / 3, f1, f2))
    bottom = np.where(zone_u < 1 / 3, f1, np.where(zone_u < 2 / 3, f2, dome))
    return top, bottom


def _lung_point(fr, idx, side_u, u, v, margin, top=None, bottom=None):
    """A point inside a lung field (anatomical x, y; (b, 1, 1) each): side by ``side_u``, height
    ``v`` between ``top`` and ``bottom`` (default apex and dome), across the field's width at that
    height by ``u``, kept ``margin`` inside its edges (where the field is wide enough)."""
    left = side_u >= 0.5
    cx, ax = _side_param(fr, idx, "lung_cx", left), _side_param(fr, idx, "lung_ax", left)
    medial = _side_param(fr, idx, "lung_medial", left)
    cy, ay = fr.at(idx, "lung_cy", "lung_ay")
    dome = _side_param(fr, idx, "dome_top", left)
    top = cy - ay if top is None else top
    bottom = dome if bottom is None else np.minimum(bottom, dome)
    lo, hi = top + margin, bottom - margin
    y = np.where(hi > lo, lo + v * (hi - lo), 0.5 * (top + bottom))
    half = ax * np.sqrt(np.clip(1.0 - ((y - cy) / ay) ** 2, 0.0, 1.0))
    x_lo = np.maximum(medial + 0.04, cx - half) + margin
    x_hi = cx + half - margin
    xm = np.where(x_hi > x_lo, x_lo + u * (x_hi - x_lo), 0.5 * (x_lo + x_hi))
    return np.where(left, xm, -xm), y


def _in_zone(fr, idx, zone_u, left, soft=0.01):
    """Soft mask of one lobe-like region of one lung (sharp at the fissures)."""
    y, xm = fr.at(idx, "y", "xm")
    f1, f2 = _fissures(fr, idx, xm)
    side = fr.on_left[idx] == left
    upper = _ramp(y, f1 + soft, f1 - soft)
    lower = _ramp(y, f2 - soft, f2 + soft)
    middle = _ramp(y, f1 - soft, f1 + soft) * _ramp(y, f2 + soft, f2 - soft)
    zone = np.where(zone_u < 1 / 3, upper, np.where(zone_u < 2 / 3, middle, lower))
    return zone * side


# --- the findings ---------------------------------------------------------------------------

def draw_nodule_v2(fr, cv, idx, sh):
    x, y, count_u = fr.at(idx, "x", "y", "v2_nod_count")
    mask = np.zeros(x.shape, bool)
    for k in range(2):
        side, u, v, r = fr.at(idx, *(f"v2_nod_{k}_{q}" for q in ("side", "u", "v", "r")))
        cx, cy = _lung_point(fr, idx, side, u, v, r)
        disc = _disc(x, y, cx, cy, r)
        disc *= (k == 0) | (count_u > 0.6)            # a second nodule in 40% of cases
        cv.opacity[idx] += disc
        cv.density[idx] += 0.45 * disc
        mask |= disc > 0
    return mask


def draw_mass_v2(fr, cv, idx, sh):
    x, y, side, u, v, r, lobes, phase = fr.at(
        idx, "x", "y", "v2_mass_side", "v2_mass_u", "v2_mass_v", "v2_mass_r", "v2_mass_lobes", "v2_mass_phase")
    cx, cy = _lung_point(fr, idx, side, u, v, 0.6 * r)
    radius = r * (1.0 + lobes * np.cos(5.0 * np.arctan2(y - cy, x - cx) + phase))
    disc = _disc(x, y, cx, cy, radius)
    cv.opacity[idx] += disc
    cv.density[idx] += 0.25 * disc
    return disc > 0


def draw_effusion_v2(fr, cv, idx, sh):
    """Free fluid layering at the base (any height, meniscus up the lateral wall) or a loculated
    lens along the lateral wall at any height; right, left or both."""
    y, xm, mode, meniscus, loculated = fr.at(idx, "y", "xm", "v2_eff_mode", "v2_eff_meniscus", "v2_eff_loculated")
    lung, dome, outer = sh["lung"][idx], sh["dome"][idx], sh["outer"][idx]
    on_left = fr.on_left[idx]
    present = np.where(on_left, mode >= 0.4, (mode < 0.4) | (mode >= 0.8))
    height = fr.by_side("v2_eff_h", idx)
    curve, peak = fr.at(idx, "dome_curve", "dome_peak")
    base = fr.by_side("dome_top", idx) + curve * (0.78 - peak) ** 2 + 0.03
    lateral = np.clip((xm - 0.1) * (1 / 0.72), 0.0, 1.0)
    surface = base - height * (1.0 - meniscus * (1.0 - lateral * lateral))
    free = _ramp(y - surface, -0.015, 0.03)
    free *= _ramp(np.minimum(xm - 0.08, 0.86 - xm), 0.0, 0.04)
    # loculated: a lens against the lateral wall
    cy, ay = fr.at(idx, "lung_cy", "lung_ay")
    loc_v, loc_len, loc_thick = fr.at(idx, "v2_eff_loc_v", "v2_eff_loc_len", "v2_eff_loc_thick")
    centre = (cy - ay + 0.3) + loc_v * (fr.by_side("dome_top", idx) - 0.15 - (cy - ay + 0.3))
    along = np.clip(1.0 - ((y - centre) / loc_len) ** 2, 0.0, 1.0)
    lens = _ramp(outer, loc_thick * np.sqrt(along) + 0.01, loc_thick * np.sqrt(along) - 0.01) * (along > 0)
    lens *= lung * _ramp(xm, 0.3, 0.45)
    fluid = np.where(loculated < 0.25, lens, free) * present
    cv.opacity[idx] += fluid
    cv.density[idx] += 0.15 * fluid * (y < dome)
    return (fluid > 0.05) & ((lung > 0.02) | (y < dome + 0.02))


def draw_pneumothorax_v2(fr, cv, idx, sh):
    """Air between the lung edge and the chest wall beyond a thin visceral pleural line: at the
    apex (deepest at the top) or laterally (a lens at any height), on either side."""
    y, side, kind, depth, line, v, length, cy, ay = fr.at(
        idx, "y", "v2_ptx_side", "v2_ptx_kind", "v2_ptx_depth", "v2_ptx_line", "v2_ptx_v", "v2_ptx_len",
        "lung_cy", "lung_ay")
    lung, outer = sh["lung"][idx], sh["outer"][idx]
    this_side = fr.on_left[idx] == (side >= 0.5)
    apex = cy - ay
    apical = np.clip(1.0 - (y - apex) / (2.0 * length), 0.0, 1.0)
    centre = apex + 0.35 + v * (fr.by_side("dome_top", idx) - 0.1 - (apex + 0.35))
    lateral = np.sqrt(np.clip(1.0 - ((y - centre) / length) ** 2, 0.0, 1.0))
    profile = np.where(kind < 0.5, apical, lateral * _ramp(fr.at(idx, "xm"), 0.3, 0.45))
    gap = outer - depth * profile
    air = _ramp(gap, 0.006, -0.006) * lung * this_side * (profile > 0)
    pleural_line = np.clip(1.0 - (gap * (1 / 0.012)) ** 2, 0.0, None) * lung * this_side * (profile > 0.05)
    cv.lucency[idx] *= 1.0 + 0.5 * air
    cv.markings[idx] *= 1.0 - air
    cv.density[idx] += line * pleural_line
    return (air > 0.05) | (pleural_line > 0.1)


def draw_consolidation_v2(fr, cv, idx, sh):
    """Dense homogeneous opacity filling part of one lobe-like region, straight-edged where it
    meets the region's fissures."""
    x, y, side, zone, u, v, r, amp = fr.at(
        idx, "x", "y", "v2_cons_side", "v2_cons_zone", "v2_cons_u", "v2_cons_v", "v2_cons_r", "v2_cons_amp")
    left = side >= 0.5
    top, bottom = _zone_limits(fr, idx, zone, left)
    cx, cy = _lung_point(fr, idx, side, u, v, 0.05, top, bottom)
    lobe = _disc(x, y, cx, cy, r, edge=0.25) * _in_zone(fr, idx, zone, left, soft=0.006)
    dense = lobe * sh["lung"][idx] * amp * (1.0 + 0.05 * sh["mottle"][idx])
    cv.opacity[idx] += dense
    cv.density[idx] += 0.1 * dense
    return dense > 0.05


def draw_pneumonia_v2(fr, cv, idx, sh):
    """Patchy, mottled airspace opacity centred in one lobe-like region (a second patch in the
    other lung in a fifth of cases)."""
    x, y, side, zone, u, v, r, amp, bilateral, zone2, u2, v2 = fr.at(
        idx, "x", "y", "v2_pna_side", "v2_pna_zone", "v2_pna_u", "v2_pna_v", "v2_pna_r", "v2_pna_amp",
        "v2_pna_bilateral", "v2_pna_zone2", "v2_pna_u2", "v2_pna_v2")
    left = side >= 0.5
    cx, cy = _lung_point(fr, idx, side, u, v, 0.05, *_zone_limits(fr, idx, zone, left))
    extent = _gauss(x, y, cx, cy, r) * _in_zone(fr, idx, zone, left, soft=0.03)
    other = 1.0 - side
    cx2, cy2 = _lung_point(fr, idx, other, u2, v2, 0.05, *_zone_limits(fr, idx, zone2, ~left))
    second = _gauss(x, y, cx2, cy2, r) * _in_zone(fr, idx, zone2, ~left, soft=0.03) * (bilateral < 0.2)
    extent = np.maximum(extent, second) * sh["lung"][idx]
    patchy = extent * (0.35 + 0.9 * np.clip(sh["mottle"][idx] + 0.3, 0.0, 1.2)) * amp
    cv.opacity[idx] += patchy
    return extent > 0.03


def draw_atelectasis_v2(fr, cv, idx, sh):
    """Plate-like atelectasis: a bright linear band anywhere in either lung, at any tilt."""
    x, y, side, u, v, length, thick, tilt = fr.at(
        idx, "x", "y", "v2_atel_side", "v2_atel_u", "v2_atel_v", "v2_atel_len", "v2_atel_thick", "v2_atel_tilt")
    cx, cy = _lung_point(fr, idx, side, u, v, 0.5 * length)
    cos, sin = np.cos(tilt), np.sin(tilt)
    along = cos * (x - cx) + sin * (y - cy)
    across = cos * (y - cy) - sin * (x - cx)
    band = _ramp(np.abs(across), thick * 0.5 + 0.01, thick * 0.5 - 0.01)
    band *= _ramp(np.abs(along), length * 0.5, length * 0.5 - 0.06)
    band *= sh["lung"][idx]
    cv.opacity[idx] += band
    cv.density[idx] += 0.2 * band
    return band > 0.05


def draw_infiltration_v2(fr, cv, idx, sh):
    """1-3 faint, ill-defined hazy patches anywhere in the lungs."""
    x, y, count_u = fr.at(idx, "x", "y", "v2_inf_count")
    count = 1 + (count_u > 0.45) + (count_u > 0.8)
    haze = np.zeros_like(x)
    for k in range(3):
        side, u, v, r, amp = fr.at(idx, *(f"v2_inf_{k}_{q}" for q in ("side", "u", "v", "r", "amp")))
        cx, cy = _lung_point(fr, idx, side, u, v, 0.5 * r)
        np.maximum(haze, _gauss(x, y, cx, cy, r) * (amp * (k < count)), out=haze)
    haze *= sh["lung"][idx]
    haze *= 0.85 + 0.3 * np.tanh(sh["mottle"][idx])
    cv.opacity[idx] += haze
    return haze > 0.015


def draw_pleural_v2(fr, cv, idx, sh):
    """A pleural plaque: a smooth soft-tissue rim along the chest wall at any height (apex to
    base), on one side or both."""
    y, xm, mode, v, length, thick, cy, ay = fr.at(
        idx, "y", "xm", "v2_pl_mode", "v2_pl_v", "v2_pl_len", "v2_pl_thick", "lung_cy", "lung_ay")
    lung, outer = sh["lung"][idx], sh["outer"][idx]
    present = np.where(fr.on_left[idx], mode >= 0.4, (mode < 0.4) | (mode >= 0.8))
    apex = cy - ay
    centre = apex + 0.1 + v * (fr.by_side("dome_top", idx) - 0.1 - (apex + 0.1))
    along = np.sqrt(np.clip(1.0 - ((y - centre) / length) ** 2, 0.0, 1.0))
    rim = _ramp(outer, thick * along + 0.01, thick * along - 0.01) * lung * present * (along > 0)
    rim *= _ramp(xm, 0.15, 0.3)
    cv.opacity[idx] += rim
    cv.density[idx] += 0.2 * rim
    return rim > 0.05


def draw_hernia_v2(fr, cv, idx, sh):
    """As version 1 (a retrocardiac gas bubble with an air-fluid level), with a mask that holds
    its wall too."""
    x, y, cx, r, level_u, top0, top1 = fr.at(
        idx, "x", "y", "hernia_x", "hernia_r", "hernia_level", "dome_top_0", "dome_top_1")
    cy = np.minimum(top0, top1) + 0.06 - r
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    sac = _ramp(d, 1.08, 0.95)
    level = cy + level_u * r
    gas = _ramp(d, 0.9, 0.78) * _ramp(y, level + 0.01, level - 0.01)
    wall = np.clip(1.0 - ((d - 0.95) * (1 / 0.12)) ** 2, 0.0, None)
    cv.density[idx] += 0.2 * wall + 0.12 * sac - 0.45 * gas
    return (sac > 0) | (wall > 0)


FINDING_DRAWERS_V2 = {
    "atelectasis": draw_atelectasis_v2,
    "cardiomegaly": lambda fr, cv, i, sh: sh["heart"][i] > 0.05,   # the enlarged heart itself
    "effusion": draw_effusion_v2,
    "infiltration": draw_infiltration_v2,
    "mass": draw_mass_v2,
    "nodule": draw_nodule_v2,
    "pneumonia": draw_pneumonia_v2,
    "pneumothorax": draw_pneumothorax_v2,
    "consolidation": draw_consolidation_v2,
    "edema": lambda fr, cv, i, sh: draw_edema(fr, cv, i, sh["lung"][i], sh["mottle"][i]),
    "emphysema": lambda fr, cv, i, sh: draw_emphysema(fr, cv, i, sh["lung"][i]) | (sh["lung"][i] > 0.02),
    "fibrosis": lambda fr, cv, i, sh: draw_fibrosis(fr, cv, i, sh["lung"][i], sh["mottle"][i]),
    "pleural": draw_pleural_v2,
    "hernia": draw_hernia_v2,
}


def _soften(cv: Canvas, contrast: float) -> None:
    """Scale everything the findings drew by ``contrast`` (the hard setting's subtler findings)."""
    if contrast == 1.0:
        return
    c = np.float32(contrast)
    cv.opacity *= c
    cv.density *= c
    cv.lucency -= 1.0
    cv.lucency *= c
    cv.lucency += 1.0
    cv.markings -= 1.0
    cv.markings *= c
    cv.markings += 1.0


# --- film distractors and the shortcut marker -----------------------------------------------

def _segment_distance(x, y, x0, y0, x1, y1):
    """Distance of each pixel to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2)


def _box(ix, iy, x0, y0, x1, y1, soft):
    return (_ramp(ix, x0 - soft, x0 + soft) * _ramp(ix, x1 + soft, x1 - soft)
            * _ramp(iy, y0 - soft, y0 + soft) * _ramp(iy, y1 + soft, y1 - soft))


def draw_distractors(fr: Frame, p: dict, marker: np.ndarray):
    """Radio-opaque things on real films that say nothing about the labels (drawn from their own
    uniforms, independent of the findings): ECG electrodes and leads and tubes/lines on the patient
    (anatomical coordinates), a side marker and burnt-in text on the detector (image coordinates);
    and, for the images in ``marker`` (bool (B,)), the shortcut marker. Returns (added density,
    distractor mask, marker mask) at the internal size."""
    render = fr.render
    c = (np.arange(render, dtype=np.float32) + 0.5) * (2.0 / render) - 1.0
    ix, iy = c[None, None, :], c[None, :, None]
    x, y = fr.x, fr.y
    soft = np.float32(1.0 / render)          # half an internal pixel
    width = np.float32(max(0.008, 1.0 / render))
    out = np.zeros(x.shape, np.float32)

    def col(name):
        return _col(p[name])

    # ECG electrodes (bright snaps) with leads running off
    ecg = col("d_ecg") < 0.35
    for k in range(4):
        ex, ey, angle, length, on = (col(f"d_ecg_{k}_{q}") for q in ("x", "y", "angle", "len", "on"))
        shown = ecg & ((k < 2) | (on < 0.6))
        snap = _disc(x, y, ex, ey, np.float32(0.035), edge=0.3)
        wire = _ramp(_segment_distance(x, y, ex, ey, ex + length * np.cos(angle), ey + length * np.sin(angle)),
                     width + soft, width - soft)
        out += shown * np.maximum(0.7 * snap, 0.35 * wire)
    # side marker: an L or R in an upper corner of the detector
    present = col("d_marker") < 0.7
    cx = np.where(col("d_marker_corner") < 0.5, -col("d_marker_x"), col("d_marker_x"))
    cy, s = col("d_marker_y"), col("d_marker_size")
    stem = _box(ix, iy, cx - 0.5 * s, cy - s, cx - 0.2 * s, cy + s, soft)
    foot = _box(ix, iy, cx - 0.5 * s, cy + 0.7 * s, cx + 0.5 * s, cy + s, soft)             # L
    bowl = np.maximum(_box(ix, iy, cx - 0.5 * s, cy - s, cx + 0.5 * s, cy - 0.7 * s, soft),
                      _box(ix, iy, cx + 0.2 * s, cy - s, cx + 0.5 * s, cy, soft))
    leg = _ramp(_segment_distance(ix, iy, cx - 0.2 * s, cy, cx + 0.5 * s, cy + s), 0.15 * s + soft, 0.15 * s - soft)
    letter = np.where(col("d_marker_letter") < 0.5, np.maximum(stem, foot),
                      np.maximum(np.maximum(stem, bowl), np.maximum(leg, _box(ix, iy, cx - 0.5 * s, cy - 0.15 * s,
                                                                           cx + 0.5 * s, cy + 0.15 * s, soft))))
    out += present * 0.8 * letter
    # a tube or line: a nasogastric tube from the neck down into the stomach, or a central venous
    # line from below a clavicle to the superior vena cava; four straight pieces of a gentle curve
    tube = col("d_tube") < 0.2
    ng = col("d_tube_kind") < 0.5
    side = np.where(col("d_tube_side") < 0.5, -1.0, 1.0).astype(np.float32)
    bend, end = col("d_tube_bend"), col("d_tube_end")

    def along(t):
        ng_x, ng_y = 0.02 + bend * np.sin(np.pi * t) + 0.23 * t * t, -0.95 + (1.3 + end) * t
        cvl_x = side * (0.62 - 0.58 * t) + bend * np.sin(np.pi * t)
        cvl_y = -0.62 + (0.47 + 0.2 * end) * t - 0.1 * np.sin(np.pi * t)
        return np.where(ng, ng_x, cvl_x), np.where(ng, ng_y, cvl_y)

    line = np.zeros_like(out)
    for t0, t1 in ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)):
        (x0, y0), (x1, y1) = along(t0), along(t1)
        np.maximum(line, _ramp(_segment_distance(x, y, x0, y0, x1, y1), 1.5 * width + soft, 1.5 * width - soft),
                   out=line)
    out += tube * 0.3 * line
    # burnt-in text: a row of 3-6 blocky characters at the top or bottom edge of the detector
    text = col("d_text") < 0.3
    h = col("d_text_h")
    ty = np.where(col("d_text_top") < 0.5, -0.93, 0.93 - h)
    n_chars = 3 + np.floor(col("d_text_count") * 4)
    chars = np.zeros_like(out)
    for k in range(6):
        x0 = col("d_text_x") + k * 0.9 * h
        glyph = _box(ix, iy, x0, ty, x0 + 0.65 * h, ty + h, soft)
        notch = _box(ix, iy, x0 + 0.2 * h, ty + np.where(col(f"d_text_bit_{k}") < 0.5, 0.25, 0.55) * h,
                     x0 + 0.65 * h, ty + np.where(col(f"d_text_bit_{k}") < 0.5, 0.45, 0.75) * h, soft)
        chars = np.maximum(chars, glyph * (1.0 - notch) * (k < n_chars))
    out += text * 0.8 * chars
    distractor_mask = out > 0.05
    # the shortcut marker: a bright square with a dark centre, low on the film
    sx, sy, ss = col("sc_x"), col("sc_y"), col("sc_size")
    square = _box(ix, iy, sx - 0.5 * ss, sy - 0.5 * ss, sx + 0.5 * ss, sy + 0.5 * ss, soft)
    hole = _box(ix, iy, sx - 0.15 * ss, sy - 0.15 * ss, sx + 0.15 * ss, sy + 0.15 * ss, soft)
    token = square * (1.0 - hole) * _col(marker.astype(np.float32))
    out += 0.9 * token
    return out, distractor_mask, token > 0.05


def _marker_present(p: dict, split: str, variant: PhantomVariant, recorded: np.ndarray) -> np.ndarray:
    """Which images carry the shortcut marker: in train and val it goes with the variant's label
    (``SHORTCUT_WITH`` / ``SHORTCUT_WITHOUT``); in test (and any other split) it appears at the
    train's overall rate whatever the label."""
    if variant.shortcut is None:
        return np.zeros(len(recorded), bool)
    k = PHANTOM_LABELS.index(variant.shortcut)
    if split in ("train", "val"):
        rate = np.where(recorded[:, k] > 0, SHORTCUT_WITH, SHORTCUT_WITHOUT)
    else:
        prevalence = PREVALENCE[variant.shortcut]
        rate = np.full(len(recorded), SHORTCUT_WITH * prevalence + SHORTCUT_WITHOUT * (1 - prevalence))
    return p["marker_u"] < rate


def _any_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """(..., R, R) bool at the internal size -> (..., R/f, R/f): a pixel is in if any of its
    sub-pixels is."""
    if factor == 1:
        return mask
    *lead, r, _ = mask.shape
    return mask.reshape(*lead, r // factor, factor, r // factor, factor).any(axis=(-3, -1))


def render_v2(p: dict, size: int, variant: PhantomVariant, marker: np.ndarray):
    """Stacked version-2 cases (after ``apply_volume_changes_v2``) -> (density at the internal
    size, finding masks (B, 14, R, R) at the internal size, distractor, marker and lung-field masks
    (B, R, R))."""
    factor = _render_factor(size)
    render = size * factor
    fr = Frame(p, render)
    shared = {"mottle": _upsample(p["mottle"], render)}
    shared["lung"], shared["outer"], shared["dome"] = lung_fields(fr)
    shared["heart"] = draw_heart(fr)
    cv = Canvas(shared["lung"].shape)
    masks = np.zeros((len(shared["lung"]), len(PHANTOM_LABELS), render, render), bool)
    for k, name in enumerate(PHANTOM_LABELS):
        idx = np.flatnonzero(p["drawn"][:, k])
        if len(idx):
            masks[idx, k] = FINDING_DRAWERS_V2[name](fr, cv, idx, shared)
    _soften(cv, DIFFICULTIES[variant.difficulty].contrast)
    density = compose_density(fr, p, shared, cv)
    extra, distractors, token = draw_distractors(fr, p, marker)
    density += extra
    return density, masks, distractors, token, shared["lung"] > 0.5


@dataclass
class PhantomData:
    """A generated block of images with everything known about them. ``labels`` are the recorded
    labels (what a model is trained and scored on); ``drawn`` what is in the picture (they differ
    only with label noise or random labels). ``mask_index`` (M, 2) lists (image, finding) of the
    drawn findings, ``masks`` (M, H, W) their pixels; ``distractors`` (N, H, W) the film
    distractors' pixels, ``marker`` (N,) where the shortcut marker is, ``marker_masks`` its pixels,
    ``lungs`` (N, H, W) the lung fields (for a 'random point in the lungs' baseline).
    Version 1 has boxes only (the mask fields are None)."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    drawn: np.ndarray
    mask_index: np.ndarray | None = None
    masks: np.ndarray | None = None
    distractors: np.ndarray | None = None
    marker: np.ndarray | None = None
    marker_masks: np.ndarray | None = None
    lungs: np.ndarray | None = None


def _label_permutation(seed: int, n_train: int) -> np.ndarray:
    return np.random.default_rng([int(seed), 0x5EED, n_train]).permutation(n_train)


def _recorded_v2(seed: int, split: str, indices: np.ndarray, variant: PhantomVariant) -> np.ndarray:
    """The recorded labels of images ``indices`` of a split (label noise; random labels)."""
    difficulty = DIFFICULTIES[variant.difficulty]
    rows = []
    for i in indices:
        rng = image_rng_v2(seed, split, int(i))
        drawn = draw_labels(rng)
        rng.random(len(_RANGES_V2))
        rows.append(noisy_labels(drawn, rng.random(len(PHANTOM_LABELS)), difficulty.label_noise))
    return np.stack(rows) if rows else np.zeros((0, len(PHANTOM_LABELS)), np.uint8)


def _generate_v2(size: int, n: int, seed: int, split: str, start: int, variant: PhantomVariant) -> PhantomData:
    difficulty = DIFFICULTIES[variant.difficulty]
    source_split = split
    if variant.random_labels:
        n_train = variant.default_counts["train"]
        if split in ("train", "val") and start + n > n_train:
            raise ValueError(f"{variant.name}'s {split} images are train images 0..{n_train - 1}")
        source_split = "train" if split in ("train", "val") else split
    images = np.zeros((n, size, size), np.uint8)
    labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
    drawn = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
    boxes = np.full((n, len(PHANTOM_LABELS), 4), np.nan, np.float32)
    distractors = np.zeros((n, size, size), bool)
    marker = np.zeros(n, bool)
    marker_masks = np.zeros((n, size, size), bool)
    lungs = np.zeros((n, size, size), bool)
    index_parts, mask_parts = [], []
    factor = _render_factor(size)
    per_batch = max(1, _PIXEL_BUDGET // (size * factor) ** 2)
    for lo in range(0, n, per_batch):
        hi = min(n, lo + per_batch)
        p = stack_cases_v2([draw_case_v2(image_rng_v2(seed, source_split, start + i), size) for i in range(lo, hi)])
        recorded = noisy_labels(p["drawn"], p["label_u"], difficulty.label_noise)
        if variant.random_labels and source_split == "train":
            recorded = _recorded_v2(seed, "train", _label_permutation(seed, n_train)[start + lo:start + hi], variant)
        p["noise_sd"] = p["noise_sd"] * np.float32(difficulty.noise)
        p = apply_volume_changes_v2(p, difficulty.contrast)
        present = _marker_present(p, split, variant, recorded)
        density, found, distract, token, lung = render_v2(p, size, variant, present)
        images[lo:hi] = expose(_area_downsample(density, factor), p, size)
        labels[lo:hi], drawn[lo:hi] = recorded, p["drawn"]
        rows, cols = np.nonzero(p["drawn"])
        if len(rows):
            boxes[lo + rows, cols] = _mask_boxes(found[rows, cols], factor)
            index_parts.append(np.stack([lo + rows, cols], axis=1))
            mask_parts.append(_any_downsample(found[rows, cols], factor))
        distractors[lo:hi] = _any_downsample(distract, factor)
        marker[lo:hi] = present
        marker_masks[lo:hi] = _any_downsample(token, factor)
        lungs[lo:hi] = _any_downsample(lung, factor)
    empty = np.zeros((0, size, size), bool)
    return PhantomData(images, labels, boxes, drawn,
                       np.concatenate(index_parts).astype(np.int32) if index_parts else np.zeros((0, 2), np.int32),
                       np.concatenate(mask_parts) if mask_parts else empty, distractors, marker, marker_masks, lungs)


# --- masks on disk --------------------------------------------------------------------------

def masks_path(npz_path) -> Path:
    """Where the masks of a version-2 phantom npz live: ``<stem>_masks.npz`` beside it."""
    path = Path(npz_path)
    return path.with_name(path.stem + "_masks.npz")


def _pack(masks: np.ndarray) -> np.ndarray:
    return np.packbits(masks.reshape(len(masks), masks.shape[-2] * masks.shape[-1]), axis=1)


@dataclass
class FindingMasks:
    """The masks of one split of a version-2 phantom file (``read_masks``)."""

    size: int
    drawn: np.ndarray               # (N, 14) uint8: findings drawn in each image
    index: np.ndarray               # (M, 2) int32: (image, finding) of each mask
    bits: np.ndarray                # (M, size*size/8) packed
    distractor_bits: np.ndarray     # (N, ...) packed
    marker: np.ndarray              # (N,) bool: the shortcut marker is on the image
    marker_bits: np.ndarray         # (N, ...) packed
    lung_bits: np.ndarray           # (N, ...) packed: the lung fields
    kinds: tuple[str, ...]          # LOCATION_KINDS per finding
    variant: dict

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        n = self.size * self.size
        return np.unpackbits(bits, axis=1, count=n).astype(bool).reshape(len(bits), self.size, self.size)

    def masks(self, rows=None) -> np.ndarray:
        """(M', H, W) bool masks of ``rows`` of ``index`` (all by default)."""
        return self._unpack(self.bits if rows is None else self.bits[np.asarray(rows)])

    def row_of(self) -> np.ndarray:
        """(N, 14) int: the row of ``index`` for each (image, finding), -1 where not drawn."""
        rows = np.full(self.drawn.shape, -1, np.int64)
        rows[self.index[:, 0], self.index[:, 1]] = np.arange(len(self.index))
        return rows

    def distractors(self, images=None) -> np.ndarray:
        return self._unpack(self.distractor_bits if images is None else self.distractor_bits[np.asarray(images)])

    def marker_masks(self, images=None) -> np.ndarray:
        return self._unpack(self.marker_bits if images is None else self.marker_bits[np.asarray(images)])

    def lungs(self, images=None) -> np.ndarray:
        return self._unpack(self.lung_bits if images is None else self.lung_bits[np.asarray(images)])


def read_masks(npz_path, split: str) -> FindingMasks:
    """The masks of ``split`` from the ``_masks.npz`` beside a version-2 phantom npz."""
    path = masks_path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(f"no masks file {path} beside {npz_path} (only version-2 phantom sets have masks)")
    with np.load(path) as data:
        if f"{split}_mask_index" not in data:
            raise KeyError(f"{path} has no '{split}' split")
        return FindingMasks(
            size=int(data["size"]), drawn=data[f"{split}_drawn"], index=data[f"{split}_mask_index"],
            bits=data[f"{split}_mask_bits"], distractor_bits=data[f"{split}_distractor_bits"],
            marker=data[f"{split}_marker"].astype(bool), marker_bits=data[f"{split}_marker_bits"],
            lung_bits=data[f"{split}_lung_bits"],
            kinds=tuple(str(k) for k in data["location_kinds"]), variant=json.loads(str(data["variant"])))


# ============================================================================================
# Public API
# ============================================================================================

def _check_size(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} (the MedMNIST sizes), got {size!r}")
    return int(size)


def _generate_v1(size: int, n: int, seed: int, split: str, start: int) -> PhantomData:
    images = np.zeros((n, size, size), np.uint8)
    labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
    boxes = np.full((n, len(PHANTOM_LABELS), 4), np.nan, np.float32)
    factor = _render_factor(size)
    per_batch = max(1, _PIXEL_BUDGET // (size * factor) ** 2)
    for lo in range(0, n, per_batch):
        hi = min(n, lo + per_batch)
        p = stack_cases([draw_case(image_rng(seed, split, start + i), size) for i in range(lo, hi)])
        p = apply_volume_changes(p)
        density, boxes[lo:hi] = render_density(p, size)
        images[lo:hi] = expose(_area_downsample(density, factor), p, size)
        labels[lo:hi] = p["labels"]
    return PhantomData(images, labels, boxes, labels.copy())


def generate(size: int, n: int, seed: int, split: str = "train", start: int = 0,
             variant="phantom") -> PhantomData:
    """Images ``start .. start+n-1`` of a split of ``variant`` (a name in ``VARIANTS`` or a
    ``PhantomVariant``), with labels, boxes and (version 2) masks: a ``PhantomData``. Image i
    depends only on (seed, split, i, size, variant), never on ``n`` or ``start``."""
    size = _check_size(size)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    variant = get_variant(variant)
    if variant.version == 1:
        return _generate_v1(size, n, seed, split, start)
    return _generate_v2(size, n, seed, split, start, variant)


def generate_split(size: int, n: int, seed: int, split: str = "train", start: int = 0, variant="phantom"):
    """Images ``start .. start+n-1`` of a split.

    Returns (images uint8 (n, size, size), labels uint8 (n, 14), boxes float32 (n, 14, 4)); boxes
    are (x0, y0, x1, y1) in pixels of the output image (x to the right, y down, x1/y1 exclusive),
    NaN where the finding is absent (version 2: where it is not drawn). Image i depends only on
    (seed, split, i, size), never on ``n`` or ``start``, so a split can be generated in any
    chunks. ``variant``: ``"phantom"`` (version 1, the default) or another name in ``VARIANTS``;
    ``generate`` also returns version 2's masks.
    """
    data = generate(size, n, seed, split, start, variant)
    return data.images, data.labels, data.boxes


def boxes_path(npz_path) -> Path:
    """Where the boxes of a phantom npz live: ``<stem>_boxes.npz`` beside it."""
    path = Path(npz_path)
    return path.with_name(path.stem + "_boxes.npz")


def _write_npy_header(stream, shape, dtype) -> None:
    np.lib.format.write_array_header_1_0(stream, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(int(s) for s in shape)})


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as stream:
        _write_npy_header(stream, array.shape, array.dtype)
        stream.write(np.ascontiguousarray(array).tobytes())


def write_phantom(path, size: int = 28, counts: dict | None = None, seed: int = 0,
                  chunk: int = 1024, variant=None) -> Path:
    """Write a phantom ChestMNIST npz (MedMNIST format) and its boxes file; return the npz path.

    Keys ``{split}_images`` (uint8 (N, size, size)) and ``{split}_labels`` (uint8 (N, 14)) for
    each split of ``counts`` (default: the variant's, ``DEFAULT_COUNTS`` for most); the boxes go
    to ``<stem>_boxes.npz`` as ``{split}_boxes`` (float32 (N, 14, 4), NaN where a finding is
    absent) with ``label_names``. ``variant`` (default: the one the file is named after,
    ``variant_for_path``: ``phantom2_hard_64.npz`` is ``phantom2_hard``, any other name version 1):
    a version-2 set also gets ``<stem>_masks.npz`` (``read_masks``). Images are generated
    ``chunk`` at a time and streamed into the archive (ZIP_STORED, zip64), so a large 224 px split
    never sits whole in memory. All files go to temporaries in the same folder and are renamed
    into place (masks and boxes first), so a reader never sees a partial file.
    """
    size = _check_size(size)
    path = Path(path)
    variant = variant_for_path(path) if variant is None else get_variant(variant)
    counts = dict(variant.default_counts if counts is None else counts)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if any(int(n) < 0 for n in counts.values()):
        raise ValueError(f"counts must be non-negative, got {counts}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The npz is renamed into place after its boxes and masks files (inner blocks first), so a
    # reader that finds the npz finds the others too.
    with contextlib.ExitStack() as stack:
        npz_temp = stack.enter_context(atomic_path(path))
        boxes_temp = stack.enter_context(atomic_path(boxes_path(path)))
        masks_temp = stack.enter_context(atomic_path(masks_path(path))) if variant.version == 2 else None
        all_labels, all_boxes, all_masks = {}, {}, {}
        with zipfile.ZipFile(npz_temp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for split, n in counts.items():
                n = int(n)
                labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
                boxes = np.zeros((n, len(PHANTOM_LABELS), 4), np.float32)
                parts = []
                with archive.open(f"{split}_images.npy", "w", force_zip64=True) as stream:
                    _write_npy_header(stream, (n, size, size), np.uint8)
                    for lo in range(0, n, chunk):
                        hi = min(n, lo + chunk)
                        data = generate(size, hi - lo, seed, split, lo, variant)
                        labels[lo:hi], boxes[lo:hi] = data.labels, data.boxes
                        stream.write(data.images.tobytes())
                        if variant.version == 2:
                            parts.append((lo, data))
                all_labels[split], all_boxes[split] = labels, boxes
                if variant.version == 2:
                    parts = parts or [(0, generate(size, 0, seed, split, 0, variant))]
                    all_masks.update(_mask_members(split, parts))
            for split, labels in all_labels.items():
                _write_member(archive, f"{split}_labels", labels)
        if variant.version == 2:
            with open(masks_temp, "wb") as stream:
                np.savez(stream, size=np.int32(size), label_names=np.array(PHANTOM_LABELS),
                         location_kinds=np.array([LOCATION_KINDS[name] for name in PHANTOM_LABELS]),
                         variant=np.array(json.dumps(variant.describe())), **all_masks)
        with open(boxes_temp, "wb") as stream:  # a file object: savez would append ".npz" to a name
            np.savez(stream, label_names=np.array(PHANTOM_LABELS),
                     **{f"{split}_boxes": b for split, b in all_boxes.items()})
    if variant.version == 1:
        masks_path(path).unlink(missing_ok=True)  # a stale one from a version-2 file of this name
    return path


def _mask_members(split: str, parts: list[tuple[int, PhantomData]]) -> dict[str, np.ndarray]:
    """The masks file's arrays for one split from its generated chunks (masks bit-packed)."""
    return {
        f"{split}_drawn": np.concatenate([d.drawn for _, d in parts]),
        f"{split}_mask_index": np.concatenate([d.mask_index + np.array([lo, 0], np.int32) for lo, d in parts]),
        f"{split}_mask_bits": np.concatenate([_pack(d.masks) for _, d in parts]),
        f"{split}_distractor_bits": np.concatenate([_pack(d.distractors) for _, d in parts]),
        f"{split}_marker": np.concatenate([d.marker for _, d in parts]).astype(np.uint8),
        f"{split}_marker_bits": np.concatenate([_pack(d.marker_masks) for _, d in parts]),
        f"{split}_lung_bits": np.concatenate([_pack(d.lungs) for _, d in parts]),
    }
