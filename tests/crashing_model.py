"""Model builders whose process dies, as a Ray worker lost mid-job (killed, out of memory) does.

``crash_once`` dies the first time it is called in a test session (a marker file, named by
``STACKSERVE_CRASH_MARKER``, remembers it), then builds a real model; ``crash_always``
dies every time. Only for ``--executor ray``: run locally they would end the test process.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from tests.custom_model import build


def crash_once(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    marker = Path(os.environ["STACKSERVE_CRASH_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return build(input_shape, num_classes)


def crash_always(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    os._exit(1)
