"""A heterogeneous stack: each base model at its own size, from its own weights, with its own recipe, on every path."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import httpx
import keras
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from app.cli import main
from stacking.bundle import load_manifest, load_oof, sha256_file
from stacking.data.datasets import read_evaluation_set
from stacking.inference.predictor import Predictor
from tests.conftest import Server, free_port
from tests.test_cli import one_line_error, run_cli
from tests.test_runtime import training_pixels

pytestmark = pytest.mark.slow  # fits, servers or subprocesses: left out by make test-fast

SIZES = {"tiny_cnn": 16, "mini": 20, "mobile": 32}
CONFIG = """
weights = "none"
runtime = "litert"
[train]
epochs = 3
[tta]
policy = "shift"
views = 3
[augmentation]
flip = false

[[model]]
architecture = "tiny_cnn"
image_size = 16

[[model]]
name = "mini"
architecture = "mini_mobilenet"
image_size = 20
[model.train]
learning_rate = 0.002

[[model]]
name = "mobile"
architecture = "mobilenetv3small"
image_size = 32
weights = "mobile.weights.h5"  # relative to this file
[model.train]
epochs = 2
head_epochs = 2  # the backbone stays frozen throughout: its weights stay the file's
"""


def save_backbone(path, application: str = "MobileNetV3Small", include_top: bool = False, seed: int = 5) -> None:
    """A keras.applications backbone's weights, as a user brings them (our own here: no downloads in tests)."""
    keras.utils.set_random_seed(seed)
    getattr(keras.applications, application)(
        include_top=include_top, weights=None, input_shape=(32, 32, 3)
    ).save_weights(path)


@pytest.fixture(scope="module")
def hetero(digits_dir, tmp_path_factory):
    """Three members at three sizes, one a keras.applications architecture started from a weights file."""
    folder = tmp_path_factory.mktemp("hetero")
    save_backbone(folder / "mobile.weights.h5")
    (folder / "fit.toml").write_text(CONFIG)
    bundle = folder / "bundle"
    assert main(["fit", "--data", str(digits_dir), "--out", str(bundle), "--config", str(folder / "fit.toml")]) == 0
    return bundle


def test_each_member_keeps_its_size_weights_and_recipe(hetero, tmp_path):
    manifest = load_manifest(hetero)
    assert {b.name: b.image_size for b in manifest.base_models} == SIZES
    assert manifest.format_version == 4 and manifest.sizes == [16, 20, 32]
    mobile = manifest.base_models[2]
    weights_file = hetero.parent / "mobile.weights.h5"
    assert (mobile.weights, mobile.weights_sha256) == ("mobile.weights.h5", sha256_file(weights_file))
    assert [b.weights for b in manifest.base_models[:2]] == [None, None]
    members = {m["name"]: m for m in manifest.config["models"]}
    assert members["mini"]["train"]["learning_rate"] == 0.002 and members["tiny_cnn"]["train"]["learning_rate"] == 0.001
    epochs = {b.name: len(manifest.metrics.validation[b.name]) for b in manifest.base_models}
    assert epochs == {"tiny_cnn": 1, "mini": 1, "mobile": 1}  # one holdout job each
    phases = {b.name: json.loads((hetero / b.history).read_text())["folds"][0]["phase"] for b in manifest.base_models}
    assert phases["mobile"] == [1, 1] and phases["tiny_cnn"] == [1, 1, 1]  # its own 2 epochs, head only; the default 3
    assert all(b.runtime.served == "litert" for b in manifest.base_models)
    # The report and /v1/model say where each member started and at what size.
    page = (hetero / "report" / "index.html").read_text()
    assert "at 16 px and 20 px and 32 px" in page
    assert f"mobile.weights.h5 (sha256 {mobile.weights_sha256[:12]}" in page and "<td>32 px</td>" in page


