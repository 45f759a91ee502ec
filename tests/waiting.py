"""Waiting on a state, never on the clock: the one poll the tests use (light: no TensorFlow, for subprocesses)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120, every: float = 0.05) -> object:
    """Poll ``condition`` until it returns something true, and return that; a timeout names ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


def wait_loaded(state, timeout: float = 120) -> None:
    """Until the service's background load has ended, ready or failed (it records either before it ends)."""
    wait_until(lambda: state.ready or state.error is not None, "the bundle to load or fail", timeout)
