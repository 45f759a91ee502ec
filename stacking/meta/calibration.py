"""How trustworthy predicted probabilities are, and one way to make them more so.

``ece`` is the top-label expected calibration error over equal-width confidence bins;
``brier`` the multi-class Brier score (squared distance to the one-hot label, summed
over classes). Temperature scaling divides log-probabilities by one number fitted for
log-loss; it never changes which class wins, only how sure the answer claims to be.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin

EPS = 1e-7
ECE_BINS = 15


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per non-empty equal-width bin of top-label confidence: mean confidence, accuracy, share of rows."""
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    used = np.unique(which)
    return {
        "confidence": np.array([confidence[which == b].mean() for b in used]),
        "accuracy": np.array([right[which == b].mean() for b in used]),
        "share": np.array([(which == b).mean() for b in used]),
    }


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Share-weighted gap between confidence and accuracy, over confidence bins."""
    b = reliability_bins(probs, y, bins)
    return float((b["share"] * np.abs(b["confidence"] - b["accuracy"])).sum())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(log_softmax(np.log(np.clip(probs, EPS, 1.0)) / temperature, axis=1))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] with the lowest log-loss of ``probs`` on labels ``y``."""
    logp = np.log(np.clip(probs, EPS, 1.0))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


class TemperatureScaled(ClassifierMixin, BaseEstimator):
    """A fitted probabilistic classifier whose output is sharpened or softened by ``temperature``."""

    def __init__(self, estimator: BaseEstimator, temperature: float = 1.0):
        self.estimator = estimator
        self.temperature = temperature

    @property
    def classes_(self) -> np.ndarray:
        return self.estimator.classes_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return apply_temperature(self.estimator.predict_proba(X), self.temperature)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
