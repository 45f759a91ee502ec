"""Which inference runtime: TensorFlow against LiteRT (float32 and INT8), and OpenVINO where installed.

Each architecture (weights none, random init, 10 classes) is built at one image size
and run at each call size, every runtime in turn within each repeat (so all see the
same machine), median image-views/s of ``--repeats``; the ratio is to TensorFlow's
``tf.function``. The largest |p| difference from Keras is printed beside each export.
OpenVINO is not a dependency: ``pip install openvino`` first to include it.

Usage: python benchmarks/runtimes.py [--models a,b,..] [--size 96] [--calls 8,64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from models.registry import create_model
from stacking.runtime import LiteRTRunner, cores, export_litert

MODELS = ("mobilenetv3small", "efficientnetb0", "resnet50v2", "mini_mobilenet", "small_resnet", "tiny_cnn")


def rate(run, rows: np.ndarray, seconds: float) -> float:
    """Image-views/s of ``run(rows)`` over about ``seconds``."""
    run(rows)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(rows)
        calls += 1
    return calls * len(rows) / (time.perf_counter() - started)


def openvino_runner(model, size: int):
    """The model converted by OpenVINO from a SavedModel (its best path here), float32 precision pinned."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        compiled = ov.Core().compile_model(
            ov.convert_model(folder), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        )
    request = compiled.create_infer_request()
    return lambda rows: request.infer([rows])[0]


def measure(name: str, size: int, calls: list[int], repeats: int, seconds: float) -> list[dict]:
    model = create_model(name, 10, size)
    spec = tf.TensorSpec((None, size, size, 3), tf.float32)
    keras_fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    runners = {
        "tf": lambda rows: keras_fn(rows).numpy(),
        "litert": (lambda r: lambda rows: r(rows)[0])(LiteRTRunner([export_litert(model)])),
        "litert-int8": (lambda r: lambda rows: r(rows)[0])(LiteRTRunner([export_litert(model, calibration)])),
    }
    if importlib.util.find_spec("openvino") is not None:
        runners["openvino"] = openvino_runner(model, size)
    out = []
    for call in calls:
        rows = rng.uniform(0, 255, (call, size, size, 3)).astype(np.float32)
        reference = runners["tf"](rows)
        diff = {k: float(np.abs(run(rows) - reference).max()) for k, run in runners.items() if k != "tf"}
        rates: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(repeats):
            for k, run in runners.items():
                rates[k].append(rate(run, rows, seconds))
        medians = {k: float(np.median(v)) for k, v in rates.items()}
        out.append({"model": name, "size": size, "call": call, "views_per_s": medians, "max_abs_diff": diff})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--calls", default="8,64", help="Image-views per call (8: one image's 8 TTA views).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="Per measurement.")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/runtimes.json"))
    args = parser.parse_args()
    calls = [int(c) for c in args.calls.split(",")]
    rows = [r for name in args.models.split(",") for r in measure(name, args.size, calls, args.repeats, args.seconds)]
    runtimes = list(rows[0]["views_per_s"])
    print(f"image-views/s at {args.size} px, {cores()} cores, median of {args.repeats}; (x TF), max |p - Keras|")
    print(f"{'model':<18} {'call':>4} " + " ".join(f"{k:>26}" for k in runtimes))
    for r in rows:
        tf_rate = r["views_per_s"]["tf"]
        cells = [f"{tf_rate:>26.0f}"] + [
            f"{r['views_per_s'][k]:>9.0f} ({r['views_per_s'][k] / tf_rate:4.1f}x) {r['max_abs_diff'][k]:>8.1e}"
            for k in runtimes[1:]
        ]
        print(f"{r['model']:<18} {r['call']:>4} " + " ".join(cells))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
