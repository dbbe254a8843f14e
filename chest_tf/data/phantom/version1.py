"""Version 1 of the phantom (``phantom``, unchanged since it was first written): each of the 14
findings drawn where a radiologist would look for it first, a box per drawn finding, and the
generation of a block of version-1 images (``generate`` in ``sets`` dispatches here). Its
random stream and the parameter ranges below fix every version-1 image, so they must not change:
version 2 (``version2``) reads the same ranges first to keep its own stream's layout."""
from __future__ import annotations

import numpy as np

from chest_tf.data.phantom.anatomy import (
    _PIXEL_BUDGET,
    ANATOMY_RANGES,
    Canvas,
    Frame,
    ParameterRanges,
    _area_downsample,
    _disc,
    _gauss,
    _mask_boxes,
    _ramp,
    _render_factor,
    _signed_x,
    _upsample,
    compose_density,
    draw_heart,
    draw_textures,
    expose,
    image_stream,
    lung_fields,
)
from chest_tf.data.phantom.labels import PHANTOM_LABELS, draw_labels
from chest_tf.data.phantom.variants import PhantomData

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
_RANGES = ParameterRanges({**ANATOMY_RANGES, **FINDING_RANGES})


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that all of image ``index``'s randomness comes from."""
    return image_stream(seed, split, index)


def draw_case(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one image, in a fixed order: labels, shape parameters (as
    uniforms), texture grids, then pixel noise (the only draw that depends on the size)."""
    return {
        "labels": draw_labels(rng),
        "uniforms": rng.random(len(_RANGES)),
        **draw_textures(rng, size),
    }


def stack_cases(cases: list[dict]) -> dict:
    """Cases -> one dict of per-image arrays: parameters by name (B,), grids (B, g, g)."""
    return _RANGES.stack(cases)


# ============================================================================================
# Findings, each where a radiologist would look for it first (anatomy.Canvas: how they draw)
# ============================================================================================

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
    sac, _ = draw_hernia_sac(fr, cv, idx)
    return sac > 0.3


def draw_hernia_sac(fr, cv, idx):
    """Draws the hernia (``draw_hernia``); returns its sac and wall fields (version 2's mask holds
    both)."""
    x, y, cx, r, level_u, top0, top1 = fr.at(
        idx, "x", "y", "hernia_x", "hernia_r", "hernia_level", "dome_top_0", "dome_top_1")
    cy = np.minimum(top0, top1) + 0.06 - r
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    sac = _ramp(d, 1.08, 0.95)
    level = cy + level_u * r
    gas = _ramp(d, 0.9, 0.78) * _ramp(y, level + 0.01, level - 0.01)
    wall = np.clip(1.0 - ((d - 0.95) * (1 / 0.12)) ** 2, 0.0, None)
    cv.density[idx] += 0.2 * wall + 0.12 * sac - 0.45 * gas
    return sac, wall


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


# ============================================================================================
# Rendering and generating a block of version-1 images
# ============================================================================================

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
