"""The command line: user errors exit 2 with one line naming the file or option, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app.cli import main
from stacking.bundle import Trust, load_manifest, load_oof, write_manifest
from stacking.bundle.manifest import StageEntry
from stacking.data.datasets import load_pixels, read_evaluation_set, read_training_set
from stacking.data.images import Pixels
from stacking.inference.predictor import Predictor
from stacking.inference.tta import TTAForward, ViewSet
from stacking.meta.learners import META_KINDS, meta_features
from stacking.runtime import KerasRunner
from stacking.training import cascade
from stacking.training.protocols import fold_hash
from tests.conftest import Server, free_port

FAST = ["--models", "tiny_cnn", "--epochs", "1", "--image-size", "16"]


def make_images(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    return root


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda d: d / "absent", [], "absent: no such folder"),
        (lambda d: (d / "train").mkdir() or d, [], "no class folders"),
        (lambda d: make_images(d, {"a": 12}), [], "found 1 class(es)"),
        (
            lambda d: make_images(d, {"a": 12, "b": 3}),
            [],
            "class 'b' has 3 image(s); --protocol holdout needs at least 10",
        ),
        (
            lambda d: make_images(d, {"a": 12, "b": 12}),
            ["--models", "tiny_cnn,nope"],
            "--models nope: unknown model 'nope'",
        ),
        (lambda d: make_images(d, {"a": 12, "b": 12}), ["--protocol", "loo"], "--protocol 'loo'"),
        (lambda d: make_images(d, {"a": 12, "b": 12}), ["--meta", "svm"], "--meta 'svm'"),
        (lambda d: make_images(d, {"a": 12, "b": 12}), ["--epochs", "zero"], "Invalid value for '--epochs'"),
    ],
    ids=["missing", "empty", "one-class", "too-few", "unknown-model", "bad-protocol", "bad-meta", "bad-type"],
)
def test_fit_bad_input(tmp_path, capsys, setup, extra, message):
    data = setup(tmp_path)
    code, _, err = run_cli(["fit", "--data", data, "--out", tmp_path / "b", *extra], capsys)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_fit_unreadable_image_fails_or_is_skipped(tmp_path, capsys):
    data = make_images(tmp_path / "d", {"a": 12, "b": 12})
    (data / "train" / "b" / "broken.png").write_bytes(b"not a png")
    code, _, err = run_cli(["fit", "--data", data, "--out", tmp_path / "b", *FAST], capsys)
    line = one_line_error(code, err)
    assert "broken.png" in line and "--on-bad-image skip" in line
    code, out, _ = run_cli(["fit", "--data", data, "--out", tmp_path / "b", *FAST, "--on-bad-image", "skip"], capsys)
    assert code == 0 and "skipped" in out and "broken.png" in out
    assert load_manifest(tmp_path / "b").data.skipped[0].endswith("broken.png")


def test_bad_config_key_is_named(tmp_path, capsys):
    data = make_images(tmp_path / "d", {"a": 12, "b": 12})
    (tmp_path / "c.toml").write_text("[train]\nepoch = 3\n")
    code, _, err = run_cli(["fit", "--data", data, "--out", tmp_path / "b", "--config", tmp_path / "c.toml"], capsys)
    assert "[train]: unknown setting(s) ['epoch']" in one_line_error(code, err)


def test_out_folder_that_is_not_a_bundle_is_left_alone(tmp_path, capsys):
    data = make_images(tmp_path / "d", {"a": 12, "b": 12})
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("mine")
    code, _, err = run_cli(["fit", "--data", data, "--out", tmp_path / "keep", *FAST], capsys)
    assert "is not a bundle" in one_line_error(code, err)
    assert (tmp_path / "keep" / "precious.txt").read_text() == "mine"


def test_changed_bundle_is_refused_by_every_command(bundle_copy, digits_dir, tmp_path, capsys):
    (bundle_copy / "oof.npz").write_bytes(b"changed")
    for argv in (
        ["predict", bundle_copy, digits_dir / "test", "--out", tmp_path / "s.csv"],
        ["evaluate", bundle_copy, "--data", digits_dir / "test", "--labels", digits_dir / "test_labels.csv"],
        ["serve", bundle_copy, "--port", "1"],
    ):
        code, _, err = run_cli(argv, capsys)
        assert "oof.npz: sha256 does not match" in one_line_error(code, err)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [("--serve-as", "everything", "'stack', 'cascade' or 'student'"), ("--runtime", "gpu", "'auto', 'tf' or 'litert'")],
)
def test_serve_refuses_a_value_outside_its_choice_before_any_port_opens(tiny_bundle, capsys, flag, value, allowed):
    """The service's settings take their values from the same enums as the rest (stacking.choices)."""
    code, _, err = run_cli(["serve", tiny_bundle, flag, value, "--port", "1"], capsys)
    assert f"{flag}: Input should be {allowed}" in one_line_error(code, err)


