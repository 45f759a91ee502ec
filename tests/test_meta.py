"""Meta step: feature layout, every candidate, selection by cross-validation, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from stacking.errors import UserError
from stacking.meta.learners import (
    LEARNED,
    META_KINDS,
    SIMPLE,
    WeightedAverage,
    make_meta,
    meta_cv_folds,
    meta_features,
    model_weights,
    score,
    select_meta,
    single_threaded,
)

RNG = np.random.default_rng(0)
N, C = 300, 3
LABELS = np.tile(np.arange(C), N // C)


def noisy_probs(accuracy: float, bias: int | None = None, sharpness: float = 3.0) -> np.ndarray:
    """Probabilities that pick the true class with ``accuracy``; a biased model confuses towards ``bias``."""
    logits = RNG.normal(0, 1, (N, C))
    right = RNG.random(N) < accuracy
    target = np.where(right, LABELS, (LABELS + 1) % C if bias is None else bias)
    logits[np.arange(N), target] += sharpness
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_feature_layout_is_model_major_with_optional_tta_features():
    probs = RNG.dirichlet(np.ones(C), size=(2, N))
    X = meta_features(probs)
    assert X.shape == (N, 2 * C)
    np.testing.assert_allclose(np.exp(X[:, C : 2 * C]), probs[1], rtol=1e-6)
    disagreement = RNG.random((2, N))
    X = meta_features(probs, disagreement)
    assert X.shape == (N, 2 * C + 4)
    np.testing.assert_allclose(X[:, -2:], disagreement.T)  # disagreement last, one column per model
    uniform = meta_features(np.full((1, 1, C), 1 / C), np.zeros((1, 1)))
    assert uniform[0, C] == pytest.approx(1.0)  # entropy divided by log C: 1 for a uniform answer


def fitted(method: str, probs: np.ndarray, y: np.ndarray = LABELS) -> WeightedAverage:
    return WeightedAverage(len(probs), C, method).fit(meta_features(probs), y)


def test_averages_are_weighted_means_on_the_simplex():
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.6), noisy_probs(0.75)])
    X = meta_features(probs)
    np.testing.assert_allclose(fitted("mean", probs).predict_proba(X), probs.mean(axis=0), rtol=1e-5)
    losses = [score(p, LABELS)["log_loss"] for p in probs]
    assert fitted("best-single", probs).weights_.tolist() == np.eye(3)[np.argmin(losses)].tolist()
    for method in ("weighted", "caruana"):
        w = fitted(method, probs).weights_
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    caruana = fitted("caruana", probs).weights_
    np.testing.assert_allclose(caruana * 50, np.round(caruana * 50), atol=1e-9)  # 50 picks with replacement


def test_optimised_weights_beat_every_fixed_mix_in_sample():
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.6), noisy_probs(0.75)])
    X = meta_features(probs)
    loss = {m: score(fitted(m, probs).predict_proba(X), LABELS)["log_loss"] for m in SIMPLE}
    assert loss["weighted"] <= min(loss.values()) + 1e-6
    assert loss["caruana"] <= loss["mean"] and loss["caruana"] <= loss["best-single"] + 1e-9
    for w in RNG.dirichlet(np.ones(3), size=20):  # no other point of the simplex does better
        mix = np.tensordot(w, probs, axes=1)
        assert loss["weighted"] <= score(mix, LABELS)["log_loss"] + 1e-6


def test_auto_chooses_a_learned_stack_when_it_beats_every_average():
    # Model 1 says class 0 whenever it is wrong: a learned stack can discount that, an average cannot.
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.5, bias=0)])
    meta, record, candidates, *_ = select_meta(probs, LABELS, "auto", seed=0)
    board = {row["name"]: row for row in record["leaderboard"]}
    assert set(board) == set(META_KINDS) == set(candidates)
    assert record["kind"] in LEARNED
    assert board[record["kind"]]["log_loss"] < min(board[k]["log_loss"] for k in SIMPLE)
    assert record["reason"].startswith("lowest 5-fold cross-validated log_loss")
    for row in record["leaderboard"]:
        assert {"accuracy_std", "log_loss_std", "brier", "ece"} <= set(row)
        assert sum(row["model_weights"]) == pytest.approx(1.0)
    assert meta is candidates[record["kind"]]


def test_a_stack_that_does_not_beat_the_best_average_is_not_chosen():
    # Two interchangeable models: nothing to learn, so an average must be served.
    probs = np.stack([noisy_probs(0.8), noisy_probs(0.8)])
    record = select_meta(probs, LABELS, "auto", seed=0).record
    board = {row["name"]: row for row in record["leaderboard"]}
    best_simple = min(SIMPLE, key=lambda k: board[k]["log_loss"])
    if record["kind"] in LEARNED:
        assert board[record["kind"]]["log_loss"] < board[best_simple]["log_loss"]
    else:
        assert record["kind"] == best_simple
        assert "does not beat the best simple candidate" in record["reason"]


def test_accuracy_criterion_ranks_by_accuracy():
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.5, bias=0)])
    record = select_meta(probs, LABELS, "auto", seed=0, criterion="accuracy").record
    board = {row["name"]: row for row in record["leaderboard"]}
    assert record["criterion"] == "accuracy" and record["reason"].startswith("highest")
    best_simple = max(SIMPLE, key=lambda k: board[k]["accuracy"])  # ties: the first, i.e. the simplest
    best_learned = max(LEARNED, key=lambda k: board[k]["accuracy"])
    stack_wins = board[best_learned]["accuracy"] > board[best_simple]["accuracy"]
    assert record["kind"] == (best_learned if stack_wins else best_simple)


def test_cross_validated_answers_come_from_candidates_that_never_saw_the_row():
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.5, bias=0)])
    found = select_meta(probs, LABELS, "logreg", seed=0)
    X = meta_features(probs)
    for kind in ("weighted", "logreg"):
        for train, test in meta_cv_folds(LABELS, None, cv=5, seed=0):
            refit = make_meta(kind, 2, C).fit(X[train], LABELS[train])
            np.testing.assert_allclose(found.cv_probabilities[kind][test], refit.predict_proba(X[test]), rtol=1e-6)
    np.testing.assert_array_equal(found.cv_chosen, found.cv_probabilities["logreg"])
    in_sample = score(found.meta.predict_proba(X), LABELS)["log_loss"]
    assert score(found.cv_chosen, LABELS)["log_loss"] > in_sample  # the honest score is the worse one


def test_the_stack_does_not_trust_a_model_with_no_signal():
    probs = np.stack([noisy_probs(0.85), RNG.dirichlet(np.ones(C) * 0.3, size=N)])  # the second one guesses
    candidates = select_meta(probs, LABELS, "auto", seed=0).candidates
    for kind in ("weighted", "caruana", "logreg", "rf"):
        weights = model_weights(candidates[kind], 2, C)
        assert weights[0] > 0.6, (kind, weights)


def test_shuffled_labels_score_at_chance():
    probs = np.stack([noisy_probs(0.9), noisy_probs(0.8)])
    shuffled = RNG.permutation(LABELS)
    record = select_meta(probs, shuffled, "auto", seed=0).record
    for row in record["leaderboard"]:
        assert row["accuracy"] < 1 / C + 0.1, row  # nothing leaks: no candidate learns labels it cannot see


def test_temperature_scaling_repairs_overconfidence():
    # Right 70% of the time but nearly always sure: temperature above 1 softens it.
    probs = np.stack([noisy_probs(0.7, sharpness=8.0)])
    meta, record, candidates, _, cv_chosen = select_meta(probs, LABELS, "mean", seed=0, calibration="temperature")
    cal = record["calibration"]
    assert cal["temperature"] > 1.5
    assert cal["after"]["log_loss"] < cal["before"]["log_loss"] and cal["after"]["ece"] < cal["before"]["ece"]
    X = meta_features(probs)
    served, raw = meta.predict_proba(X), candidates["mean"].predict_proba(X)
    assert (served.argmax(axis=1) == raw.argmax(axis=1)).all()  # never changes the answer, only its confidence
    assert served.max(axis=1).mean() < raw.max(axis=1).mean()
    assert score(cv_chosen, LABELS)["log_loss"] == pytest.approx(cal["after"]["log_loss"])  # scaled CV answers


def test_selection_is_deterministic():
    probs = np.stack([noisy_probs(0.7), noisy_probs(0.6)])
    a, ra, *_ = select_meta(probs, LABELS, "rf", seed=5)
    b, rb, *_ = select_meta(probs, LABELS, "rf", seed=5)
    assert ra["kind"] == rb["kind"]
    # Parallel trees may sum in another order: equal up to float rounding.
    for row_a, row_b in zip(ra["leaderboard"], rb["leaderboard"]):
        assert row_a["name"] == row_b["name"]
        assert row_a["model_weights"] == pytest.approx(row_b["model_weights"], rel=1e-9)
        assert {k: v for k, v in row_a.items() if k not in ("name", "family", "model_weights")} == pytest.approx(
            {k: v for k, v in row_b.items() if k not in ("name", "family", "model_weights")}, rel=1e-9
        )
    np.testing.assert_allclose(a.predict_proba(meta_features(probs)), b.predict_proba(meta_features(probs)), rtol=1e-12)


def test_grouped_meta_folds_keep_groups_whole():
    groups = np.repeat(np.arange(N // 6), 6)  # every group holds two images of each class
    folds = meta_cv_folds(LABELS, groups, cv=5, seed=0)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    probs = np.stack([noisy_probs(0.8), noisy_probs(0.7)])
    assert select_meta(probs, LABELS, "auto", seed=0, groups=groups).record["cv_folds"] == 5


def test_unknown_kind_criterion_and_too_few_rows():
    probs = np.stack([noisy_probs(0.7)])
    with pytest.raises(UserError, match="--meta 'svm': expected one of auto, best-single"):
        select_meta(probs, LABELS, "svm")
    with pytest.raises(UserError, match="--meta-criterion 'auc': expected one of log_loss, accuracy"):
        select_meta(probs, LABELS, criterion="auc")
    with pytest.raises(ValueError, match="at least 2 out-of-fold rows"):
        select_meta(probs[:, :4], np.array([0, 1, 2, 2]))


def test_score_matches_definitions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s = score(probs, np.array([0, 1, 1]))
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4)) / 3)
    assert s["brier"] == pytest.approx((2 * 0.1**2 + 2 * 0.2**2 + 2 * 0.6**2) / 3)


def test_served_forest_answers_like_scikit_learns_on_one_thread_too():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(300, 12)), rng.integers(0, 4, 300)
    forest = make_meta("rf", 4, 4, seed=1).fit(X, y)
    plain = RandomForestClassifier(**forest.get_params()).fit(X, y)
    rows = rng.normal(size=(40, 12))
    np.testing.assert_allclose(forest.predict_proba(rows), plain.predict_proba(rows), rtol=1e-12)  # joblib path
    expected = single_threaded(plain).predict_proba(rows)
    single_threaded(forest)
    np.testing.assert_array_equal(forest.predict_proba(rows), expected)  # its own loop: scikit-learn's bits
    np.testing.assert_array_equal(forest.predict_proba(rows[:1]), expected[:1])
    with pytest.raises(ValueError, match="features"):
        forest.predict_proba(rows[:, :5])
