"""Consistent teaching: the stack answers the very pictures the student sees, from models that never saw them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from app.cli import main
from stacking import bundle as bundle_io
from stacking.bundle import load_manifest, write_manifest
from stacking.data.cache import PixelCache
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.predictor import Predictor
from stacking.meta.learners import full_probabilities, meta_features
from stacking.training.config import load_config
from stacking.training.distill import Teaching, distill, oof_pixels
from stacking.training.fit import fit
from stacking.training.teaching import SERVED, Teacher, build_pool, draw_plan
from tests.conftest import TINY_FIT

pytestmark = pytest.mark.slow  # fits: left out by make test-fast

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def kfold_bundle(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kfold") / "bundle"
    settings = {**TINY_FIT, "models": ("tiny_cnn",), "protocol": "kfold", "folds": 2, "epochs": 2}
    fit(digits_dir, out, load_config(None, settings), echo=QUIET)
    return out


def taught_pixels(bundle: Path, sizes: list[int]) -> tuple[Pixels, dict[str, np.ndarray]]:
    """Every OOF row's image at ``sizes``, and the OOF arrays."""
    manifest, oof = load_manifest(bundle), bundle_io.load_oof(bundle)
    return oof_pixels(manifest, oof["ids"], None, sizes, PixelCache(), QUIET), oof


def test_a_plain_picture_of_a_row_is_answered_by_its_own_fold_models(kfold_bundle, tmp_path):
    """One copy, no geometry, no blend: each picture is its image, and the stack's answer on it is the meta-learner
    on that row's OOF answers, which only the fold models that never trained on it gave. Another fold's models
    (which trained on it) would answer otherwise."""
    manifest = load_manifest(kfold_bundle)
    pixels, oof = taught_pixels(kfold_bundle, [16])
    groups = oof["folds"].astype(int)
    assert sorted(set(groups)) == [0, 1]
    plan = draw_plan(groups, 1, flip=False, shift=0.0, zoom=0.0, mixup=0.0, seed=0)
    pool = build_pool(Teacher(kfold_bundle, manifest, bundle_io.Trust()), pixels, groups, plan, 16, tmp_path, QUIET)
    np.testing.assert_array_equal(pool.pixels, np.asarray(pixels.at(16)))
    meta = bundle_io.load_meta(kfold_bundle, manifest)
    from_oof = full_probabilities(meta, meta_features(oof["probabilities"]), 10)
    np.testing.assert_allclose(pool.targets, from_oof, atol=2e-5)
    assert pool.teacher_passes == int(oof["views_used"].sum())  # one base model, the served views


def test_blends_stay_within_a_fold_and_unlabelled_images_among_themselves():
    groups = np.array([0, 0, 1, 1, 1, 2, 2, SERVED, SERVED])
    plan = draw_plan(groups, 20, flip=True, shift=0.1, zoom=0.1, mixup=1.0, seed=3)
    assert len(plan) == 180 and np.array_equal(np.bincount(plan.rows), np.full(9, 20))
    assert np.array_equal(groups[plan.partners], groups[plan.rows])
    assert (plan.share >= 0.5).all() and (plan.share < 1).any() and (plan.partners != plan.rows).any()
    assert plan.flip.any() and (np.abs(plan.shift) <= 0.1).all() and (plan.zoom >= 1).all()
    still = draw_plan(groups, 2, flip=False, shift=0.0, zoom=0.0, mixup=0.0, seed=3)
    assert np.array_equal(still.partners, still.rows) and (still.share == 1).all() and not still.flip.any()


def test_targets_are_the_served_stacks_answers_on_the_students_pixels(tiny_bundle, tmp_path):
    """Augmented and blended pictures at the student's size (the base models' here): the stack as it serves,
    through the predictor, gives on those very pixels the answers the student is taught."""
    manifest = load_manifest(tiny_bundle)
    pixels, oof = taught_pixels(tiny_bundle, [16])
    groups = np.zeros(len(oof["ids"]), int)  # holdout: every OOF row was held out from every base model
    plan = draw_plan(groups, 2, flip=False, shift=0.15, zoom=0.2, mixup=1.0, seed=1)
    pool = build_pool(Teacher(tiny_bundle, manifest, bundle_io.Trust()), pixels, groups, plan, 16, tmp_path, QUIET)
    plain = np.asarray(pixels.at(16))[plan.rows]
    assert (pool.pixels != plain).any(axis=(1, 2, 3)).mean() > 0.9  # the pictures are not the plain images
    served = Predictor(tiny_bundle).predict(Pixels({16: np.asarray(pool.pixels)})).probabilities
    np.testing.assert_allclose(pool.targets, served, atol=1e-5)


