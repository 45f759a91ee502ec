"""Calibration measures and temperature scaling against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from stacking.meta.calibration import apply_temperature, ece, fit_temperature

RNG = np.random.default_rng(1)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    probs = np.tile([0.8, 0.2], (1000, 1))
    y = np.where(np.arange(1000) < 800, 0, 1)  # right exactly 80% of the time at 80% confidence
    assert ece(probs, y) == pytest.approx(0.0, abs=1e-9)
    assert ece(probs, np.ones(1000, int)) == pytest.approx(0.8)  # always wrong at 80% confidence


def test_fitted_temperature_recovers_the_distortion():
    logits = RNG.normal(0, 2, (4000, 4))
    y = np.array([RNG.choice(4, p=p) for p in softmax(logits, axis=1)])  # labels drawn from the true probabilities
    overconfident = softmax(logits * 2.5, axis=1)
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.1)
    np.testing.assert_allclose(
        apply_temperature(overconfident, 2.5), softmax(logits, axis=1), atol=5e-3
    )  # tiny probabilities are clipped at 1e-7
    assert ece(apply_temperature(overconfident, t), y) < ece(overconfident, y) / 2
