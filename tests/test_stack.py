"""The meta step on a fitted bundle: fold-hash guard, ``stacking meta``, OOF rows merged as served."""

from __future__ import annotations

import numpy as np
import pytest

from app.cli import main
from stacking import bundle as bundle_io
from stacking.data.datasets import load_pixels, read_training_set
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.predictor import Predictor
from stacking.meta.learners import meta_features
from stacking.training.meta_step import MetaSettings, fit_meta


def test_oof_arrays_from_different_fold_assignments_are_refused(bundle_copy):
    oof = bundle_io.load_oof(bundle_copy)
    expected = bundle_io.load_manifest(bundle_copy).protocol.fold_hash
    oof["fold_hashes"] = np.array([expected, "0" * 64])
    with pytest.raises(UserError, match="OOF predictions of 'mini_mobilenet' come from fold assignment 000000000000"):
        fit_meta(bundle_copy, oof, MetaSettings(), expected)


def test_meta_command_refits_only_the_meta_learner(bundle_copy, capsys):
    before = bundle_io.load_manifest(bundle_copy)
    assert main(["meta", str(bundle_copy), "--meta", "rf", "--calibration", "temperature"]) == 0
    assert "meta-learner: rf (asked for with --meta rf); temperature" in capsys.readouterr().out
    after = bundle_io.load_manifest(bundle_copy, verify=True)  # every sha256 rewritten and valid
    selection = after.meta_learner.selection
    assert after.meta_learner.kind == "rf" and selection.calibration.temperature > 0
    assert after.config["meta"] == "rf" and after.config["calibration"] == "temperature"
    for name in [f for f in before.files if f.startswith(("base/", "history/")) or f == bundle_io.OOF_FILE]:
        assert after.files[name] == before.files[name]  # no CNN was retrained
    predictor = Predictor(bundle_copy)
    pixels = Pixels({16: np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)})
    prediction = predictor.predict(pixels)
    raw = predictor.meta_answer(predictor.candidates()["rf"], prediction.features)
    assert (prediction.probabilities.argmax(axis=1) == raw.argmax(axis=1)).all()
    assert not np.allclose(prediction.probabilities, raw)  # the temperature is applied when serving


def test_tta_features_reach_the_meta_learner_when_serving(bundle_copy):
    assert main(["meta", str(bundle_copy), "--meta", "logreg", "--tta-features"]) == 0
    predictor = Predictor(bundle_copy)
    n_models, n_classes = len(predictor.base_names), len(predictor.classes)
    assert predictor.meta.n_features_in_ == n_models * n_classes + 2 * n_models
    pixels = Pixels({16: np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)})
    prediction = predictor.predict(pixels)
    assert prediction.features.shape == (1, 4, predictor.meta.n_features_in_)  # one fold: a holdout bundle
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1, rtol=1e-6)


def test_bad_meta_options_are_named(bundle_copy, capsys):
    assert main(["meta", str(bundle_copy), "--meta", "svm"]) == 2
    assert "--meta 'svm'" in capsys.readouterr().err
    assert main(["meta", str(bundle_copy), "--meta-criterion", "auc"]) == 2
    assert "--meta-criterion 'auc'" in capsys.readouterr().err


def test_oof_rows_are_merged_over_tta_exactly_as_served(tiny_bundle, digits_dir):
    """The meta-learner's training rows equal what the served holdout models say about those images."""
    oof = bundle_io.load_oof(tiny_bundle)
    images = read_training_set(digits_dir)
    by_id = {image_id: i for i, image_id in enumerate(images.ids)}
    rows = images.subset([by_id[str(i)] for i in oof["ids"][:40]])
    _, pixels, _ = load_pixels(rows, [16])
    prediction = Predictor(tiny_bundle).predict(pixels)
    np.testing.assert_allclose(prediction.base_probabilities, oof["probabilities"][:, :40], atol=1e-5)
    np.testing.assert_allclose(prediction.features[0], meta_features(oof["probabilities"][:, :40]), atol=1e-4)
    assert (oof["labels"][:40] == rows.labels).all()