def test_predict_and_evaluate_bad_options(tiny_bundle, digits_dir, tmp_path, capsys):
    code, _, err = run_cli(
        ["predict", tiny_bundle, digits_dir / "test", "--out", tmp_path / "s.csv", "--tta", "50"], capsys
    )
    assert "--tta 50: must be between 0 and 9" in one_line_error(code, err)
    code, _, err = run_cli(
        ["predict", tiny_bundle, digits_dir / "test", "--out", tmp_path / "s.csv", "--tta-policy", "spin"], capsys
    )
    assert "--tta-policy 'spin': expected one of" in one_line_error(code, err)
    code, _, err = run_cli(
        [
            "predict",
            tiny_bundle,
            digits_dir / "test",
            "--out",
            tmp_path / "s.csv",
            "--tta-policy",
            "flip",
            "--tta",
            "3",
        ],
        capsys,
    )
    assert "--tta 3: must be between 0 and 2 for TTA policy 'flip'" in one_line_error(code, err)
    code, _, err = run_cli(["predict", tiny_bundle, tmp_path / "nothing", "--out", tmp_path / "s.csv"], capsys)
    assert "nothing: no such folder" in one_line_error(code, err)
    code, _, err = run_cli(["evaluate", tiny_bundle, "--data", digits_dir / "test"], capsys)
    assert "no class folders" in one_line_error(code, err)


@pytest.mark.slow
def test_kfold_fit_predicts_every_image_out_of_fold(digits_dir, tmp_path, capsys):
    bundle = tmp_path / "kfold"
    code, out, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            bundle,
            *FAST,
            "--protocol",
            "kfold",
            "--folds",
            "3",
            "--meta",
            "logreg",
            "--tta",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = load_manifest(bundle)
    assert manifest.base_models[0].files == [f"base/tiny_cnn/fold{k}.keras" for k in range(3)]
    assert manifest.meta_learner.kind == "logreg"
    assert manifest.protocol.final_models == "fold-average"
    oof = load_oof(bundle)
    assert len(oof["ids"]) == manifest.data.images  # every training image, each once
    folds = pd.read_csv(bundle / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert fold_hash(folds["Id"].tolist(), folds["fold"].to_numpy()) == manifest.protocol.fold_hash
    assert set(oof["fold_hashes"]) == {manifest.protocol.fold_hash}
    page = (bundle / "report" / "index.html").read_text()
    assert "<th>fold 0</th><th>fold 1</th><th>fold 2</th>" in page  # the report's data table, one column a fold
    assert all(f"src='curves_tiny_cnn_fold{k}.png'" in page for k in range(3))  # training curves per fold
    # Served: the meta-learner applied to each fold's base models (as it learnt from one fold model's
    # OOF answers), the three answers averaged; checked against each fold model loaded on its own.
    predictor = Predictor(bundle)
    assert manifest.base_models[0].runtime.files == [f"base/tiny_cnn/fold{k}.tflite" for k in range(3)]
    assert predictor.runtimes == {"tiny_cnn": manifest.base_models[0].runtime.served}
    pixels = Pixels({16: np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)})
    prediction = predictor.predict(pixels)
    assert prediction.features.shape[0] == 3
    identity = ViewSet.identity([16])
    per_fold = [
        predictor.meta.predict_proba(
            meta_features(
                TTAForward([KerasRunner([keras.models.load_model(bundle / f)])], [16])(pixels, identity)[:, 0]
            )
        )
        for f in manifest.base_models[0].files
    ]
    np.testing.assert_allclose(prediction.probabilities, np.mean(per_fold, axis=0), atol=1e-5)
    assert "fold 2" in out
    # The cascade's early stages run the first fold model alone (what an OOF row holds): one pass a view.
    single = predictor.first_fold_forward(0).folds(pixels, identity)[0, 0, 0]
    fold0 = keras.models.load_model(bundle / manifest.base_models[0].files[0])
    np.testing.assert_allclose(single, TTAForward([KerasRunner([fold0])], [16])(pixels, identity)[0, 0], atol=1e-5)
    cascade = manifest.serving.cascade
    first = StageEntry(name="tiny_cnn/fold0@1", model="tiny_cnn", views=1, threshold=0.0)  # answers everything
    write_manifest(
        bundle,
        manifest.model_copy(
            update={
                "serving": manifest.serving.model_copy(
                    update={"cascade": cascade.model_copy(update={"stages": [first, cascade.stages[-1]]})}
                )
            }
        ),
    )
    answer = Predictor(bundle, serve_as="cascade").predict(pixels)
    assert set(answer.served_by) == {"cascade/tiny_cnn/fold0@1"} and (answer.cost_views == 1).all()
    np.testing.assert_allclose(answer.probabilities, single, atol=1e-6)


