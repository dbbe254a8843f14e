"""What every phantom image shares, whatever its findings: the per-image random stream, the
normal anatomy and exposure ranges, the field helpers, the anatomical frame and the normal
anatomy drawn in it, the ``Canvas`` findings draw into, and rendering (compose the density,
downsample, expose onto film). Both versions' findings (``version1``, ``version2``) draw on
this. Numpy only."""
from __future__ import annotations

import zlib

import numpy as np

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


def _split_key(split: str) -> int:
    # crc32, not hash(): stable across processes and Python versions.
    return zlib.crc32(split.encode("utf-8"))


def image_stream(seed: int, split: str, index: int, *version: int) -> np.random.Generator:
    """The generator all of image ``index``'s randomness comes from; ``version`` (empty for
    version 1) keeps each version's stream independent of the others'."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(_split_key(split), int(index), *version))
    return np.random.Generator(np.random.PCG64(sequence))


def draw_textures(rng: np.random.Generator, size: int) -> dict:
    """An image's last draws, in this order: texture grids, then pixel noise (the only draw that
    depends on the size)."""
    return {
        "mottle": rng.standard_normal((_MOTTLE_GRID, _MOTTLE_GRID), dtype=np.float32),
        "habitus": rng.standard_normal((_HABITUS_GRID, _HABITUS_GRID), dtype=np.float32),
        "noise": rng.standard_normal((size, size), dtype=np.float32),
    }


class ParameterRanges:
    """Named (low, high) ranges: each image draws one vector of uniforms, mapped onto them."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.names = tuple(ranges)
        self.low = np.array([lo for lo, _ in ranges.values()], np.float64)
        self.span = np.array([hi - lo for lo, hi in ranges.values()], np.float64)

    def __len__(self) -> int:
        return len(self.names)

    def stack(self, cases: list[dict]) -> dict:
        """Cases (dicts with a ``uniforms`` vector) -> one dict of per-image arrays: parameters by
        name (B,) and every other entry stacked."""
        p = {key: np.stack([c[key] for c in cases]) for key in cases[0] if key != "uniforms"}
        values = (self.low + self.span * np.stack([c["uniforms"] for c in cases])).astype(np.float32)
        return p | {name: values[:, j] for j, name in enumerate(self.names)}


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
# The canvas. Each finding (version1, version2) draws into it for the images ``idx`` that have
# it and returns a mask of where it is drawn. Opacity replaces lung air, lucency scales the
# lung's darkness, density is added directly (lines, rims; gas is negative).
# ============================================================================================

class Canvas:
    """What findings draw into, for a render batch."""

    def __init__(self, shape):
        self.opacity = np.zeros(shape, np.float32)      # fraction of lung air replaced (0..1)
        self.lucency = np.ones(shape, np.float32)       # multiplies the lung's darkness
        self.density = np.zeros(shape, np.float32)      # added directly
        self.markings = np.ones(shape, np.float32)      # 0 where vessels must not show


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


def _any_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """(..., R, R) bool at the internal size -> (..., R/f, R/f): a pixel is in if any of its
    sub-pixels is."""
    if factor == 1:
        return mask
    *lead, r, _ = mask.shape
    return mask.reshape(*lead, r // factor, factor, r // factor, factor).any(axis=(-3, -1))
