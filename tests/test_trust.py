"""A bundle from someone else: no pickle, custom code only when trusted, signatures, a validated manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io as sio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from stacking.bundle import SIGNATURE, BundleError, Trust, load_manifest, sha256_file
from stacking.bundle.estimators import load_estimators, save_estimators, untrusted_types
from stacking.choices import META_KINDS
from stacking.data.images import Pixels
from stacking.inference.predictor import Predictor
from stacking.meta.calibration import TemperatureScaled
from stacking.meta.learners import make_meta, single_threaded
from stacking.training.config import load_config
from stacking.training.fit import fit
from tests.conftest import TINY_FIT, Server
from tests.hostile import WritesOnSetState, pickled
from tests.test_cli import one_line_error, run_cli
from tests.waiting import wait_loaded

PIXELS = Pixels({16: np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)})


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An elliptic-curve key pair as PEM files, as ``openssl ecparam -genkey`` would write them."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def plant(bundle: Path, name: str, payload: bytes) -> None:
    """Replace a bundle file and rewrite the manifest's sha256 for it, as an attacker would."""
    (bundle / name).write_bytes(payload)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def commands(bundle: Path, digits: Path, out: Path) -> dict[str, list]:
    """Every command that loads a bundle."""
    return {
        "serve": ["serve", bundle, "--port", "0"],
        "predict": ["predict", bundle, digits / "test", "--out", out / "s.csv"],
        "evaluate": ["evaluate", bundle, "--data", digits / "test", "--labels", digits / "test_labels.csv"],
        "meta": ["meta", bundle, "--meta", "mean"],
        "report": ["report", bundle],
    }


@pytest.mark.parametrize("command", ["serve", "predict", "evaluate", "meta", "report"])
@pytest.mark.parametrize("file", ["meta/meta.skops", "meta/candidates.skops"])
def test_a_pickle_in_place_of_a_meta_file_is_refused_and_never_loaded(
    bundle_copy, digits_dir, tmp_path, capsys, command, file
):
    mark = tmp_path / "pwned"
    plant(bundle_copy, file, pickled(mark))
    code, _, err = run_cli(commands(bundle_copy, digits_dir, tmp_path)[command], capsys)
    assert f"{file}: not a skops file" in one_line_error(code, err) and "a pickle is never loaded" in err
    assert not mark.exists()


@pytest.mark.parametrize("command", ["serve", "predict", "evaluate", "meta", "report"])
def test_a_skops_file_naming_an_untrusted_type_is_refused_naming_it(bundle_copy, digits_dir, tmp_path, capsys, command):
    mark = tmp_path / "ran"
    plant(bundle_copy, "meta/meta.skops", sio.dumps(WritesOnSetState(mark)))
    code, _, err = run_cli(commands(bundle_copy, digits_dir, tmp_path)[command], capsys)
    line = one_line_error(code, err)
    assert "meta/meta.skops: holds type(s) outside the trusted list: tests.hostile.WritesOnSetState" in line
    assert not mark.exists()


def test_the_service_stays_up_and_not_ready_on_a_pickled_meta_file(bundle_copy, tmp_path):
    mark = tmp_path / "pwned"
    plant(bundle_copy, "meta/meta.skops", pickled(mark))
    with TestClient(create_app(Settings(bundle=bundle_copy))) as client:
        wait_loaded(client.app.state.serving.state)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "meta/meta.skops: not a skops file" in answer.json()["error"]["message"]
    assert not mark.exists()


def test_every_meta_learner_round_trips_to_the_bit_without_pickle(tmp_path):
    """What skops rebuilds answers exactly as what was fitted, for every candidate and a temperature-scaled one."""
    rng = np.random.default_rng(0)
    X, y = np.log(rng.dirichlet(np.ones(3), size=(120, 2)).reshape(120, 6)), rng.integers(0, 3, 120)
    fitted = {kind: single_threaded(make_meta(kind, 2, 3).fit(X, y)) for kind in META_KINDS}
    fitted["scaled"] = TemperatureScaled(fitted["logreg"], 1.7)
    save_estimators(tmp_path / "all.skops", fitted)
    assert not untrusted_types(tmp_path / "all.skops")
    loaded = {k: single_threaded(v) for k, v in load_estimators(tmp_path / "all.skops").items()}
    for kind, estimator in fitted.items():
        assert type(loaded[kind]) is type(estimator)
        np.testing.assert_array_equal(loaded[kind].predict_proba(X), estimator.predict_proba(X), err_msg=kind)


