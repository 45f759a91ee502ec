"""OOF splits: predicted rows are never trained on, nor used to pick a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from stacking.errors import UserError
from stacking.training.protocols import (
    check_class_counts,
    fold_assignment,
    fold_hash,
    make_splits,
    minimum_per_class,
    refit_split,
)

LABELS = np.repeat(np.arange(4), 25)


def test_holdout_parts_are_disjoint_and_stratified():
    (split,) = make_splits(LABELS, "holdout", holdout_fraction=0.2, validation_fraction=0.1, seed=3)
    fit, val, oof = set(split.fit), set(split.val), set(split.oof)
    assert not fit & oof and not val & oof and not fit & val
    assert fit | val | oof == set(range(len(LABELS)))
    assert np.bincount(LABELS[split.oof]).tolist() == [5, 5, 5, 5]


def test_kfold_predicts_every_image_once():
    splits = make_splits(LABELS, "kfold", folds=5, seed=0)
    assert len(splits) == 5
    assert sorted(np.concatenate([s.oof for s in splits]).tolist()) == list(range(len(LABELS)))
    for s in splits:
        assert not set(s.oof) & (set(s.fit) | set(s.val))


def test_splits_are_deterministic():
    a = make_splits(LABELS, "holdout", seed=7)[0]
    b = make_splits(LABELS, "holdout", seed=7)[0]
    assert np.array_equal(a.oof, b.oof) and np.array_equal(a.val, b.val)


def test_too_few_images_per_class_names_the_class():
    labels = np.array([0] * 30 + [1] * 4)
    need = minimum_per_class("holdout", 0.2, 0.1, 5)
    with pytest.raises(UserError, match=r"class 'b' has 4 image\(s\).*at least"):
        check_class_counts(labels, ["a", "b"], need, "--protocol holdout")


GROUPS = np.repeat(np.arange(50), 2)  # two images per group; LABELS gives both the same class


@pytest.mark.parametrize("protocol", ["holdout", "kfold"])
def test_groups_stay_on_one_side_of_every_split(protocol):
    splits = make_splits(LABELS, protocol, folds=4, seed=1, groups=GROUPS)
    for s in splits:
        parts = [set(GROUPS[s.fit]), set(GROUPS[s.val]), set(GROUPS[s.oof])]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    if protocol == "kfold":
        assert sorted(np.concatenate([s.oof for s in splits]).tolist()) == list(range(len(LABELS)))


def test_a_class_missing_from_a_fold_is_named():
    # Class 'd' lives in one group only: grouped folds cannot spread it over every fold.
    labels = np.concatenate([LABELS[:75], np.full(25, 3)])
    groups = np.concatenate([GROUPS[:75], np.full(25, 999)])
    with pytest.raises(UserError, match=r"class 'd' has no image in .*fold \d.*too small"):
        make_splits(labels, "kfold", folds=3, seed=0, groups=groups, classes=["a", "b", "c", "d"])


def test_refit_split_trains_on_all_but_the_watched_images():
    split = refit_split(LABELS, 0.1, seed=0)
    assert len(split.oof) == 0 and not set(split.fit) & set(split.val)
    assert set(split.fit) | set(split.val) == set(range(len(LABELS)))


def test_fold_hash_identifies_the_assignment():
    ids = [f"{i}.png" for i in range(len(LABELS))]
    splits = make_splits(LABELS, "kfold", folds=5, seed=0)
    fold = fold_assignment(splits, len(LABELS))
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    assert fold_hash(ids, fold) == fold_hash(ids, fold_assignment(make_splits(LABELS, "kfold", folds=5, seed=0), 100))
    assert fold_hash(ids, fold) != fold_hash(ids, fold_assignment(make_splits(LABELS, "kfold", folds=5, seed=1), 100))
    holdout = fold_assignment(make_splits(LABELS, "holdout", seed=0), len(LABELS))
    assert (holdout == -1).sum() == 80 and (holdout == 0).sum() == 20
