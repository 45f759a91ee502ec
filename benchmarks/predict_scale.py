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
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from stacking.data.datasets import ImageSet, load_pixels
from stacking.inference.predictor import Predictor


def write_folder(folder: Path, count: int) -> None:
    """``count`` 32x32 PNG scans named img_00000.png..., the 1,797 digits over and over."""
    folder.mkdir(parents=True, exist_ok=True)
    scans = load_digits().images
    for i in range(count):
        path = folder / f"img_{i:05d}.png"
        if not path.exists():
            gray = np.round(scans[i % len(scans)] * (255 / 16)).astype(np.uint8)
            Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)).resize((32, 32), Image.Resampling.NEAREST).save(
                path
            )


PEAK = """import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
print(done.stdout.strip())
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""  # the summary line, then its child's peak RSS (KiB)


def run_predict(bundle: Path, folder: Path, out: Path) -> dict:
    """One ``stacking predict`` in a child process of its own: wall time and that child's peak RSS."""
    command = [
        sys.executable,
        "-c",
        "from app.cli import run; run()",
        "predict",
        str(bundle),
        str(folder),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    summary, peak = (
        subprocess.run(
            [sys.executable, "-c", PEAK, *command],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        .stdout.strip()
        .rsplit("\n", 1)
    )
    wall = time.perf_counter() - started
    images = len(list(folder.glob("*.png")))
    streaming = float(re.search(r"\(([\d.]+) images/s\)", summary).group(1))  # predict's own rate, after loading
    return {
        "images": images,
        "wall_s": wall,
        "images_per_s": streaming,
        "with_start_images_per_s": images / wall,
        "peak_rss_mb": int(peak) / 1024,
    }


def forward_speed(bundle: Path, folder: Path, images: int = 2000) -> float:
    """Images/s of the base models alone, served TTA (adaptive included), on the same images already decoded."""
    predictor = Predictor(bundle)
    _, pixels, _ = load_pixels(ImageSet(sorted(folder.glob("*.png"))[:images], predictor.classes), predictor.sizes)
    predictor.merged_views(pixels[:64])  # compile
    started = time.perf_counter()
    predictor.merged_views(pixels)
    return len(pixels) / (time.perf_counter() - started)


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
    runs = {
        "2000": run_predict(args.bundle, small, args.workdir / "small.csv"),
        str(args.images): run_predict(args.bundle, large, args.workdir / "large.csv"),
    }
    limit = forward_speed(args.bundle, small)
    print(
        f"bundle {args.bundle}, {os.cpu_count()} cores; raw forward (base models, served TTA, decoded pixels): "
        f"{limit:.1f} images/s"
    )
    print(
        f"{'images':>7}  {'wall s':>7}  {'images/s':>8}  {'of raw forward':>14}  "
        f"{'with start':>10}  {'peak RSS MiB':>12}"
    )
    for run in runs.values():
        print(
            f"{run['images']:>7}  {run['wall_s']:>7.1f}  {run['images_per_s']:>8.1f}  "
            f"{run['images_per_s'] / limit:>14.2f}  {run['with_start_images_per_s']:>10.1f}  "
            f"{run['peak_rss_mb']:>12.0f}"
        )
    print(
        "images/s: predict's own rate (decode, models, meta-learner, checkpoints); with start: over the whole "
        "process, TensorFlow import and bundle loading included"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"bundle": str(args.bundle), "cores": os.cpu_count(), "forward_ips": limit, "runs": runs}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
