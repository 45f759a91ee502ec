"""The one place images are decoded and resized, for training, prediction and the service.

Every image becomes a ``size`` x ``size`` x 3 uint8 RGB array at each input size the base
models take (``Pixels``), resized once per size: a JPEG at least twice a size is decoded at
a reduced DCT scale (PIL's ``draft``: 1/2, 1/4 or 1/8, never below that size), several
times faster than a full decode and within a few levels of it once resized, once per
distinct scale; other formats are decoded once; EXIF orientation applied; grayscale (16-bit scaled to 8), palette, RGBA
(composited on white) and CMYK converted; an animated image's first frame; oversized
images refused before their pixels are decoded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000  # larger images are refused as likely decompression bombs
# What decoded pixels depend on besides the file: this code's decoding rules (bump the number when they change) and
# Pillow's version (its decoders and resampling). The pixel cache keeps each decoder's pixels apart.
DECODER = f"r1-pillow{PIL.__version__}"


@dataclass(frozen=True)
class Pixels:
    """The same N images at each input size: ``by_size[s]`` is uint8 (N, s, s, 3), in memory or read from the pixel
    cache as used (``stacking.data.cache.CachedRows``). Indexing selects images."""

    by_size: dict[int, np.ndarray]

    @property
    def sizes(self) -> list[int]:
        return sorted(self.by_size)

    def at(self, size: int) -> np.ndarray:
        return self.by_size[size]

    def __len__(self) -> int:
        return len(next(iter(self.by_size.values())))

    def __getitem__(self, rows) -> Pixels:
        return Pixels({s: a[rows] for s, a in self.by_size.items()})

    def loaded(self) -> Pixels:
        """These images in memory (what is timed must not be a disk read)."""
        return Pixels({s: np.asarray(a) for s, a in self.by_size.items()})

    def only(self, sizes: Sequence[int]) -> Pixels:
        """These sizes alone."""
        return Pixels({s: self.by_size[s] for s in sizes})

    @staticmethod
    def zeros(n: int, sizes: Sequence[int]) -> Pixels:
        return Pixels({s: np.zeros((n, s, s, 3), np.uint8) for s in sizes})

    @staticmethod
    def concat(parts: Sequence[Pixels], sizes: Sequence[int] | None = None) -> Pixels:
        """The images of ``parts`` in order (none: zero images at ``sizes``)."""
        if not parts:
            return Pixels.zeros(0, sizes or [])
        return Pixels({s: np.concatenate([p.by_size[s] for p in parts]) for s in parts[0].by_size})


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


def decode_image(data: bytes, sizes: Sequence[int], max_pixels: int = MAX_PIXELS) -> Pixels:
    """Decode encoded image bytes into one image at each of ``sizes``.

    Each size's pixels depend on the file and that size alone, never on the other sizes asked
    for: a JPEG is decoded at the reduced DCT scale its size allows, once per distinct scale
    (sizes sharing one share the decode); any other format is decoded once.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
        decoded: dict[tuple[int, int], Image.Image] = {}  # by the size the file was decoded at
        by_size = {}
        for size in sizes:
            with Image.open(io.BytesIO(data)) as img:  # opening reads the header only
                if img.format == "JPEG":  # reduced-scale DCT decode, never smaller than this size
                    img.draft(None, (size, size))
                if img.size not in decoded:
                    decoded[img.size] = _to_rgb(ImageOps.exif_transpose(img))
                by_size[size] = _resized(decoded[img.size], size)[None]
        return Pixels(by_size)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own check, at twice its limit, fires before ours
        raise ImageDecodeError(f"image exceeds the limit of {max_pixels} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def _resized(img: Image.Image, size: int) -> np.ndarray:
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
