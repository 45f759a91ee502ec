"""Training curves and the augmentation grid are real pictures, not blank canvases."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stacking.reporting.plots import augmentation_grid, plot_history


def ink(path) -> float:
    """Share of pixels that are not (near) white."""
    with Image.open(path) as img:
        gray = np.asarray(img.convert("L"), dtype=float)
    return float((gray < 200).mean())


def test_training_curves_mark_best_epoch_and_lr_drops(tmp_path):
    history = {
        "loss": [1.0, 0.6, 0.4, 0.35, 0.34],
        "val_loss": [1.1, 0.7, 0.5, 0.55, 0.6],
        "accuracy": [0.5, 0.7, 0.8, 0.85, 0.86],
        "val_accuracy": [0.45, 0.65, 0.8, 0.78, 0.77],
        "learning_rate": [1e-3, 1e-3, 1e-3, 3e-4, 3e-4],
        "phase": [1, 1, 2, 2, 2],
        "best_epoch": 2,
    }
    path = plot_history(history, tmp_path / "curves.png", "tiny_cnn")
    assert 0.01 < ink(path) < 0.5
    blank = dict(history, loss=[0.0] * 5, val_loss=[0.0] * 5, accuracy=[0.0] * 5, val_accuracy=[0.0] * 5)
    assert ink(plot_history(blank, tmp_path / "flat.png", "flat")) < ink(path)  # the curves themselves add ink


def test_augmentation_grid_shows_every_image(tmp_path):
    originals = np.zeros((3, 8, 8, 3), np.uint8)
    originals[:, 2:6, 2:6] = 255
    augmented = np.stack([np.roll(originals, k, axis=2) for k in (1, 2)])
    path = augmentation_grid(originals, augmented, tmp_path / "grid.png", ["a", "b", "c"])
    with Image.open(path) as img:
        assert img.size == (int(1.6 * 3 * 100), int(1.6 * 3 * 100))
    assert ink(path) > 0.2  # mostly black cells
