"""How close each prediction path comes to the machine's arithmetic, under TensorFlow and the exported runtime.

One run, one bundle (``--make-bundle DIR`` fits one: three different architectures,
MobileNetV3Small, EfficientNetB0 and the built-in small_resnet, at 96 px from scratch,
8 shift TTA views), one table, one JSON file. The limit, offline, service and single-image
paths are measured for each runtime in turn (``--runtime tf``, then ``auto``: what the
fit chose per model), part by part, so the ratios come from the same minutes:

- the machine: float32 matrix multiply in GFLOP/s (the higher of numpy's and
  TensorFlow's, 2048 x 2048), and each base model's multiply-adds per view, so that
  ``efficiency`` = achieved model FLOP/s / that rate says how near each path is to the
  hardware, not to a library;
- per model: each base model alone at the service's call shape, exported / TF;
- limit: every base model's forward pass over images x views in one call, at
  each call size from 1 to 64 images; the best is the limit, and its size is what the
  offline run uses (``--call-rows``); the service runs one image per call, so a lone
  image pays only for its own views;
- offline: ``stacking predict`` on a folder of 1,000 PNGs (the digits again and again), its own
  images/s, first trace included;
- service: ``stacking serve`` over HTTP with one-image uploads at 1, 8 and 32 clients
  (decode, batching, meta-learner included), images/s and p50/p99 latency;
- naive: the notebook way, ``model.predict`` per image, per view, per model;
- single image: p50 latency over HTTP and in-process against the forward of its views;
- call shapes: how far the stacked probabilities move between the offline and the service
  call shape (a random-forest meta-learner turns last-bit differences into other leaves);
- cold start (process start to ready) and the service's memory when ready, after
  warm-up traffic and after 10,000 more requests (``tta=1`` to keep it short);
- kfold: ``stacking fit --protocol kfold`` wall time against the sum of bare
  ``model.fit`` calls on the same folds, epochs and batch size.

Usage: python benchmarks/throughput.py BUNDLE | --make-bundle DIR  [--parts ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from load import Service, request_bytes, run_level, test_images
from predict_scale import write_folder

from stacking.data.images import Pixels
from stacking.inference.predictor import Predictor
from stacking.inference.tta import TTAForward, make_views

CALL_IMAGES = (1, 2, 4, 8, 16, 32, 64)  # images per compiled call tried for the limit
LEVELS = (1, 8, 32)  # concurrent clients of the service
RUNTIMES = ("tf", "auto")  # TensorFlow everywhere; what the fit chose per model (the exported file, mostly)
PARTS = ("limit", "bits", "naive", "single", "offline", "service", "memory", "kfold")
TARGETS = {  # name: (description, passes(result)); on the served runtime (auto) unless said
    "offline": ("offline / limit >= 0.90", lambda r: r["auto"]["offline_ips"] / r["auto"]["limit_ips"] >= 0.90),
    "service": (
        "service at 32 clients / limit >= 0.85",
        lambda r: r["auto"]["service_ips"]["32"] / r["auto"]["limit_ips"] >= 0.85,
    ),
    "naive": ("service at 32 clients / naive >= 20x", lambda r: r["auto"]["service_ips"]["32"] / r["naive_ips"] >= 20),
    "single": (
        "single image p50 <= forward of its views + 10 ms",
        lambda r: r["auto"]["single_p50_ms"] <= r["auto"]["single_forward_ms"] + 10,
    ),
    "speedup_single": (
        "single image p50 over HTTP, TF / exported >= 1.7",
        lambda r: r["speedup_vs_tf"]["single"] >= 1.7,
    ),
    "speedup_service": ("service at 32 clients, exported / TF >= 1.5", lambda r: r["speedup_vs_tf"]["service"] >= 1.5),
    "speedup_offline": ("offline, exported / TF >= 1.5", lambda r: r["speedup_vs_tf"]["offline"] >= 1.5),
    "per_model": (
        "every base model at the service's call shape, auto / TF >= 0.95",
        lambda r: min(r["per_model_speedup"].values()) >= 0.95,
    ),
    "memory": (
        "memory after 10,000 requests within 5% of warm",
        lambda r: abs(r["auto"]["rss_after_mb"] / r["auto"]["rss_warm_mb"] - 1) <= 0.05,
    ),
    "kfold": ("kfold fit / bare model.fit <= 1.15", lambda r: r["kfold_fit_ratio"] <= 1.15),
}


def make_bundle(workdir: Path) -> Path:
    from stacking.data.digits import write_digits
    from stacking.training.config import load_config
    from stacking.training.fit import fit

    write_digits(workdir / "digits")
    config = load_config(
        None,
        {
            "models": ("mobilenetv3small", "efficientnetb0", "small_resnet"),
            "image_size": 96,
            "weights": "none",
            "epochs": 1,
            "tta_policy": "shift",
            "tta_views": 8,
            "tta_diagnostic_views": 8,
            "meta": "rf",
        },
    )
    fit(workdir / "digits", workdir / "bundle", config, echo=print)
    return workdir / "bundle"


def timed(function, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """float32 matrix-multiply GFLOP/s of numpy and of TensorFlow on this machine: what its cores can do."""
    import tensorflow as tf

    a, b = (np.random.default_rng(k).standard_normal((n, n)).astype(np.float32) for k in (0, 1))
    ta, tb = tf.constant(a), tf.constant(b)
    flop = 2 * n**3 / 1e9
    return {
        "numpy": flop / timed(lambda: a @ b, repeats),
        "tensorflow": flop / timed(lambda: tf.linalg.matmul(ta, tb).numpy(), repeats),
    }


def multiply_adds(model) -> int:
    """Multiply-adds of one view through a Keras model: its convolutions and dense layers (nested models too)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            out = int(np.prod(layer.output.shape[1:]))
            kernel = layer.kernel.shape  # Conv2D (kh, kw, in, out); Depthwise (kh, kw, in, 1); Dense (in, out)
            per_output = (
                int(np.prod(kernel[:-1]))
                if not isinstance(layer, keras.layers.DepthwiseConv2D)
                else int(np.prod(kernel[:2]))
            )
            total += out * per_output // (layer.groups if isinstance(layer, keras.layers.Conv2D) else 1)
    return total