@pytest.mark.slow
def test_kfold_refit_serves_one_model_per_architecture(digits_dir, tmp_path, capsys):
    bundle = tmp_path / "refit"
    code, out, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            bundle,
            *FAST,
            "--protocol",
            "kfold",
            "--folds",
            "3",
            "--final",
            "refit",
            "--tta",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = load_manifest(bundle)
    assert manifest.protocol.final_models == "refit"
    assert manifest.base_models[0].files == ["base/tiny_cnn/model.keras"]
    assert sorted(p.name for p in (bundle / "base" / "tiny_cnn").iterdir()) == ["model.keras", "model.tflite"]
    assert manifest.base_models[0].runtime.files == ["base/tiny_cnn/model.tflite"]
    history = json.loads((bundle / "history" / "tiny_cnn.json").read_text())["folds"]
    assert len(history) == 4 and history[-1]["refit"]  # three folds for the OOF rows, then the refit
    assert len(load_oof(bundle)["ids"]) == manifest.data.images  # OOF rows still come from the folds
    assert "refit on all images" in out
    assert "src='curves_tiny_cnn_refit.png'" in (bundle / "report" / "index.html").read_text()
    server = Server(bundle)
    try:
        server.wait_ready()
        with open(next((digits_dir / "test").iterdir()), "rb") as f:
            answer = httpx.post(f"{server.url}/v1/predict", files={"files": ("x.png", f, "image/png")}, timeout=30)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in manifest.classes
    finally:
        server.stop()


