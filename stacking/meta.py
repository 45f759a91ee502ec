"""Meta-learners fitted on out-of-fold base-model probabilities, and their selection.

Features are the log-probabilities of every base model side by side: column
``m * C + c`` is base model m's log-probability of class c. Candidates: the plain
mean of the base models, logistic regression and a random forest. ``auto`` picks
the lowest cross-validated log-loss on the OOF rows, so a learned stack is served
only when it beats the plain mean.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict

META_KINDS = ("mean", "logreg", "rf")
EPS = 1e-7


def meta_features(base_probs: np.ndarray) -> np.ndarray:
    """(M, N, C) probabilities -> (N, M * C) clipped log-probabilities."""
    m, n, c = base_probs.shape
    return np.log(np.clip(base_probs, EPS, 1.0)).transpose(1, 0, 2).reshape(n, m * c)


class MeanEnsemble(ClassifierMixin, BaseEstimator):
    """The plain average of the base models' probabilities, on the meta-feature layout."""

    def __init__(self, n_models: int = 1):
        self.n_models = n_models

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MeanEnsemble":
        self.classes_ = np.unique(y)
        self.n_classes_ = X.shape[1] // self.n_models
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        probs = np.exp(X).reshape(len(X), self.n_models, self.n_classes_).mean(axis=1)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


def make_meta(kind: str, n_models: int, seed: int = 0) -> BaseEstimator:
    """An unfitted meta-learner of ``kind``."""
    if kind == "mean":
        return MeanEnsemble(n_models)
    if kind == "logreg":
        return LogisticRegression(C=0.5, max_iter=5000)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=-1)
    raise ValueError(f"unknown meta-learner {kind!r}; expected auto or one of {', '.join(META_KINDS)}")


def full_probabilities(estimator: BaseEstimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those a fold never saw."""
    probs = estimator.predict_proba(X)
    if probs.shape[1] == n_classes:
        return probs
    full = np.zeros((len(X), n_classes))
    full[:, estimator.classes_] = probs
    return full


def score(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and log-loss of (N, C) probabilities."""
    probs = np.clip(np.asarray(probs, np.float64), EPS, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)  # float32 sums drift from 1; log_loss warns on that
    return {
        "accuracy": float(accuracy_score(y, probs.argmax(axis=1))),
        "log_loss": float(log_loss(y, probs, labels=np.arange(probs.shape[1]))),
    }


def select_meta(
    base_probs: np.ndarray, y: np.ndarray, kind: str = "auto", seed: int = 0, cv: int = 5
) -> tuple[BaseEstimator, dict]:
    """Cross-validate the candidates on the OOF rows, fit the chosen one on all of them.

    Returns (fitted meta-learner, selection record with every candidate's CV scores
    and the reason for the choice).
    """
    if kind != "auto" and kind not in META_KINDS:
        raise ValueError(f"unknown meta-learner {kind!r}; expected auto or one of {', '.join(META_KINDS)}")
    n_models, _, n_classes = base_probs.shape
    X = meta_features(base_probs)
    folds = min(cv, int(np.bincount(y, minlength=n_classes).min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 out-of-fold rows to cross-validate the meta-learner")
    # One fold assignment for every candidate, so their scores compare like with like.
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    kinds = list(META_KINDS) if kind == "auto" else [kind]
    leaderboard = {}
    for candidate in kinds:
        probs = cross_val_predict(make_meta(candidate, n_models, seed), X, y, cv=splitter, method="predict_proba")
        leaderboard[candidate] = score(probs, y)
    chosen = min(leaderboard, key=lambda k: leaderboard[k]["log_loss"]) if kind == "auto" else kind
    others = ", ".join(f"{k} {v['log_loss']:.4f}" for k, v in leaderboard.items() if k != chosen)
    reason = (
        f"lowest {folds}-fold cross-validated log-loss on the OOF rows: {chosen} "
        f"{leaderboard[chosen]['log_loss']:.4f}" + (f" vs {others}" if others else "")
        if kind == "auto"
        else f"asked for with --meta {kind}"
    )
    meta = make_meta(chosen, n_models, seed).fit(X, y)
    return meta, {"kind": chosen, "criterion": "log_loss", "cv_folds": folds, "reason": reason, "leaderboard": leaderboard}
