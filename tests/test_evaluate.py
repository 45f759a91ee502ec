"""The pieces of the comparison table: bootstrap intervals and base-model diversity."""

from __future__ import annotations

import numpy as np
import pytest

from stacking.bundle import load_oof
from stacking.meta.leaderboard import bootstrap_interval
from stacking.reporting.diversity import diversity


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_images():
    assert bootstrap_interval(np.ones(50, bool)) == (1.0, 1.0)
    half = np.arange(1000) % 2 == 0
    low, high = bootstrap_interval(half)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 1000), rel=0.2)
    low4, high4 = bootstrap_interval(np.arange(4000) % 2 == 0)
    assert high4 - low4 < (high - low) * 0.6  # four times the images: about half the width


def test_diversity_is_the_correlation_of_oof_probabilities(tiny_bundle):
    names, corr = diversity(tiny_bundle)
    probs = load_oof(tiny_bundle)["probabilities"]
    assert names == ["tiny_cnn", "mini_mobilenet"]
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert corr[0, 1] == pytest.approx(np.corrcoef(probs[0].ravel(), probs[1].ravel())[0, 1])
