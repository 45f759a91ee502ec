"""How close each prediction path comes to the raw compute limit of its models (issue #9; first part).

Measured in one run, on one bundle (``--make-bundle DIR`` fits one: three different
architectures, MobileNetV3Small, EfficientNetB0 and the built-in small_resnet, at 96 px
from scratch, 8 shift TTA views):

- limit: every base model's forward pass over images x views in one compiled call, at the
  best of a few call sizes, images/s;
- offline: ``stacking predict`` on a folder of PNGs, its own images/s, and the ratio;
- naive: the notebook way, ``model.predict`` per image, per view, per model, images/s;
- single image: p50 latency of ``Predictor.predict`` on one image against the forward time
  of that image's views alone.

Not yet here (next step): the HTTP service at 1/8/32 clients, cold start, memory after
10,000 requests, and the kfold fit ratio.

Usage: python benchmarks/throughput.py BUNDLE | --make-bundle DIR  [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stacking.predictor import Predictor
from stacking.tta import TTAForward

CALL_SIZES = (64, 128, 256, 512)  # image-views per compiled call tried for the limit


def make_bundle(workdir: Path) -> Path:
    from stacking.config import load_config
    from stacking.digits import write_digits
    from stacking.fit import fit

    write_digits(workdir / "digits")
    config = load_config(None, {"models": ("mobilenetv3small", "efficientnetb0", "small_resnet"), "image_size": 96,
                                "weights": "none", "epochs": 1, "tta_policy": "shift", "tta_views": 8,
                                "tta_diagnostic_views": 8})
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


def limit_ips(predictor: Predictor, pixels: np.ndarray) -> tuple[float, int]:
    """(images/s, call size) of the best fixed-shape compiled forward over every served view."""
    views = predictor.tta.view_list(predictor.image_size)
    best = (0.0, 0)
    for rows in CALL_SIZES:
        forward = TTAForward(predictor.forward.members, predictor.image_size, rows_per_call=rows)
        forward.folds(pixels[:8], views)  # compile
        ips = len(pixels) / timed(lambda f=forward: f.folds(pixels, views), repeats=2)
        best = max(best, (ips, rows))
    return best


def naive_ips(predictor: Predictor, pixels: np.ndarray) -> float:
    """``model.predict`` on one view of one image at a time, for every model and view."""
    import tensorflow as tf

    from stacking.tta import make_views

    views = predictor.tta.view_list(predictor.image_size)
    models = [m for members in predictor.forward.members for m in members]
    models[0].predict(pixels[:1].astype("float32"), verbose=0)  # first-call overhead out of the timing

    def run() -> None:
        for image in pixels:
            batch = make_views(tf.constant(image[None].astype("float32")), tuple(views))
            for view in range(len(views)):
                for model in models:
                    model.predict(batch[view : view + 1], verbose=0)

    return len(pixels) / timed(run)


def single_image(predictor: Predictor, pixels: np.ndarray, repeats: int = 30) -> tuple[float, float]:
    """(p50 ms of Predictor.predict on one image, p50 ms of the forward over that image's views alone)."""
    views = predictor.tta.view_list(predictor.image_size)
    alone = TTAForward(predictor.forward.members, predictor.image_size, rows_per_call=len(views))
    alone.folds(pixels[:1], views)
    predictor.predict(pixels[:1])
    served = [timed(lambda i=i: predictor.predict(pixels[i : i + 1])) for i in range(repeats)]
    forward = [timed(lambda i=i: alone.folds(pixels[i : i + 1], views)) for i in range(repeats)]
    return float(np.median(served) * 1000), float(np.median(forward) * 1000)


def offline_ips(bundle: Path, folder: Path, out: Path) -> float:
    """``stacking predict``'s own images/s (after loading) on ``folder``."""
    done = subprocess.run([sys.executable, "-c", "from app.cli import run; run()", "predict", str(bundle), str(folder),
                           "--out", str(out)], check=True, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--make-bundle", type=Path, help="Fit the benchmark bundle into this folder first.")
    parser.add_argument("--images", type=int, default=512, help="Images for the limit and the offline run.")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()
    if (args.bundle is None) == (args.make_bundle is None):
        parser.error("give BUNDLE or --make-bundle DIR")
    bundle = args.bundle or make_bundle(args.make_bundle)
    predictor = Predictor(bundle)
    folder = (args.make_bundle or bundle.parent) / "digits" / "test"
    if not folder.is_dir():
        parser.error(f"{folder}: no PNG folder to predict (use --make-bundle, or put digits/test beside the bundle)")
    size = predictor.image_size
    pixels = np.random.default_rng(0).integers(0, 255, (args.images, size, size, 3), dtype=np.uint8)
    limit, call_size = limit_ips(predictor, pixels)
    naive = naive_ips(predictor, pixels[:4])
    single_ms, forward_ms = single_image(predictor, pixels)
    offline = offline_ips(bundle, folder, Path(args.json).with_suffix(".submission.csv"))
    views = len(predictor.tta.view_list(size))
    print(f"bundle {bundle}: {', '.join(predictor.base_names)} at {size} px, {views} TTA views, "
          f"{os.cpu_count()} cores")
    print(f"{'path':<34} {'images/s':>9}  {'of limit':>8}")
    print(f"{'limit (one compiled call, ' + str(call_size) + ' rows)':<34} {limit:>9.1f}  {1.0:>8.2f}")
    print(f"{'offline (stacking predict)':<34} {offline:>9.1f}  {offline / limit:>8.2f}")
    print(f"{'naive (model.predict per view)':<34} {naive:>9.2f}  {naive / limit:>8.3f}")
    print(f"single image: p50 {single_ms:.1f} ms served, {forward_ms:.1f} ms forward of its {views} views alone")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "bundle": str(bundle), "cores": os.cpu_count(), "views": views, "limit_ips": limit, "limit_call_rows": call_size,
        "offline_ips": offline, "naive_ips": naive, "single_p50_ms": single_ms, "single_forward_ms": forward_ms,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
