"""Finding labelled and unlabelled images in the layouts DESIGN.md accepts.

- class folders: ``DIR/train/<class>/*.png`` (or ``DIR/<class>/*.png``)
- Kaggle CSV: ``DIR/train.csv`` with ``Id,Category`` naming files in ``DIR/train/``
- a folder of images plus an ``Id,Category`` CSV (``evaluate --labels``)

Class names are sorted once (numbers in numeric order) and that order is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stacking.choices import ON_BAD_IMAGE
from stacking.data.cache import FillReport, PixelCache, cached_pixels, fill_cache
from stacking.data.images import Pixels, is_image_file
from stacking.errors import UserError


@dataclass
class ImageSet:
    """Image files, each with an id (its file name) and, when labelled, a class index."""

    paths: list[Path]
    classes: list[str]
    labels: np.ndarray | None = None

    @property
    def ids(self) -> list[str]:
        return [p.name for p in self.paths]

    def subset(self, keep: np.ndarray | list[int]) -> ImageSet:
        keep = list(keep)
        labels = None if self.labels is None else self.labels[keep]
        return ImageSet([self.paths[i] for i in keep], self.classes, labels)


def class_sort_key(name: str) -> tuple[int, int | str]:
    """Numeric class names in numeric order ('2' before '10'), then the rest by name."""
    return (0, int(name)) if name.isdigit() else (1, name)


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _check_classes(found: list[str], classes: list[str] | None, where: Path) -> list[str]:
    if classes is None:
        if len(found) < 2:
            raise UserError(f"{where}: found {len(found)} class(es); a classifier needs at least 2")
        return sorted(found, key=class_sort_key)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{where}: classes {unknown} are not among the model's classes {classes}")
    return classes


def read_class_folders(folder: Path, classes: list[str] | None = None) -> ImageSet:
    """``folder/<class>/*``; ``classes`` fixes the order (and refuses unknown ones)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    groups = {d.name: list_images(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    groups = {name: files for name, files in groups.items() if files}
    if not groups:
        raise UserError(f"{folder}: no class folders with images (expected {folder}/<class>/*.png)")
    order = _check_classes(list(groups), classes, folder)
    index = {name: i for i, name in enumerate(order)}
    paths = [p for name in groups for p in groups[name]]
    labels = np.array([index[name] for name in groups for _ in groups[name]], dtype=np.int64)
    return ImageSet(paths, order, labels)


def read_labels_csv(csv: Path, image_dir: Path, classes: list[str] | None = None) -> ImageSet:
    """An ``Id,Category`` CSV naming files in ``image_dir`` (an Id may omit the extension)."""
    csv, image_dir = Path(csv), Path(image_dir)
    if not csv.is_file():
        raise UserError(f"{csv}: no such file")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"Id", "Category"} - set(table.columns)
    if missing:
        raise UserError(f"{csv}: missing column(s) {sorted(missing)}; expected Id,Category")
    if table.empty:
        raise UserError(f"{csv}: no rows")
    files = {p.name: p for p in list_images(image_dir)}
    files.update({p.stem: p for p in files.values() if p.stem not in files})
    absent = [i for i in table["Id"] if i not in files]
    if absent:
        raise UserError(f"{csv}: {len(absent)} Id(s) have no image in {image_dir}, e.g. {absent[:3]}")
    order = _check_classes(sorted(set(table["Category"])), classes, csv)
    index = {name: i for i, name in enumerate(order)}
    paths = [files[i] for i in table["Id"]]
    return ImageSet(paths, order, table["Category"].map(index).to_numpy(np.int64))


def read_training_set(data_dir: Path) -> ImageSet:
    """The labelled training images of ``--data DIR`` in either layout."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir}: no such folder")
    if (data_dir / "train.csv").is_file():
        return read_labels_csv(data_dir / "train.csv", data_dir / "train")
    if (data_dir / "train").is_dir():
        return read_class_folders(data_dir / "train")
    return read_class_folders(data_dir)


def read_evaluation_set(images: Path, labels_csv: Path | None, classes: list[str]) -> ImageSet:
    """Labelled images for ``evaluate``: class folders, or a folder plus an Id,Category CSV."""
    if labels_csv is not None:
        return read_labels_csv(labels_csv, images, classes)
    return read_class_folders(images, classes)


def load_pixels(
    images: ImageSet,
    sizes: Sequence[int],
    on_bad_image: str = "error",
    cache: PixelCache | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[ImageSet, Pixels, list]:
    """Every image's pixels at each of ``sizes`` through the pixel cache (decoded once, read back in batches); a bad
    image fails the run (``error``) or is left out and reported (``skip``).

    Returns the images kept, their pixels (read from the cache when used), and the [(path, reason)] of those left
    out. ``echo`` hears how many images were decoded and how many came from the cache.
    """
    cache = cache or PixelCache()
    kept, pixels, bad, report = _through_cache(images, sizes, on_bad_image, cache)
    if echo is not None:
        echo(report.line(cache))
    return kept, pixels, bad


def load_chunk(
    images: ImageSet, sizes: Sequence[int], on_bad_image: str, cache: PixelCache, workers: int
) -> tuple[ImageSet, Pixels, list]:
    """``load_pixels`` for one chunk of ``predict``: the same cache, ``workers`` threads, no bar of its own (the
    caller counts chunks), and the pixels read into memory (the chunk is predicted at once)."""
    kept, pixels, bad, _ = _through_cache(images, sizes, on_bad_image, cache, workers, progress=False)
    return kept, pixels.loaded(), bad


def _through_cache(
    images: ImageSet,
    sizes: Sequence[int],
    on_bad_image: str,
    cache: PixelCache,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[ImageSet, Pixels, list, FillReport]:
    ON_BAD_IMAGE.check(on_bad_image)
    digests, reasons, report = fill_cache(cache, images.paths, sizes, workers, progress)
    bad = [(p, r) for p, r in zip(images.paths, reasons) if r is not None]
    kept = _keep_readable(images, bad, on_bad_image)
    return kept, cached_pixels(cache, kept.paths, [d for d in digests if d is not None], sizes), bad, report


def _keep_readable(images: ImageSet, bad: list[tuple[Path, str]], on_bad_image: str) -> ImageSet:
    """The images not in ``bad`` ([(path, reason)]); an unreadable one fails the run under ``error``."""
    if bad and on_bad_image == "error":
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"{reason}{more}; use --on-bad-image skip to leave unreadable images out")
    bad_paths = {p for p, _ in bad}
    return images.subset([i for i, p in enumerate(images.paths) if p not in bad_paths])


def read_groups(data_dir: Path, images: ImageSet, column: str) -> np.ndarray:
    """Each training image's group, from ``column`` of ``DIR/train.csv`` or of ``DIR/groups.csv`` (Id,<column>).

    Images of one group (near-duplicates, photos of one object) are kept on one side
    of every split; an image the table does not name is an error, not its own group.
    """
    data_dir = Path(data_dir)
    csv = next((p for p in (data_dir / "train.csv", data_dir / "groups.csv") if p.is_file()), None)
    if csv is None:
        raise UserError(
            f"--group-column {column}: needs {data_dir}/train.csv or {data_dir}/groups.csv with Id,{column}"
        )
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if column not in table.columns or "Id" not in table.columns:
        raise UserError(f"--group-column {column}: {csv} has columns {list(table.columns)}; expected Id and {column}")
    by_id = dict(zip(table["Id"], table[column]))
    groups = [by_id.get(p.name, by_id.get(p.stem)) for p in images.paths]
    absent = [p.name for p, g in zip(images.paths, groups) if g is None or g == ""]
    if absent:
        raise UserError(f"--group-column {column}: {csv} gives no group for {len(absent)} image(s), e.g. {absent[:3]}")
    return np.array(groups)
