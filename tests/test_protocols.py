"""OOF splits: predicted rows are never trained on, nor used to pick a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from stacking.errors import UserError
from stacking.protocols import check_class_counts, make_splits, minimum_per_class

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
