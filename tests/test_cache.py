"""The decoded-pixel cache: reused, safe to fill from two processes, rebuilt when damaged, never stale; training
and OOF prediction read it in batches, and the same seed gives the same weights as from pixels in memory."""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from pathlib import Path

import httpx
import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.photos import photo
from models.registry import create_model
from models.training import TrainConfig, train_model
from stacking.data import cache as cache_module
from stacking.data.cache import CachedRows, PixelCache, fill_cache
from stacking.data.datasets import ImageSet, load_pixels
from stacking.data.images import DECODER, decode_image
from stacking.inference.predictor import Predictor
from stacking.training.config import load_config
from stacking.training.fit import fit
from tests.conftest import TINY_FIT
from tests.test_cli import one_line_error, run_cli


def write_jpegs(folder: Path, count: int, width: int = 96, height: int = 72) -> list[Path]:
    """Photo-like JPEGs, last modified an hour ago (settled: the cache remembers their digests)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(photo(i, i % 4, width, height))
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    return paths


def images_of(paths: list[Path]) -> ImageSet:
    return ImageSet(paths, ["a", "b", "c", "d"], np.arange(len(paths)) % 4)


def count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache_module.decode_image
    monkeypatch.setattr(cache_module, "decode_image", lambda data, sizes: calls.append(1) or real(data, sizes))
    return calls


def test_a_second_load_reads_every_image_from_the_cache(tmp_path, monkeypatch):
    paths, cache, lines = write_jpegs(tmp_path / "img", 6), PixelCache(tmp_path / "cache"), []
    decodes = count_decodes(monkeypatch)
    _, first, _ = load_pixels(images_of(paths), [16, 24], cache=cache, echo=lines.append)
    assert len(decodes) == 6 and "6 images decoded, 0 from the cache" in lines[-1]
    hashed, looked_up = [], []
    real_digest, real_fill = cache_module.file_digest, cache_module._fill_one
    monkeypatch.setattr(cache_module, "file_digest", lambda data: hashed.append(1) or real_digest(data))
    monkeypatch.setattr(cache_module, "_fill_one", lambda *a, **k: looked_up.append(1) or real_fill(*a, **k))
    _, again, _ = load_pixels(images_of(paths), [16, 24], cache=cache, echo=lines.append)
    assert len(decodes) == 6 and lines[-1].startswith("pixels: all 6 images from the cache")
    assert not looked_up  # the same unchanged files (path, size, mtime, inode): the fill's record, one read
    load_pixels(images_of(paths[:5]), [16, 24], cache=cache, echo=lines.append)  # another list: file by file
    assert len(looked_up) == 5 and not hashed  # each file's remembered digest: none of them read
    for size in (16, 24):
        expected = np.concatenate([decode_image(p.read_bytes(), [size]).at(size) for p in paths])
        np.testing.assert_array_equal(np.asarray(first.at(size)), expected)
        np.testing.assert_array_equal(np.asarray(again.at(size)), expected)
    _, more, _ = load_pixels(images_of(paths), [16, 32], cache=cache, echo=lines.append)  # a new size: decoded
    assert len(decodes) == 12 and np.asarray(more.at(32)).shape == (6, 32, 32, 3)


def test_a_copied_file_is_one_entry_and_a_changed_file_is_decoded_again(tmp_path):
    paths, cache = write_jpegs(tmp_path / "img", 2), PixelCache(tmp_path / "cache")
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(paths[0].read_bytes())
    digests, _, report = fill_cache(cache, [*paths, copy], [16], workers=1)  # one thread: the copy comes after
    assert digests[2] == digests[0] and report.decoded == 2
    before = np.asarray(load_pixels(images_of(paths), [16], cache=cache)[1].at(16))
    paths[1].write_bytes(photo(99, 1, 96, 72))  # same name, new content
    _, after, _ = load_pixels(images_of(paths), [16], cache=cache)
    np.testing.assert_array_equal(np.asarray(after.at(16))[0], before[0])
    np.testing.assert_array_equal(np.asarray(after.at(16))[1], decode_image(paths[1].read_bytes(), [16]).at(16)[0])
    assert not np.array_equal(np.asarray(after.at(16))[1], before[1])


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:],  # one flipped bit in the pixels
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one flipped bit in the checksum
        lambda b: b[:-40],  # cut short
        lambda b: b"",  # empty
    ],
    ids=["pixel", "checksum", "truncated", "empty"],
)
def test_a_damaged_entry_is_rebuilt_never_served(tmp_path, damage):
    paths, cache = write_jpegs(tmp_path / "img", 3), PixelCache(tmp_path / "cache")
    _, pixels, _ = load_pixels(images_of(paths), [16], cache=cache)
    expected = np.asarray(pixels.at(16))
    digests, _, _ = fill_cache(cache, paths, [16])
    entry = cache.entry(digests[1], 16)
    entry.write_bytes(damage(entry.read_bytes()))
    np.testing.assert_array_equal(np.asarray(pixels.at(16)), expected)  # rows already handed out: rebuilt on read
    assert cache.read(digests[1], 16) is not None  # and stored again, whole
    entry.write_bytes(damage(entry.read_bytes()))
    _, _, report = fill_cache(cache, paths, [16])  # a later load finds it too (by its length, or on reading)
    np.testing.assert_array_equal(np.asarray(load_pixels(images_of(paths), [16], cache=cache)[1].at(16)), expected)
    assert report.decoded <= 1


def test_a_damaged_entry_whose_file_changed_since_is_an_error_naming_the_file(tmp_path):
    paths, cache = write_jpegs(tmp_path / "img", 2), PixelCache(tmp_path / "cache")
    _, pixels, _ = load_pixels(images_of(paths), [16], cache=cache)
    digests, _, _ = fill_cache(cache, paths, [16])
    cache.entry(digests[1], 16).write_bytes(b"damaged")
    paths[1].write_bytes(photo(50, 1, 96, 72))
    with pytest.raises(ValueError, match=rf"{paths[1]}: the file changed while in use"):
        np.asarray(pixels.at(16))


def _fill(root: str, paths: list[str]) -> list[str]:
    return fill_cache(PixelCache(Path(root)), [Path(p) for p in paths], [16, 24], workers=2)[0]


def test_two_processes_filling_one_cache_at_once_leave_every_entry_whole(tmp_path):
    paths = write_jpegs(tmp_path / "img", 40)
    root = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_fill, [(str(root), [str(p) for p in paths])] * 2)
    assert results[0] == results[1]
    cache = PixelCache(root)
    for path, digest in zip(paths, results[0]):
        for size in (16, 24):
            np.testing.assert_array_equal(cache.read(digest, size), decode_image(path.read_bytes(), [size]).at(size)[0])
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no temporary file left behind
    assert [r["entries"] for r in cache.info()] == [40, 40]


def test_cache_info_and_clear(tmp_path, capsys):
    paths, root = write_jpegs(tmp_path / "img", 5), tmp_path / "cache"
    fill_cache(PixelCache(root), paths, [16, 24])
    (root / "pixels-r0-older" / "16" / "ab").mkdir(parents=True)  # an older decoder's entries
    (root / "pixels-r0-older" / "16" / "ab" / "x.px").write_bytes(b"\0" * 784)
    code, out, err = run_cli(["cache", "info", "--cache-dir", root], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"pixel cache: {root}"
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["r0-older", "16", "1"],
        [DECODER, "16", "5"],
        [DECODER, "24", "5"],
    ]
    assert "not this version's" in lines[2] and lines[-1].split()[:2] == ["total", "11"]
    code, out, err = run_cli(["cache", "clear", "--cache-dir", root], capsys)
    assert code == 0 and out.startswith("removed 11 entries (") and str(root) in out
    code, out, err = run_cli(["cache", "info", "--cache-dir", root], capsys)
    assert out.splitlines()[1:] == ["empty"]


def test_the_cache_dir_comes_from_the_option_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKSERVE_CACHE_DIR", str(tmp_path / "env"))
    assert PixelCache().root == tmp_path / "env"
    monkeypatch.delenv("STACKSERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert PixelCache().root == tmp_path / "xdg" / "stackserve"


def test_training_from_the_cache_gives_the_weights_of_training_from_memory(tmp_path):
    """Batches are read by row number as needed, in the order shuffling the examples themselves gives."""
    paths = write_jpegs(tmp_path / "img", 48)
    _, pixels, _ = load_pixels(images_of(paths), [16], cache=PixelCache(tmp_path / "cache"))
    rows, labels = pixels.at(16), np.arange(48) % 4
    assert isinstance(rows, CachedRows)
    cfg = TrainConfig(epochs=2, batch_size=8)

    def weights(x_train, x_val) -> list[np.ndarray]:
        keras.utils.set_random_seed(3)
        model = create_model("tiny_cnn", 4, 16, weights=None)
        trained, _ = train_model(model, (x_train, labels[:40]), (x_val, labels[40:]), cfg, tmp_path / "m.keras", 3)
        return trained.get_weights()

    in_memory = np.asarray(rows)
    from_memory = weights(in_memory[:40], in_memory[40:])
    from_cache = weights(rows[:40], rows[40:])
    for a, b in zip(from_memory, from_cache):
        np.testing.assert_array_equal(a, b)


def test_a_fit_never_holds_more_than_a_batch_of_pixels(digits_dir, tmp_path, monkeypatch):
    """Every read of the cache during a fit is a training batch, a validation batch or a chunk of OOF rows."""
    reads: list[int] = []
    real = CachedRows.__array__
    monkeypatch.setattr(CachedRows, "__array__", lambda self, *a, **k: reads.append(len(self)) or real(self, *a, **k))
    lines: list[str] = []
    cfg = load_config(None, {**TINY_FIT, "epochs": 1})
    fit(digits_dir, tmp_path / "b", cfg, echo=lines.append, cache=PixelCache(tmp_path / "cache"))
    images = sum(1 for _ in (digits_dir / "train").rglob("*.png"))
    assert max(reads) <= 64 < images and sum(reads) > images  # 64: one compiled call's rows
    assert any(line.startswith("pixels: ") and "images decoded" in line for line in lines)


def test_a_second_fit_says_its_images_came_from_the_cache(digits_dir, tmp_path, capsys):
    args = ["fit", "--data", digits_dir, "--models", "tiny_cnn", "--image-size", "12", "--epochs", "1"]
    args += ["--cache-dir", tmp_path / "cache"]
    code, out, err = run_cli([*args, "--out", tmp_path / "one"], capsys)
    assert code == 0, err
    assert "images decoded, 0 from the cache" in out
    code, out, err = run_cli([*args, "--out", tmp_path / "two"], capsys)
    assert code == 0, err
    assert "pixels: all " in out and "images from the cache" in out


def test_an_unreadable_cache_dir_is_a_clear_error(digits_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(
        ["fit", "--data", digits_dir, "--out", tmp_path / "b", "--models", "tiny_cnn", "--cache-dir", blocker], capsys
    )
    assert "--cache-dir" in one_line_error(code, err) and str(blocker) in err


def test_an_upload_and_predict_decode_a_large_jpeg_alike_to_the_bit(server, tiny_bundle, tmp_path, capsys):
    """The service and ``predict`` share one decode function (reduced-scale JPEG decoding included)."""
    folder = tmp_path / "photos"
    paths = write_jpegs(folder, 4, 160, 120)
    full = np.asarray(Image.open(paths[0]).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    assert not np.array_equal(decode_image(paths[0].read_bytes(), [16]).at(16)[0], full)  # the reduced path ran
    probabilities = tmp_path / "p.csv"
    code, _, err = run_cli(
        ["predict", tiny_bundle, folder, "--out", tmp_path / "s.csv", "--probabilities", probabilities], capsys
    )
    assert code == 0, err
    cli = pd.read_csv(probabilities, dtype={"Id": str}).set_index("Id")
    files = [("files", (p.name, io.BytesIO(p.read_bytes()), "image/jpeg")) for p in paths]
    response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    served = np.array([[p["probabilities"][c] for c in cli.columns] for p in response.json()["predictions"]])
    np.testing.assert_allclose(served, cli.loc[[p.name for p in paths]].to_numpy(), rtol=0, atol=1e-7)


def test_predict_decodes_a_folder_once_and_answers_alike_from_the_cache(tiny_bundle, tmp_path, capsys, monkeypatch):
    """A second ``predict`` over the same images (again, or with another bundle) decodes nothing, same numbers."""
    folder, root = tmp_path / "photos", tmp_path / "cache"
    write_jpegs(folder, 5, 160, 120)
    decodes = count_decodes(monkeypatch)
    outputs = []
    for run in ("one", "two"):
        probabilities = tmp_path / f"{run}.csv"
        args = ["predict", tiny_bundle, folder, "--out", tmp_path / f"s{run}.csv", "--probabilities", probabilities]
        code, _, err = run_cli([*args, "--cache-dir", root, "--batch-size", "2"], capsys)
        assert code == 0, err
        outputs.append(pd.read_csv(probabilities, dtype={"Id": str}))
        assert len(decodes) == 5  # the first run decoded each image once; the second, none
    pd.testing.assert_frame_equal(outputs[0], outputs[1], check_exact=True)
    assert sum(row["entries"] for row in PixelCache(root).info()) == 5 * len(Predictor(tiny_bundle).sizes)
