"""A fit is a set of jobs: run on a local Ray cluster (2 CPUs) they give what a local fit gives; a job whose
worker dies is retried; a fit interrupted after some jobs resumes to the uninterrupted bundle; Ray batch
prediction equals local prediction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import ray

from stacking.bundle import load_manifest, load_oof
from stacking.errors import UserError
from stacking.training.config import ClusterConfig, load_config
from stacking.training.fit import fit, job_settings, plan_jobs, work_folder
from stacking.training.jobs import data_fingerprint
from stacking.training.protocols import make_splits
from tests.test_cli import one_line_error, run_cli
from tests.test_fit import assert_same_choice

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

KFOLD = {
    "models": ("tiny_cnn", "mini_mobilenet"),
    "image_size": 16,
    "epochs": 1,
    "tta_views": 2,
    "protocol": "kfold",
    "folds": 2,
    "seed": 5,
    "runtime": "litert",  # auto picks a runtime by timing, and the OOF rows are its answers: pinned for bits
}
HOLDOUT = {"image_size": 16, "epochs": 1, "tta_views": 1, "seed": 2}
CORES = len(os.sched_getaffinity(0))  # TensorFlow's threads in a local fit: a Ray job with as many gives the same bits


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray with 2 CPUs for this module; the fits and predictions below join it."""
    marker = tmp_path_factory.mktemp("crash") / "crashed"
    os.environ["STACKSERVE_CRASH_MARKER"] = str(marker)  # Ray's workers inherit the environment
    ray.init(num_cpus=max(2, CORES), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield marker
    ray.shutdown()
    del os.environ["STACKSERVE_CRASH_MARKER"]


def on_ray(overrides: dict, **cluster) -> object:
    cfg = load_config(None, overrides)
    return dataclasses.replace(cfg, cluster=ClusterConfig("ray", **cluster))


def assert_same_bundle(a: Path, b: Path) -> None:
    """The same OOF arrays, meta-learner choice and model weights, bit for bit."""
    oof_a, oof_b = load_oof(a), load_oof(b)
    assert set(oof_a) == set(oof_b)
    for key in oof_a:
        np.testing.assert_array_equal(oof_a[key], oof_b[key], err_msg=key)
    assert_same_choice(a, b)
    files = [f for entry in load_manifest(a).base_models for f in entry.files]
    assert files == [f for entry in load_manifest(b).base_models for f in entry.files]
    for file in files:
        for wa, wb in zip(*(keras.models.load_model(x / file).get_weights() for x in (a, b)), strict=True):
            np.testing.assert_array_equal(wa, wb, err_msg=file)


def ran(lines: list[str]) -> list[str]:
    """The jobs that ended in this fit, from its progress lines."""
    return [
        line.split("] ")[1].split(":")[0]
        for line in lines
        if line.startswith("[jobs: ") and "started again" not in line
    ]


def test_ray_fit_equals_a_local_fit_interrupted_and_resumed(ray_cluster, digits_dir, tmp_path):
    """One comparison shows both: the executor changes nothing, and neither does an interruption."""
    local = tmp_path / "local"

    def interrupt_after_two_jobs(line: str) -> None:
        if line.startswith("[jobs: 2/4 done"):
            raise KeyboardInterrupt  # Ctrl-C, or the machine going away, once the second job is stored

    with pytest.raises(KeyboardInterrupt):
        fit(digits_dir, local, load_config(None, KFOLD), echo=interrupt_after_two_jobs)
    jobs = work_folder(local) / "jobs"
    assert sorted(p.name for p in jobs.glob("*.json")) == ["tiny_cnn.fold0.json", "tiny_cnn.fold1.json"]
    assert not local.exists()
    with pytest.raises(UserError, match="add --resume"):
        fit(digits_dir, local, load_config(None, KFOLD), echo=lambda _: None)
    (jobs / "tiny_cnn.fold1.keras").write_bytes(b"damaged")  # its sha256 no longer matches: it runs again
    lines = []
    fit(digits_dir, local, load_config(None, KFOLD), echo=lines.append, resume=True)
    assert "resuming: 1 of 4 jobs already done" in lines
    assert ran(lines) == ["tiny_cnn fold 1", "mini_mobilenet fold 0", "mini_mobilenet fold 1"]
    assert not work_folder(local).exists()

    lines = []
    manifest = fit(digits_dir, tmp_path / "ray", on_ray(KFOLD, cpus_per_job=CORES), echo=lines.append)
    assert_same_bundle(local, tmp_path / "ray")
    assert any(line.startswith("[jobs: 4/4 done, 0 running, 0 failed]") for line in lines), lines
    runs = manifest.metrics.jobs
    assert len(runs) == 4 and all(
        r.threads == CORES and not r.worker.endswith(f":{os.getpid()}") for r in runs.values()
    )  # in Ray's workers, with the threads they asked for


def test_a_dead_worker_is_retried_a_job_that_keeps_failing_fails_the_fit_and_resume_keeps_the_rest(
    ray_cluster, digits_dir, tmp_path, capsys
):
    out, lines = tmp_path / "b", []
    once, always = "tests.crashing_model:crash_once", "tests.crashing_model:crash_always"
    cfg = on_ray({**HOLDOUT, "models": ("tiny_cnn", once, always)}, cpus_per_job=1, max_retries=1)
    with pytest.raises(RuntimeError, match=r"tests.crashing_model.crash_always: WorkerCrashedError after 1 retries"):
        fit(digits_dir, out, cfg, echo=lines.append)
    assert ray_cluster.exists()  # crash_once's first worker did die ...
    assert any("tests.crashing_model.crash_once: started again (attempt 2)" in line for line in lines), lines
    assert sorted(ran(lines)) == [
        "tests.crashing_model.crash_always FAILED",
        "tests.crashing_model.crash_once",
        "tiny_cnn",
    ]  # ... and its second attempt finished
    assert (
        lines[-1] == f"2 finished job(s) kept in {work_folder(out)}: rerun the same command with --resume to continue"
    )
    assert not out.exists()
    records = {p.stem: json.loads(p.read_text()) for p in (work_folder(out) / "jobs").glob("*.json")}
    assert set(records) == {"tiny_cnn", "tests.crashing_model.crash_once"}
    assert records["tests.crashing_model.crash_once"]["worker"].split(":")[1] != ray_cluster.read_text()
    assert {r["threads"] for r in records.values()} == {1}  # TensorFlow kept to the 1 CPU each job asked for

    # The next fit must be told what to do with them; --resume without the failing model runs nothing new.
    args = [
        "fit",
        "--data",
        digits_dir,
        "--out",
        out,
        "--models",
        f"tiny_cnn,{once}",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--tta",
        "1",
        "--seed",
        "2",
        "--executor",
        "ray",
    ]
    code, _, err = run_cli(args, capsys)
    assert "add --resume to continue it" in one_line_error(code, err)
    code, text, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "resuming: 2 of 2 jobs already done" in text and not work_folder(out).exists()
    assert [b.name for b in load_manifest(out).base_models] == ["tiny_cnn", "tests.crashing_model.crash_once"]


def test_a_job_key_follows_what_the_job_computes_from():
    def key(**overrides) -> str:
        cfg = load_config(None, {**HOLDOUT, "models": ("tiny_cnn",), **overrides})
        splits = make_splits(np.arange(40) % 2, seed=cfg.seed)
        return plan_jobs(cfg, splits, None)[0].key(job_settings(cfg), "data")

    same = key()
    assert key(meta="logreg") == same and key(executor="ray") == same  # how it is stacked or where it runs
    assert len({same, key(dropout=0.3), key(epochs=2), key(tta_policy="none"), key(seed=3), key(image_size=24)}) == 6


def test_a_job_key_follows_the_content_of_its_weights_file(tmp_path):
    """Another file under the same name reruns the job on --resume; the file is hashed once per member."""
    start = tmp_path / "start.weights.h5"

    def key() -> str:
        cfg = load_config(None, {**HOLDOUT, "models": ("mobilenetv2@32",), "weights": str(start)})
        jobs = plan_jobs(cfg, make_splits(np.arange(40) % 2, seed=cfg.seed), None)
        assert jobs[0].weights_sha256 == hashlib.sha256(start.read_bytes()).hexdigest()
        return jobs[0].key(job_settings(cfg), "data")

    start.write_bytes(b"first")
    first = key()
    start.write_bytes(b"second")
    assert key() != first


def test_the_data_fingerprint_sees_one_pixel_a_label_or_an_id_change(tmp_path):
    """Pixels count by each file's content and the decoder (never read again): one changed pixel is another key."""
    from PIL import Image

    from stacking.data.cache import PixelCache
    from stacking.data.datasets import ImageSet, load_pixels

    def pixels_of(values: list[np.ndarray], folder: str):
        paths = []
        for k, value in enumerate(values):
            paths.append(tmp_path / folder / f"{k}.png")
            paths[-1].parent.mkdir(exist_ok=True)
            Image.fromarray(value).save(paths[-1])
        return load_pixels(ImageSet(paths, ["a", "b"]), [4], cache=PixelCache(tmp_path / "cache"))[1].at(4)

    ids, labels, image = ["a.png", "b.png"], np.array([0, 1]), np.zeros((4, 4, 3), np.uint8)
    changed = image.copy()
    changed[3, 3, 2] = 1
    pixels, changed_pixel = pixels_of([image, image], "same"), pixels_of([image, changed], "changed")
    prints = {
        data_fingerprint(ids, labels, pixels),
        data_fingerprint(ids, labels, changed_pixel),
        data_fingerprint(ids, labels[::-1].copy(), pixels),
        data_fingerprint(["a.png", "c.png"], labels, pixels),
    }
    assert len(prints) == 4 and data_fingerprint(ids, labels, pixels_of([image, image], "copy")) in prints


def test_a_request_the_local_cluster_cannot_meet_is_refused(ray_cluster, digits_dir, tmp_path):
    too_many = max(2, CORES) + 1
    with pytest.raises(UserError, match=rf"\[cluster\] cpus_per_job {too_many}: the local Ray cluster has "):
        fit(
            digits_dir,
            tmp_path / "b",
            on_ray({**HOLDOUT, "models": ("tiny_cnn",)}, cpus_per_job=too_many),
            echo=lambda _: None,
        )
    assert not work_folder(tmp_path / "b").exists()


def _predict(bundle: Path, images: Path, out: Path, capsys, *extra) -> tuple[int, str, str]:
    return run_cli(
        [
            "predict",
            bundle,
            images,
            "--out",
            out,
            "--batch-size",
            "7",
            "--probabilities",
            out.with_suffix(".parquet"),
            *extra,
        ],
        capsys,
    )


def test_ray_batch_prediction_equals_local_prediction(ray_cluster, tiny_bundle, digits_dir, tmp_path, capsys):
    images = tmp_path / "test"
    shutil.copytree(digits_dir / "test", images)
    shutil.copy(digits_dir / "sample_submission.csv", tmp_path / "sample_submission.csv")
    assert _predict(tiny_bundle, images, tmp_path / "local.csv", capsys)[0] == 0
    code, text, err = _predict(tiny_bundle, images, tmp_path / "ray.csv", capsys, "--executor", "ray", "--actors", "2")
    assert code == 0, err
    assert "wrote 80 predictions" in text
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()  # same rows, same order
    local_probs, ray_probs = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("local", "ray"))
    pd.testing.assert_frame_equal(local_probs, ray_probs, check_exact=True)  # the same numbers, to the bit

    (images / "test_9999.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = _predict(tiny_bundle, images, tmp_path / "bad.csv", capsys, "--executor", "ray")
    line = one_line_error(code, err)
    assert "test_9999.png" in line and "--on-bad-image skip" in line