def test_distill_teaches_consistently_by_default_and_records_the_cost(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    lines: list[str] = []
    manifest = distill(bundle, "tiny_cnn", epochs=2, echo=lines.append, teaching=Teaching(copies=3))
    teaching = manifest.serving.student.teaching
    taught = manifest.serving.student.targets.oof_rows
    assert (teaching.method, teaching.copies, teaching.pictures) == ("consistent", 3, 3 * taught)
    assert teaching.teacher_passes > 0 and teaching.teacher_seconds > 0 and teaching.student_seconds > 0
    assert any(line.startswith(f"teacher: {3 * taught} pictures answered by the stack") for line in lines)
    targets = bundle_io.load_student_targets(bundle)
    oof_ids = set(bundle_io.load_oof(bundle)["ids"].tolist())
    assert set(targets["ids"].tolist()) <= oof_ids and set(targets["partners"].tolist()) <= oof_ids
    assert len(targets["probabilities"]) == 3 * taught and (targets["share"] < 1).any()
    history = bundle_io.load_history(bundle, manifest.serving.student)[0]
    assert "val_log_loss" in history  # the best epoch is picked by held-out log-loss
    assert history["best_epoch"] == int(np.argmin(history["val_log_loss"]))


def test_fixed_teaching_stays_for_comparison(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["distill", str(bundle), "--student", "tiny_cnn", "--epochs", "1", "--teaching", "fixed"]) == 0
    teaching = load_manifest(bundle).serving.student.teaching
    assert (teaching.method, teaching.copies, teaching.teacher_passes) == ("fixed", 1, 0)
    assert main(["distill", str(bundle), "--student", "tiny_cnn", "--teaching", "loud"]) == 2
    assert "--teaching 'loud': expected one of consistent, fixed" in capsys.readouterr().err
    assert main(["distill", str(bundle), "--student", "tiny_cnn", "--copies", "0"]) == 2
    assert "--copies 0" in capsys.readouterr().err
    assert main(["distill", str(bundle), "--student", str(tmp_path / "none.toml")]) == 2
    assert f"--student {tmp_path / 'none.toml'}: no such file" in capsys.readouterr().err
    assert main(["distill", str(bundle), "--student", "tiny_cnn@x"]) == 2
    assert "--student: 'tiny_cnn@x': expected ARCH or ARCH@SIZE" in capsys.readouterr().err


def test_the_student_can_be_a_base_models_own_recipe(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    toml = tmp_path / "student.toml"
    toml.write_text('[[model]]\narchitecture = "mini_mobilenet"\nimage_size = 20\n[model.train]\nepochs = 1\n')
    manifest = distill(bundle, str(toml), echo=QUIET, teaching=Teaching(copies=1))
    student = manifest.serving.student
    assert (student.architecture, student.image_size) == ("mini_mobilenet", 20)
    assert len(bundle_io.load_history(bundle, student)[0]["loss"]) == 1  # the table's own recipe
    manifest = distill(bundle, "tiny_cnn", epochs=1, echo=QUIET, teaching=Teaching(copies=1))
    assert (manifest.serving.student.architecture, manifest.serving.student.image_size) == ("tiny_cnn", 16)


def test_a_refit_bundle_cannot_teach_consistently(bundle_copy):
    manifest = load_manifest(bundle_copy)
    refit = manifest.protocol.model_copy(update={"final_models": "refit"})
    write_manifest(bundle_copy, manifest.model_copy(update={"protocol": refit}))
    with pytest.raises(UserError, match=r"--final refit.*--teaching fixed"):
        distill(bundle_copy, "tiny_cnn", epochs=1, echo=QUIET)


def test_the_tempered_loss_softens_both_sides_and_keeps_the_gradient_scale():
    from models.training import TemperedCrossEntropy

    target = np.array([[0.7, 0.2, 0.1]], np.float32)
    answer = np.array([[0.5, 0.3, 0.2]], np.float32)
    plain = float(keras.losses.CategoricalCrossentropy()(target, answer))
    assert float(TemperedCrossEntropy(1.0)(target, answer)) == pytest.approx(plain, rel=1e-5)

    def soften(p, t):
        q = np.exp(np.log(p) / t)
        return q / q.sum()

    t = 3.0
    expected = t * t * -(soften(target[0], t) * np.log(soften(answer[0], t))).sum()
    assert float(TemperedCrossEntropy(t)(target, answer)) == pytest.approx(expected, rel=1e-4)


def test_a_cascade_tolerance_out_of_range_is_refused_by_name(tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text("cascade_accuracy_tolerance = 2\n")
    with pytest.raises(UserError, match="cascade_accuracy_tolerance"):
        load_config(config, {})


def test_one_bundle_and_seed_give_one_student(tiny_bundle, tmp_path):
    """Twice, each in a fresh process where no fit has switched deterministic ops on first: the same student, to
    the bit, as the same seed gives the same base models."""
    weights = []
    for name in ("a", "b"):
        bundle = tmp_path / name
        shutil.copytree(tiny_bundle, bundle)
        command = ["-c", "from app.cli import run; run()", "distill", str(bundle), "--student", "tiny_cnn"]
        subprocess.run([sys.executable, *command, "--epochs", "2", "--copies", "2"], check=True, capture_output=True)
        model = keras.models.load_model(bundle / "student" / "model.keras", compile=False, safe_mode=True)
        weights.append(model.get_weights())
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
