"""``stacking preview augment``: see the training augmentation before hours of training."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from models.training import Augmentation, make_augmenter
from stacking.data.cache import PixelCache
from stacking.data.datasets import ImageSet, load_pixels, read_training_set
from stacking.errors import UserError
from stacking.reporting.plots import augmentation_grid


def _one_per_class(images: ImageSet, count: int) -> list[int]:
    """Indices of up to ``count`` images, taking each class in turn."""
    by_class = [list(np.flatnonzero(images.labels == c)) for c in range(len(images.classes))]
    picked: list[int] = []
    while len(picked) < count and any(by_class):
        for members in by_class:
            if members and len(picked) < count:
                picked.append(int(members.pop(0)))
    return picked


def is_identity(augmentation: Augmentation) -> bool:
    """True when every augmentation is off: training saw the images as they are."""
    return not make_augmenter(augmentation, 0).layers


def preview_augmentation(
    data_dir: Path,
    out: Path,
    augmentation: Augmentation,
    image_size: int,
    seed: int = 0,
    count: int = 8,
    copies: int = 5,
    cache: PixelCache | None = None,
) -> Path:
    """Write a grid: ``count`` training images (one per class in turn), each with ``copies`` augmented copies."""
    if is_identity(augmentation):
        raise UserError("[augmentation]: every augmentation is off, so there is nothing to preview")
    images = read_training_set(data_dir)
    images, decoded, _ = load_pixels(images.subset(_one_per_class(images, count)), [image_size], "skip", cache)
    pixels = np.asarray(decoded.at(image_size))
    keras.utils.set_random_seed(seed)
    augment = make_augmenter(augmentation, seed)
    batch = pixels.astype("float32")
    augmented = np.stack([keras.ops.convert_to_numpy(augment(batch, training=True)) for _ in range(copies)])
    titles = [f"{images.classes[label]}: {path.name}" for label, path in zip(images.labels, images.paths)]
    return augmentation_grid(pixels, augmented, Path(out), titles)
