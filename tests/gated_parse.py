"""Imported into a test server before it starts: every /v2 infer body's parse waits at a gate the test opens.

The parse first writes ``parsing`` in the directory named by STACKSERVE_TEST_PARSE_GATE, then waits for ``open``
there. While it waits, a request the loop answers proves the parse is not on the loop, whatever the machine's speed.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.routes import v2
from tests.waiting import wait_until

_gate = Path(os.environ["STACKSERVE_TEST_PARSE_GATE"])
_read = v2._read


def _gated_read(*args, **kwargs):
    (_gate / "parsing").touch()
    wait_until(lambda: (_gate / "open").exists(), "the test to open the parse gate", timeout=60, every=0.01)
    return _read(*args, **kwargs)


v2._read = _gated_read
