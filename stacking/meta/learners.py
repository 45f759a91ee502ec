"""The meta-learners: candidates that combine base models, compared by cross-validation on OOF rows.

Features (``meta_features``): the log-probabilities of every base model side by side
(column ``m * C + c`` is model m's log-probability of class c), optionally followed
by two TTA features per model: the entropy of its merged probabilities (divided by
log C) and the share of its TTA views that disagree with its merged label.

Candidates, simplest first: the best single model, the plain mean, a weighted mean
with non-negative weights summing to 1 fitted for log-loss, greedy ensemble selection
with replacement (Caruana et al., 2004), logistic regression and a random forest. All
are scikit-learn classifiers on the same features, so cross-validation, saving and
serving treat them alike. The chosen one has the best mean score over the meta-folds;
a learned stack (logreg, rf) must strictly beat every simple candidate to be chosen.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from stacking.choices import AUTO, CALIBRATION, META, META_CRITERION, META_KINDS, Calibration, MetaCriterion, MetaKind
from stacking.choices import LEARNED_META as LEARNED
from stacking.choices import SIMPLE_META as SIMPLE
from stacking.meta.calibration import TemperatureScaled, apply_temperature, brier, ece, fit_temperature

CARUANA_ROUNDS = 50
EPS = 1e-7


def meta_features(base_probs: np.ndarray, disagreement: np.ndarray | None = None) -> np.ndarray:
    """(M, N, C) probabilities [, (M, N) TTA disagreement] -> (N, M * C [+ 2M]) features."""
    m, n, c = base_probs.shape
    logp = np.log(np.clip(base_probs, EPS, 1.0))
    X = logp.transpose(1, 0, 2).reshape(n, m * c)
    if disagreement is None:
        return X
    entropy = -(np.clip(base_probs, EPS, 1.0) * logp).sum(axis=2) / np.log(c)  # (M, N), 0 = sure, 1 = uniform
    return np.hstack([X, entropy.T, np.asarray(disagreement, X.dtype).T])


def _base_probabilities(X: np.ndarray, n_models: int, n_classes: int) -> np.ndarray:
    """The (M, N, C) probabilities back from the first M * C feature columns."""
    return np.exp(X[:, : n_models * n_classes]).reshape(len(X), n_models, n_classes).transpose(1, 0, 2)


def _true_class_log_loss(q: np.ndarray, w: np.ndarray) -> float:
    return float(-np.log(np.clip(q @ w, EPS, None)).mean())


class WeightedAverage(ClassifierMixin, BaseEstimator):
    """A weighted mean of the base models' probabilities; ``method`` says how the weights are found.

    ``mean``: equal. ``best-single``: all weight on the model with the lowest log-loss.
    ``weighted``: the log-loss minimum over the simplex (softmax-parametrised, L-BFGS).
    ``caruana``: greedy selection with replacement, ``CARUANA_ROUNDS`` picks.
    """

    def __init__(self, n_models: int = 1, n_classes: int = 2, method: str = "mean"):
        self.n_models = n_models
        self.n_classes = n_classes
        self.method = method

    def fit(self, X: np.ndarray, y: np.ndarray) -> WeightedAverage:
        self.classes_ = np.arange(self.n_classes)
        probs = _base_probabilities(X, self.n_models, self.n_classes)
        q = probs[:, np.arange(len(y)), y].T  # (N, M): each model's probability of the true class
        method = MetaKind(self.method)  # the one check: an unknown name raises ValueError naming it
        if method == MetaKind.MEAN:
            weights = np.ones(self.n_models)
        elif method == MetaKind.BEST_SINGLE:
            weights = np.eye(self.n_models)[np.argmin(-np.log(np.clip(q, EPS, None)).mean(axis=0))]
        elif method == MetaKind.WEIGHTED:
            weights = self._optimal_weights(q)
        elif method == MetaKind.CARUANA:
            weights = self._greedy_weights(q)
        else:
            raise ValueError(f"{self.method!r} learns a stack; WeightedAverage takes one of {', '.join(SIMPLE)}")
        self.weights_ = weights / weights.sum()
        return self

    def _optimal_weights(self, q: np.ndarray) -> np.ndarray:
        def loss_and_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
            w = softmax(z)
            mix = np.clip(q @ w, EPS, None)
            g = -(q / mix[:, None]).mean(axis=0)  # d loss / d w
            return float(-np.log(mix).mean()), w * (g - w @ g)  # chain rule through the softmax

        result = minimize(loss_and_grad, np.zeros(self.n_models), jac=True, method="L-BFGS-B")
        return softmax(result.x)

    def _greedy_weights(self, q: np.ndarray) -> np.ndarray:
        counts = np.zeros(self.n_models)
        for _ in range(CARUANA_ROUNDS):
            trials = [_true_class_log_loss(q, (counts + one) / (counts.sum() + 1)) for one in np.eye(self.n_models)]
            counts[int(np.argmin(trials))] += 1
        return counts

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        probs = np.tensordot(self.weights_, _base_probabilities(X, self.n_models, self.n_classes), axes=1)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


class ServingForest(RandomForestClassifier):
    """A random forest that answers a few rows fast: on one thread it loops over its trees itself.

    With ``n_jobs=1`` scikit-learn still sends every tree through joblib and checks every
    tree: 23 ms for 300 trees on one row, against about 2 ms for the same sum of the same
    tree outputs in the same order (same bits; tested).
    """

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.n_jobs != 1:
            return super().predict_proba(X)
        check_is_fitted(self)
        X = self._validate_X_predict(X)  # float32, as every tree expects
        proba = np.zeros((X.shape[0], self.n_classes_))
        for tree in self.estimators_:
            proba += tree.tree_.predict(X)[:, : self.n_classes_]  # DecisionTreeClassifier.predict_proba, unchecked
        return proba / len(self.estimators_)


def make_meta(kind: str, n_models: int, n_classes: int, seed: int = 0) -> BaseEstimator:
    """An unfitted candidate of ``kind`` (a ``MetaKind``)."""
    kind = MetaKind(kind)
    if not kind.learned:
        return WeightedAverage(n_models, n_classes, kind.value)
    if kind == MetaKind.LOGREG:
        return LogisticRegression(C=0.5, max_iter=5000)
    return ServingForest(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=-1)


def single_threaded(estimator: BaseEstimator) -> BaseEstimator:
    """The fitted estimator set to predict on one thread (``n_jobs=1``, nested ones too).

    Serving predicts small batches: there joblib's thread start-up costs more than the
    work (a 300-tree forest on 7 rows, 2 cores: 110 ms with n_jobs=-1, 34 ms with 1).
    """
    for key in estimator.get_params(deep=True):
        if key == "n_jobs" or key.endswith("__n_jobs"):
            estimator.set_params(**{key: 1})
    return estimator


def full_probabilities(estimator: BaseEstimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those a fold never saw.

    Each row's answer has the same bits whatever rows come with it: a logistic regression's
    matrix product rounds by the shape of the whole batch (last-bit differences between an
    image sent alone and in a batch, seen over HTTP), so it answers row by row (0.1 ms a row).
    """
    inner = estimator.estimator if isinstance(estimator, TemperatureScaled) else estimator
    if isinstance(inner, LogisticRegression) and len(X) > 1:
        probs = np.concatenate([estimator.predict_proba(X[i : i + 1]) for i in range(len(X))])
    else:
        probs = estimator.predict_proba(X)
    if probs.shape[1] == n_classes:
        return probs
    full = np.zeros((len(X), n_classes))
    full[:, estimator.classes_] = probs
    return full