def test_refit_needs_kfold(digits_dir, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--data", digits_dir, "--out", tmp_path / "b", *FAST, "--final", "refit"], capsys)
    assert "--final refit: only with --protocol kfold" in one_line_error(code, err)


def test_evaluate_writes_the_comparison_table(bundle_copy, digits_dir, tmp_path, capsys):
    tiny_bundle = bundle_copy  # evaluate adds its table to the bundle's report
    code, out, err = run_cli(
        [
            "evaluate",
            tiny_bundle,
            "--data",
            digits_dir / "test",
            "--labels",
            digits_dir / "test_labels.csv",
            "--json",
            tmp_path / "t.json",
        ],
        capsys,
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["kind"] for r in rows] == ["base"] * 2 + ["candidate"] * 6 + ["chosen", "serving"]
    assert [r["name"] for r in rows[:2]] == ["tiny_cnn", "mini_mobilenet"]
    assert {r["name"] for r in rows if r["kind"] == "candidate"} == set(META_KINDS)
    manifest = load_manifest(tiny_bundle)
    chosen = manifest.meta_learner.kind
    stack = rows[-2]
    assert stack["name"] == f"stack ({chosen})" and rows[-1]["name"] == "cascade" and stack["served"]
    same = next(r for r in rows if r["name"] == chosen)  # no calibration: the stack is that candidate
    assert (stack["accuracy"], stack["log_loss"]) == pytest.approx((same["accuracy"], same["log_loss"]))
    for row in rows:
        assert set(row) == {
            "name",
            "kind",
            "accuracy",
            "ci_low",
            "ci_high",
            "log_loss",
            "ece",
            "cost_views",
            "ms_per_image",
            "served",
        } | ({"paired"} if row is stack else set())
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"] and 0 <= row["ece"] <= 1
        assert f"{row['accuracy']:.4f}  [{row['ci_low']:.4f}, {row['ci_high']:.4f}]" in out
    # The base rows are the predictor's own per-model answers on the same 80 images.
    images = read_evaluation_set(digits_dir / "test", digits_dir / "test_labels.csv", manifest.classes)
    _, pixels, _ = load_pixels(images, [16])
    base = Predictor(tiny_bundle).predict(pixels).base_probabilities
    assert rows[0]["accuracy"] == pytest.approx((base[0].argmax(axis=1) == images.labels).mean())
    assert "correlation of base models' OOF probabilities" in out and "80 labelled images" in out
    # The served stack against its best member (by OOF accuracy) and the plain mean, paired image by image.
    best = max(manifest.metrics.oof, key=lambda n: manifest.metrics.oof[n].accuracy if n != "mean" else -1)
    paired = {p["against"]: p for p in stack["paired"]}
    assert set(paired) == {f"best member ({best})", "plain mean"}
    member = rows[[r["name"] for r in rows].index(best)]
    versus = paired[f"best member ({best})"]
    for metric in ("accuracy", "log_loss"):
        assert versus[metric]["difference"] == pytest.approx(stack[metric] - member[metric])
        assert versus[metric]["ci_low"] <= versus[metric]["difference"] <= versus[metric]["ci_high"]
    assert f"{stack['name']} against the best member ({best}): {versus['accuracy']['difference']:+.4f} accuracy" in out
    # The report now shows the same table, and calls it out of date once the meta step is rerun.
    page = (tiny_bundle / "report" / "index.html").read_text()
    test_table = page.split("<h3>Test</h3>", 1)[1].split("</table>", 1)[0]
    for row in rows:
        assert f"<td>{row['name']}</td><td>{row['kind']}</td><td>{row['accuracy']:.4f}</td>" in test_table
    assert "test accuracy" in page and f"report updated: {tiny_bundle / 'report' / 'index.html'}" in out
    code, _, err = run_cli(["meta", tiny_bundle, "--meta", "mean"], capsys)
    assert code == 0, err
    page = (tiny_bundle / "report" / "index.html").read_text()
    assert "The last `stacking evaluate` was of an earlier state of this bundle" in page
    assert "test accuracy" not in page


def test_data_digits_command(tmp_path, capsys):
    code, out, _ = run_cli(["data", "digits", "--out", tmp_path / "d", "--limit", "100"], capsys)
    assert code == 0 and "80 training and 20 test" in out
    assert (tmp_path / "d" / "sample_submission.csv").is_file()
    code, out, _ = run_cli(["data", "digits", "--out", tmp_path / "e", "--limit", "100", "--train-scans", "30"], capsys)
    assert code == 0 and "30 training and 20 test" in out  # fewer training scans, the very same test split
    assert sorted(p.name for p in (tmp_path / "e" / "test").iterdir()) == sorted(
        p.name for p in (tmp_path / "d" / "test").iterdir()
    )
    assert {p.name for p in (tmp_path / "e" / "train").rglob("*.png")} < {
        p.name for p in (tmp_path / "d" / "train").rglob("*.png")
    }


def test_report_command_rewrites_the_page(bundle_copy, capsys):
    shutil.rmtree(bundle_copy / "report")
    code, out, _ = run_cli(["report", bundle_copy], capsys)
    assert code == 0
    page = (bundle_copy / "report" / "index.html").read_text()
    assert "Meta-learner selection" in page and "tiny_cnn" in page


def test_imagenet_weights_that_cannot_be_fetched_are_a_clear_error(digits_dir, tmp_path, capsys, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):  # what keras sees here: no network, no cached weight file
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    code, _, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            tmp_path / "b",
            "--models",
            "mobilenetv3small",
            "--image-size",
            "32",
            "--epochs",
            "1",
        ],
        capsys,
    )
    line = one_line_error(code, err)
    assert "model 'mobilenetv3small' weights 'imagenet': could not get ImageNet weights for mobilenetv3small" in line
    assert "put Keras' file in its cache ($KERAS_HOME/models, by default ~/.keras/models)" in line
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial*"))


def test_more_tta_views_than_the_policy_has_is_refused(tmp_path, capsys):
    data = make_images(tmp_path / "d", {"a": 12, "b": 12})
    code, _, err = run_cli(
        ["fit", "--data", data, "--out", tmp_path / "b", "--tta-policy", "flip", "--tta", "3"], capsys
    )
    assert "--tta 3: TTA policy 'flip' has 2 views" in one_line_error(code, err)


@pytest.mark.slow
def test_your_own_model_is_trained_bundled_and_served(digits_dir, tmp_path, capsys):
    bundle = tmp_path / "own"
    code, out, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            bundle,
            "--models",
            "tests.custom_model:build,tiny_cnn",
            "--epochs",
            "1",
            "--image-size",
            "16",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = load_manifest(bundle)
    entry = manifest.base_models[0]
    assert entry.name == "tests.custom_model.build" and entry.architecture == "tests.custom_model:build"
    assert entry.files == ["base/tests.custom_model.build/model.keras"]
    assert manifest.custom_modules == ["tests.custom_model"]
    predictor = Predictor(bundle, trust=Trust(custom_code=True))
    assert predictor.base_names == ["tests.custom_model.build", "tiny_cnn"]
    assert predictor.predict(Pixels.zeros(1, [16])).base_probabilities.shape == (2, 1, 10)


