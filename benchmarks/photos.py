"""Photo-like JPEGs made here, never downloaded: a lit scene with one object whose shape is the class.

Each image: a sky-to-ground gradient with a horizon, soft clutter (blobs of other colours),
one large object (ellipse, box, triangle or cross: the class) at a random place, colour and
size, a little blur and sensor noise, saved as a JPEG at quality 90 (about 200 KB at
1024x768). Structured like a photo (smooth regions, edges, texture), so decoding, DCT
scaling and resizing cost what they cost on real photos, and a CNN can learn the class.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("ellipse", "box", "triangle", "cross")


def _shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "ellipse":
        draw.ellipse(box, fill=colour)
    elif kind == "box":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        w, h = (x1 - x0) // 3, (y1 - y0) // 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=colour)


def photo(seed: int, label: int, width: int = 1024, height: int = 768, quality: int = 90) -> bytes:
    """One JPEG of class ``label`` (an index into ``CLASSES``), the same bytes for the same arguments."""
    rng = np.random.default_rng(seed)
    horizon = int(height * rng.uniform(0.35, 0.65))
    sky, ground = rng.integers(40, 230, (2, 3))
    rows = np.arange(height)[:, None]
    shade = np.where(rows < horizon, rows / max(horizon, 1), 1 + (rows - horizon) / height)[..., None]
    base = np.where(rows[..., None] < horizon, sky * (0.7 + 0.3 * shade), ground * (1.3 - 0.4 * shade))
    img = Image.fromarray(np.clip(np.broadcast_to(base, (height, width, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(6, 14)):  # clutter: soft blobs
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(width // 40, width // 8)
        draw.ellipse((x - r, y - r, x + r, y + r // 2), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    side = int(min(width, height) * rng.uniform(0.3, 0.6))
    x0, y0 = rng.integers(0, width - side), rng.integers(0, height - side)
    _shape(draw, CLASSES[label], (x0, y0, x0 + side, y0 + side), tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, np.int16) + rng.normal(0, 5, (height, width, 1)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _write(args: tuple[Path, int, int, int, int]) -> None:
    path, seed, label, width, height = args
    if not path.is_file():
        tmp = path.with_name(f".{path.name}")
        tmp.write_bytes(photo(seed, label, width, height))
        tmp.replace(path)


def write_photos(folder: Path, count: int, width: int = 1024, height: int = 768, workers: int | None = None) -> Path:
    """``folder/train/<class>/NNNNNN.jpg``: ``count`` photos, classes in turn; files already there are kept (a
    second run with a larger count adds the rest). Returns the data folder."""
    jobs = []
    for i in range(count):
        label = i % len(CLASSES)
        path = Path(folder) / "train" / CLASSES[label] / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((path, i, label, width, height))
    with ProcessPoolExecutor(workers or len(os.sched_getaffinity(0))) as pool:
        list(pool.map(_write, jobs, chunksize=16))
    return Path(folder)