def per_model_speedup(tf_predictor: Predictor, served: Predictor, repeats: int = 15) -> dict[str, float]:
    """Each base model alone at the service's call shape (one image's views): TF ms / served runtime ms, medians."""
    ratios = {}
    for name, size, tf_run, run in zip(
        served.base_names, served.base_sizes, tf_predictor.forward.runners, served.forward.runners
    ):
        image = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
        rows = make_views(image, served.views().at(size))
        tf_run(rows), run(rows)
        tf_ms, ms = [], []
        for _ in range(repeats):  # in turn, so both see the same machine
            tf_ms.append(timed(lambda tf_run=tf_run, rows=rows: tf_run(rows)))
            ms.append(timed(lambda run=run, rows=rows: run(rows)))
        ratios[name] = float(np.median(tf_ms) / np.median(ms))
    return ratios


def limit_by_call_size(predictor: Predictor, pixels: Pixels) -> dict[int, float]:
    """Images/s of the forward over every served view, per images per call."""
    views = predictor.views()
    rates = {}
    for images in CALL_IMAGES:
        forward = TTAForward(predictor.forward.runners, predictor.base_sizes, rows_per_call=images * len(views))
        forward.folds(pixels[:images], views)  # trace, and make this size's kernels
        rates[images] = len(pixels) / timed(lambda f=forward: f.folds(pixels, views), repeats=2)
    return rates


def call_size_effect(served: Predictor, offline: Predictor, pixels: Pixels) -> dict:
    """How far the stacked probabilities move between the service's and the offline run's call shapes."""
    a, b = served.predict(pixels).probabilities, offline.predict(pixels).probabilities
    differs = np.abs(a - b).max(axis=1)
    return {
        "images": len(pixels),
        "max_diff": float(differs.max()),
        "over_1e-5": int((differs > 1e-5).sum()),
        "labels_changed": int((a.argmax(axis=1) != b.argmax(axis=1)).sum()),
    }


