"""The speed harness (``make bench``) runs end to end and reports every path it promises."""

from __future__ import annotations

import json

import pytest

from tests.benchmarking import run_benchmark

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast


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
