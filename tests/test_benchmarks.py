"""The speed harness (``make bench``) runs end to end and reports every path it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_harness_measures_every_path(tiny_bundle, digits_dir, tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", str(tiny_bundle), "--folder", str(digits_dir / "test"),
         "--workdir", str(tmp_path), "--images", "8", "--offline-images", "24", "--requests", "16",
         "--memory-requests", "64", "--kfold-epochs", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    rates = r["limit_by_call_images"]
    best = max(rates, key=rates.get)
    assert r["limit_ips"] == rates[best] and r["offline_call_rows"] == int(best) * r["views"]
    assert r["service_call_rows"] == r["views"]  # one image per call: a lone image pays for its own views only
    assert set(r["service_ips"]) == set(r["service_p50_ms"]) == set(r["service_p99_ms"]) == {"1", "8", "32"}
    assert all(r["service_p50_ms"][c] <= r["service_p99_ms"][c] for c in ("1", "8", "32"))
    assert 0 < r["naive_ips"] < r["limit_ips"]  # a predict call per view of each image cannot beat one call
    assert r["single_p50_ms"] == r["service_p50_ms"]["1"] and r["single_forward_ms"] > 0
    for key in ("offline_ips", "cold_start_s", "rss_ready_mb", "rss_warm_mb", "rss_after_mb", "kfold_fit_s",
                "bare_fit_s", "single_predict_p50_ms"):
        assert r[key] > 0, key
    assert r["kfold_fit_ratio"] == r["kfold_fit_s"] / r["bare_fit_s"] and r["cores"] >= 1
    assert set(r["targets_met"]) == {"offline", "service", "naive", "single", "memory", "kfold"}
    assert r["targets_met"]["naive"] == (r["service_ips"]["32"] / r["naive_ips"] >= 20)
    effect = r["call_size_effect"]
    assert effect["images"] == 8 and 0 <= effect["labels_changed"] <= effect["over_1e-5"] <= 8
    for line in ("limit (one compiled call)", "service, 32 clients", "target offline / limit >= 0.90",
                 "target kfold fit / bare model.fit <= 1.15"):
        assert line in done.stdout, line
