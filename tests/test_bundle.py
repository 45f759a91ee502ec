"""The bundle: complete, self-describing, verified on load, refused when altered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from stacking.bundle import BundleError, load_manifest, load_oof, sha256_file
from stacking.bundle.manifest import FORMAT_VERSION
from stacking.data.datasets import ImageSet, load_pixels, read_labels_csv
from stacking.data.digits import write_digits
from stacking.data.images import Pixels
from stacking.inference.predictor import Predictor
from stacking.meta.learners import META_KINDS
from tests.waiting import wait_loaded


def test_manifest_describes_the_bundle(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert manifest.format_version == FORMAT_VERSION == 4
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
    _, pixels, bad = load_pixels(ImageSet([files[i] for i in oof["ids"][:40]], predictor.classes), predictor.sizes)
    assert not bad
    pixels = pixels.loaded()
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
    views = predictor.views()
    forward = predictor.forward
    shapes = {images * len(v) for v in (views[:1], views[1:]) for images in forward.call_sizes(len(v))}
    assert {1, 2, 4, 64} <= set(forward.call_sizes(1))  # a short chunk pads to a power of two images
    for runner in predictor.forward.runners:
        assert runner.runtime == "litert" and set(runner._by_rows) >= shapes
    prepared = [set(runner._by_rows) for runner in predictor.forward.runners]
    predictor.predict(Pixels({16: np.random.default_rng(0).integers(0, 255, (9, 16, 16, 3), dtype=np.uint8)}))
    assert [set(runner._by_rows) for runner in predictor.forward.runners] == prepared  # nothing new made


FORMAT_3 = Path(__file__).parent / "data" / "format3"


def test_a_bundle_written_before_per_model_sizes_serves_the_same_bits(tmp_path):
    """A format 3 bundle (every model at the manifest's one size), made by the code before issue 27 (make.py there)."""
    manifest = load_manifest(FORMAT_3 / "bundle")
    assert manifest.format_version == 3 and manifest.sizes == [12] and manifest.base_models[0].image_size == 12
    expected = np.load(FORMAT_3 / "answers.npz")
    write_digits(tmp_path, limit=200)
    test = read_labels_csv(tmp_path / "test_labels.csv", tmp_path / "test", manifest.classes).subset(range(20))
    assert test.ids == expected["ids"].tolist()
    predictor = Predictor(FORMAT_3 / "bundle")
    _, pixels, _ = load_pixels(test, predictor.sizes)
    answer = predictor.predict(pixels)
    np.testing.assert_array_equal(answer.base_probabilities, expected["base"])  # the networks: the same bits
    # The meta-learner's float64 arithmetic goes through this CPU's BLAS kernels, which may round the last bit
    # differently from the machine that recorded the answers (seen: 3e-17 on an AMD EPYC).
    np.testing.assert_allclose(answer.probabilities, expected["probabilities"], rtol=1e-12, atol=0)
    with TestClient(create_app(Settings(bundle=str(FORMAT_3 / "bundle")))) as client:
        wait_loaded(client.app.state.serving.state)
        assert client.get("/v1/model").json()["image_sizes"] == [12]
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in test.paths[:3]]
        served = client.post("/v1/predict", files=files).json()["predictions"]
    got = np.array([[row["probabilities"][c] for c in manifest.classes] for row in served])
    np.testing.assert_array_equal(got, answer.probabilities[:3])  # served as predicted here, to the bit
