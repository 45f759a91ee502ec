"""Ways to answer beside the stack: the cascade, the distilled student, their costs, and the choice among them."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from app.cli import main
from stacking import bundle as bundle_io
from stacking.bundle import load_manifest, write_manifest
from stacking.bundle.manifest import StageEntry
from stacking.data.datasets import load_pixels, read_evaluation_set
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.options import pareto_front, resolve_serve_as
from stacking.inference.predictor import Predictor
from stacking.inference.tta import TTAPolicy
from stacking.meta.learners import meta_cv_folds
from stacking.reporting.evaluate import evaluate_folder
from stacking.reporting.report import write_report
from stacking.training import cascade
from stacking.training.cascade import NEVER, Costs, Tolerance, tune_cascade
from stacking.training.distill import Teaching, distill
from stacking.training.meta_step import refit_meta
from tests.conftest import Server


def labelled_pixels(digits_dir) -> tuple[Pixels, np.ndarray]:
    labelled = read_evaluation_set(digits_dir / "test", digits_dir / "test_labels.csv", [str(d) for d in range(10)])
    labelled, pixels, _ = load_pixels(labelled, [16])
    return pixels.loaded(), labelled.labels


# --- the cascade's tuning, on rows made to show it ---------------------------------------------------------


def rows_with_a_sure_cheap_model(n: int = 600, seed: int = 0, sure_share: float = 0.7):
    """Model 0 is sure and right on ``sure_share`` of the rows and unsure (often wrong) elsewhere; the stack is right
    everywhere but costs ten times one of model 0's views."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    sure = rng.random(n) < sure_share
    per_view = np.full((2, 3, n, 4), 0.25, np.float32)
    per_view[0][:, sure] = 0.02
    per_view[0][:, sure, labels[sure]] = 0.94
    wrong = (labels + 1) % 4
    per_view[0][:, ~sure, wrong[~sure]] = 0.4  # a guess, and not a confident one
    per_view[0][:, ~sure] /= per_view[0][:, ~sure].sum(axis=-1, keepdims=True)
    stack = np.full((n, 4), 0.05, np.float32)
    stack[np.arange(n), labels] = 0.85
    return per_view, stack, labels


COSTS = Costs(view_ms=np.array([1.0, 1.0]), stack_ms=10.0, stack_views=6.0)


def tune(per_view, stack, labels, folds=None, tolerance: Tolerance = Tolerance()) -> dict:
    """The cascade tuned on these rows, cross-validated on the meta step's (ungrouped) folds unless given."""
    folds = meta_cv_folds(labels, None, 5, 0) if folds is None else folds
    names, policy = ["cheap", "other"], TTAPolicy("shift", views=3)
    return tune_cascade(per_view, stack, labels, names, policy, COSTS, folds, tolerance=tolerance)


def test_the_cascade_reaches_the_stacks_accuracy_at_a_fraction_of_its_cost():
    per_view, stack, labels = rows_with_a_sure_cheap_model()
    tuning = tune(per_view, stack, labels)
    first = tuning["stages"][0]
    assert first["model"] == "cheap" and first["views"] == 1 and 0.4 < first["threshold"] <= 0.94
    assert tuning["stages"][-1]["name"] == "stack"
    for estimate in (tuning["on_oof"], tuning["cross_validated"]):
        assert estimate["accuracy"] >= tuning["stack"]["accuracy"] - Tolerance().accuracy
        # 70% answered by one view (1 ms, 1 pass); 30% pay that and the stack (11 ms, 7 passes)
        assert estimate["ms_per_image"] == pytest.approx(0.7 * 1 + 0.3 * 11, abs=0.4)
        assert estimate["cost_views"] < 0.5 * tuning["stack"]["cost_views"]
    assert tuning["on_oof"]["answered_by"]["cheap@1"] == pytest.approx(0.7, abs=0.05)


def test_without_a_sure_cheap_model_the_cascade_is_the_stack():
    per_view, stack, labels = rows_with_a_sure_cheap_model(sure_share=0.0)
    tuning = tune(per_view, stack, labels)
    assert [s["name"] for s in tuning["stages"]] == ["stack"]
    assert tuning["cross_validated"]["accuracy"] == tuning["stack"]["accuracy"]