def naive_ips(predictor: Predictor, pixels: Pixels) -> float:
    """``model.predict`` on one view of one image at a time, for every model and view."""
    views = predictor.views()
    models = [(m, size) for run, size in zip(predictor.forward.runners, predictor.base_sizes) for m in run.models]
    models[0][0].predict(pixels.at(models[0][1])[:1].astype("float32"), verbose=0)  # first-call overhead out

    def run() -> None:
        for i in range(len(pixels)):
            for model, size in models:
                batch = make_views(pixels.at(size)[i : i + 1], views.at(size))
                for view in range(len(views)):
                    model.predict(batch[view : view + 1], verbose=0)

    return len(pixels) / timed(run)


def single_image(predictor: Predictor, pixels: Pixels, repeats: int = 30) -> tuple[float, float]:
    """(p50 ms of Predictor.predict on one image, p50 ms of the forward over that image's views alone)."""
    views = predictor.views()
    alone = TTAForward(predictor.forward.runners, predictor.base_sizes, rows_per_call=len(views))
    alone.folds(pixels[:1], views)
    predictor.predict(pixels[:1])
    images = [pixels[[i % len(pixels)]] for i in range(repeats)]
    served = [timed(lambda image=image: predictor.predict(image)) for image in images]
    forward = [timed(lambda image=image: alone.folds(image, views)) for image in images]
    return float(np.median(served) * 1000), float(np.median(forward) * 1000)


