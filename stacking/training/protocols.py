"""Out-of-fold protocols: which images each base model trains on and which it predicts.

``holdout``: one stratified split; base models train on the rest and predict the
held-out part, which alone feeds the meta-learner. ``kfold``: K stratified folds;
each fold's models train on the other folds and predict it, so every image gets an
out-of-fold prediction. With groups (e.g. several photos of one object), every
split keeps a group on one side, so no near-duplicate of a predicted image was
trained on. In both protocols, early stopping and checkpoint choice watch an inner
validation split carved from the training part, never the predicted rows.

The outer assignment is one array, ``fold[i]`` = the fold that predicts image i
(-1: never predicted, the training part of ``holdout``), hashed with the image ids
so every base model's OOF rows can be checked to come from the same assignment.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from stacking.choices import PROTOCOL, Protocol
from stacking.errors import UserError


@dataclass(frozen=True)
class Split:
    """Indices into the training set: fit on ``fit``, watch ``val``, predict ``oof``."""

    fit: np.ndarray
    val: np.ndarray
    oof: np.ndarray


def minimum_per_class(protocol: str, holdout_fraction: float, validation_fraction: float, folds: int) -> int:
    """The fewest images a class may have for the protocol's stratified splits."""
    predicted_share = holdout_fraction if protocol == Protocol.HOLDOUT else 1 / folds
    # Two rows per class in the predicted part (the meta-learner cross-validates on them)
    # and two in the training part (its stratified inner validation split needs them).
    need_oof = math.ceil(2 / predicted_share)
    need_train = math.ceil(2 / (1 - predicted_share))
    return max(need_oof, need_train, folds if protocol == Protocol.KFOLD else 2)


def check_class_counts(labels: np.ndarray, classes: list[str], need: int, what: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    short = [(classes[i], int(c)) for i, c in enumerate(counts) if c < need]
    if short:
        name, count = min(short, key=lambda s: s[1])
        raise UserError(f"class {name!r} has {count} image(s); {what} needs at least {need} per class")


def _partition(
    index: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (and, with groups, grouped) K-fold over ``index``: [(rest, part)], indices into ``index``'s values."""
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(index, labels[index])
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(index, labels[index], groups[index])
    return [(index[rest], index[part]) for rest, part in parts]


def _carve(
    index: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (rest, part) with about ``fraction`` in ``part``, stratified, groups kept whole."""
    if groups is None:
        rest, part = train_test_split(index, test_size=fraction, stratify=labels[index], random_state=seed)
        return rest, part
    n_splits = max(2, round(1 / fraction))
    if len(np.unique(groups[index])) < n_splits:
        raise UserError(f"--group-column: {len(np.unique(groups[index]))} groups cannot be split {n_splits} ways")
    return _partition(index, labels, groups, n_splits, seed)[0]


def _check_every_class(labels: np.ndarray, part: np.ndarray, classes: list[str], what: str) -> None:
    missing = sorted(set(range(len(classes))) - set(labels[part].tolist()))
    if missing:
        raise UserError(
            f"class {classes[missing[0]]!r} has no image in {what}; it is too small (or its groups too few) "
            "for this split: add images, or lower --folds / raise the fraction"
        )


def make_splits(
    labels: np.ndarray,
    protocol: str = "holdout",
    holdout_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    folds: int = 5,
    seed: int = 0,
    groups: np.ndarray | None = None,
    classes: list[str] | None = None,
) -> list[Split]:
    """The protocol's splits; the same for every base model of a fit.

    Every predicted part and every inner validation split holds every class, or a
    UserError names the class that is too small.
    """
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    index = np.arange(len(labels))
    if protocol == Protocol.HOLDOUT:
        train, oof = _carve(index, labels, groups, holdout_fraction, seed)
        outer = [(train, oof)]
    elif protocol == Protocol.KFOLD:
        if groups is not None and len(np.unique(groups)) < folds:
            raise UserError(f"--folds {folds}: only {len(np.unique(groups))} groups to spread over the folds")
        outer = _partition(index, labels, groups, folds, seed)
    else:
        PROTOCOL.check(protocol)
    splits = []
    for k, (train, oof) in enumerate(outer):
        n_val, n_classes = math.ceil(validation_fraction * len(train)), len(np.unique(labels))
        if n_val < n_classes:
            raise UserError(
                f"validation_fraction {validation_fraction}: {n_val} validation images for {n_classes} classes; "
                "raise it or add images"
            )
        where = "the held-out part" if protocol == Protocol.HOLDOUT else f"fold {k}"
        _check_every_class(labels, oof, classes, where)
        fit, val = _carve(train, labels, groups, validation_fraction, seed)
        _check_every_class(labels, val, classes, f"the inner validation split of {where}")
        splits.append(Split(np.sort(fit), np.sort(val), np.sort(oof)))
    return splits


def labelled_split(
    labels: np.ndarray, per_class: int, validation_fraction: float, seed: int, classes: list[str]
) -> Split:
    """``per_class`` labelled images of each class (drawn with ``seed``; an inner validation split among them), the
    rest held out: how a study measures what a few labels per class give."""
    if per_class < 2:
        raise UserError(f"--labelled-per-class {per_class}: needs at least 2 (one to train on, one to validate)")
    check_class_counts(labels, classes, per_class + 1, f"--labelled-per-class {per_class} (and one held out)")
    rng = np.random.default_rng(seed)
    labelled = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(classes))])
    )
    held_out = np.setdiff1d(np.arange(len(labels)), labelled)
    if math.ceil(validation_fraction * len(labelled)) < len(classes):
        raise UserError(
            f"validation_fraction {validation_fraction}: fewer validation images than the {len(classes)} classes "
            f"among {len(labelled)} labelled ones; raise it or --labelled-per-class"
        )
    fit, val = _carve(labelled, labels, None, validation_fraction, seed)
    return Split(np.sort(fit), np.sort(val), held_out)


def refit_split(labels: np.ndarray, validation_fraction: float, seed: int, groups: np.ndarray | None = None) -> Split:
    """``--final refit``: train on every image but an inner validation split that drives the callbacks."""
    fit, val = _carve(np.arange(len(labels)), labels, groups, validation_fraction, seed)
    return Split(np.sort(fit), np.sort(val), np.array([], dtype=np.int64))


def fold_assignment(splits: list[Split], n_images: int) -> np.ndarray:
    """``fold[i]``: the split that predicts image i, -1 where none does."""
    fold = np.full(n_images, -1, dtype=np.int64)
    for k, split in enumerate(splits):
        fold[split.oof] = k
    return fold


def fold_hash(ids: list[str], fold: np.ndarray) -> str:
    """The identity of a fold assignment: sha256 of each image id with its fold."""
    digest = hashlib.sha256()
    for image_id, k in zip(ids, fold.tolist(), strict=True):
        digest.update(f"{image_id}\t{k}\n".encode())
    return digest.hexdigest()
