"""The exported runtime: parity with Keras checked at export, the same numbers on every path, TF kept working."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import stacking.training.fit
from stacking import bundle as bundle_io
from stacking.bundle import BundleError, load_manifest, load_oof
from stacking.bundle.manifest import Manifest
from stacking.data.datasets import load_pixels, read_training_set
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.predictor import Predictor
from stacking.inference.tta import TTAForward, TTAPolicy
from stacking.runtime import KerasRunner, LiteRTRunner, export_litert
from stacking.training.config import load_config
from stacking.training.export import INT8_LOG_LOSS_TOLERANCE, MAX_ABS_DIFF, Parity, choose, int8_verdict
from stacking.training.fit import fit
from tests.conftest import TINY_FIT

PIXELS = Pixels({8: np.random.default_rng(2).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)})
VIEWS = TTAPolicy("flip-shift", views=4).views_at([8])


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Dropout(0.5)(x)  # must stay off at prediction time
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


def test_litert_export_agrees_with_keras_in_every_view():
    models = [small_model(0), small_model(1)]
    keras_views = TTAForward([KerasRunner(models)], [8], rows_per_call=8).folds(PIXELS, VIEWS)
    litert = LiteRTRunner([export_litert(m) for m in models])
    assert (litert.folds, litert.classes) == (2, 4)
    litert_views = TTAForward([litert], [8], rows_per_call=8).folds(PIXELS, VIEWS)
    assert litert_views.shape == keras_views.shape == (2, 1, 4, 7, 4)
    assert np.abs(litert_views - keras_views).max() < MAX_ABS_DIFF
    assert Parity.of(keras_views, litert_views).problem() is None


def test_litert_answers_an_image_with_the_same_bits_whatever_its_companions_and_call_shape():
    runner = LiteRTRunner([export_litert(small_model(3))])
    alone = TTAForward([runner], [8], rows_per_call=len(VIEWS))(PIXELS[3:4], VIEWS)
    for rows in (len(VIEWS), 8, 64):
        batch = TTAForward([runner], [8], rows_per_call=rows)(PIXELS[[5, 3, 0]], VIEWS)
        np.testing.assert_array_equal(batch[:, :, 1:2], alone)


def test_a_lone_image_pays_for_its_own_views_only_on_litert():
    runner = LiteRTRunner([export_litert(small_model(4))])
    forward = TTAForward([runner], [8], rows_per_call=64)  # 16 images of 4 views a call at most
    assert forward.call_sizes(4) == [1, 2, 4, 8, 16]
    forward(PIXELS[:1], VIEWS)
    assert set(runner._by_rows) == {1, 4}  # 1: made on loading, to read the class count
    forward(PIXELS[:3], VIEWS)
    assert set(runner._by_rows) == {1, 4, 16}  # 3 images padded to 4
    assert TTAForward([KerasRunner([small_model(4)])], [8], rows_per_call=64).call_sizes(4) == [16]  # one shape


def test_parity_refuses_nan_large_differences_and_changed_labels():
    sure = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert Parity.of(sure, sure + 1e-6 * np.array([1, -1])).problem() is None
    assert "max |p| difference 0.01 > 0.0001 on 2 OOF image-views" in Parity.of(sure, sure + [0.01, -0.01]).problem()
    assert "max |p| difference nan" in Parity.of(sure, np.full_like(sure, np.nan)).problem()
    for first, second in ((sure, np.full_like(sure, np.nan)), (np.full_like(sure, np.nan), sure)):
        merged = Parity.of(sure, sure).merge(Parity.of(sure, first)).merge(Parity.of(sure, second))
        assert merged.rows == 6 and np.isnan(merged.max_abs_diff) and "max |p| difference nan" in merged.problem()
    tie = np.array([[0.50001, 0.49999]], np.float32)  # Keras was not sure: a flipped label there is no change
    assert Parity.of(tie, tie[:, ::-1]).label_changes == 0


def training_pixels(digits_dir, manifest: Manifest, ids) -> Pixels:
    images = read_training_set(digits_dir)
    images, pixels, _ = load_pixels(images, manifest.sizes, "error")
    where = {image_id: i for i, image_id in enumerate(images.ids)}
    return pixels[[where[i] for i in ids]]


def test_oof_rows_are_the_served_answers_of_the_exported_files(tiny_bundle, digits_dir):
    # The meta-learner learnt from exactly the numbers the service computes for those images.
    manifest = load_manifest(tiny_bundle)
    assert all(
        b.runtime.served == "litert" and b.runtime.parity.max_abs_diff < MAX_ABS_DIFF for b in manifest.base_models
    )
    assert all(
        (tiny_bundle / f).is_file() and f in manifest.files for b in manifest.base_models for f in b.runtime.files
    )
    oof = load_oof(tiny_bundle)
    pixels = training_pixels(digits_dir, manifest, oof["ids"])
    served = Predictor(tiny_bundle).merged_views(pixels)
    np.testing.assert_array_equal(served.merged, oof["probabilities"])
    through_tf = Predictor(tiny_bundle, runtime="tf").merged_views(pixels)
    assert np.abs(through_tf.merged - oof["probabilities"]).max() < MAX_ABS_DIFF  # TF: within the parity bound


def test_runtime_tf_still_serves_an_exported_bundle(tiny_bundle):
    pixels = Pixels({16: PIXELS.at(8).repeat(2, axis=1).repeat(2, axis=2)})
    auto, tf = Predictor(tiny_bundle), Predictor(tiny_bundle, runtime="tf")
    assert set(auto.runtimes.values()) == {"litert"} and set(tf.runtimes.values()) == {"tf"}
    assert tf.runtime_info()["base_models"]["tiny_cnn"] == {"runtime": "tf", "threads": KerasRunner.threads()}
    a, b = auto.predict(pixels), tf.predict(pixels)
    assert np.abs(a.base_probabilities - b.base_probabilities).max() < MAX_ABS_DIFF
    np.testing.assert_array_equal(a.probabilities.argmax(axis=1), b.probabilities.argmax(axis=1))


def without_exports(bundle) -> None:
    """The bundle as a fit before exports existed wrote it: no runtime entries, no .tflite files."""
    manifest = load_manifest(bundle)
    for path in bundle.glob("base/*/*.tflite"):
        path.unlink()
    bundle_io.write_manifest(bundle, manifest)  # the files' hashes, without the exports
    raw = json.loads((bundle / "manifest.json").read_text())
    for entry in raw["base_models"]:
        del entry["runtime"]  # the field did not exist then
    (bundle / "manifest.json").write_text(json.dumps(raw))


def test_a_bundle_without_exported_files_serves_through_tensorflow(bundle_copy, tiny_bundle):
    without_exports(bundle_copy)
    predictor = Predictor(bundle_copy)
    assert set(predictor.runtimes.values()) == {"tf"}
    pixels = Pixels({16: PIXELS.at(8).repeat(2, axis=1).repeat(2, axis=2)})
    np.testing.assert_array_equal(
        predictor.predict(pixels).probabilities, Predictor(tiny_bundle, runtime="tf").predict(pixels).probabilities
    )
    with pytest.raises(
        BundleError,
        match="--runtime litert: base model 'tiny_cnn' has no litert file: it was "
        "fitted with --runtime tf or before exports existed",
    ):
        Predictor(bundle_copy, runtime="litert")


def test_an_exported_file_outside_the_hashed_files_is_refused(bundle_copy):
    raw = json.loads((bundle_copy / "manifest.json").read_text())
    shutil.copyfile(bundle_copy / raw["base_models"][0]["runtime"]["files"][0], bundle_copy / "base" / "other.tflite")
    raw["base_models"][0]["runtime"]["files"] = ["base/other.tflite"]
    (bundle_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="'tiny_cnn' names base/other.tflite, which is not among the hashed files"):
        Predictor(bundle_copy)


def perturbed_export(name: str):
    """An exporter that changes ``name``'s weights before converting: a broken conversion, as parity must see it."""

    def export(model):
        if model.name == name:
            model.set_weights([w * 1.5 for w in model.get_weights()])
        return export_litert(model)

    return export