def offline_ips(bundle: Path, folder: Path, out: Path, call_rows: int, runtime: str) -> float:
    """``stacking predict``'s own images/s (after loading) on ``folder``."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from app.cli import run; run()",
            "predict",
            str(bundle),
            str(folder),
            "--out",
            str(out),
            "--call-rows",
            str(call_rows),
            "--runtime",
            runtime,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))


def service(
    bundle: Path, folder: Path, call_rows: int, requests: int, memory_requests: int, parts: set, runtime: str
) -> dict:
    """Cold start, then one-image uploads at each level; then memory before and after many more requests."""
    server = Service(
        bundle, {"STACKSERVE_CALL_ROWS": str(call_rows), "STACKSERVE_QUEUE_SIZE": "256", "STACKSERVE_RUNTIME": runtime}
    )
    images = test_images(folder, 128)
    served = [request_bytes(server.port, image) for image in images]
    one_view = [request_bytes(server.port, image, "/v1/predict?tta=1") for image in images]
    out: dict = {"cold_start_s": server.cold_start_s, "rss_ready_mb": server.rss_mb()}
    try:
        asyncio.run(run_level(server.port, served, 4, 16))
        if "service" in parts:
            levels = {str(c): asyncio.run(run_level(server.port, served, c, requests)) for c in LEVELS}
            out["service_ips"] = {c: r["images_per_s"] for c, r in levels.items()}
            out["service_p50_ms"] = {c: r["p50_ms"] for c, r in levels.items()}
            out["service_p99_ms"] = {c: r["p99_ms"] for c, r in levels.items()}
            out["single_p50_ms"] = levels["1"]["p50_ms"]
        if "memory" in parts:
            asyncio.run(run_level(server.port, one_view, 32, min(512, memory_requests)))
            out["rss_warm_mb"] = server.rss_mb()
            started = time.perf_counter()
            asyncio.run(run_level(server.port, one_view, 32, memory_requests))
            out["rss_after_mb"] = server.rss_mb()
            out["memory_requests"], out["memory_seconds"] = memory_requests, time.perf_counter() - started
    finally:
        server.stop()
    return out


def kfold_fit_ratio(digits: Path, workdir: Path, epochs: int) -> dict:
    """``fit`` (kfold, 3 folds x 2 models) wall time against bare ``model.fit`` on the same folds, data and epochs.

    The bare fits run first, in this process, without op determinism; ``fit`` then
    pays for everything it does beyond them (decoding, checkpoints, OOF TTA, meta
    selection, report) with its default deterministic ops.
    """
    import keras

    from models.registry import create_model
    from stacking.data.datasets import load_pixels, read_training_set
    from stacking.training.config import load_config
    from stacking.training.fit import fit
    from stacking.training.protocols import make_splits

    cfg = load_config(
        None,
        {
            "models": ("small_resnet", "mini_mobilenet"),
            "protocol": "kfold",
            "folds": 3,
            "image_size": 32,
            "weights": "none",
            "epochs": epochs,
            "tta_policy": "shift",
            "tta_views": 4,
            "tta_diagnostic_views": 4,
        },
    )
    images, pixels, _ = load_pixels(read_training_set(digits), cfg.sizes, "error")
    labels, classes = images.labels, images.classes
    splits = make_splits(
        labels, "kfold", cfg.holdout_fraction, cfg.validation_fraction, cfg.folds, cfg.seed, None, classes
    )
    bare = 0.0
    for member in cfg.models:
        x = np.asarray(pixels.at(member.image_size))  # a bare Keras fit: every pixel in memory
        for split in splits:
            keras.utils.set_random_seed(cfg.seed)
            net = create_model(
                member.architecture, len(classes), member.image_size, head=member.head, dropout=member.dropout
            )
            net.compile(
                keras.optimizers.Adam(member.train.learning_rate),
                "sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            started = time.perf_counter()
            net.fit(
                x[split.fit].astype("float32"),
                labels[split.fit],
                batch_size=member.train.batch_size,
                epochs=member.train.epochs,
                validation_data=(x[split.val].astype("float32"), labels[split.val]),
                verbose=0,
            )
            bare += time.perf_counter() - started
    started = time.perf_counter()
    fit(digits, workdir / "kfold-bundle", cfg, echo=lambda _: None)
    ours = time.perf_counter() - started
    return {"kfold_fit_s": ours, "bare_fit_s": bare, "kfold_fit_ratio": ours / bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--make-bundle", type=Path, help="Fit the benchmark bundle into this folder first.")
    parser.add_argument("--folder", type=Path, help="Digit PNGs to upload (default: digits/test beside the bundle).")
    parser.add_argument("--images", type=int, default=128, help="Images per limit measurement.")
    parser.add_argument("--workdir", type=Path, help="Where the PNG folder and kfold bundle go (default: beside it).")
    parser.add_argument("--offline-images", type=int, default=1000, help="PNGs for the offline run.")
    parser.add_argument("--requests", type=int, default=128, help="One-image requests per service level.")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--kfold-epochs", type=int, default=10, help="Epochs of each fit in the kfold comparison.")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated subset of {','.join(PARTS)}.")
    parser.add_argument("--offline-call-rows", type=int, help="Image-views per call offline (default: the limit's).")
    parser.add_argument("--service-call-rows", type=int, help="Image-views per call served (default: one image's).")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()
    if (args.bundle is None) == (args.make_bundle is None):
        parser.error("give BUNDLE or --make-bundle DIR")
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}; expected some of {', '.join(PARTS)}")
    bundle = args.bundle or make_bundle(args.make_bundle)
    workdir = args.workdir or args.make_bundle or bundle.parent
    folder = args.folder or bundle.parent / "digits" / "test"
    if not folder.is_dir():
        parser.error(f"{folder}: no PNG folder to predict (give --folder, or put digits/ beside the bundle)")
    predictors = {runtime: Predictor(bundle, runtime=runtime) for runtime in RUNTIMES}
    served = predictors["auto"]
    views = len(served.views())
    rng = np.random.default_rng(0)
    pixels = Pixels({s: rng.integers(0, 255, (args.images, s, s, 3), dtype=np.uint8) for s in served.sizes})
    matmul = matmul_gflops()
    result: dict = {
        "bundle": str(bundle),
        "cores": os.cpu_count(),
        "views": views,
        "meta_learner": served.manifest.meta_learner.kind,
        "runtime": served.runtimes,
        "matmul_gflops": max(matmul.values()),
        "matmul_gflops_by_library": matmul,
        "model_gflop_per_image": model_gflop_per_image(predictors["tf"], views),
        "per_model_speedup": per_model_speedup(predictors["tf"], served),
        **{runtime: {} for runtime in RUNTIMES},
    }
    best_rows = dict.fromkeys(RUNTIMES, served.forward.rows_per_call)
    for runtime, predictor in predictors.items() if "limit" in parts else ():
        rates = limit_by_call_size(predictor, pixels)
        best = max(rates, key=rates.get)
        best_rows[runtime] = best * views
        result[runtime].update(limit_ips=rates[best], limit_by_call_images={str(k): v for k, v in rates.items()})
    service_rows = args.service_call_rows or views
    for runtime in RUNTIMES:
        result[runtime]["offline_call_rows"] = args.offline_call_rows or best_rows[runtime]
        result[runtime]["service_call_rows"] = service_rows
    for runtime in RUNTIMES if parts & {"bits", "single"} else ():
        predictor = Predictor(bundle, service_rows, runtime=runtime)
        if "bits" in parts:
            offline = Predictor(bundle, result[runtime]["offline_call_rows"], runtime=runtime)
            result[runtime]["call_size_effect"] = call_size_effect(predictor, offline, pixels)
        if "single" in parts:
            result[runtime]["single_predict_p50_ms"], result[runtime]["single_forward_ms"] = single_image(
                predictor, pixels
            )
    if "naive" in parts:
        result["naive_ips"] = naive_ips(Predictor(bundle, service_rows, runtime="tf"), pixels[:4])
    if "offline" in parts:
        pngs = workdir / f"offline-{args.offline_images}"
        write_folder(pngs, args.offline_images)
        for runtime in RUNTIMES:
            result[runtime]["offline_ips"] = offline_ips(
                bundle, pngs, args.json.with_suffix(".submission.csv"), result[runtime]["offline_call_rows"], runtime
            )
    for runtime in RUNTIMES if parts & {"service", "memory"} else ():
        memory = parts if runtime == "auto" else parts - {"memory"}  # memory: the served runtime's
        result[runtime].update(
            service(bundle, folder, service_rows, args.requests, args.memory_requests, memory, runtime)
        )
    if "kfold" in parts:
        result.update(kfold_fit_ratio(folder.parent, workdir, args.kfold_epochs))  # digits/ holds test/ and train/
    result["efficiency"] = efficiency(result)
    result["speedup_vs_tf"] = speedup_vs_tf(result)
    result["targets_met"] = targets_met(result)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def model_gflop_per_image(tf_predictor: Predictor, views: int) -> float:
    """GFLOP (2 x multiply-adds) one image costs: every fold model of every base model, on every served view."""
    return sum(2 * multiply_adds(m) for run in tf_predictor.forward.runners for m in run.models) * views / 1e9


def path_rates(r: dict) -> dict[str, float]:
    """Images/s of each measured path of one runtime's results."""
    rates = {
        "limit": r.get("limit_ips"),
        "offline": r.get("offline_ips"),
        "service": r.get("service_ips", {}).get("32"),
    }
    return {path: ips for path, ips in rates.items() if ips is not None}