def score(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, log-loss, Brier score and expected calibration error of (N, C) probabilities."""
    probs = np.clip(np.asarray(probs, np.float64), EPS, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)  # float32 sums drift from 1; log_loss warns on that
    return {
        "accuracy": float(accuracy_score(y, probs.argmax(axis=1))),
        "log_loss": float(log_loss(y, probs, labels=np.arange(probs.shape[1]))),
        "brier": brier(probs, y),
        "ece": ece(probs, y),
    }


CHANCE_P_VALUE = 0.01  # an accuracy this likely (or likelier) from always naming the commonest class is "at chance"


def at_chance(probs: np.ndarray, y: np.ndarray) -> tuple[bool, float]:
    """Whether (N, C) probabilities are no better than naming the commonest class, by a one-sided binomial test;
    and that class's share (the chance accuracy)."""
    from scipy.stats import binomtest

    chance = float(np.bincount(y).max() / len(y))
    correct = int((np.asarray(probs).argmax(axis=1) == y).sum())
    return binomtest(correct, len(y), chance, alternative="greater").pvalue > CHANCE_P_VALUE, chance


def model_weights(estimator: BaseEstimator, n_models: int, n_classes: int) -> list[float]:
    """How much a fitted candidate relies on each base model, summing to 1.

    Averages: their weights. Logistic regression: the mean absolute coefficient over
    each model's columns. Random forest: the summed feature importance of them.
    """
    if isinstance(estimator, TemperatureScaled):
        estimator = estimator.estimator
    if isinstance(estimator, WeightedAverage):
        return [float(w) for w in estimator.weights_]
    if isinstance(estimator, LogisticRegression):
        per_column = np.abs(estimator.coef_).mean(axis=0)
    else:
        per_column = estimator.feature_importances_
    per_model = per_column[: n_models * n_classes].reshape(n_models, n_classes).sum(axis=1)
    if len(per_column) > n_models * n_classes:  # the TTA features: entropy then disagreement, one per model
        per_model += per_column[n_models * n_classes :].reshape(2, n_models).sum(axis=0)
    total = per_model.sum()
    if total <= 0:  # a forest of single leaves (members that say nothing): no model matters more than another
        return [1.0 / n_models] * n_models
    return [float(w) for w in per_model / total]


def meta_cv_folds(y: np.ndarray, groups: np.ndarray | None, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One fold assignment of the OOF rows for every candidate, so their scores compare like with like."""
    folds = min(cv, int(np.bincount(y).min()))
    if groups is not None:
        folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("every class needs at least 2 out-of-fold rows to cross-validate the meta-learner")
    if groups is None:
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y))
    return list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y, groups))


def _summary(per_fold: list[dict]) -> dict[str, float]:
    """Mean and spread (standard deviation) of each metric across the meta-folds."""
    out = {}
    for metric in per_fold[0]:
        values = np.array([f[metric] for f in per_fold])
        out[metric], out[f"{metric}_std"] = float(values.mean()), float(values.std())
    return out


def _calibrate(
    chosen: BaseEstimator, pooled: np.ndarray, y: np.ndarray, folds: list
) -> tuple[BaseEstimator, dict, np.ndarray]:
    """Temperature scaling fitted on OOF rows only; its effect measured by cross-validation too.

    Returns the scaled estimator, the record, and the cross-validated scaled probabilities.
    """
    calibrated = np.zeros_like(pooled)
    for train, test in folds:
        calibrated[test] = apply_temperature(pooled[test], fit_temperature(pooled[train], y[train]))
    temperature = fit_temperature(pooled, y)
    before, after = score(pooled, y), score(calibrated, y)
    record = {
        "method": Calibration.TEMPERATURE.value,
        "temperature": temperature,
        "before": {k: before[k] for k in ("log_loss", "brier", "ece")},
        "after": {k: after[k] for k in ("log_loss", "brier", "ece")},
    }
    return TemperatureScaled(chosen, temperature), record, calibrated


class MetaSelection(NamedTuple):
    """What :func:`select_meta` found."""

    meta: BaseEstimator  # the chosen meta-learner fitted on all OOF rows, temperature-scaled when asked
    record: dict  # leaderboard (mean and spread over meta-folds), choice and reason
    candidates: dict[str, BaseEstimator]  # every candidate fitted on all OOF rows, for ``evaluate``
    cv_probabilities: dict[str, np.ndarray]  # each candidate's (N, C) answers from the meta-folds that left a row out
    cv_chosen: np.ndarray  # the same for the chosen meta-learner (after temperature scaling, when asked)


def select_meta(
    base_probs: np.ndarray,
    y: np.ndarray,
    kind: str = AUTO,
    seed: int = 0,
    cv: int = 5,
    criterion: str = MetaCriterion.LOG_LOSS,
    disagreement: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    calibration: str = Calibration.NONE,
) -> MetaSelection:
    """Cross-validate every candidate on the OOF rows and fit each on all of them.

    The cross-validated answers are kept: they are the only honest view of how the
    stack does on the OOF rows (the fitted stack has seen every one of them).
    """
    for choice, value in ((META, kind), (META_CRITERION, criterion), (CALIBRATION, calibration)):
        choice.check(value)
    n_models, _, n_classes = base_probs.shape
    X = meta_features(base_probs, disagreement)
    folds = meta_cv_folds(y, groups, cv, seed)
    leaderboard, pooled, fitted = [], {}, {}
    for candidate in META_KINDS:
        pooled[candidate] = np.zeros((len(y), n_classes))
        per_fold = []
        for train, test in folds:
            model = clone(make_meta(candidate, n_models, n_classes, seed)).fit(X[train], y[train])
            pooled[candidate][test] = full_probabilities(model, X[test], n_classes)
            per_fold.append(score(pooled[candidate][test], y[test]))
        fitted[candidate] = make_meta(candidate, n_models, n_classes, seed).fit(X, y)
        leaderboard.append(
            {
                "name": candidate,
                "family": "simple" if candidate in SIMPLE else "learned",
                **_summary(per_fold),
                "model_weights": model_weights(fitted[candidate], n_models, n_classes),
            }
        )
    sign = 1 if criterion == MetaCriterion.LOG_LOSS else -1  # lower log-loss is better, higher accuracy is better
    board = {row["name"]: row for row in leaderboard}
    best_simple = min(SIMPLE, key=lambda k: sign * board[k][criterion])
    best_learned = min(LEARNED, key=lambda k: sign * board[k][criterion])
    stack_wins = sign * board[best_learned][criterion] < sign * board[best_simple][criterion]
    chosen = (best_learned if stack_wins else best_simple) if kind == AUTO else kind
    described = lambda k: f"{k} {board[k][criterion]:.4f} ± {board[k][criterion + '_std']:.4f}"  # noqa: E731
    if kind != AUTO:
        reason = f"asked for with --meta {kind}"
    else:
        word = "lowest" if criterion == MetaCriterion.LOG_LOSS else "highest"
        others = ", ".join(described(k) for k in META_KINDS if k != chosen)
        reason = (
            f"{word} {len(folds)}-fold cross-validated {criterion} on the OOF rows: {described(chosen)} vs {others}"
        )
        if not stack_wins:
            reason += f"; the best learned stack ({best_learned}) does not beat the best simple candidate"
    meta, calibrated, cv_chosen = fitted[chosen], None, pooled[chosen]
    if calibration == Calibration.TEMPERATURE:
        meta, calibrated, cv_chosen = _calibrate(fitted[chosen], pooled[chosen], y, folds)
    record = {
        "kind": chosen,
        "criterion": criterion,
        "cv_folds": len(folds),
        "reason": reason,
        "leaderboard": leaderboard,
        "calibration": calibrated,
    }
    return MetaSelection(meta, record, fitted, pooled, cv_chosen)
