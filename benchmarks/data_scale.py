"""Images of any size and number: decoding speed, the pixel cache, and a fit's memory as the data grows.

Generates photo-like 1024x768 JPEGs (``benchmarks/photos.py``; kept in ``--photos`` between
runs) and measures, in one run:

- decode images/s, reduced-scale (``draft``) against a full decode, at 128 and 224 px, on
  one core; and how far the reduced decode moves the pixels;
- decode parallelism: the cache's fill (read, hash, decode, store) on every core against one;
- a fit over N photos (each N in ``--counts``) at ``--size`` px, in a process of its own from
  an empty cache, then again over the same photos: the time each spent on pixels, the
  peak resident memory (the fit's process), and the wall time;
- how far reduced-scale decoding moves a fitted bundle's probabilities and labels (a fit over
  the smallest N for ``--label-epochs``, so that it has learnt something), on ``--sample``
  photos it did not train on, against a full decode;
- EfficientNetB0 at 224 px from scratch: training images/s and GFLOP/s against this
  machine's float32 matmul rate (the arithmetic is the limit).

    python benchmarks/data_scale.py [--photos DIR] [--counts 2000,20000] [--size 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.photos import CLASSES, write_photos  # noqa: E402
from stacking.data.cache import PixelCache, fill_cache  # noqa: E402
from stacking.data.images import decode_image  # noqa: E402

MODEL = "mini_mobilenet"  # a light built-in network: the fit's time is the data path's, not the arithmetic's


def full_decode(data: bytes, size: int, resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """``decode_image`` without the reduced DCT scale: the whole JPEG, then the same resize (or ``resample``)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize((size, size), resample))


def rate(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def decode_figures(paths: list[Path]) -> dict:
    """One core: reduced against full decode at 128 and 224 px, and the pixel difference."""
    blobs = [p.read_bytes() for p in paths]
    for blob in blobs[:20]:  # warm: the decoders' first calls and the allocator are not what an image costs
        full_decode(blob, 224), decode_image(blob, [224])
    out = {}
    for size in (128, 224):
        full = rate(lambda b, s=size: full_decode(b, s), blobs)
        reduced = rate(lambda b, s=size: decode_image(b, [s]), blobs)
        diffs = np.stack(
            [np.abs(decode_image(b, [size]).at(size)[0].astype(int) - full_decode(b, size)) for b in blobs[:100]]
        )
        out[size] = {
            "full_images_per_s": round(full, 1),
            "reduced_images_per_s": round(reduced, 1),
            "speedup": round(reduced / full, 2),
            "pixel_mean_abs_diff": round(float(diffs.mean()), 3),
            "pixel_max_abs_diff": int(diffs.max()),
        }
    return out


def parallel_figures(paths: list[Path], size: int) -> dict:
    """The cache's fill (read, hash, decode, store) with one worker, then every core, each into an empty cache."""
    rates = {}
    for workers in (1, len(os.sched_getaffinity(0))):
        with tempfile.TemporaryDirectory() as tmp:
            _, _, report = fill_cache(PixelCache(Path(tmp)), paths, [size], workers=workers)
            rates[workers] = len(paths) / report.seconds
    one, every = rates[1], rates[max(rates)]
    return {
        "workers": max(rates),
        "one_images_per_s": round(one, 1),
        "all_images_per_s": round(every, 1),
        "ratio": round(every / one, 2),
    }


def data_folder(photos: Path, count: int) -> Path:
    """``photos/nCOUNT``: class folders linking to the first ``count`` photos."""
    folder = photos / f"n{count}"
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        link = folder / "train" / label / f"{i:06d}.jpg"
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photos / "all" / "train" / label / f"{i:06d}.jpg")
    return folder


def child_fit(data: str, out: str, cache: str, size: int, epochs: int) -> None:
    """In a process of its own: the fit, then its peak RSS and what its pixel step said, as JSON on the last line."""
    from stacking.data.cache import PixelCache
    from stacking.training.config import load_config
    from stacking.training.fit import fit

    lines: list[str] = []
    started = time.monotonic()
    cfg = load_config(None, {"models": (f"{MODEL}@{size}",), "epochs": epochs, "tta_views": 1, "protocol": "holdout"})
    fit(Path(data), Path(out), cfg, echo=lambda s: (lines.append(s), print(s, flush=True)), cache=PixelCache(cache))
    pixels = next(line for line in lines if line.startswith("pixels: "))
    print(
        json.dumps(
            {
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "pixel_seconds": float(re.search(r", ([\d.]+) s", pixels).group(1)),
                "pixels": pixels,
                "seconds": time.monotonic() - started,
            }
        )
    )


