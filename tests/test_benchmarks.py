"""The speed harness (``make bench``) runs end to end and reports every path it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``python benchmarks/NAME.py ARGS`` from the checkout, as a user runs it; it must succeed."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_throughput_harness_measures_every_path(tiny_bundle, digits_dir, tmp_path):
    out = tmp_path / "throughput.json"
    done = run_benchmark(
        "throughput",
        str(tiny_bundle),
        "--folder",
        str(digits_dir / "test"),
        "--workdir",
        str(tmp_path),
        "--images",
        "8",
        "--offline-images",
        "24",
        "--requests",
        "16",
        "--memory-requests",
        "64",
        "--kfold-epochs",
        "1",
        "--json",
        str(out),
        timeout=900,
    )
    r = json.loads(out.read_text())
    assert r["runtime"] == {"tiny_cnn": "litert", "mini_mobilenet": "litert"}  # as the fit chose; beside TF
    for runtime in ("tf", "auto"):
        x = r[runtime]
        rates = x["limit_by_call_images"]
        best = max(rates, key=rates.get)
        assert x["limit_ips"] == rates[best] and x["offline_call_rows"] == int(best) * r["views"]
        assert x["service_call_rows"] == r["views"]  # one image per call: a lone image pays for its own views only
        assert set(x["service_ips"]) == set(x["service_p50_ms"]) == set(x["service_p99_ms"]) == {"1", "8", "32"}
        assert all(x["service_p50_ms"][c] <= x["service_p99_ms"][c] for c in ("1", "8", "32"))
        assert x["single_p50_ms"] == x["service_p50_ms"]["1"] and x["single_forward_ms"] > 0
        for key in ("offline_ips", "cold_start_s", "rss_ready_mb", "single_predict_p50_ms"):
            assert x[key] > 0, key
        effect = x["call_size_effect"]
        assert effect["images"] == 8 and 0 <= effect["labels_changed"] <= effect["over_1e-5"] <= 8
        for path in ("limit", "offline", "service"):  # achieved model FLOP/s over the machine's matmul rate
            ips = {"limit": x["limit_ips"], "offline": x["offline_ips"], "service": x["service_ips"]["32"]}[path]
            assert r["efficiency"][runtime][path] == ips * r["model_gflop_per_image"] / r["matmul_gflops"]
    assert 0 < r["naive_ips"] < r["tf"]["limit_ips"]  # a predict call per view of each image cannot beat one call
    assert r["auto"]["rss_warm_mb"] > 0 and r["auto"]["rss_after_mb"] > 0 and "rss_after_mb" not in r["tf"]
    assert r["matmul_gflops"] == max(r["matmul_gflops_by_library"].values()) > 0
    # tiny_cnn's 3x3 convolutions and mini_mobilenet's depthwise ones at 16 px, 3 views: a few MFLOP an image
    assert 1e-3 < r["model_gflop_per_image"] < 0.1
    assert set(r["per_model_speedup"]) == {"tiny_cnn", "mini_mobilenet"} and min(r["per_model_speedup"].values()) > 0
    assert r["speedup_vs_tf"] == {
        "offline": r["auto"]["offline_ips"] / r["tf"]["offline_ips"],
        "service": r["auto"]["service_ips"]["32"] / r["tf"]["service_ips"]["32"],
        "single": r["tf"]["single_p50_ms"] / r["auto"]["single_p50_ms"],
    }
    assert r["kfold_fit_ratio"] == r["kfold_fit_s"] / r["bare_fit_s"] and r["cores"] >= 1
    assert set(r["targets_met"]) == {
        "offline",
        "service",
        "naive",
        "single",
        "memory",
        "kfold",
        "speedup_single",
        "speedup_service",
        "speedup_offline",
        "per_model",
    }
    assert r["targets_met"]["naive"] == (r["auto"]["service_ips"]["32"] / r["naive_ips"] >= 20)
    for line in (
        "limit (one call)",
        "service, 32 clients",
        "target offline / limit >= 0.90",
        "exported / TF: offline",
        "target kfold fit / bare model.fit <= 1.15",
        "machine: float32 matmul",
    ):
        assert line in done.stdout, line


def test_load_harness_drives_the_service_through_triton_clients(tiny_bundle, digits_dir, tmp_path):
    out = tmp_path / "load.json"
    done = run_benchmark(
        "load",
        str(tiny_bundle),
        "--images",
        str(digits_dir / "test"),
        "--mode",
        "clients",
        "--client-concurrency",
        "1,4",
        "--requests",
        "12",
        "--json",
        str(out),
        timeout=600,
    )
    clients = json.loads(out.read_text())["clients"]
    assert set(clients) == {"bare /v1", "tritonclient http", "tritonclient grpc"}
    for levels in clients.values():
        assert set(levels) == {"1", "4"}
        assert all(r["images_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in levels.values())
    assert "tritonclient grpc" in done.stdout and "/ bare" in done.stdout


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
