"""Decoding: every image mode becomes RGB, EXIF orientation is applied, bad files are named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stacking.data.cache import PixelCache
from stacking.data.datasets import ImageSet, load_pixels
from stacking.data.images import ImageDecodeError, decode_image
from stacking.errors import UserError


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img, expected",
    [
        (Image.new("L", (4, 4), 200), (200, 200, 200)),
        (Image.new("RGB", (4, 4), (10, 20, 30)), (10, 20, 30)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white background
        (Image.new("RGB", (4, 4), (0, 128, 255)).quantize(colors=4), (0, 128, 255)),
    ],
    ids=["grayscale", "rgb", "rgba-opaque", "rgba-transparent", "palette"],
)
def test_modes_become_rgb(img, expected):
    out = decode_image(encode(img), [4]).at(4)[0]
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == expected


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95), [8]).at(8)[0]
    r, g, b = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied():
    # A 2x1 image, left pixel white, tagged "rotate 90 CW to display" (orientation 6).
    img = Image.new("RGB", (2, 1), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = encode(img, "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(raw)) as check:
        assert check.getexif()[0x0112] == 6
    out = decode_image(raw, [2]).at(2)[0]
    # Displayed upright it is 1 wide and 2 tall with white on top; resized to 2x2 the top row is white.
    assert out[0].mean() > 200 and out[1].mean() < 60


def test_resize_to_square():
    out = decode_image(encode(Image.new("RGB", (40, 10), (5, 5, 5))), [16]).at(16)
    assert out.shape == (1, 16, 16, 3)


def _count_decodes_and_resizes(monkeypatch) -> tuple[list, list]:
    decodes, resized = [], []
    real_decoder, real_resize = Image._getdecoder, Image.Image.resize
    monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: decodes.append(a[1]) or real_decoder(*a, **k))
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resized.append(a[0]) or real_resize(self, *a, **k))
    return decodes, resized


def test_an_image_is_decoded_once_and_resized_once_per_size(monkeypatch):
    """A stack of models at three sizes costs one decode per image; each size equals that size decoded alone."""
    data = encode(Image.effect_noise((64, 48), 60).convert("RGB"), "PNG")
    alone = {size: decode_image(data, [size]).at(size) for size in (16, 24, 40)}
    decodes, resized = _count_decodes_and_resizes(monkeypatch)
    together = decode_image(data, [16, 24, 40])
    assert len(decodes) == 1 and sorted(resized) == [(16, 16), (24, 24), (40, 40)]
    assert together.sizes == [16, 24, 40] and len(together) == 1
    for size, pixels in alone.items():
        np.testing.assert_array_equal(together.at(size), pixels)


def test_a_jpeg_is_decoded_at_the_reduced_scale_each_size_allows_once_per_scale(monkeypatch):
    """64x48: 16 and 24 px both allow half scale (32x24), 40 px the full one. Each size's pixels are those of the
    size alone (the cache keys them by size), and a reduced decode stays close to the full one."""
    data = encode(Image.linear_gradient("L").resize((64, 48)).convert("RGB"), "JPEG")
    alone = {size: decode_image(data, [size]).at(size) for size in (16, 24, 40)}
    decodes, resized = _count_decodes_and_resizes(monkeypatch)
    together = decode_image(data, [16, 24, 40])
    assert decodes == ["jpeg", "jpeg"] and sorted(resized) == [(16, 16), (24, 24), (40, 40)]
    for size, pixels in alone.items():
        np.testing.assert_array_equal(together.at(size), pixels)
    with Image.open(io.BytesIO(data)) as img:  # the full decode, resized as decode_image resizes
        full = np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)).astype(int)
    assert 0 < np.abs(together.at(16)[0].astype(int) - full).max() <= 8


def bad_images(tmp_path, paths) -> list[tuple]:
    """The (path, reason) of each unreadable file among ``paths``, as every folder-decoding command finds them."""
    _, _, bad = load_pixels(ImageSet(paths, ["x"]), [8], "skip", cache=PixelCache(tmp_path / "cache"))
    return bad


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    [(path, reason)] = bad_images(tmp_path, [bad])
    assert path == bad and reason.startswith(f"{bad}: not a readable image")


def test_truncated_image_is_an_error(tmp_path):
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    [(path, reason)] = bad_images(tmp_path, [cut])
    assert path == cut and "cut.jpg" in reason
    with pytest.raises(UserError, match="cut.jpg.*--on-bad-image skip"):
        load_pixels(ImageSet([cut], ["x"]), [8], "error", cache=PixelCache(tmp_path / "cache"))


def test_pixel_limit_refuses_bombs():
    data = encode(Image.new("L", (300, 300)))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(data, [8], max_pixels=300 * 300 - 1)


def test_load_pixels_separates_bad_ones(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(encode(Image.new("RGB", (4, 4), (1, 2, 3))))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    kept, pixels, failed = load_pixels(ImageSet([good, bad, good], ["x"]), [4], "skip", cache=PixelCache(tmp_path))
    assert kept.paths == [good, good] and np.asarray(pixels.at(4)).shape == (2, 4, 4, 3)
    assert [p for p, _ in failed] == [bad] and "b.png" in failed[0][1]
