"""A fit is reproducible: the same data, settings and seed give the same bundle contents."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from stacking.bundle import load_manifest, load_oof
from stacking.training.config import load_config
from stacking.training.fit import fit

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast


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
    assert_same_choice(tmp_path / "a", tmp_path / "b")


def assert_same_choice(a, b) -> None:
    sa, sb = (load_manifest(x).meta_learner.selection for x in (a, b))
    assert sa.kind == sb.kind
    for row_a, row_b in zip(sa.leaderboard, sb.leaderboard, strict=True):
        assert row_a.name == row_b.name
        for key, value in row_a.model_dump(exclude={"name", "family"}).items():  # forest trees may sum in any order
            assert value == pytest.approx(getattr(row_b, key), rel=1e-9), (row_a.name, key)


def test_kfold_same_seed_same_oof_arrays_and_choice(digits_dir, tmp_path):
    cfg = load_config(
        None,
        {
            "models": ("tiny_cnn",),
            "image_size": 16,
            "epochs": 1,
            "tta_views": 2,
            "protocol": "kfold",
            "folds": 3,
            "seed": 4,
            "runtime": "litert",  # auto picks a runtime by timing, and the OOF rows are its answers: pinned for bits
        },
    )
    manifests = [fit(digits_dir, tmp_path / name, cfg, echo=lambda _: None) for name in ("a", "b")]
    assert manifests[0].protocol.fold_hash == manifests[1].protocol.fold_hash
    a, b = load_oof(tmp_path / "a"), load_oof(tmp_path / "b")
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert_same_choice(tmp_path / "a", tmp_path / "b")


def test_refit_replaces_an_existing_bundle(digits_dir, tmp_path):
    out = tmp_path / "bundle"
    cfg = load_config(None, {"models": ("tiny_cnn",), "image_size": 16, "epochs": 1, "tta_views": 1})
    fit(digits_dir, out, cfg, echo=lambda _: None)
    (out / "stale.txt").write_text("from an old fit")
    fit(digits_dir, out, cfg, echo=lambda _: None)
    assert not (out / "stale.txt").exists()
    assert load_manifest(out).base_models[0].name == "tiny_cnn"
    assert not list(tmp_path.glob(".bundle.partial*"))  # no work folder left behind
