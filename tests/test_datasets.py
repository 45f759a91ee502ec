"""Both data layouts, fixed class order, and bad folders named in the error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stacking.data.datasets import load_pixels, read_evaluation_set, read_labels_csv, read_training_set
from stacking.data.digits import write_digits
from stacking.errors import UserError


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (value, value, value)).save(path)
    return path


def test_class_folders(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            png(tmp_path / "train" / cls / f"{cls}{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    images = read_training_set(tmp_path)
    assert images.classes == ["cat", "dog"]
    assert len(images.paths) == 6
    assert [images.classes[k] for k in images.labels] == [p.parent.name for p in images.paths]


def test_numeric_classes_sort_as_numbers(tmp_path):
    for cls in ("10", "2", "1"):
        png(tmp_path / cls / "a.png")
    assert read_training_set(tmp_path).classes == ["1", "2", "10"]


def test_kaggle_csv_layout(tmp_path):
    for name in ("a.png", "b.png", "c.jpg"):
        png(tmp_path / "train" / name)
    pd.DataFrame({"Id": ["a.png", "b", "c.jpg"], "Category": ["x", "y", "x"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    images = read_training_set(tmp_path)
    assert images.classes == ["x", "y"]
    assert [p.name for p in images.paths] == ["a.png", "b.png", "c.jpg"]
    assert images.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "csv_text, match",
    [
        ("Id,Label\na.png,x\n", "missing column"),
        ("Id,Category\nmissing.png,x\nb.png,y\n", "have no image"),
        ("Id,Category\na.png,x\n", "at least 2"),
    ],
)
def test_bad_csv_is_named(tmp_path, csv_text, match):
    png(tmp_path / "train" / "a.png")
    png(tmp_path / "train" / "b.png")
    (tmp_path / "train.csv").write_text(csv_text)
    with pytest.raises(UserError, match=match) as err:
        read_training_set(tmp_path)
    assert "train.csv" in str(err.value)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        read_training_set(tmp_path / "absent")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no class folders"):
        read_training_set(tmp_path / "empty")


def test_single_class_is_refused(tmp_path):
    png(tmp_path / "train" / "only" / "a.png")
    with pytest.raises(UserError, match="at least 2"):
        read_training_set(tmp_path)


def test_evaluation_set_uses_the_models_class_order(tmp_path):
    png(tmp_path / "b" / "1.png")
    png(tmp_path / "a" / "2.png")
    images = read_evaluation_set(tmp_path, None, ["b", "a", "c"])
    assert images.classes == ["b", "a", "c"]
    assert dict(zip([p.name for p in images.paths], images.labels.tolist())) == {"1.png": 0, "2.png": 1}
    with pytest.raises(UserError, match=r"\['a'\] are not among"):
        read_evaluation_set(tmp_path, None, ["b", "c"])


def test_bad_image_fails_or_is_skipped(tmp_path):
    png(tmp_path / "x" / "good.png")
    png(tmp_path / "y" / "good2.png")
    (tmp_path / "y" / "corrupt.png").write_bytes(b"garbage")
    images = read_training_set(tmp_path)
    with pytest.raises(UserError, match="corrupt.png"):
        load_pixels(images, [8], "error")
    kept, pixels, bad = load_pixels(images, [8], "skip")
    assert [p.name for p in kept.paths] == ["good.png", "good2.png"]
    assert pixels.at(8).shape == (2, 8, 8, 3) and kept.labels.tolist() == [0, 1]
    assert [p.name for p, _ in bad] == ["corrupt.png"]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_digits_are_deterministic_and_complete(tmp_path):
    counts = write_digits(tmp_path / "a", limit=200)
    write_digits(tmp_path / "b", limit=200)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    train = read_training_set(tmp_path / "a")
    assert train.classes == [str(d) for d in range(10)]
    assert len(train.paths) == counts["train"] == 160
    test = read_labels_csv(tmp_path / "a" / "test_labels.csv", tmp_path / "a" / "test", train.classes)
    assert len(test.paths) == counts["test"] == 40
    assert not {p.name for p in train.paths} & {p.name for p in test.paths}
    sample = pd.read_csv(tmp_path / "a" / "sample_submission.csv", dtype=str)
    assert sorted(sample["Id"]) == sorted(p.name for p in test.paths)
    with Image.open(test.paths[0]) as img:
        assert img.mode == "RGB"
    kept, pixels, _ = load_pixels(test, [16])
    assert np.asarray(pixels.at(16)).max() > 200 and np.bincount(test.labels, minlength=10).min() >= 3