def test_meta_files_written_before_the_stages_moved_still_load(tmp_path):
    """Format-3 bundles name ``stacking.meta`` and ``stacking.calibration`` as our classes' modules; they load, with
    the same answers, though the classes now live in ``stacking.meta.learners`` and ``stacking.meta.calibration``."""
    rng = np.random.default_rng(0)
    X, y = np.log(rng.dirichlet(np.ones(3), size=(60, 2)).reshape(60, 6)), rng.integers(0, 3, 60)
    fitted = {"rf": single_threaded(make_meta("rf", 2, 3).fit(X, y)), "mean": make_meta("mean", 2, 3).fit(X, y)}
    fitted["scaled"] = TemperatureScaled(fitted["mean"], 1.3)
    save_estimators(tmp_path / "now.skops", fitted)
    with zipfile.ZipFile(tmp_path / "now.skops") as now, zipfile.ZipFile(tmp_path / "old.skops", "w") as old:
        for member in now.infolist():
            content = now.read(member)
            if member.filename == "schema.json":
                content = content.replace(b'"stacking.meta.learners"', b'"stacking.meta"')
                content = content.replace(b'"stacking.meta.calibration"', b'"stacking.calibration"')
                assert b'"stacking.meta"' in content and b'"stacking.calibration"' in content
            old.writestr(member, content)
    assert not untrusted_types(tmp_path / "old.skops")
    loaded = load_estimators(tmp_path / "old.skops")
    for kind, estimator in fitted.items():
        np.testing.assert_array_equal(loaded[kind].predict_proba(X), estimator.predict_proba(X), err_msg=kind)


# --- custom code ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def custom_bundle(digits_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A bundle with a base model from ``tests.marking_model:build``, signed at the end of its fit; its public key."""
    folder = tmp_path_factory.mktemp("custom")
    private, public = make_keys(folder, "owner")
    out = folder / "bundle"
    settings = {**TINY_FIT, "models": ("tests.marking_model:build", "tiny_cnn"), "epochs": 1}
    fit(digits_dir, out, load_config(None, settings), echo=lambda _: None, sign_key=private)
    return out, public


