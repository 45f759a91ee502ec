"""Shared fixtures: a small real digits set, one tiny fitted bundle, and a served copy of it."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Decoded pixels go to a cache of this test process's own (and its subprocesses'), never the user's.
os.environ["STACKSERVE_CACHE_DIR"] = tempfile.mkdtemp(prefix="stackserve-test-cache-")
atexit.register(shutil.rmtree, os.environ["STACKSERVE_CACHE_DIR"], ignore_errors=True)

from stacking.data.digits import write_digits  # noqa: E402
from stacking.training.config import load_config  # noqa: E402
from stacking.training.fit import fit  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

# Small enough to fit in seconds on 2 cores, big enough for every split and CV fold.
TINY_FIT = {
    "models": ("tiny_cnn", "mini_mobilenet"),
    "image_size": 16,
    "epochs": 3,
    "tta_policy": "shift",
    "tta_views": 3,
    "seed": 0,
    # Exported, whatever the timing on a busy machine: auto keeps a model on TensorFlow when it times faster there
    # (tiny_cnn at 16 px is close: 8.6 against 6.2 ms alone), and the tests below serve the exported files.
    "runtime": "litert",
}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """400 real digit scans in the class-folder layout, with a labelled test split."""
    out = tmp_path_factory.mktemp("digits")
    write_digits(out, limit=400)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(digits_dir, tmp_path_factory) -> Path:
    """A bundle fitted once for the session; tests that alter it work on a copy."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    fit(digits_dir, out, load_config(None, TINY_FIT), echo=lambda _: None)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``stacking serve`` in a child process on a loopback port."""

    def __init__(
        self, bundle: Path, env: dict[str, str] | None = None, via_uvicorn: bool = False, preload: str | None = None
    ):
        """``via_uvicorn``: start as a container does, ``uvicorn --factory`` with STACKSERVE_BUNDLE set.
        ``preload``: a test module imported before the server starts (one that patches the app to observe it)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if via_uvicorn:
            command = ["-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(self.port)]
            env = {**(env or {}), "STACKSERVE_BUNDLE": str(bundle)}
        else:
            start = f"import {preload}; " * bool(preload) + "from app.cli import run; run()"
            command = ["-c", start, "serve", str(bundle), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, done, timeout: float = 120) -> httpx.Response:
        """Poll ``/readyz`` until ``done(response)``; return that response."""

        def answer() -> httpx.Response | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.process.stdout.read()}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2)
            except httpx.TransportError:
                return None
            return response if done(response) else None

        return wait_until(answer, "the server to reach the expected state", timeout, every=0.3)

    def wait_ready(self, timeout: float = 120) -> None:
        self.wait_for(lambda r: r.status_code == 200, timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def metric(server, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in /metrics that carry ``labels``."""
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for found, value in re.findall(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in found for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="session")
def server(tiny_bundle):
    """The tiny bundle served with small limits, so the limits can be tested."""
    srv = Server(
        tiny_bundle, {"STACKSERVE_MAX_FILES": "8", "STACKSERVE_MAX_BODY_BYTES": "200000", "STACKSERVE_MAX_TTA": "5"}
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


# Tests that use these are slow by what they start (a server, Chromium, a fit of their own): make test-fast leaves
# them out like the tests marked slow by hand.
SLOW_FIXTURES = {"server", "browser", "memoriser_bundle", "custom_bundle"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it where it runs as root)"
)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield chromium
        chromium.close()
