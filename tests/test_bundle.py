"""The bundle: complete, self-describing, verified on load, refused when altered."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stacking.bundle import BundleError, load_manifest, load_oof, sha256_file
from stacking.data.images import load_images
from stacking.inference.predictor import Predictor
from stacking.meta.learners import META_KINDS


def test_manifest_describes_the_bundle(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert manifest.format_version == 3
    assert manifest.classes == [str(d) for d in range(10)]
    assert [b.name for b in manifest.base_models] == ["tiny_cnn", "mini_mobilenet"]
    for entry in manifest.base_models:
        assert entry.preprocessing == "unit" and entry.weights is None
        for file in entry.files:
            assert manifest.files[file] == sha256_file(tiny_bundle / file)
        assert (tiny_bundle / entry.history).is_file()
    assert manifest.meta_learner.kind in META_KINDS
    for file in (
        "meta/meta.skops",
        "meta/candidates.skops",
        "folds.csv",
        "oof.npz",
        "stack_oof.npz",
        "tta_diagnostics.json",
    ):
        assert manifest.files[file] == sha256_file(tiny_bundle / file)
    assert not list(tiny_bundle.rglob("*.joblib")) and not list(tiny_bundle.rglob("*.pkl"))  # nothing pickled
    tta = manifest.tta
    assert (tta.policy, tta.views, tta.merge, tta.adaptive_views) == ("shift", 3, "mean", 0)
    diag = json.loads((tiny_bundle / "tta_diagnostics.json").read_text())
    assert tta.identity_weight == diag["identity_weight"]["chosen"]  # the tuned weight is what is served
    assert manifest.protocol.name == "holdout"
    assert manifest.custom_modules == []
    assert {"tensorflow", "keras", "scikit-learn"} <= set(manifest.versions)
    assert (tiny_bundle / "report" / "index.html").is_file()


def test_oof_rows_are_the_held_out_images_only(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    oof = load_oof(tiny_bundle)
    assert oof["probabilities"].shape == (2, manifest.metrics.oof_rows, 10)
    np.testing.assert_allclose(oof["probabilities"].sum(axis=2), 1.0, rtol=1e-4)
    assert len(set(oof["ids"].tolist())) == len(oof["ids"])
    # holdout: 20 % of the training images, never seen by a base model
    assert len(oof["ids"]) == round(manifest.data.images * 0.2)


def test_history_marks_the_best_epoch(tiny_bundle):
    history = json.loads((tiny_bundle / "history" / "tiny_cnn.json").read_text())
    (fold,) = history["folds"]
    assert fold["best"]["val_accuracy"] == max(fold["val_accuracy"])


def test_altered_file_is_refused(bundle_copy):
    model_file = bundle_copy / "base" / "tiny_cnn" / "model.keras"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"model\.keras: sha256 does not match"):
        Predictor(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "meta/meta.skops").unlink()
    with pytest.raises(BundleError, match=r"meta\.skops: listed in the manifest but missing"):
        load_manifest(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        Predictor(tmp_path)


def test_saved_models_reproduce_the_oof_predictions(tiny_bundle, digits_dir):
    """What is served is exactly what made the meta-learner's training rows."""
    predictor = Predictor(tiny_bundle)
    oof = load_oof(tiny_bundle)
    files = {p.name: p for p in (digits_dir / "train").rglob("*.png")}
    pixels, bad = load_images([files[i] for i in oof["ids"][:40]], predictor.image_size)
    assert not bad
    base = predictor.merged_views(pixels).merged
    np.testing.assert_allclose(base, oof["probabilities"][:, :40], atol=1e-5)
    result = predictor.predict(pixels)
    assert (result.views == 3).all() and result.probabilities.shape == (40, 10)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all((result.agreement >= 0) & (result.agreement <= 1))


def test_warm_up_prepares_every_call_shape_of_adaptive_tta(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["tta"]["adaptive_views"] = 1
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))  # the manifest is not self-hashed
    predictor = Predictor(bundle_copy)
    predictor.warm_up()
    views = predictor.tta.view_list(predictor.image_size)
    forward = predictor.forward
    shapes = {images * len(v) for v in (views[:1], views[1:]) for images in forward.call_sizes(len(v))}
    assert {1, 2, 4, 64} <= set(forward.call_sizes(1))  # a short chunk pads to a power of two images
    for runner in predictor.forward.runners:
        assert runner.runtime == "litert" and set(runner._by_rows) >= shapes
    prepared = [set(runner._by_rows) for runner in predictor.forward.runners]
    predictor.predict(np.random.default_rng(0).integers(0, 255, (9, 16, 16, 3), dtype=np.uint8))
    assert [set(runner._by_rows) for runner in predictor.forward.runners] == prepared  # nothing new made