def stacking(args: list, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script in a fresh process, as a newcomer runs it: nothing imported beforehand, no
    TF_CPP_MIN_LOG_LEVEL set."""
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import run; run()", *map(str, args)],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
def test_custom_code_is_imported_only_when_trusted(custom_bundle, digits_dir, tmp_path):
    bundle, _ = custom_bundle
    assert load_manifest(bundle).custom_modules == ["tests.marking_model"]
    mark = tmp_path / "imported"
    predict = ["predict", bundle, digits_dir / "test", "--out", tmp_path / "s.csv"]
    refused = stacking(predict, {"STACKSERVE_TEST_IMPORT_MARK": str(mark)})
    assert refused.returncode == 2, refused.stderr
    assert (
        "custom code from module(s) tests.marking_model" in refused.stderr and "--trust-custom-code" in refused.stderr
    )
    assert not mark.exists() and not (tmp_path / "s.csv").exists()
    trusted = stacking([*predict, "--trust-custom-code"], {"STACKSERVE_TEST_IMPORT_MARK": str(mark)})
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "s.csv").is_file() and not mark.exists()  # served from its LiteRT export: nothing to import
    on_tf = stacking([*predict, "--trust-custom-code", "--runtime", "tf"], {"STACKSERVE_TEST_IMPORT_MARK": str(mark)})
    assert on_tf.returncode == 0, on_tf.stderr
    assert mark.read_text() == "imported"  # Keras needs the module's layers


@pytest.mark.slow
def test_custom_code_bundle_is_served_only_when_trusted(custom_bundle, digits_dir, capsys):
    bundle, _ = custom_bundle
    code, _, err = run_cli(["serve", bundle, "--port", "0"], capsys)
    assert "tests.marking_model" in one_line_error(code, err)
    with TestClient(create_app(Settings(bundle=bundle))) as client:
        wait_loaded(client.app.state.serving.state)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "STACKSERVE_TRUST_CUSTOM_CODE=1" in answer.json()["error"]["message"]
    server = Server(bundle, {"STACKSERVE_TRUST_CUSTOM_CODE": "1"})
    try:
        server.wait_ready()
        with open(next((digits_dir / "test").iterdir()), "rb") as f:
            answer = httpx.post(f"{server.url}/v1/predict", files=[("files", ("a.png", f.read(), "image/png"))])
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] in load_manifest(bundle).classes
    finally:
        server.stop()


# --- signatures -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_signs_the_bundle_it_writes(custom_bundle):
    bundle, public = custom_bundle
    assert (bundle / SIGNATURE).is_file()
    load_manifest(bundle, Trust(custom_code=True, verify_key=public))


def test_a_signed_bundle_is_accepted_then_refused_when_anything_changes(bundle_copy, tmp_path, capsys):
    private, public = make_keys(tmp_path, "owner")
    _, stranger = make_keys(tmp_path, "stranger")
    code, _, err = run_cli(["report", bundle_copy, "--verify-key", public], capsys)
    assert "not signed (no signature.sig) and a verify key is set" in one_line_error(code, err)
    code, out, err = run_cli(["sign", bundle_copy, "--key", private], capsys)
    assert code == 0 and (bundle_copy / SIGNATURE).is_file(), err
    assert (
        run_cli(["report", bundle_copy, "--verify-key", public], capsys)[0] == 0
    )  # the report is outside the signature
    Predictor(bundle_copy, trust=Trust(verify_key=public))
    code, _, err = run_cli(["report", bundle_copy, "--verify-key", stranger], capsys)
    assert "signed with another key than --verify-key" in one_line_error(code, err)

    manifest = bundle_copy / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"image_size": 16', b'"image_size": 17'))
    with pytest.raises(BundleError, match=r"signature check failed.*changed since signing: manifest\.json"):
        Predictor(bundle_copy, trust=Trust(verify_key=public))
    manifest.write_bytes(original)

    model = bundle_copy / "base" / "tiny_cnn" / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    code, _, err = run_cli(["report", bundle_copy, "--verify-key", public], capsys)
    assert "changed since signing: base/tiny_cnn/model.keras" in one_line_error(code, err)


def test_verify_key_from_the_environment_guards_the_service(bundle_copy, tmp_path, monkeypatch):
    _, public = make_keys(tmp_path, "owner")
    monkeypatch.setenv("STACKSERVE_VERIFY_KEY", str(public))
    with TestClient(create_app(Settings(bundle=bundle_copy))) as client:
        wait_loaded(client.app.state.serving.state)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "not signed" in answer.json()["error"]["message"]


def test_meta_step_removes_a_signature_it_invalidates(bundle_copy, tmp_path, capsys):
    private, public = make_keys(tmp_path, "owner")
    assert run_cli(["sign", bundle_copy, "--key", private], capsys)[0] == 0
    code, out, err = run_cli(["meta", bundle_copy, "--meta", "mean", "--verify-key", public], capsys)
    assert code == 0, err
    assert "its signature was removed: sign it again" in out and not (bundle_copy / SIGNATURE).exists()


def test_a_bad_signing_key_is_refused_before_any_training(digits_dir, tmp_path, capsys):
    (tmp_path / "key.pem").write_text("not a key")
    code, _, err = run_cli(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            tmp_path / "b",
            "--models",
            "tiny_cnn",
            "--sign-key",
            tmp_path / "key.pem",
        ],
        capsys,
    )
    assert "--sign-key" in one_line_error(code, err) and "key.pem" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.partial").exists()


# --- the manifest -----------------------------------------------------------------------------------------


def edit_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["base_models"][0].pop("files"), r"base_models\.0\.files: Field required"),
        (lambda m: m.update(surprise=1), r"surprise: unknown field"),
        (lambda m: m["meta_learner"].update(extra_file="x.pkl"), r"meta_learner\.extra_file: unknown field"),
        (lambda m: m.update(image_size="big"), r"image_size: Input should be a valid integer"),
        (lambda m: m["protocol"].update(name="bootstrap"), r"protocol\.name: Input should be 'holdout' or 'kfold'"),
    ],
)
def test_manifest_errors_name_the_field(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_manifest(bundle_copy)


def test_a_format_2_bundle_is_refused_with_the_way_to_convert_it(bundle_copy, capsys):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=2))
    code, _, err = run_cli(["report", bundle_copy], capsys)
    line = one_line_error(code, err)
    assert "bundle format 2" in line and "stacking migrate BUNDLE --trust-custom-code" in line


def downgrade_to_format_2(bundle: Path) -> None:
    """Write the bundle as format 2 had it: the meta-learners as joblib pickles, no custom module list."""
    import joblib

    from stacking.bundle.estimators import load_estimators

    for new, old in (("meta/meta.skops", "meta.joblib"), ("meta/candidates.skops", "candidates.joblib")):
        joblib.dump(load_estimators(bundle / new), bundle / old)
        (bundle / new).unlink()

    def change(m: dict) -> None:
        m.update(format_version=2)
        m.pop("custom_modules")
        m["meta_learner"].update(file="meta.joblib", candidates_file="candidates.joblib")
        for new, old in (("meta/meta.skops", "meta.joblib"), ("meta/candidates.skops", "candidates.joblib")):
            del m["files"][new]
            m["files"][old] = sha256_file(bundle / old)

    edit_manifest(bundle, change)


def test_migrate_rewrites_a_format_2_bundle_without_pickle(tiny_bundle, bundle_copy, capsys):
    downgrade_to_format_2(bundle_copy)
    code, _, err = run_cli(["migrate", bundle_copy], capsys)
    assert "add --trust-custom-code if you trust where this bundle came from" in one_line_error(code, err)
    assert (bundle_copy / "meta.joblib").is_file()
    code, out, err = run_cli(["migrate", bundle_copy, "--trust-custom-code"], capsys)
    assert code == 0, err
    assert "is now bundle format 4" in out and not list(bundle_copy.glob("*.joblib"))
    manifest = load_manifest(bundle_copy)
    assert manifest.format_version == 4 and manifest.meta_learner.file == "meta/meta.skops"
    before, after = Predictor(tiny_bundle).predict(PIXELS), Predictor(bundle_copy).predict(PIXELS)
    np.testing.assert_array_equal(after.probabilities, before.probabilities)
    code, _, err = run_cli(["migrate", bundle_copy, "--trust-custom-code"], capsys)
    assert "already in format 4, which this version reads" in one_line_error(code, err)


# --- the CLI's own cost and noise -------------------------------------------------------------------------


def test_help_lists_every_choice_without_importing_tensorflow():
    probe = (
        "import sys; from app.cli import main; main(['fit', '--help']); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"
    from stacking.choices import META, TTA_POLICY

    for value in TTA_POLICY.values + META.values:
        assert value in done.stdout, value


def test_the_filter_drops_tensorflows_cuda_lines_and_keeps_real_warnings():
    probe = (
        "import os, warnings; from stacking.quiet import quiet_tensorflow; quiet_tensorflow(); "
        "os.write(2, b'E0000 00:00:1 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n'); "
        "os.write(2, b'I0000 00:00:1 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n'); "
        "os.write(2, b'E0000 00:00:1 1 meta_optimizer.cc:967] NodeDef mentions attribute "
        "use_unbounded_threadpool\\n'); "
        "os.write(2, b'W0000 00:00:1 1 some_op.cc:1] a real warning from C++\\n'); "
        "warnings.warn('a real warning from Python')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "a real warning from C++" in done.stderr and "a real warning from Python" in done.stderr
    for noise in ("cuInit", "cudart_stub", "NodeDef"):
        assert noise not in done.stderr


@pytest.mark.slow
def test_a_fit_prints_no_cuda_or_nodedef_lines(digits_dir, tmp_path):
    done = stacking(
        [
            "fit",
            "--data",
            digits_dir,
            "--out",
            tmp_path / "b",
            "--models",
            "tiny_cnn,mini_mobilenet",
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--tta",
            "2",
        ]
    )
    assert done.returncode == 0, done.stderr
    predicted = stacking(["predict", tmp_path / "b", digits_dir / "test", "--out", tmp_path / "s.csv"])
    assert predicted.returncode == 0, predicted.stderr
    output = done.stdout + done.stderr + predicted.stdout + predicted.stderr
    for noise in ("cuInit", "cudart_stub", "cuda drivers", "NodeDef", "absl::InitializeLog"):
        assert noise not in output, output