def run_fit(data: Path, out: Path, cache: Path, size: int, epochs: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child-fit", str(data), str(out), str(cache), str(size), str(epochs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"fit over {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def label_figures(bundle: Path, paths: list[Path]) -> dict:
    """The fitted bundle's answers on reduced against full decodes of the same photos; for scale, the labels that
    another ordinary resize of the full decode (bicubic for bilinear) changes, and the bundle's accuracy there."""
    from stacking.data.images import Pixels
    from stacking.inference.predictor import Predictor

    predictor = Predictor(bundle)
    size = predictor.sizes[0]

    def answers(decode) -> np.ndarray:
        pixels = Pixels({size: np.stack([decode(p.read_bytes()) for p in paths])})
        return predictor.predict(pixels).probabilities

    a = answers(lambda data: decode_image(data, [size]).at(size)[0])
    b = answers(lambda data: full_decode(data, size))
    c = answers(lambda data: full_decode(data, size, Image.Resampling.BICUBIC))
    truth = np.array([predictor.classes.index(p.parent.name) for p in paths])
    return {
        "images": len(paths),
        "accuracy": round(float((b.argmax(1) == truth).mean()), 3),
        "probability_max_abs_diff": round(float(np.abs(a - b).max()), 5),
        "probability_mean_abs_diff": round(float(np.abs(a - b).mean()), 6),
        "labels_changed": int((a.argmax(1) != b.argmax(1)).sum()),
        "bicubic_probability_max_abs_diff": round(float(np.abs(c - b).max()), 5),
        "bicubic_labels_changed": int((c.argmax(1) != b.argmax(1)).sum()),
    }


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate through TensorFlow, on every core (the best of ``repeats``)."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def forward_gflop(model) -> float:
    """GFLOP of one image's forward pass, counted by TensorFlow's profiler on the traced graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    graph = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph=graph.graph, options=options).total_float_ops / 1e9


def effnet_figures(paths: list[Path], cache: Path, steps: int = 6, batch: int = 32) -> dict:
    """EfficientNetB0 at 224 px, weights none: training images/s over ``steps`` batches (its pixels from the cache,
    in memory: this measures the arithmetic), after one untimed epoch that traces the step."""
    import keras

    from models.registry import create_model
    from stacking.data.datasets import ImageSet, load_pixels

    n = batch * steps
    images = ImageSet(paths[:n], list(CLASSES), np.arange(n) % len(CLASSES))
    _, pixels, _ = load_pixels(images, [224], cache=PixelCache(cache))
    x, y = np.asarray(pixels.at(224)).astype("float32"), images.labels
    keras.utils.set_random_seed(0)
    model = create_model("efficientnetb0", len(CLASSES), 224, weights=None)
    gflop = forward_gflop(model)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # traces the training step
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    per_s = n / (time.perf_counter() - started)
    achieved = 3 * gflop * per_s  # a training step: the forward pass and about twice its work backwards
    peak = matmul_gflops()
    return {
        "images_per_s": round(per_s, 2),
        "forward_gflop_per_image": round(gflop, 3),
        "training_gflop_per_s": round(achieved, 1),
        "matmul_gflop_per_s": round(peak, 1),
        "share_of_matmul_rate": round(achieved / peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "stackserve-photos")
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the fits whose memory and time are measured")
    parser.add_argument("--label-epochs", type=int, default=8, help="epochs of the fit whose answers are compared")
    parser.add_argument("--sample", type=int, default=200, help="photos for the decode and label figures")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child-fit", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_fit:
        data, out, cache, size, epochs = args.child_fit
        child_fit(data, out, cache, int(size), int(epochs))
        return
    counts = sorted(int(c) for c in args.counts.split(","))
    started = time.monotonic()
    write_photos(args.photos / "all", counts[-1])
    print(f"{counts[-1]} photos (1024x768 JPEG) in {args.photos / 'all'}, {time.monotonic() - started:.0f} s")
    sample = sorted((args.photos / "all").rglob("*.jpg"))[: args.sample]
    result: dict = {"decode": decode_figures(sample), "parallel": parallel_figures(sample, args.size), "fits": {}}
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        work = Path(tmp)
        for count in counts:
            data, cache = data_folder(args.photos, count), work / f"cache{count}"
            first = run_fit(data, work / f"b{count}", cache, args.size, args.epochs)
            again = (
                run_fit(data, work / f"b{count}again", cache, args.size, args.epochs) if count == counts[0] else None
            )
            result["fits"][count] = {"first": first, "again": again}
            print(f"N={count}: {first['pixels']}; peak RSS {first['peak_rss_mb']:.0f} MiB; {first['seconds']:.0f} s")
        photos = sorted((args.photos / "all").rglob("*.jpg"), key=lambda p: p.name)
        run_fit(
            data_folder(args.photos, counts[0]), work / "labels", work / "cache-labels", args.size, args.label_epochs
        )
        result["labels"] = label_figures(work / "labels", photos[-args.sample :])  # never trained on
        result["efficientnetb0"] = effnet_figures(photos, work / "cache-effnet")
    print_table(result, counts, args.size)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict, counts: list[int], size: int) -> None:
    small, large = result["fits"][counts[0]], result["fits"][counts[-1]]
    extra_bytes = (counts[-1] - counts[0]) * size * size * 3
    grew = (large["first"]["peak_rss_mb"] - small["first"]["peak_rss_mb"]) * 2**20
    decode, parallel, labels, eff = result["decode"], result["parallel"], result["labels"], result["efficientnetb0"]
    rows = [
        (
            "decode images/s, reduced / full, 128 px (1 core)",
            f"{decode[128]['reduced_images_per_s']:.0f} / "
            f"{decode[128]['full_images_per_s']:.0f} = {decode[128]['speedup']:.2f}x",
            ">= 1.5x",
        ),
        (
            "decode images/s, reduced / full, 224 px (1 core)",
            f"{decode[224]['reduced_images_per_s']:.0f} / "
            f"{decode[224]['full_images_per_s']:.0f} = {decode[224]['speedup']:.2f}x",
            ">= 1.5x",
        ),
        (
            f"cache fill images/s, {parallel['workers']} cores / 1",
            f"{parallel['all_images_per_s']:.0f} / {parallel['one_images_per_s']:.0f} = {parallel['ratio']:.2f}",
            ">= 1.7",
        ),
        (
            "pixels moved by the reduced decode, mean / max (128, 224 px)",
            f"{decode[128]['pixel_mean_abs_diff']} / {decode[128]['pixel_max_abs_diff']}, "
            f"{decode[224]['pixel_mean_abs_diff']} / {decode[224]['pixel_max_abs_diff']}",
            "report",
        ),
        (
            f"probabilities moved, max; labels changed (of {labels['images']} unseen, accuracy {labels['accuracy']})",
            f"{labels['probability_max_abs_diff']}; {labels['labels_changed']}",
            "no label changed",
        ),
        (
            "for scale: full decode resized bicubic instead of bilinear, the same figures",
            f"{labels['bicubic_probability_max_abs_diff']}; {labels['bicubic_labels_changed']}",
            "report",
        ),
    ]
    if small["again"]:
        ratio = small["again"]["pixel_seconds"] / small["first"]["pixel_seconds"]
        rows.append(
            (
                f"second fit's pixel time / first's (N={counts[0]})",
                f"{small['again']['pixel_seconds']:.1f} s / {small['first']['pixel_seconds']:.1f} s = {ratio:.1%}",
                "<= 5%",
            )
        )
    rows += (
        []
        if len(counts) < 2
        else [
            (
                f"peak RSS of fit, N={counts[-1]} minus N={counts[0]}",
                f"{grew / 2**20:.0f} MiB = {grew / extra_bytes:.1%} "
                f"of the extra images' {extra_bytes / 2**20:.0f} MiB of pixels",
                "<= 10%",
            ),
            (
                f"fit wall time, N={counts[0]} / N={counts[-1]} ({MODEL} at {size} px)",
                f"{small['first']['seconds']:.0f} s / {large['first']['seconds']:.0f} s",
                "report",
            ),
        ]
    )
    rows += [
        (
            "EfficientNetB0 224 px training: images/s, GFLOP/s, share of matmul rate",
            f"{eff['images_per_s']}, {eff['training_gflop_per_s']} of {eff['matmul_gflop_per_s']}, "
            f"{eff['share_of_matmul_rate']:.0%}",
            "report",
        ),
    ]
    print("| figure | measured | target |\n|---|---|---|")
    for figure, measured, target in rows:
        print(f"| {figure} | {measured} | {target} |")


if __name__ == "__main__":
    main()
