"""The phantom's labels: the 14 findings, how they co-occur (three hidden conditions), their
exact rates beside ChestMNIST's, one image's draw of them, label noise, and where each finding
can be localised. Numpy only."""
from __future__ import annotations

import itertools

import numpy as np

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


def draw_labels(rng: np.random.Generator) -> np.ndarray:
    """Hidden conditions first, then each finding given its condition (always 17 draws)."""
    conditions = dict(zip(_CONDITIONS, rng.random(len(_CONDITIONS)) < list(CONDITION_RATES.values())))
    u = rng.random(len(PHANTOM_LABELS))
    labels = np.zeros(len(PHANTOM_LABELS), np.uint8)
    for k, name in enumerate(PHANTOM_LABELS):
        base, condition, boost = FINDING_MODEL[name]
        labels[k] = u[k] < base + (boost if condition and conditions[condition] else 0.0)
    return labels


# Where each finding can be localised (version 2's masks): "focal" findings are scored by the
# pointing game; "global" ones have no meaningful location and the "fixed" one (hiatus hernia)
# is always behind the heart, so localisation scores leave both out.
LOCATION_KINDS = {
    "atelectasis": "focal", "cardiomegaly": "global", "effusion": "focal", "infiltration": "focal",
    "mass": "focal", "nodule": "focal", "pneumonia": "focal", "pneumothorax": "focal",
    "consolidation": "focal", "edema": "global", "emphysema": "global", "fibrosis": "global",
    "pleural": "focal", "hernia": "fixed",
}
LOCALISABLE = tuple(name for name in PHANTOM_LABELS if LOCATION_KINDS[name] == "focal")


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
