"""``stacking predict`` on a large folder: images/s against the raw forward speed, and peak memory by folder size.

Writes N PNG scans (the bundled digits, repeated under new names), runs ``stacking
predict`` on the first 2,000 and on all N in child processes (peak RSS from the OS),
and times the same models' raw forward pass (every served view, fixed-shape compiled
calls) on pixels already in memory. Peak memory that does not grow from 2,000 to N
images shows the streaming works; the images/s ratio shows what decoding, the
meta-learner and the checkpoints cost.

Usage: python benchmarks/predict_scale.py BUNDLE [--images 20000] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from stacking.predictor import Predictor


def write_folder(folder: Path, count: int) -> None:
    """``count`` 32x32 PNG scans named img_00000.png..., the 1,797 digits over and over."""
    folder.mkdir(parents=True, exist_ok=True)
    scans = load_digits().images
    for i in range(count):
        path = folder / f"img_{i:05d}.png"
        if not path.exists():
            gray = np.round(scans[i % len(scans)] * (255 / 16)).astype(np.uint8)
            Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)).resize((32, 32), Image.Resampling.NEAREST).save(path)


PEAK = """import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""  # its one child's peak RSS, in KiB


def run_predict(bundle: Path, folder: Path, out: Path) -> dict:
    """One ``stacking predict`` in a child process of its own: wall time and that child's peak RSS."""
    command = [sys.executable, "-c", "from app.cli import run; run()", "predict", str(bundle), str(folder),
               "--out", str(out)]
    started = time.perf_counter()
    peak = subprocess.run([sys.executable, "-c", PEAK, *command], check=True, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    wall = time.perf_counter() - started
    images = len(list(folder.glob("*.png")))
    return {"images": images, "wall_s": wall, "images_per_s": images / wall, "peak_rss_mb": int(peak) / 1024}


def forward_speed(bundle: Path, images: int = 2048) -> float:
    """Images/s of the base models' compiled forward pass over every served view, pixels already decoded."""
    predictor = Predictor(bundle)
    views = predictor.tta.view_list(predictor.image_size)
    pixels = np.random.default_rng(0).integers(0, 255, (images, predictor.image_size, predictor.image_size, 3),
                                                dtype=np.uint8)
    predictor.forward.folds(pixels[:64], views)  # compile
    started = time.perf_counter()
    predictor.forward.folds(pixels, views)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-predict"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/predict_scale.json"))
    args = parser.parse_args()
    small, large = args.workdir / "small", args.workdir / "large"
    write_folder(small, 2000)
    write_folder(large, args.images)
    runs = {"2000": run_predict(args.bundle, small, args.workdir / "small.csv"),
            str(args.images): run_predict(args.bundle, large, args.workdir / "large.csv")}
    limit = forward_speed(args.bundle)
    print(f"bundle {args.bundle}, {os.cpu_count()} cores; raw forward (all served views, decoded pixels): "
          f"{limit:.1f} images/s")
    print(f"{'images':>7}  {'wall s':>7}  {'images/s':>8}  {'of raw forward':>14}  {'peak RSS MiB':>12}")
    for run in runs.values():
        print(f"{run['images']:>7}  {run['wall_s']:>7.1f}  {run['images_per_s']:>8.1f}  "
              f"{run['images_per_s'] / limit:>14.2f}  {run['peak_rss_mb']:>12.0f}")
    print("(wall time includes the process start: importing TensorFlow and loading the bundle)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bundle": str(args.bundle), "cores": os.cpu_count(), "forward_ips": limit,
                                     "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
