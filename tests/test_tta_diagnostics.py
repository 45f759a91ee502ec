"""TTA diagnostics: the numbers follow from the per-view predictions, and the pictures are drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stacking.bundle import TTA_DIAGNOSTICS, load_manifest
from stacking.inference.tta import TTAPolicy
from stacking.inference.tta_diagnostics import tta_diagnostics, tune_and_measure

LABELS = np.array([0, 1, 0, 1])


def one_hot(classes: list[int], p: float = 0.9) -> np.ndarray:
    out = np.full((len(classes), 2), 1 - p)
    out[np.arange(len(classes)), classes] = p
    return out


def test_fixed_broken_table_and_curve():
    # Identity gets images 0 and 1 wrong... views 1 and 2 get them right but break image 3.
    views = np.stack([one_hot([1, 0, 0, 1]), one_hot([0, 1, 0, 0]), one_hot([0, 1, 0, 0])])
    diag = tta_diagnostics(views[None], LABELS, ["m"], 3, TTAPolicy())
    assert diag["fixed_broken"]["m"] == {"fixed": 2, "broken": 1}
    assert diag["accuracy_by_views"]["m"] == [0.5, 0.5, 0.75]  # mean of the first k views
    table = diag["table"]["m"]
    assert list(table) == ["none", "one view", "3 views (served)", "3 views"]
    assert table["none"]["accuracy"] == 0.5 and table["one view"]["accuracy"] == 0.75
    assert diag["table"]["ensemble"] == table  # one model: the ensemble is that model
    assert np.array(diag["heatmap"]["predicted"]).shape == (3, 4)
    assert sorted(diag["heatmap"]["labels"]) == diag["heatmap"]["labels"]  # grouped by true class


def test_ensemble_is_the_mean_of_models():
    a = np.stack([one_hot([0, 0, 0, 0], 0.6)])
    b = np.stack([one_hot([1, 1, 1, 1], 0.9)])
    diag = tta_diagnostics(np.stack([a, b]), LABELS, ["a", "b"], 1, TTAPolicy())
    assert diag["accuracy_by_views"]["ensemble"] == [0.5]
    assert set(diag["table"]) == {"a", "b", "ensemble"}


def test_every_bundle_has_diagnostics_and_their_pictures(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert TTA_DIAGNOSTICS in manifest.files
    diag = json.loads((tiny_bundle / TTA_DIAGNOSTICS).read_text())
    assert diag["served_views"] == 3 and diag["views"] == 9  # shift policy: 9 views measured, 3 served
    assert diag["rows"] == manifest.metrics.oof_rows
    page = (tiny_bundle / "report" / "index.html").read_text()
    for picture in ("tta_curve.png", "tta_heatmap.png"):
        assert picture in page
        with Image.open(tiny_bundle / "report" / picture) as img:
            gray = np.asarray(img.convert("L"), dtype=float)
        assert gray.std() > 10 and (gray < 200).mean() > 0.02  # drawn, not blank


def test_tune_adaptive_finds_the_smallest_safe_margin():
    from stacking.inference.tta_diagnostics import tune_adaptive

    # Image 0: confident and right from the first view. Image 1: first view narrowly wrong,
    # later views right. Adaptive TTA must send image 1 (margin 0.1) for more views.
    per_view = np.array(
        [
            [
                [[0.95, 0.05], [0.55, 0.45]],
                [[0.95, 0.05], [0.1, 0.9]],
                [[0.95, 0.05], [0.1, 0.9]],
            ]
        ]
    )
    labels = np.array([0, 1])
    tuned = tune_adaptive(per_view, labels, 3, TTAPolicy("shift", views=3, adaptive_views=1))
    assert tuned["full_accuracy"] == 1.0 and tuned["accuracy"] == 1.0
    assert tuned["margin"] == pytest.approx(0.15)  # the first grid step above image 1's margin of 0.1
    assert tuned["share_extra"] == 0.5
    assert tuned["passes_saved"] == pytest.approx(1 - (1 + 0.5 * 2) / 3)


def test_identity_weight_is_tuned_to_the_lowest_log_loss():
    # The identity view is right and sure, the other view is wrong: weighting the identity up helps.
    per_view = np.stack([one_hot([0, 1, 0, 1], 0.9), one_hot([1, 0, 1, 0], 0.6)])[None]
    policy, diag = tune_and_measure(per_view, LABELS, ["m"], 2, TTAPolicy())
    assert policy.identity_weight == 5.0 == diag["identity_weight"]["chosen"]
    losses = diag["identity_weight"]["log_loss_by_weight"]
    assert losses["5.0"] == min(losses.values())


def test_diagnostics_use_a_fixed_bounded_sample_of_rows():
    from stacking.inference.tta_diagnostics import ROWS_CAP, diagnostic_rows

    rows = np.arange(ROWS_CAP + 1000) * 2
    sample = diagnostic_rows(rows, seed=1)
    assert len(sample) == ROWS_CAP and np.all(np.diff(sample) > 0) and set(sample) <= set(rows)
    np.testing.assert_array_equal(sample, diagnostic_rows(rows, seed=1))
    np.testing.assert_array_equal(diagnostic_rows(rows[:10][::-1], seed=1), np.sort(rows[:10]))
