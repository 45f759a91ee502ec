"""Out-of-fold protocols: which images each base model trains on and which it predicts.

``holdout``: one stratified split; base models train on the rest and predict the
held-out part, which alone feeds the meta-learner. ``kfold``: K stratified folds;
each fold's models train on the other folds and predict it, so every image gets an
out-of-fold prediction. In both, early stopping and checkpoint choice watch an
inner validation split carved from the training part, never the predicted rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from stacking.errors import UserError

PROTOCOLS = ("holdout", "kfold")


@dataclass(frozen=True)
class Split:
    """Indices into the training set: fit on ``fit``, watch ``val``, predict ``oof``."""

    fit: np.ndarray
    val: np.ndarray
    oof: np.ndarray


def minimum_per_class(protocol: str, holdout_fraction: float, validation_fraction: float, folds: int) -> int:
    """The fewest images a class may have for the protocol's stratified splits."""
    predicted_share = holdout_fraction if protocol == "holdout" else 1 / folds
    # Two rows per class in the predicted part (the meta-learner cross-validates on them)
    # and two in the training part (its stratified inner validation split needs them).
    need_oof = math.ceil(2 / predicted_share)
    need_train = math.ceil(2 / (1 - predicted_share))
    return max(need_oof, need_train, folds if protocol == "kfold" else 2)


def check_class_counts(labels: np.ndarray, classes: list[str], need: int, what: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    short = [(classes[i], int(c)) for i, c in enumerate(counts) if c < need]
    if short:
        name, count = min(short, key=lambda s: s[1])
        raise UserError(f"class {name!r} has {count} image(s); {what} needs at least {need} per class")


def make_splits(
    labels: np.ndarray,
    protocol: str = "holdout",
    holdout_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    folds: int = 5,
    seed: int = 0,
) -> list[Split]:
    """The protocol's splits; the same for every base model of a fit."""
    index = np.arange(len(labels))
    if protocol == "holdout":
        train, oof = train_test_split(index, test_size=holdout_fraction, stratify=labels, random_state=seed)
        outer = [(np.sort(train), np.sort(oof))]
    elif protocol == "kfold":
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        outer = list(splitter.split(index, labels))
    else:
        raise UserError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    splits = []
    for train, oof in outer:
        n_val, n_classes = math.ceil(validation_fraction * len(train)), len(np.unique(labels))
        if n_val < n_classes:
            raise UserError(
                f"validation_fraction {validation_fraction}: {n_val} validation images for {n_classes} classes; "
                "raise it or add images"
            )
        fit, val = train_test_split(
            train, test_size=validation_fraction, stratify=labels[train], random_state=seed
        )
        splits.append(Split(np.sort(fit), np.sort(val), np.sort(oof)))
    return splits
