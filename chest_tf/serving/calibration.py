"""Temperature scaling (Guo et al., ICML 2017): probabilities that mean what they say.

The logits are divided by a temperature fitted on the validation split by minimising its negative
log-likelihood (binary cross-entropy per label for sigmoid outputs, cross-entropy for softmax).
``global`` fits one temperature for every output; ``per-label`` one per output column (sigmoid
outputs only; labels with a single class on validation keep 1.0). Ranking within a label never
changes, so AUC is unchanged; the thresholds are chosen again on the calibrated validation scores.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from chest_tf.errors import ConfigError
from chest_tf.evaluation.metrics import sigmoid, softmax

SCOPES = ("global", "per-label", "none")
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures between 0.05 and 20


def _nll(logits: np.ndarray, targets: np.ndarray, activation: str) -> float:
    if activation == "sigmoid":
        # -[y log s(z) + (1 - y) log(1 - s(z))] = softplus(z) - y z, overflow-safe
        return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))
    top = logits.max(axis=-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return float(-np.mean((targets * log_probs).sum(axis=-1)))


def _fit_one(logits: np.ndarray, targets: np.ndarray, activation: str) -> float:
    result = minimize_scalar(lambda log_t: _nll(logits / np.exp(log_t), targets, activation),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_temperatures(logits: np.ndarray, targets: np.ndarray, activation: str, scope: str = "global") -> np.ndarray:
    """Temperatures for ``logits`` (N, K) against ``targets`` (N, K; 0/1 labels or one-hot): shape
    (1,) for ``global``, (K,) for ``per-label``."""
    if scope not in SCOPES or scope == "none":
        raise ConfigError(f"unknown calibration '{scope}'; choose one of {', '.join(SCOPES)}")
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if scope == "global" or activation == "softmax":
        if scope == "per-label":
            raise ConfigError("per-label temperatures need sigmoid outputs; use --calibration global")
        return np.array([_fit_one(logits, targets, activation)], np.float32)
    temperatures = np.ones(logits.shape[1], np.float32)
    for k in range(logits.shape[1]):
        if 0 < targets[:, k].sum() < len(targets):
            temperatures[k] = _fit_one(logits[:, k:k + 1], targets[:, k:k + 1], activation)
    return temperatures


def calibrated_probabilities(logits: np.ndarray, temperatures: np.ndarray | None, activation: str) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / (1.0 if temperatures is None else np.asarray(temperatures))
    return (sigmoid(scaled) if activation == "sigmoid" else softmax(scaled, axis=-1)).astype(np.float32)