@pytest.mark.slow
def test_a_perturbed_export_is_refused_naming_the_model(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("stacking.training.fit.export_litert", perturbed_export("tiny_cnn"))
    settings = {**TINY_FIT, "epochs": 1, "runtime": "auto"}  # auto: a refused export is served on TensorFlow
    lines: list[str] = []
    manifest = fit(digits_dir, tmp_path / "auto", load_config(None, settings), echo=lines.append)
    tiny, mobile = manifest.base_models
    assert tiny.runtime.served == "tf" and tiny.runtime.files == []
    assert not list((tmp_path / "auto").glob("base/tiny_cnn/*.tflite"))
    assert tiny.runtime.refused.startswith("max |p| difference") and tiny.runtime.parity.max_abs_diff > MAX_ABS_DIFF
    assert mobile.runtime.served == "litert" and mobile.runtime.refused is None
    assert any(line.startswith("tiny_cnn: litert export refused (max |p| difference") for line in lines)
    assert Predictor(tmp_path / "auto").runtimes == {"tiny_cnn": "tf", "mini_mobilenet": "litert"}
    with pytest.raises(
        BundleError,
        match="base model 'tiny_cnn' has no litert file: its export was refused at fit "
        r"time \(max \|p\| difference",
    ):
        Predictor(tmp_path / "auto", runtime="litert")
    with pytest.raises(UserError, match="--runtime litert: base model 'tiny_cnn' could not be exported: max "):
        fit(digits_dir, tmp_path / "strict", load_config(None, {**settings, "runtime": "litert"}), echo=lines.append)


WITHOUT_TENSORFLOW = '''
import sys

class NoTensorFlow:
    """As in the serving-only install: no TensorFlow, Keras or pandas to import."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "pandas"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTensorFlow())
import numpy as np
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
from stacking.data.images import Pixels
from stacking.errors import BundleError
from stacking.inference.predictor import Predictor
from tests.waiting import wait_loaded

bundle = sys.argv[1]
with TestClient(create_app(Settings(bundle=bundle, max_tta=3))) as client:
    wait_loaded(client.app.state.serving.state)  # loading runs in a thread of its own
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    runtime = client.get("/v1/model").json()["runtime"]
pixels = Pixels({16: np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)})
np.save(sys.argv[2], Predictor(bundle).predict(pixels).probabilities)
try:
    Predictor(bundle, runtime="tf")
except BundleError as exc:
    print("refused:", exc)
print("runtime:", runtime)
assert not any(m.split(".")[0] in ("tensorflow", "keras", "pandas") for m in sys.modules)
'''


def test_an_exported_bundle_serves_without_tensorflow_installed(tiny_bundle, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(tiny_bundle), str(tmp_path / "p.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"refused: {tiny_bundle}: base model(s) tiny_cnn, mini_mobilenet run on TensorFlow (--runtime tf), "
        "which this installation does not have (the serving-only install)"
    ) in done.stdout
    assert "'runtime': 'litert', 'threads': {'num_threads':" in done.stdout  # /v1/model says what runs where
    pixels = Pixels({16: np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)})
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), Predictor(tiny_bundle).predict(pixels).probabilities)


