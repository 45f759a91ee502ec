"""Leakage guards: an overfitting base model and shuffled labels, through real fits.

A meta-learner fitted on predictions of images the base models trained on would
trust a memoriser (100% right in-sample) and find signal in shuffled labels. On
out-of-fold rows neither happens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from stacking.bundle import Trust, load_manifest, load_oof, load_student_targets
from stacking.choices import TeachingMethod
from stacking.data.datasets import load_pixels, read_class_folders, read_training_set
from stacking.inference.predictor import Predictor
from stacking.reporting.evaluate import evaluate_folder
from stacking.training.config import load_config
from stacking.training.distill import Teaching, distill
from stacking.training.fit import fit

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

MEMORISER = "tests.memoriser:build"
TRUSTED = Trust(custom_code=True)  # our own test architectures
GUARD_FIT = {
    "models": ("tiny_cnn", MEMORISER),
    "image_size": 16,
    "epochs": 12,
    "protocol": "holdout",
    "holdout_fraction": 0.25,
    "tta_policy": "none",
    "tta_views": 1,
    "seed": 0,
}
NO_AUGMENTATION = "[augmentation]\nflip = false\nshift = 0.0\nzoom = 0.0\n"


def guarded_fit(data: Path, out: Path, tmp_path: Path) -> dict:
    config = tmp_path / "guard.toml"
    config.write_text(NO_AUGMENTATION)  # nothing keeps the memoriser from memorising
    return fit(data, out, load_config(config, GUARD_FIT), echo=lambda _: None)


def in_sample_accuracy(bundle: Path, data: Path) -> float:
    """The memoriser's accuracy on the images it trained on (fold -1 in folds.csv)."""
    folds = pd.read_csv(bundle / "folds.csv")
    images = read_training_set(data)
    trained = images.subset(np.flatnonzero(folds["fold"].to_numpy() == -1))
    _, decoded, _ = load_pixels(trained, [16])
    pixels = np.asarray(decoded.at(16))
    model = keras.models.load_model(bundle / "base" / "tests.memoriser.build" / "model.keras", compile=False)
    return float((model.predict(pixels, verbose=0).argmax(axis=1) == trained.labels).mean())


@pytest.fixture(scope="module")
def memoriser_bundle(digits_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("guard")
    guarded_fit(digits_dir, tmp / "bundle", tmp)
    return tmp / "bundle"


def test_an_overfitting_model_is_judged_on_images_it_never_saw(memoriser_bundle, digits_dir):
    manifest = load_manifest(memoriser_bundle)
    oof = manifest.metrics.oof["tests.memoriser.build"].accuracy
    rows, _, _ = evaluate_folder(
        Predictor(memoriser_bundle, trust=TRUSTED), digits_dir / "test", digits_dir / "test_labels.csv"
    )
    test = {r["name"]: r["accuracy"] for r in rows}
    memorised = in_sample_accuracy(memoriser_bundle, digits_dir)
    assert memorised >= 0.95  # it did memorise its training images
    assert oof <= memorised - 0.2  # but its OOF rows show what it is worth
    assert abs(oof - test["tests.memoriser.build"]) <= 0.15  # as much as on unseen test images


def test_the_meta_learner_does_not_trust_the_memoriser(memoriser_bundle, digits_dir):
    selection = load_manifest(memoriser_bundle).meta_learner.selection
    board = {row.name: row for row in selection.leaderboard}
    chosen_weights = board[selection.kind].model_weights  # order: tiny_cnn, memoriser
    assert chosen_weights[1] < chosen_weights[0], selection
    assert board["weighted"].model_weights[1] < 0.5
    rows, _, _ = evaluate_folder(
        Predictor(memoriser_bundle, trust=TRUSTED), digits_dir / "test", digits_dir / "test_labels.csv"
    )
    test = {r["name"]: r["accuracy"] for r in rows}
    stack = next(r["accuracy"] for r in rows if r["kind"] == "chosen")
    assert stack > test["tests.memoriser.build"] + 0.1
    assert stack >= test["tiny_cnn"] - 0.05


def test_shuffled_labels_score_at_chance(digits_dir, tmp_path):
    images = read_class_folders(digits_dir / "train")
    shuffled = np.random.default_rng(0).permutation(images.labels)
    data = tmp_path / "shuffled"
    for path, label in zip(images.paths, shuffled):
        (data / "train" / images.classes[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / "train" / images.classes[label] / path.name)
    manifest = guarded_fit(data, tmp_path / "bundle", tmp_path)
    chance, n_oof = 1 / len(images.classes), manifest.metrics.oof_rows
    ceiling = chance + 3 * np.sqrt(chance * (1 - chance) / n_oof)  # three standard errors above chance
    assert in_sample_accuracy(tmp_path / "bundle", data) >= 0.9  # the memoriser learnt the noise by heart
    for name, scores in manifest.metrics.oof.items():
        assert scores.accuracy <= ceiling, (name, scores)
    for row in manifest.meta_learner.selection.leaderboard:
        assert row.accuracy <= ceiling, row
    rows, count, _ = evaluate_folder(
        Predictor(tmp_path / "bundle", trust=TRUSTED), digits_dir / "test", digits_dir / "test_labels.csv"
    )
    stack = next(r for r in rows if r["kind"] == "chosen")
    assert stack["accuracy"] <= chance + 3 * np.sqrt(chance * (1 - chance) / count)
    # A student learns from the stack's answers on images no base model trained on: at chance here too, where
    # answers on the memorised images would agree with these labels nine times in ten. Both ways of teaching; the
    # consistent one unblended, so that (without augmentation here) its pictures are the images themselves.
    oof = load_oof(tmp_path / "bundle")
    label_of = dict(zip(oof["ids"].tolist(), oof["labels"].tolist()))
    for teaching in (Teaching(copies=2, mixup=0.0), Teaching(TeachingMethod.FIXED)):
        distill(tmp_path / "bundle", "tiny_cnn", epochs=1, trust=TRUSTED, echo=lambda _: None, teaching=teaching)
        targets = load_student_targets(tmp_path / "bundle")
        agree = targets["probabilities"].argmax(axis=1) == np.array([label_of[i] for i in targets["ids"].tolist()])
        assert set(targets["source"]) == {"oof"} and agree.mean() <= chance + 3 * np.sqrt(
            chance * (1 - chance) / len(agree)
        ), teaching
