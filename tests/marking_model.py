"""A user's own architecture whose module leaves a mark when imported, so tests see whether it ran."""

from __future__ import annotations

import os
from pathlib import Path

from tests.custom_model import build  # noqa: F401  the architecture itself

if os.environ.get("STACKSERVE_TEST_IMPORT_MARK"):
    Path(os.environ["STACKSERVE_TEST_IMPORT_MARK"]).write_text("imported")