def efficiency(r: dict) -> dict[str, dict[str, float]]:
    """Achieved model FLOP/s / the machine's matrix-multiply rate, per runtime and path."""
    return {
        runtime: {
            path: ips * r["model_gflop_per_image"] / r["matmul_gflops"] for path, ips in path_rates(r[runtime]).items()
        }
        for runtime in RUNTIMES
    }


def speedup_vs_tf(r: dict) -> dict[str, float]:
    """Served runtime / TF images/s offline and at 32 clients; TF p50 / served p50 for a single image."""
    tf, auto = path_rates(r["tf"]), path_rates(r["auto"])
    out = {path: auto[path] / tf[path] for path in ("offline", "service") if path in tf and path in auto}
    if "single_p50_ms" in r["tf"] and "single_p50_ms" in r["auto"]:
        out["single"] = r["tf"]["single_p50_ms"] / r["auto"]["single_p50_ms"]
    return out


def print_table(r: dict) -> None:
    print(
        f"bundle {r['bundle']}: {r['views']} TTA views, meta-learner {r['meta_learner']}, {r['cores']} cores; "
        f"served runtimes {r['runtime']}"
    )
    by = r["matmul_gflops_by_library"]
    print(
        f"machine: float32 matmul {r['matmul_gflops']:.0f} GFLOP/s (numpy {by['numpy']:.0f}, "
        f"TensorFlow {by['tensorflow']:.0f}); the models cost "
        f"{r['model_gflop_per_image']:.3f} GFLOP an image (all views)"
    )
    print(
        "per model at the service's call shape, exported / TF: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in r["per_model_speedup"].items())
    )
    for runtime in RUNTIMES:
        if "limit_by_call_images" in r[runtime]:
            print(
                f"{runtime} limit by images per call: "
                + ", ".join(f"{k}: {v:.2f}" for k, v in r[runtime]["limit_by_call_images"].items())
            )
    print(f"{'path':<32} {'runtime':>7} {'images/s':>9} {'of limit':>9} {'efficiency':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for runtime in RUNTIMES:
        x = r[runtime]
        limit = x.get("limit_ips")
        rows = [("limit (one call)", limit, "limit"), ("offline (stacking predict)", x.get("offline_ips"), "offline")]
        rows += [
            (f"service, {c} clients", x["service_ips"][c], "service" if c == "32" else None)
            for c in x.get("service_ips", {})
        ]
        for name, ips, path in rows:
            if ips is None:
                continue
            share = f"{ips / limit:.3f}" if limit else "-"
            eff = f"{r['efficiency'][runtime][path]:.3f}" if path else ""
            client = name.split(", ")[1].split()[0] if name.startswith("service") else None
            p50 = f"{x['service_p50_ms'][client]:.0f}" if client else ""
            p99 = f"{x['service_p99_ms'][client]:.0f}" if client else ""
            print(f"{name:<32} {runtime:>7} {ips:>9.2f} {share:>9} {eff:>10} {p50:>8} {p99:>8}")
    if "naive_ips" in r:
        print(f"{'naive (model.predict per view)':<32} {'tf':>7} {r['naive_ips']:>9.2f}")
    print("exported / TF: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_vs_tf"].items()))
    for runtime in RUNTIMES:
        x = r[runtime]
        if "single_forward_ms" in x:
            print(
                f"{runtime} single image: p50 {x.get('single_p50_ms', float('nan')):.1f} ms over HTTP, "
                f"{x['single_predict_p50_ms']:.1f} ms in-process, {x['single_forward_ms']:.1f} ms forward of its "
                "views"
            )
        if "call_size_effect" in x:
            e = x["call_size_effect"]
            print(
                f"{runtime} service vs offline call shape ({e['images']} images): max |diff| {e['max_diff']:.2e}, "
                f"{e['over_1e-5']} over 1e-5, {e['labels_changed']} labels changed"
            )
        if "cold_start_s" in x:
            print(
                f"{runtime} cold start {x['cold_start_s']:.1f} s; RSS ready {x['rss_ready_mb']:.0f} MiB"
                + (
                    f", warm {x['rss_warm_mb']:.0f} MiB, after {x['memory_requests']} more requests "
                    f"{x['rss_after_mb']:.0f} MiB"
                    if "rss_after_mb" in x
                    else ""
                )
            )
    if "kfold_fit_ratio" in r:
        print(
            f"kfold fit {r['kfold_fit_s']:.1f} s, bare model.fit {r['bare_fit_s']:.1f} s: "
            f"ratio {r['kfold_fit_ratio']:.3f}"
        )
    for name, met in r["targets_met"].items():
        print(f"target {TARGETS[name][0]}: {'met' if met else 'NOT met'}")


def targets_met(r: dict) -> dict[str, bool]:
    """Each target whose parts were measured in this run: met or not."""
    met = {}
    for name, (_, passes) in TARGETS.items():
        try:
            met[name] = bool(passes(r))
        except KeyError:  # a part not run
            pass
    return met


if __name__ == "__main__":
    main()