def test_the_member_started_from_the_weights_file(hetero):
    """Its backbone was frozen throughout, so the served model's backbone holds exactly the file's weights."""
    served = keras.models.load_model(hetero / "base" / "mobile" / "model.keras", safe_mode=True)
    backbone = served.get_layer("backbone")
    fresh = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    fresh.load_weights(hetero.parent / "mobile.weights.h5")
    assert len(backbone.weights) == len(fresh.weights) > 100
    for ours, theirs in zip(backbone.weights, fresh.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    first = backbone.weights[0].numpy()
    with h5py.File(hetero.parent / "mobile.weights.h5") as f:
        stored = [f[k][()] for k in _datasets(f) if f[k].shape == first.shape]
    assert any(np.array_equal(first, s) for s in stored)  # the first layer's kernel is the file's, byte for byte


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names


def test_oof_rows_are_the_served_answers_at_each_size(hetero, digits_dir):
    manifest, oof = load_manifest(hetero), load_oof(hetero)
    pixels = training_pixels(digits_dir, manifest, oof["ids"])
    assert pixels.sizes == [16, 20, 32]
    predictor = Predictor(hetero)
    assert predictor.forward.sizes == [16, 20, 32] and predictor.sizes == [16, 20, 32]
    np.testing.assert_array_equal(predictor.merged_views(pixels).merged, oof["probabilities"])


def test_cli_v1_v2_and_grpc_agree_to_the_bit(hetero, digits_dir, tmp_path, capsys):
    probabilities = tmp_path / "probabilities.csv"
    code, _, err = run_cli(
        ["predict", hetero, digits_dir / "test", "--out", tmp_path / "s.csv", "--probabilities", probabilities], capsys
    )
    assert code == 0, err
    cli = pd.read_csv(probabilities, dtype={"Id": str}).set_index("Id")
    ids = cli.index[:4].tolist()
    images = [(digits_dir / "test" / i).read_bytes() for i in ids]
    grpc_port = free_port()
    server = Server(hetero, {"STACKSERVE_GRPC_PORT": str(grpc_port)})
    try:
        server.wait_ready()
        response = httpx.post(
            f"{server.url}/v1/predict", files=[("files", (i, d, "image/png")) for i, d in zip(ids, images)], timeout=60
        )
        assert response.status_code == 200, response.text
        v1 = np.array([[p["probabilities"][c] for c in cli.columns] for p in response.json()["predictions"]])
        np.testing.assert_allclose(v1, cli.loc[ids].to_numpy(), rtol=0, atol=1e-7)  # the CSV holds float32
        answers = {}
        for name, module, url in (
            ("v2 rest", httpclient, f"127.0.0.1:{server.port}"),
            ("grpc", grpcclient, f"127.0.0.1:{grpc_port}"),
        ):
            tensor = module.InferInput("images", [len(images)], "BYTES")
            array = np.array(images, dtype=object)
            tensor.set_data_from_numpy(array) if module is grpcclient else tensor.set_data_from_numpy(array, True)
            answers[name] = module.InferenceServerClient(url).infer(hetero.name, [tensor]).as_numpy("probabilities")
        for name, answer in answers.items():
            np.testing.assert_array_equal(answer, v1, err_msg=name)
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert info["image_sizes"] == [16, 20, 32]
        assert [(b["name"], b["image_size"], b["weights"]) for b in info["base_models"]] == [
            ("tiny_cnn", 16, None),
            ("mini", 20, None),
            ("mobile", 32, "mobile.weights.h5"),
        ]
    finally:
        server.stop()


def test_evaluate_and_a_student_at_its_own_size(hetero, digits_dir, tmp_path, capsys):
    code, out, err = run_cli(
        ["evaluate", hetero, "--data", digits_dir / "test", "--labels", digits_dir / "test_labels.csv"], capsys
    )
    assert code == 0, err
    assert all(re.search(rf"^{name}\s+base\s+0\.\d{{4}}", out, re.M) for name in SIZES), out
    copy = tmp_path / "bundle"
    subprocess.run(["cp", "-r", str(hetero), str(copy)], check=True)
    code, out, err = run_cli(["distill", copy, "--student", "tiny_cnn@24", "--epochs", "2"], capsys)
    assert code == 0, err
    student = load_manifest(copy).serving.student
    assert (student.architecture, student.image_size) == ("tiny_cnn", 24)
    predictor = Predictor(copy, serve_as="student")
    assert predictor.sizes == [24] and predictor.every_size == [16, 20, 24, 32]
    labelled = read_evaluation_set(digits_dir / "test", digits_dir / "test_labels.csv", predictor.classes)
    from stacking.data.datasets import load_pixels

    _, pixels, _ = load_pixels(labelled.subset(range(6)), predictor.sizes)
    answer = predictor.predict(pixels)
    assert (answer.served_by == "student").all() and answer.probabilities.shape == (6, 10)


# --- weights from a file, and offline machines ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: save_backbone(p, include_top=True), "it was saved with its classifier top"),
        (lambda p: save_backbone(p, "MobileNetV2"), "not weights of the mobilenetv3small backbone without its top"),
        (lambda p: p.write_bytes(b"not hdf5"), "not a Keras weights file"),
        (lambda p: None, "no such file"),
    ],
    ids=["with-top", "other-architecture", "not-hdf5", "missing"],
)
def test_a_bad_weights_file_is_refused_before_any_work(digits_dir, tmp_path, capsys, make, message):
    weights = tmp_path / "start.weights.h5"
    make(weights)
    out = tmp_path / "bundle"
    code, _, err = run_cli(
        ["fit", "--data", digits_dir, "--out", out, "--models", "mobilenetv3small", "--weights", weights], capsys
    )
    line = one_line_error(code, err)
    assert message in line and "start.weights.h5" in line, line
    assert not out.exists() and not (tmp_path / ".bundle.partial").exists()  # refused before the work folder


def _stacking(args: list[str], keras_home, tmp_path) -> subprocess.CompletedProcess:
    """The CLI in a child process with its own Keras cache (Keras reads KERAS_HOME once, on import)."""
    env = {"KERAS_HOME": str(keras_home), "STACKSERVE_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import run; run()", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )


def test_offline_a_missing_imagenet_file_is_named_with_where_to_put_it(digits_dir, tmp_path):
    home = tmp_path / "keras"
    done = _stacking(
        ["fit", "--data", digits_dir, "--out", tmp_path / "b", "--models", "mobilenetv3small", "--weights", "imagenet"],
        home,
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    expected = home / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert f"offline: Keras needs {expected.name}" in done.stderr and f"put it at {expected}" in done.stderr
    assert not (tmp_path / "b").exists()


def test_offline_with_the_file_in_keras_cache_the_fit_runs(digits_dir, tmp_path):
    """Keras' own cache file name (our backbone's weights, in Keras' legacy HDF5 layout) is used without a download."""
    from keras.src.legacy.saving import legacy_h5_format

    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    keras.utils.set_random_seed(1)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    args = ["fit", "--data", digits_dir, "--out", tmp_path / "b", "--models", "mobilenetv2", "--weights", "imagenet"]
    done = _stacking([*args, "--epochs", "1", "--runtime", "tf", "--tta", "1"], tmp_path / "keras", tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_manifest(tmp_path / "b").base_models[0].weights == "imagenet"
