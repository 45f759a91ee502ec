"""Keep TensorFlow's start-up noise off a CPU-only terminal, and every real warning on it.

On a machine without a GPU, TensorFlow's C++ side prints lines about CUDA it cannot
find (``cudart_stub``, ``failed call to cuInit``) and about graph attributes
(``NodeDef mentions attribute``), and LiteRT a line per interpreter, however ``TF_CPP_MIN_LOG_LEVEL`` is set: many come
before its logging is set up. They go straight to file descriptor 2, so the console
script routes that descriptor through a thread that drops exactly those lines. Python's
own ``sys.stderr`` (warnings, tracebacks, progress bars) keeps the real terminal.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"cudart_stub\.cc|failed call to cuInit|cuda_(?:platform|driver|diagnostics|dnn|fft|blas)\.cc|"
    rb"NodeDef mentions attribute|All log messages before absl::InitializeLog|Unable to register cu\w+ factory|"
    # LiteRT's converter and interpreter: settings it ignores, and a line for every interpreter made.
    rb"tf_tfl_flatbuffer_helpers\.cc|Created TensorFlow Lite XNNPACK delegate|fully_quantize: \d, inference_type"
)
# How a C++ log line starts: glog's "I0000 00:00:..." or TensorFlow's "2026-01-01 10:00:00.1: I ...".
LOG_START = re.compile(rb"^(?:[IWEF]\d{4} |\d{4}-\d\d-\d\d |WARNING: All log)")


def is_noise(line: bytes) -> bool:
    return NOISE.search(line) is not None


def _pump(source: int, target: int) -> None:
    """Copy ``source`` to ``target`` line by line, leaving out the noise; a partial line that is no log
    line goes out at once (a prompt, a progress bar)."""
    pending = b""
    with io.FileIO(source, "rb", closefd=True) as src:
        while chunk := src.read(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if pending and not LOG_START.match(pending):
                out, pending = out + pending, b""
            if out:
                os.write(target, out)
    if pending and not is_noise(pending):
        os.write(target, pending)


def quiet_tensorflow() -> None:
    """Filter file descriptor 2 for this process and its children; idempotent."""
    if getattr(quiet_tensorflow, "installed", False):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO lines off; warnings and errors on
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "wb", closefd=False),
        encoding=sys.stderr.encoding,
        errors="backslashreplace",
        line_buffering=True,
    )
    pump = threading.Thread(target=_pump, args=(read_end, real), name="stderr-filter", daemon=True)
    pump.start()

    def restore() -> None:  # at exit: close our end of the pipe, let the pump write what is left
        sys.stderr.flush()
        os.dup2(real, 2)
        pump.join(timeout=2)

    atexit.register(restore)
    quiet_tensorflow.installed = True