@pytest.mark.parametrize(
    "model, message",
    [
        ("nowhere.module:build", "cannot import 'nowhere.module'"),
        ("tests.custom_model:missing", "has no function 'missing'"),
        ("tests.custom_model:not_a_model", "returned str, not a keras.Model"),
    ],
)
def test_bad_custom_model_is_named(digits_dir, tmp_path, capsys, model, message):
    code, _, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            tmp_path / "b",
            "--models",
            model,
            "--epochs",
            "1",
            "--image-size",
            "16",
        ],
        capsys,
    )
    assert message in one_line_error(code, err)


def test_preview_augment_writes_a_grid(digits_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(
        ["preview", "augment", "--data", digits_dir, "--out", out, "--count", "4", "--copies", "3"], capsys
    )
    assert code == 0, err
    with Image.open(out) as img:
        pixels = np.asarray(img.convert("L"), dtype=float)
        assert img.size[0] > 300 and img.size[1] > 300
    assert pixels.std() > 20  # images drawn, not a blank canvas


def grouped_csv_layout(digits_dir: Path, root: Path) -> Path:
    """The digits in the Kaggle layout, with a Group column pairing consecutive scans of a class."""
    images = read_training_set(digits_dir)
    (root / "train").mkdir(parents=True)
    rows = []
    for i, (path, label) in enumerate(zip(images.paths, images.labels)):
        shutil.copy(path, root / "train" / path.name)
        rows.append({"Id": path.name, "Category": images.classes[label], "Group": f"g{label}_{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


@pytest.mark.slow
def test_grouped_kfold_keeps_each_group_in_one_fold(digits_dir, tmp_path, capsys, monkeypatch):
    data = grouped_csv_layout(digits_dir, tmp_path / "grouped")
    tuned_on: list[np.ndarray] = []  # the rows each cascade choice is made on
    best = cascade._best
    monkeypatch.setattr(cascade, "_best", lambda *args: tuned_on.append(args[5]) or best(*args))  # its rows
    code, out, err = run_cli(
        [
            "fit",
            "--data",
            data,
            "--out",
            tmp_path / "b",
            *FAST,
            "--protocol",
            "kfold",
            "--folds",
            "3",
            "--group-column",
            "Group",
            "--tta",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    folds = pd.read_csv(tmp_path / "b" / "folds.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # no group straddles two folds
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert load_manifest(tmp_path / "b").protocol.group_column == "Group"
    assert "grouped by Group" in out
    groups = load_oof(tmp_path / "b")["groups"]
    held_out = [np.setdiff1d(np.arange(len(groups)), rows) for rows in tuned_on]
    assert sum(len(held) > 0 for held in held_out) >= 2  # the cascade's estimate: cross-validated ...
    for rows, held in zip(tuned_on, held_out):  # ... on the meta step's grouped folds
        assert not set(groups[rows]) & set(groups[held])
    code, _, err = run_cli(["fit", "--data", data, "--out", tmp_path / "c", *FAST, "--group-column", "Batch"], capsys)
    assert "--group-column Batch" in one_line_error(code, err) and "Group" in err


# Here, not in test_jobs.py: that module's tests share a connected Ray, which a fit would join.
@pytest.mark.slow
def test_executor_options_are_checked(tiny_bundle, digits_dir, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--data", digits_dir, "--out", tmp_path / "b", "--executor", "spark"], capsys)
    assert "--executor 'spark': Input should be 'local' or 'ray'" in one_line_error(code, err)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: said at once, not after Ray's minutes of retries
    code, _, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            tmp_path / "b",
            "--models",
            "tiny_cnn",
            "--image-size",
            "16",
            "--executor",
            "ray",
            "--ray-address",
            address,
        ],
        capsys,
    )
    assert f"--ray-address {address}: nothing answers there" in one_line_error(code, err)
    assert not (tmp_path / ".b.partial").exists()
    code, _, err = run_cli(
        [
            "predict",
            tiny_bundle,
            digits_dir / "test",
            "--out",
            tmp_path / "s.csv",
            "--executor",
            "ray",
            "--actors",
            "0",
        ],
        capsys,
    )
    assert "--actors must be at least 1" in one_line_error(code, err)