def test_the_thresholds_are_cross_validated_not_fitted_to_the_rows_they_score():
    # Model 0 is sure on every row but right on only 90%: on all rows the cheapest acceptable choice is
    # still the stack, so no fold of the cross-validation may report a better accuracy than the stack's.
    per_view, stack, labels = rows_with_a_sure_cheap_model(sure_share=1.0)
    flip = np.random.default_rng(1).random(len(labels)) < 0.1
    per_view[0][:, flip] = np.roll(per_view[0][:, flip], 1, axis=-1)
    tuning = tune(per_view, stack, labels)
    assert all(s["threshold"] >= NEVER or s["model"] is None for s in tuning["stages"])
    assert tuning["cross_validated"]["accuracy"] <= tuning["stack"]["accuracy"]
    # Allowed to give up 15 points and any log-loss, the cascade lets the cheap model answer every row.
    loose = tune(per_view, stack, labels, tolerance=Tolerance(accuracy=0.15, log_loss=10.0))
    assert loose["on_oof"]["answered_by"]["cheap@1"] == 1.0 and loose["on_oof"]["cost_views"] == 1.0
    assert loose["on_oof"]["accuracy"] == pytest.approx(0.9, abs=0.03)


def test_the_cascade_tolerance_is_a_setting_recorded_in_the_bundle(bundle_copy):
    default = load_manifest(bundle_copy).serving.cascade
    assert (default.tolerance, default.log_loss_tolerance) == (0.001, 0.0)
    settings = {"cascade_accuracy_tolerance": 0.05, "cascade_log_loss_tolerance": 0.2}
    loose = refit_meta(bundle_copy, settings, echo=lambda _: None)
    assert (loose.serving.cascade.tolerance, loose.serving.cascade.log_loss_tolerance) == (0.05, 0.2)
    assert {k: loose.config[k] for k in settings} == settings


def test_the_cascade_is_cross_validated_on_the_meta_steps_grouped_folds(monkeypatch):
    """Near-duplicates share a group: no choice may be tuned on rows of a group it is then scored on."""
    per_view, stack, labels = rows_with_a_sure_cheap_model()
    groups = np.arange(len(labels)) // 3
    folds = meta_cv_folds(labels, groups, 5, 0)
    tuned_on: list[np.ndarray] = []
    best = cascade._best
    monkeypatch.setattr(cascade, "_best", lambda *args: tuned_on.append(args[5]) or best(*args))  # its rows
    tuning = tune(per_view, stack, labels, folds)
    assert tuning["cross_validated"]["folds"] == len(folds) and len(tuned_on) == 1 + len(folds)
    for rows, (train, held) in zip(tuned_on[1:], folds):
        np.testing.assert_array_equal(rows, train)
        assert not set(groups[rows]) & set(groups[held])


def test_pareto_front():
    assert pareto_front([1, 2, 3, 3], [0.8, 0.9, 0.85, 0.95]) == [True, True, False, True]


# --- choosing the option that serves -----------------------------------------------------------------------


def with_options(manifest, **changes):
    """The manifest with option (accuracy, ms) values replaced, as if measured so."""
    options = [
        o.model_copy(update=dict(zip(("accuracy", "ms_per_image"), changes[o.name]))) if o.name in changes else o
        for o in manifest.serving.options
    ]
    return manifest.model_copy(update={"serving": manifest.serving.model_copy(update={"options": options})})


@pytest.mark.parametrize(
    "budget, expected",
    [
        (None, "stack"),
        (100.0, "stack"),
        (5.0, "cascade"),
        (1.5, "cascade"),
        (0.9, "error: the cheapest, cascade"),
    ],
)
def test_latency_budget_picks_the_most_accurate_option_that_fits(tiny_bundle, budget, expected):
    manifest = with_options(load_manifest(tiny_bundle), stack=(0.95, 10.0), cascade=(0.94, 1.0))
    if expected.startswith("error"):
        with pytest.raises(UserError, match=expected.removeprefix("error: ")):
            resolve_serve_as(manifest, "stack", budget)
    else:
        assert resolve_serve_as(manifest, "stack", budget) == expected


