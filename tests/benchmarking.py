"""Running a benchmark script as a user does, for the tests that check its harness end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
