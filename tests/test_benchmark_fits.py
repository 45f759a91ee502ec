"""The benchmarks that fit their own stacks run end to end on tiny settings (a file of their own, so that
``make test``'s two workers take them beside the serving harnesses, not after them)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarking import run_benchmark

pytestmark = pytest.mark.slow  # fits of their own: left out by make test-fast


def test_heterogeneous_harness_compares_stacks_on_an_untouched_test_split(tmp_path):
    out = tmp_path / "heterogeneous.json"
    done = run_benchmark(
        "heterogeneous",
        "--workdir",
        str(tmp_path / "work"),
        "--epochs",
        "1",
        "--stacks",
        "heterogeneous",
        "--json",
        str(out),
        timeout=900,
    )
    (result,) = json.loads(out.read_text())
    assert result["sizes"] == {"tiny_cnn": 16, "small_resnet": 32, "mini_mobilenet": 40}
    assert result["test_images"] == 1079 and result["images_per_second"] > 0 and 0 < result["oof_correlation"] <= 1
    gain = result["gain_over_best"]
    assert gain["ci_low"] <= gain["difference"] <= gain["ci_high"]
    assert "| heterogeneous | tiny_cnn@16: " in done.stdout


def test_transfer_benchmark_pretrains_saves_a_backbone_and_studies_every_strategy(tmp_path):
    """Tiny: 4 letters a class for one epoch, 10 digits a class, two strategies; the weights file and the table."""
    out = tmp_path / "transfer.json"
    done = run_benchmark(
        "transfer",
        "--workdir",
        tmp_path,
        "--source-per-class",
        "4",
        "--source-epochs",
        "1",
        "--per-class",
        "10",
        "--epochs",
        "1",
        "--strategies",
        "scratch,phased",
        "--json",
        out,
        timeout=900,
    )
    r = json.loads(out.read_text())
    assert r["source"]["classes"] == 26 and r["source"]["images"] == 104 and r["source"]["fonts"] >= 1
    assert (tmp_path / "letters.weights.h5").stat().st_size > 0
    rows = {row["strategy"]: row for row in r["studies"]["10"]["rows"]}
    assert set(rows) == {"scratch", "phased"}
    assert all(0 <= row["ci_low"] <= row["accuracy"] <= row["ci_high"] <= 1 for row in rows.values())
    assert "| phased |" in done.stdout and "10/class: best pretrained" in done.stdout