def test_serve_as_refuses_what_the_bundle_lacks_or_contradicts(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    with pytest.raises(UserError, match="no student; train one with: stacking distill"):
        resolve_serve_as(manifest, "student", None)
    with pytest.raises(UserError, match="--serve-as cascade and --latency-budget-ms 5: give one"):
        resolve_serve_as(manifest, "cascade", 5.0)
    with pytest.raises(UserError, match="--serve-as 'everything': expected one of stack, cascade, student"):
        resolve_serve_as(manifest, "everything", None)


# --- the cascade served --------------------------------------------------------------------------------------


@pytest.fixture
def cascade_bundle(bundle_copy, digits_dir) -> Path:
    """The tiny bundle with cascade stages set where about half the test images stop early (its own models are too
    weak after 3 epochs for the tuning to choose any)."""
    pixels, _ = labelled_pixels(digits_dir)
    predictor = Predictor(bundle_copy)
    sure = predictor.model_forward(0).folds(pixels, predictor.views(1))[0, 0, 0].max(axis=1)
    threshold = float(np.quantile(sure, 0.5))
    manifest = load_manifest(bundle_copy)
    stages = [
        StageEntry(name="tiny_cnn@1", model="tiny_cnn", views=1, threshold=threshold),
        StageEntry(name="tiny_cnn@3", model="tiny_cnn", views=3, threshold=threshold),
        StageEntry(name="stack", model=None, views=0, threshold=0.0),
    ]
    cascade = manifest.serving.cascade.model_copy(update={"stages": stages})
    write_manifest(
        bundle_copy, manifest.model_copy(update={"serving": manifest.serving.model_copy(update={"cascade": cascade})})
    )
    return bundle_copy


def test_escalated_images_get_exactly_the_stacks_answer(cascade_bundle, digits_dir):
    pixels, _ = labelled_pixels(digits_dir)
    cascade = Predictor(cascade_bundle, serve_as="cascade")
    answer = cascade.predict(pixels)
    stack = Predictor(cascade_bundle).predict(pixels)
    by = answer.served_by
    escalated = by == "cascade/stack"
    assert 0 < escalated.sum() < len(pixels) and (by == "cascade/tiny_cnn@1").sum() > 0
    assert np.array_equal(answer.probabilities[escalated], stack.probabilities[escalated])
    assert np.array_equal(answer.base_probabilities[:, escalated], stack.base_probabilities[:, escalated])
    views = cascade.views()
    tiny = cascade.model_forward(0).folds(pixels, views)[:, 0]  # (K, T, N, C)
    for stage, count in (("tiny_cnn@1", 1), ("tiny_cnn@3", 3)):
        rows = by == f"cascade/{stage}"
        expected = cascade.tta.merge_views(tiny[:, :count]).mean(axis=0)[rows]
        np.testing.assert_allclose(answer.probabilities[rows], expected, rtol=0, atol=1e-6)
        assert (answer.probabilities[rows].max(axis=1) >= cascade.manifest.serving.cascade.stages[0].threshold).all()
        assert (answer.cost_views[rows] == count).all() and (answer.views[rows] == count).all()
        assert answer.base_ran[0, rows].all() and not answer.base_ran[1, rows].any()
    assert (answer.cost_views[escalated] == 3 + stack.cost_views[escalated]).all()  # the early views, then all of it


def test_cascade_thresholds_do_not_depend_on_test_labels(cascade_bundle, digits_dir, tmp_path):
    """Evaluating with other labels changes the scores, never the thresholds or the answers."""
    before = load_manifest(cascade_bundle).serving
    truth = pd.read_csv(digits_dir / "test_labels.csv")
    shuffled = truth.assign(Category=np.random.default_rng(0).permutation(truth["Category"].to_numpy()))
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    answers = []
    for labels in (digits_dir / "test_labels.csv", tmp_path / "shuffled.csv"):
        assert (
            main(
                [
                    "evaluate",
                    str(cascade_bundle),
                    "--data",
                    str(digits_dir / "test"),
                    "--labels",
                    str(labels),
                    "--serve-as",
                    "cascade",
                ]
            )
            == 0
        )
        assert load_manifest(cascade_bundle).serving.cascade == before.cascade
        answers.append(Predictor(cascade_bundle, serve_as="cascade").predict(labelled_pixels(digits_dir)[0]))
    assert np.array_equal(answers[0].probabilities, answers[1].probabilities)
    assert list(answers[0].served_by) == list(answers[1].served_by)


def test_the_fit_costs_every_option_and_tunes_the_cascade_on_its_oof_rows(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    serving = manifest.serving
    options = {o.name: o for o in serving.options}
    assert list(options) == ["tiny_cnn", "mini_mobilenet", "mean", "stack", "cascade"]
    assert {n for n, o in options.items() if o.servable} == {"stack", "cascade"}
    assert all(o.ms_per_image > 0 and o.rows == manifest.metrics.oof_rows for o in options.values())
    assert options["tiny_cnn"].cost_views == options["mini_mobilenet"].cost_views == 3  # one model, 3 views
    assert options["stack"].cost_views == 6
    assert options["stack"].accuracy == next(r for r in manifest.meta_learner.oof_scores if r.kind == "chosen").accuracy
    assert options["cascade"].cost_views <= options["stack"].cost_views
    assert serving.cascade.stages[-1].name == "stack"
    oof = bundle_io.load_oof(tiny_bundle)
    assert oof["views"].shape == (2, 3, manifest.metrics.oof_rows, 10)  # what the cascade was tuned on


def test_a_new_meta_learner_gets_its_cascade_tuned_again(bundle_copy):
    manifest = refit_meta(bundle_copy, {"meta": "mean"}, echo=lambda _: None)
    options = {o.name: o for o in manifest.serving.options}
    chosen = next(r for r in manifest.meta_learner.oof_scores if r.kind == "chosen")
    assert manifest.meta_learner.kind == "mean" and options["stack"].accuracy == chosen.accuracy
    assert manifest.serving.cascade.tuning.stack.accuracy == pytest.approx(chosen.accuracy)


# --- the student ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(tiny_bundle, digits_dir, tmp_path_factory) -> Path:
    """The tiny bundle with a student taught on its OOF rows and on the test images as unlabelled ones."""
    bundle = tmp_path_factory.mktemp("distilled") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    distill(bundle, "tiny_cnn", digits_dir / "test", epochs=2, echo=lambda _: None)
    return bundle


def test_the_student_is_stored_hashed_and_answers_on_one_view(distilled, digits_dir):
    manifest = load_manifest(distilled)
    student = manifest.serving.student
    assert set(student.files + student.runtime.files) <= set(manifest.files)
    assert student.runtime.served == "litert" and student.runtime.parity.max_abs_diff <= 1e-4
    option = next(o for o in manifest.serving.options if o.name == "student")
    assert option.servable and option.kind == "serving" and option.cost_views == 1 and option.ms_per_image > 0
    held = student.scores
    assert held.rows == option.rows and held.student.accuracy == option.accuracy
    pixels, _ = labelled_pixels(digits_dir)
    answer = Predictor(distilled, serve_as="student").predict(pixels)
    assert set(answer.served_by) == {"student"} and (answer.cost_views == 1).all() and (answer.views == 1).all()
    import keras

    model = keras.models.load_model(distilled / student.files[0], compile=False, safe_mode=True)
    np.testing.assert_allclose(
        answer.probabilities, model.predict(pixels.at(16).astype(np.float32), verbose=0), atol=1e-4
    )


def test_student_targets_come_only_from_answers_on_unseen_images(distilled, digits_dir):
    """Consistent teaching (the fixture's): every picture is of OOF rows blended with OOF rows, or of unlabelled
    images blended among themselves, never of an image the base models trained on."""
    targets, oof = bundle_io.load_student_targets(distilled), bundle_io.load_oof(distilled)
    manifest = load_manifest(distilled)
    copies = manifest.serving.student.teaching.copies
    from_oof = targets["source"] == "oof"
    oof_ids = set(oof["ids"].tolist())
    assert set(targets["ids"][from_oof].tolist()) | set(targets["partners"][from_oof].tolist()) <= oof_ids
    folds = pd.read_csv(distilled / "folds.csv").set_index("Id")["fold"]
    assert (folds.loc[targets["ids"][from_oof]] >= 0).all()  # never an image the base models trained on
    assert from_oof.sum() == copies * manifest.serving.student.targets.oof_rows
    assert manifest.serving.student.targets.oof_rows < len(oof["ids"])  # a quarter held out
    unlabelled = {f"unlabelled/{p.name}" for p in (digits_dir / "test").glob("*.png")}
    assert set(targets["ids"][~from_oof].tolist()) | set(targets["partners"][~from_oof].tolist()) <= unlabelled
    assert (~from_oof).sum() == copies * len(unlabelled) == copies * manifest.serving.student.targets.unlabelled


def test_fixed_teaching_answers_plain_images_with_the_cross_validated_stack(tiny_bundle, digits_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    # The student at another size than the base models': the stack still answers the unlabelled images at theirs.
    distill(bundle, "tiny_cnn@20", digits_dir / "test", epochs=1, echo=lambda _: None, teaching=Teaching("fixed"))
    targets = bundle_io.load_student_targets(bundle)
    oof, stack = bundle_io.load_oof(bundle), bundle_io.load_meta_oof(bundle)["chosen"]
    from_oof = targets["source"] == "oof"
    row = {str(i): k for k, i in enumerate(oof["ids"])}
    rows = [row[str(i)] for i in targets["ids"][from_oof]]  # every one an OOF row: KeyError otherwise
    assert np.array_equal(targets["probabilities"][from_oof], stack[rows].astype(np.float32))  # cross-validated
    manifest = load_manifest(bundle)
    assert from_oof.sum() == manifest.serving.student.targets.oof_rows
    pixels, _ = labelled_pixels(digits_dir)
    assert (~from_oof).sum() == len(pixels) == manifest.serving.student.targets.unlabelled
    np.testing.assert_allclose(
        targets["probabilities"][~from_oof], Predictor(bundle).predict(pixels).probabilities, atol=1e-6
    )  # unlabelled images: the served stack's answers


def test_distill_refuses_what_it_cannot_train(bundle_copy, capsys):
    assert main(["distill", str(bundle_copy), "--student", "no_such_net"]) == 2
    assert "--student" in capsys.readouterr().err
    assert main(["distill", str(bundle_copy), "--student", "tiny_cnn", "--unlabelled", str(bundle_copy / "none")]) == 2
    assert "--unlabelled" in capsys.readouterr().err
    assert load_manifest(bundle_copy).serving.student is None  # nothing changed


def test_evaluate_json_has_every_option_with_its_cost(distilled, digits_dir, tmp_path):
    out = tmp_path / "table.json"
    assert (
        main(
            [
                "evaluate",
                str(distilled),
                "--data",
                str(digits_dir / "test"),
                "--labels",
                str(digits_dir / "test_labels.csv"),
                "--json",
                str(out),
                "--serve-as",
                "student",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    by_name = {r["name"]: r for r in rows}
    assert by_name["cascade"]["kind"] == by_name["student"]["kind"] == "serving"
    assert all(r["cost_views"] > 0 and r["ms_per_image"] > 0 for r in rows)
    assert by_name["student"]["cost_views"] == 1 and by_name["tiny_cnn"]["cost_views"] == 3
    stack = next(r for r in rows if r["kind"] == "chosen")
    assert stack["cost_views"] == 6 and by_name["cascade"]["cost_views"] <= 6
    assert [r["name"] for r in rows if r["served"]] == ["student"]
    predictor = Predictor(distilled)
    rows_again, _, _ = evaluate_folder(predictor, digits_dir / "test", digits_dir / "test_labels.csv")
    assert [r["name"] for r in rows_again if r["served"]] == [stack["name"]]
    assert {r["name"]: r["accuracy"] for r in rows_again} == {r["name"]: r["accuracy"] for r in rows}


def cost_section(bundle: Path) -> tuple[str, list[str]]:
    page = write_report(bundle, load_manifest(bundle)).read_text()
    section = page.split("<section id=cost>", 1)[1].split("</section>", 1)[0]
    return section, re.findall(r"<tr[^>]*><td>([^<]+)</td>", section)


def test_the_report_draws_every_option_against_its_cost(distilled, digits_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(distilled, bundle)
    (bundle / bundle_io.EVALUATION_FILE).unlink(missing_ok=True)
    section, names = cost_section(bundle)  # before any evaluation: the fit's own measurements
    assert "Accuracy against cost" in section and "<img src='cost.png'" in section and "OOF" not in names
    assert names == [o.name for o in load_manifest(bundle).serving.options]
    assert {"tiny_cnn", "mini_mobilenet", "stack", "cascade", "student"} <= set(names)
    assert (bundle / "report" / "cost.png").stat().st_size > 10_000
    t = load_manifest(bundle).serving.student.teaching
    assert (
        f"taught consistent on {t.pictures} pictures ({t.copies} per image); the teacher spent {t.teacher_passes} "
        "forward passes"
    ) in section
    assert (
        main(
            [
                "evaluate",
                str(bundle),
                "--data",
                str(digits_dir / "test"),
                "--labels",
                str(digits_dir / "test_labels.csv"),
            ]
        )
        == 0
    )
    section, names = cost_section(bundle)  # then the test images', every candidate too
    rows = bundle_io.load_evaluation(bundle)["rows"]
    assert names == [r["name"] for r in rows] and {"cascade", "student", "logreg"} <= set(names)
    assert f"the {len(labelled_pixels(digits_dir)[0])} test images" in section


def test_predict_serves_the_student_and_keeps_it_apart_on_resume(distilled, digits_dir, tmp_path):
    out = tmp_path / "student.csv"
    assert main(["predict", str(distilled), str(digits_dir / "test"), "--out", str(out), "--serve-as", "student"]) == 0
    written = pd.read_csv(out).set_index("Id")
    pixels, _ = labelled_pixels(digits_dir)
    names = sorted(p.name for p in (digits_dir / "test").glob("*.png"))
    expected = Predictor(distilled, serve_as="student").predict(pixels).probabilities.argmax(axis=1)
    assert [int(written.loc[n, "Category"]) for n in names] == expected.tolist()


@pytest.mark.slow
def test_served_by_and_costs_over_http_and_v2(distilled, digits_dir):
    server = Server(distilled, {"STACKSERVE_SERVE_AS": "student"})
    try:
        server.wait_ready()
        paths = sorted((digits_dir / "test").glob("*.png"))[:2]
        body = httpx.post(
            f"{server.url}/v1/predict",
            files=[("files", (p.name, p.read_bytes(), "image/png")) for p in paths],
            params={"details": True},
            timeout=60,
        ).json()
        assert [(e["served_by"], e["cost_views"], e["base_models"]) for e in body["predictions"]] == [
            ("student", 1.0, {}),
            ("student", 1.0, {}),
        ]
        info = httpx.get(f"{server.url}/v1/model").json()["serving"]
        assert info["served_as"] == "student"
        assert [o["name"] for o in info["options"]] == [o.name for o in load_manifest(distilled).serving.options]
        assert all({"accuracy", "log_loss", "cost_views", "ms_per_image"} <= set(o) for o in info["options"])
        assert info["cascade"][-1]["name"] == "stack"
        v2 = httpx.post(
            f"{server.url}/v2/models/{distilled.name}/infer",
            timeout=60,
            json={
                "inputs": [
                    {
                        "name": "images",
                        "shape": [2],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(p.read_bytes()).decode() for p in paths],
                    }
                ]
            },
        ).json()
        assert all(o["parameters"] == {"served_by": "student,student", "cost_views": "1,1"} for o in v2["outputs"])
        v1 = np.array([list(e["probabilities"].values()) for e in body["predictions"]])
        np.testing.assert_array_equal(np.array(v2["outputs"][0]["data"]).reshape(2, 10), v1)  # FP64: the same bits
    finally:
        server.stop()
