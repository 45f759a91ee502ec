"""The one place images are decoded and resized, for training, prediction and the service.

Every image becomes an ``image_size`` x ``image_size`` x 3 uint8 RGB array: EXIF
orientation applied; grayscale (16-bit scaled to 8), palette, RGBA (composited on
white) and CMYK converted; an animated image's first frame; oversized images refused
before their pixels are decoded.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000  # larger images are refused as likely decompression bombs


class ImageDecodeError(ValueError):
    """An image that cannot be used; the message says why."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit (and 32-bit integer) grayscale: PIL's own conversion clips at 255, turning it nearly white.
        # Scale the 16-bit range down instead; float images are taken as 0..255.
        values = np.asarray(img, dtype=np.float64)
        scaled = values if img.mode == "F" else values / 257.0
        gray = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, image_size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to a (size, size, 3) uint8 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own check, at twice its limit, fires before ours
        raise ImageDecodeError(f"image exceeds the limit of {max_pixels} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Read and decode one image file; errors name the file."""
    try:
        return decode_image(Path(path).read_bytes(), image_size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def load_images(paths: list[Path], image_size: int, workers: int = 4) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Decode ``paths`` in parallel; return (images of the good ones, [(path, reason)] of the bad).

    The caller decides whether a bad image fails the run or is skipped; order of
    the good images follows ``paths``.
    """

    def one(path: Path) -> np.ndarray | str:
        try:
            return load_image(path, image_size)
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, paths))
    good = [r for r in results if isinstance(r, np.ndarray)]
    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    images = np.stack(good) if good else np.zeros((0, image_size, image_size, 3), np.uint8)
    return images, bad
