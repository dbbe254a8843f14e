"""Checks on an image before a chest X-ray model sees it: is this plausibly a frontal radiograph the
model can read? One module for predict, explain, the SavedModel metadata and the app.

Each check looks at the decoded uint8 image (H, W, C) and the model's input size, and says nothing,
a warning or an error. An error means the image is not predicted (predict names the file and the
reason); a warning travels with the prediction into every output (table, JSON, CSV). The level of
each check is a policy setting (``InputPolicy``; predict's ``--check NAME=error|warning|off``).

==============  =======================================================  =====================
check           fires when                                               default
==============  =======================================================  =====================
too_small       the shorter side is under ``min_side`` px (error), or    error / warning
                the image is upsampled more than ``max_upsample``x
                (warning)
aspect_ratio    the longer side is over ``max_aspect`` times the         error (warn above
                shorter (radiographs are 1:1 to about 1.3:1)             ``warn_aspect``)
blank           the pixel standard deviation is under ``min_std``        error
                (blank or near-constant), or the 1-99% range is under
                ``min_range`` (very low contrast, warning)
colour          the mean chroma (max - min over RGB) is over             warning
                ``max_chroma``: colour photographs, screenshots, slides
inverted        the mediastinum is darker than the lung fields beside    warning
                it (``polarity`` under ``min_polarity``): a negative or
                an inverted DICOM
==============  =======================================================  =====================

The thresholds were set on PneumoniaMNIST's 3,882 training images and the phantom set: the
polarity score (mean of the central vertical strip minus the mean of the two lung fields, over
the image's standard deviation) is above 0.2 for all but 2 of 3,882 real radiographs (1st
percentile 0.44) and below -0.2 for all but 5 of them inverted; no real or phantom image has a
standard deviation under 6 or a 1-99% range under 31 (of 255).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from chest_tf.errors import ConfigError

LEVELS = ("error", "warning", "off")
CHECK_NAMES = ("too_small", "aspect_ratio", "blank", "colour", "inverted")


@dataclass(frozen=True)
class CheckResult:
    check: str
    level: str  # "error" or "warning"
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InputPolicy:
    """What each check looks for and how loud it is (``levels``: check -> error|warning|off; a
    check with two severities uses its level for the severe case and warns for the mild one)."""

    levels: dict[str, str] = field(default_factory=lambda: {
        "too_small": "error", "aspect_ratio": "error", "blank": "error", "colour": "warning",
        "inverted": "warning"})
    min_side: int = 16
    max_upsample: float = 2.0
    max_aspect: float = 2.5
    warn_aspect: float = 1.5
    min_std: float = 2.0
    min_range: float = 16.0
    max_chroma: float = 24.0
    min_polarity: float = -0.25

    def with_levels(self, overrides: dict[str, str]) -> InputPolicy:
        for name, level in overrides.items():
            if name not in CHECK_NAMES:
                raise ConfigError(f"unknown input check '{name}'; choose one of {', '.join(CHECK_NAMES)}")
            if level not in LEVELS:
                raise ConfigError(f"input check {name}: level must be one of {', '.join(LEVELS)}, got '{level}'")
        return dataclasses.replace(self, levels={**self.levels, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_POLICY = InputPolicy()


def parse_check_levels(pairs: list[str]) -> dict[str, str]:
    """``["inverted=error", "colour=off"]`` -> {"inverted": "error", "colour": "off"}."""
    levels = {}
    for pair in pairs:
        name, sep, level = pair.partition("=")
        if not sep:
            raise ConfigError(f"--check expects NAME=error|warning|off (e.g. inverted=error), got '{pair}'")
        levels[name.strip()] = level.strip()
    DEFAULT_POLICY.with_levels(levels)  # validates names and levels
    return levels


def grayscale(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) luminance of a uint8 (H, W) or (H, W, C) image (C in 1, 3, 4), BT.601 as the
    serving computation uses."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.shape[-1] == 1:
        return image[..., 0].astype(np.float32)
    rgb = image[..., :3].astype(np.float32)
    if image.shape[-1] == 4:
        rgb = rgb * (image[..., 3:4].astype(np.float32) / 255.0)
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def polarity(gray: np.ndarray) -> float:
    """(mean of the central vertical strip - mean of the lung fields) / std: positive for a
    radiograph (bright mediastinum and spine between dark lungs), negative when inverted."""
    h, w = gray.shape
    rows = slice(h // 4, max(h // 4 + 1, 3 * h // 4))
    center = gray[rows, 2 * w // 5:max(2 * w // 5 + 1, 3 * w // 5)]
    lungs = np.concatenate([gray[rows, w // 8:max(w // 8 + 1, w // 3)].ravel(),
                            gray[rows, 2 * w // 3:max(2 * w // 3 + 1, 7 * w // 8)].ravel()])
    return float((center.mean() - lungs.mean()) / (gray.std() + 1e-3))


def _result(policy: InputPolicy, name: str, severe: bool, message: str) -> CheckResult | None:
    level = policy.levels.get(name, "off")
    if level == "off":
        return None
    return CheckResult(name, level if severe else "warning", message)


def check_image(image: np.ndarray, model_size: int, policy: InputPolicy = DEFAULT_POLICY) -> list[CheckResult]:
    """What the checks say about one decoded uint8 image (H, W) or (H, W, C) for a model that
    takes ``model_size`` px: errors first, then warnings; [] for a normal radiograph."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    found: list[CheckResult | None] = []
    short, long = min(h, w), max(h, w)
    if short < policy.min_side:
        found.append(_result(policy, "too_small", True, f"{w}x{h} px is too small to read (the shorter side is "
                                                         f"under {policy.min_side} px)"))
    elif model_size / short > policy.max_upsample:
        found.append(_result(policy, "too_small", False, f"{w}x{h} px is upsampled {model_size / short:.1f}x to "
                                                          f"the model's {model_size} px"))
    aspect = long / max(short, 1)
    if aspect > policy.max_aspect:
        found.append(_result(policy, "aspect_ratio", True, f"aspect ratio {aspect:.1f}:1 is not a chest radiograph's "
                                                            f"(over {policy.max_aspect:g}:1)"))
    elif aspect > policy.warn_aspect:
        found.append(_result(policy, "aspect_ratio", False, f"aspect ratio {aspect:.1f}:1 is unusual for a chest "
                                                             f"radiograph; it is squeezed to a square"))
    gray = grayscale(image)
    std = float(gray.std())
    if std < policy.min_std:
        found.append(_result(policy, "blank", True, f"the image is blank or near-constant (pixel std {std:.1f})"))
    else:
        low, high = np.percentile(gray, [1, 99])
        if high - low < policy.min_range:
            found.append(_result(policy, "blank", False, f"very low contrast (1-99% range {high - low:.0f} of 255)"))
    if image.ndim == 3 and image.shape[-1] >= 3:
        rgb = image[..., :3].astype(np.float32)
        chroma = float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean())
        if chroma > policy.max_chroma:
            found.append(_result(policy, "colour", True, f"strong colour (mean chroma {chroma:.0f}): not a "
                                                          f"radiograph?"))
    if std >= policy.min_std and short >= 8:
        score = polarity(gray)
        if score < policy.min_polarity:
            found.append(_result(policy, "inverted", True, f"likely inverted polarity (mediastinum darker than the "
                                                            f"lungs, score {score:.2f}); invert it or check the "
                                                            f"DICOM's PhotometricInterpretation"))
    results = [r for r in found if r is not None]
    return sorted(results, key=lambda r: r.level != "error")


def errors(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.level == "error"]


def summary(results: list[CheckResult]) -> str:
    """One line for tables and CSV cells: ``warning inverted: ...; error blank: ...``."""
    return "; ".join(f"{r.level} {r.check}: {r.message}" for r in results)
