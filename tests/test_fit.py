"""A fit is reproducible: the same data, settings and seed give the same bundle contents."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from stacking.bundle import load_manifest, load_oof
from stacking.config import load_config
from stacking.fit import fit


def test_same_seed_same_weights_and_out_of_fold_predictions(digits_dir, tmp_path):
    cfg = load_config(None, {"models": ("tiny_cnn",), "image_size": 16, "epochs": 2, "tta_views": 2, "seed": 3})
    for name in ("a", "b"):
        fit(digits_dir, tmp_path / name, cfg, echo=lambda _: None)
    weights = [keras.models.load_model(tmp_path / n / "base" / "tiny_cnn" / "model.keras").get_weights() for n in "ab"]
    for wa, wb in zip(*weights):
        np.testing.assert_array_equal(wa, wb)  # the same trained weights, bit for bit
    a, b = load_oof(tmp_path / "a"), load_oof(tmp_path / "b")
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    ma, mb = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    sa, sb = ma["meta_learner"]["selection"], mb["meta_learner"]["selection"]
    assert sa["kind"] == sb["kind"]
    for kind, scores in sa["leaderboard"].items():  # random-forest trees may sum in another order
        assert scores == pytest.approx(sb["leaderboard"][kind], rel=1e-12)


def test_refit_replaces_an_existing_bundle(digits_dir, tmp_path):
    out = tmp_path / "bundle"
    cfg = load_config(None, {"models": ("tiny_cnn",), "image_size": 16, "epochs": 1, "tta_views": 1})
    fit(digits_dir, out, cfg, echo=lambda _: None)
    (out / "stale.txt").write_text("from an old fit")
    fit(digits_dir, out, cfg, echo=lambda _: None)
    assert not (out / "stale.txt").exists()
    assert load_manifest(out)["base_models"][0]["name"] == "tiny_cnn"
    assert not list(tmp_path.glob(".bundle.partial-*"))  # no work folder left behind
