"""Meta-learners: the feature layout, the plain mean, and selection by cross-validation."""

from __future__ import annotations

import numpy as np
import pytest

from stacking.meta import MeanEnsemble, meta_features, score, select_meta

RNG = np.random.default_rng(0)
N, C = 300, 3
LABELS = np.tile(np.arange(C), N // C)


def noisy_probs(accuracy: float, bias: int | None = None) -> np.ndarray:
    """Probabilities that pick the true class with ``accuracy``; a biased model confuses towards ``bias``."""
    logits = RNG.normal(0, 1, (N, C))
    right = RNG.random(N) < accuracy
    target = np.where(right, LABELS, (LABELS + 1) % C if bias is None else bias)
    logits[np.arange(N), target] += 3
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_feature_layout_is_model_major():
    probs = RNG.dirichlet(np.ones(C), size=(2, N))
    X = meta_features(probs)
    assert X.shape == (N, 2 * C)
    np.testing.assert_allclose(np.exp(X[:, C:2 * C]), probs[1], rtol=1e-6)


def test_mean_ensemble_is_the_plain_average():
    probs = RNG.dirichlet(np.ones(C), size=(3, N))
    mean = MeanEnsemble(3).fit(meta_features(probs), LABELS)
    np.testing.assert_allclose(mean.predict_proba(meta_features(probs)), probs.mean(axis=0), rtol=1e-5)


def test_auto_chooses_a_learned_stack_when_it_beats_the_mean():
    # Model 1 systematically says class 0 when wrong: a learned stack can discount it, the mean cannot.
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.5, bias=0)])
    meta, record = select_meta(probs, LABELS, "auto", seed=0)
    board = record["leaderboard"]
    assert set(board) == {"mean", "logreg", "rf"}
    assert record["kind"] == min(board, key=lambda k: board[k]["log_loss"])
    assert f"mean {board['mean']['log_loss']:.4f}" in record["reason"]
    assert board[record["kind"]]["log_loss"] < board["mean"]["log_loss"]
    assert record["reason"].startswith("lowest 5-fold")


def test_auto_keeps_the_mean_when_stacking_does_not_help():
    probs = np.stack([noisy_probs(0.8), noisy_probs(0.8)])
    _, record = select_meta(probs, LABELS, "auto", seed=0)
    board = record["leaderboard"]
    assert record["kind"] == min(board, key=lambda k: board[k]["log_loss"])


def test_selection_is_deterministic():
    probs = np.stack([noisy_probs(0.7), noisy_probs(0.6)])
    a, ra = select_meta(probs, LABELS, "rf", seed=5)
    b, rb = select_meta(probs, LABELS, "rf", seed=5)
    # Parallel trees may sum in another order: equal up to float rounding.
    assert ra["kind"] == rb["kind"]
    assert ra["leaderboard"]["rf"] == pytest.approx(rb["leaderboard"]["rf"], rel=1e-12)
    np.testing.assert_allclose(a.predict_proba(meta_features(probs)), b.predict_proba(meta_features(probs)), rtol=1e-12)


def test_unknown_kind_and_too_few_rows():
    probs = np.stack([noisy_probs(0.7)])
    with pytest.raises(ValueError, match="unknown meta-learner 'svm'"):
        select_meta(probs, LABELS, "svm")
    with pytest.raises(ValueError, match="at least 2 out-of-fold rows"):
        select_meta(probs[:, :4], np.array([0, 1, 2, 2]))


def test_score_matches_definitions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s = score(probs, np.array([0, 1, 1]))
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4)) / 3)
