"""The phantom sets a name can ask for (``VARIANTS``: phantom, phantom2, phantom2_hard,
phantom2_shortcut, phantom2_randlabels), how hard each is, which one a file name means, and
``PhantomData``, the block of images with everything known about them that generating any of
them returns."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chest_tf.data.info import SIZES
from chest_tf.data.phantom.labels import DEFAULT_COUNTS


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
