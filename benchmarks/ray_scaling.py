"""A K-fold x M-model fit: wall time here, on Ray with 1 worker and with 2; and a killed fit resumed.

Each fit is a separate ``stacking fit`` process on the same data and seed, run one
after another in one go (the machine is shared and noisy: compare within a run):
- local: the jobs one after another in the process, TensorFlow on every core;
- ray x1: a local Ray cluster, each job asking for every core, so one job at a time;
- ray x2: each job asking for half the cores, so two jobs at a time, on half the threads each;
- killed + resumed: a local fit killed (SIGKILL, no clean-up) once some jobs are stored,
  then ``--resume``: its time, the jobs it ran, and whether its bundle equals the
  uninterrupted local one (OOF arrays, meta choice) to the bit.
Ray x1 runs jobs with the local fit's thread count, so its OOF arrays should equal the
local ones to the bit; ray x2's threads differ, so its numbers differ in the last bits
and, through training, somewhat more. Prints a table; writes JSON.

Usage: python benchmarks/ray_scaling.py [--workdir DIR] [--folds K] [--epochs E] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stacking.bundle import load_manifest, load_oof
from stacking.data.digits import write_digits
from stacking.training.fit import work_folder

MODELS = "tiny_cnn,mini_mobilenet"


def fit_command(data: Path, out: Path, folds: int, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from app.cli import run; run()",
        "fit",
        "--data",
        str(data),
        "--out",
        str(out),
        "--models",
        MODELS,
        "--protocol",
        "kfold",
        "--folds",
        str(folds),
        "--epochs",
        str(epochs),
        "--image-size",
        "32",
        "--tta",
        "2",
        "--seed",
        "0",
        *extra,
    ]


def run_fit(command: list[str], log: Path) -> float:
    """Seconds the fit took; its output goes to ``log``."""
    started = time.monotonic()
    with open(log, "w") as output:
        subprocess.run(
            command,
            check=True,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    return time.monotonic() - started


def cluster_config(folder: Path, cpus_per_job: float) -> Path:
    path = folder / f"cluster-{cpus_per_job:g}.toml"
    path.write_text(f"[cluster]\ncpus_per_job = {cpus_per_job}\n")
    return path


def kill_after_jobs(command: list[str], out: Path, jobs: int) -> tuple[float, int]:
    """Start the fit, SIGKILL it once ``jobs`` jobs are stored; (seconds it ran, jobs stored)."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    records = work_folder(out) / "jobs"
    while process.poll() is None and len(list(records.glob("*.json"))) < jobs:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.monotonic() - started, len(list(records.glob("*.json")))


def compare(a: Path, b: Path) -> dict:
    oof_a, oof_b = load_oof(a), load_oof(b)
    choice = [load_manifest(x).meta_learner.kind for x in (a, b)]
    return {
        "oof_identical": all(np.array_equal(oof_a[k], oof_b[k]) for k in oof_a),
        "oof_max_abs_diff": float(np.abs(oof_a["probabilities"] - oof_b["probabilities"]).max()),
        "same_choice": choice[0] == choice[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-ray"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/ray_scaling.json"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    data = args.workdir / "digits"
    write_digits(data)
    runs = {}
    cores = len(os.sched_getaffinity(0))  # a local fit's TensorFlow threads
    for name, extra in [
        ("local", []),
        ("ray x1", ["--executor", "ray", "--config", str(cluster_config(args.workdir, cores))]),
        ("ray x2", ["--executor", "ray", "--config", str(cluster_config(args.workdir, cores / 2))]),
    ]:
        out = args.workdir / name.replace(" ", "-")
        seconds = run_fit(fit_command(data, out, args.folds, args.epochs, *extra), out.with_suffix(".log"))
        manifest = load_manifest(out)
        runs[name] = {
            "seconds": round(seconds, 1),
            "meta": manifest.meta_learner.kind,
            "oof_accuracy": {k: round(v.accuracy, 4) for k, v in manifest.metrics.oof.items()},
            "worker_processes": len({r.worker for r in manifest.metrics.jobs.values()}),
            **({} if name == "local" else compare(args.workdir / "local", out)),
        }

    out = args.workdir / "resumed"
    total_jobs = 2 * args.folds
    killed_after, stored = kill_after_jobs(fit_command(data, out, args.folds, args.epochs), out, total_jobs // 2)
    resume_seconds = run_fit(fit_command(data, out, args.folds, args.epochs, "--resume"), out.with_suffix(".log"))
    runs["killed + resumed"] = {
        "seconds": round(killed_after + resume_seconds, 1),
        "killed_after": round(killed_after, 1),
        "resume_seconds": round(resume_seconds, 1),
        "jobs_kept": stored,
        "jobs_run_on_resume": total_jobs - stored,
        **compare(args.workdir / "local", out),
    }

    print(f"{args.folds}-fold x 2-model fit ({MODELS}, 32 px, {args.epochs} epochs, {os.cpu_count()} cores)")
    print(
        f"{'run':<18} {'wall s':>7} {'vs local':>9} {'processes':>9} {'OOF = local':>12} "
        f"{'max |diff|':>11} {'meta':>12}"
    )
    for name, r in runs.items():
        print(
            f"{name:<18} {r['seconds']:>7.1f} {r['seconds'] / runs['local']['seconds']:>9.2f} "
            f"{r.get('worker_processes', '-'):>9} {str(r.get('oof_identical', '-')):>12} "
            f"{r.get('oof_max_abs_diff', 0.0):>11.2e} {r.get('meta', '') or str(r.get('same_choice', '')):>12}"
        )
    resumed = runs["killed + resumed"]
    print(
        f"killed after {resumed['killed_after']} s with {resumed['jobs_kept']} of {total_jobs} jobs stored; "
        f"--resume ran {resumed['jobs_run_on_resume']} jobs in {resumed['resume_seconds']} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"folds": args.folds, "epochs": args.epochs, "cores": os.cpu_count(), "runs": runs}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
