"""Version 2 of the phantom: findings placed broadly, per-pixel masks, film distractors, a
shortcut marker and a difficulty setting.

Version 1 (``version1``) draws each finding where a radiologist would look first, which
makes an image-blind "always point at the usual place" prior score 0.35-0.53 in the pointing
game. Version 2 keeps the anatomy, the label model and the film, and changes what a
localisation benchmark needs:

- focal findings go anywhere anatomy allows (``LOCATION_KINDS``): nodules and masses anywhere
  in either lung field, effusion on either or both sides at any height (or loculated along the
  wall), consolidation / pneumonia in any of six lobe-like regions, plate atelectasis and
  infiltrates anywhere in the lungs, pneumothorax on either side at the apex or laterally,
  pleural thickening as a plaque at any height;
- every drawn finding gets a per-pixel mask at the output size (``FindingMasks``): the pixels
  it changes, so the pointing game and IoU score against what was drawn, not a box;
- findings with no meaningful location (``"global"``: cardiomegaly, edema, emphysema,
  fibrosis) and the one with a fixed site (``"fixed"``: hiatus hernia, always behind the heart)
  are marked, and localisation scores leave them out;
- film distractors unrelated to the labels: ECG electrodes and leads, a side marker, tubes and
  lines, burnt-in text;
- an optional shortcut marker that goes with one label in train and val but not in test;
- a difficulty setting: "hard" draws the same cases with subtler findings (a fraction of the
  contrast), more quantum noise and labels with about 10% errors, like NLP-mined labels.

Every image draws from its own stream (spawn key (split, index, 2)), so version 2 images are
independent of version 1's and the same seed gives the same images. The variants of one
version share their draws: phantom2, phantom2_hard and phantom2_shortcut hold the same
patients, positions and distractors; only contrast, noise, recorded labels or the marker differ.
"""
from __future__ import annotations

import numpy as np

from chest_tf.data.phantom.anatomy import (
    _PIXEL_BUDGET,
    ANATOMY_RANGES,
    Canvas,
    Frame,
    ParameterRanges,
    _any_downsample,
    _area_downsample,
    _col,
    _disc,
    _gauss,
    _mask_boxes,
    _ramp,
    _render_factor,
    _upsample,
    compose_density,
    draw_heart,
    draw_textures,
    expose,
    image_stream,
    lung_fields,
)
from chest_tf.data.phantom.labels import PHANTOM_LABELS, PREVALENCE, draw_labels, noisy_labels
from chest_tf.data.phantom.variants import DIFFICULTIES, SHORTCUT_WITH, SHORTCUT_WITHOUT, PhantomData, PhantomVariant
from chest_tf.data.phantom.version1 import FINDING_RANGES, draw_edema, draw_emphysema, draw_fibrosis, draw_hernia_sac

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
_RANGES_V2 = ParameterRanges({**ANATOMY_RANGES, **FINDING_RANGES, **FINDING_RANGES_V2, **DISTRACTOR_RANGES})


def image_rng_v2(seed: int, split: str, index: int) -> np.random.Generator:
    """Version 2's stream for image ``index`` (independent of version 1's)."""
    return image_stream(seed, split, index, 2)


def draw_case_v2(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one version-2 image, in a fixed order whatever the variant: the
    drawn findings, shape and distractor parameters, label-noise and marker uniforms, textures,
    then pixel noise."""
    return {
        "drawn": draw_labels(rng),
        "uniforms": rng.random(len(_RANGES_V2)),
        "label_u": rng.random(len(PHANTOM_LABELS)),
        "marker_u": rng.random(1),
        **draw_textures(rng, size),
    }


def stack_cases_v2(cases: list[dict]) -> dict:
    p = _RANGES_V2.stack(cases)
    p["labels"] = p["drawn"]      # what apply_volume_changes and the drawers read: the truth
    p["marker_u"] = p["marker_u"][:, 0]
    return p


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
    sac, wall = draw_hernia_sac(fr, cv, idx)
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