def test_int8_is_kept_only_where_oof_accuracy_holds_and_log_loss_stays_within_tolerance():
    labels = np.array([0, 1, 1])
    fp32 = np.array([[[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]])  # (1 view, 3 rows, 2 classes): all right
    assert int8_verdict(labels, fp32, fp32)["kept"]
    worse = int8_verdict(labels, fp32, np.array([[[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]]))
    assert not worse["kept"] and worse["reason"].startswith("OOF accuracy 0.6667 below float32's 1.0000")
    vaguer = int8_verdict(labels, fp32, np.array([[[0.7, 0.3], [0.4, 0.6], [0.45, 0.55]]]))
    assert not vaguer["kept"] and f"(tolerance {INT8_LOG_LOSS_TOLERANCE})" in vaguer["reason"]
    close = int8_verdict(labels, fp32, fp32 + np.array([-0.001, 0.001]))  # every row a little surer
    assert close["kept"] and close["int8"]["log_loss"] < close["fp32"]["log_loss"]


def test_the_fastest_kept_runtime_serves():
    timing = {"tf_ms": 10.0, "litert_ms": 4.0, "litert_int8_ms": 3.0}
    assert choose("auto", timing, int8_kept=True) == ("litert", "int8")
    assert choose("auto", timing, int8_kept=False) == ("litert", "fp32")
    assert choose("auto", {**timing, "litert_int8_ms": 5.0}, int8_kept=True) == ("litert", "fp32")
    slow = {"tf_ms": 10.0, "litert_ms": 11.0, "litert_int8_ms": 12.0}
    assert choose("auto", slow, int8_kept=True) == ("tf", "fp32")  # TF clearly faster: kept on TF
    assert choose("litert", slow, int8_kept=False) == ("litert", "fp32")  # asked for: the export serves anyway
    assert choose("auto", {**slow, "litert_ms": 10.4}, int8_kept=False) == ("litert", "fp32")  # within the noise


def int8_tensors(path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return sum(t["dtype"] == np.int8 for t in Interpreter(model_path=str(path)).get_tensor_details())


@pytest.mark.slow
def test_a_kept_int8_export_is_what_serves_and_what_the_meta_learner_learnt_from(digits_dir, tmp_path, monkeypatch):
    # On this machine (AVX2, no VNNI) INT8 is slower than float32, so auto would never serve it: the timing
    # is made to favour it, to check the INT8 path end to end where the verdict keeps it.
    real = stacking.training.fit.time_runtimes
    monkeypatch.setattr("stacking.training.fit.time_runtimes", lambda *a: {**real(*a), "litert_int8_ms": 0.001})
    monkeypatch.setattr("stacking.training.export.INT8_LOG_LOSS_TOLERANCE", 10.0)  # an untrained model's INT8 file too
    manifest = fit(
        digits_dir,
        tmp_path / "b",
        load_config(None, {**TINY_FIT, "epochs": 2, "quantize": "int8"}),
        echo=lambda _: None,
    )
    for entry in manifest.base_models:
        verdict = entry.runtime.int8
        assert verdict.calibration_images == 200
        assert verdict.kept == (verdict.int8.accuracy >= verdict.fp32.accuracy)
        assert entry.runtime.precision == ("int8" if verdict.kept else "fp32")
        assert (int8_tensors(tmp_path / "b" / entry.runtime.files[0]) > 0) == verdict.kept
    assert any(e.runtime.precision == "int8" for e in manifest.base_models), "no model's INT8 file was kept"
    oof = load_oof(tmp_path / "b")
    served = Predictor(tmp_path / "b").merged_views(training_pixels(digits_dir, manifest, oof["ids"]))
    np.testing.assert_array_equal(served.merged, oof["probabilities"])


def test_the_serving_install_is_a_subset_of_the_full_one_without_tensorflow():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    serve = project["optional-dependencies"]["serve"]
    assert set(serve) <= set(project["dependencies"])  # the same pins, verbatim: one can never drift from the other
    names = {line.split(">")[0].split("=")[0] for line in serve}
    assert not names & {"tensorflow", "keras", "pandas", "matplotlib"} and "ai-edge-litert" in names
