"""The bundled real data set: scikit-learn's 1,797 handwritten digit scans, as image files.

Written in the class-folder layout with a labelled test split kept aside, so the
whole job (fit, evaluate on unseen images, predict a submission) runs offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SCALE = 4  # the 8x8 scans are written at 32x32, each scan pixel a 4x4 block


def _to_image(scan: np.ndarray) -> Image.Image:
    gray = np.round(scan * (255 / 16)).astype(np.uint8)  # the scans hold counts 0..16
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return Image.fromarray(rgb, "RGB").resize((8 * SCALE, 8 * SCALE), Image.Resampling.NEAREST)


def write_digits(
    out: Path, test_fraction: float = 0.2, seed: int = 0, limit: int | None = None, train_scans: int | None = None
) -> dict:
    """Write ``out/train/<digit>/*.png``, ``out/test/*.png``, ``test_labels.csv``, ``sample_submission.csv``.

    ``limit`` keeps a stratified subset of that many scans (for quick tests). ``train_scans``
    keeps a stratified subset of the training split alone, the test split untouched: a
    harder task on which base models differ by more than a couple of images (the demo).
    Deterministic for a given ``seed``. Returns counts per split.
    """
    digits = load_digits()
    index = np.arange(len(digits.target))
    if limit is not None and limit < len(index):
        index, _ = train_test_split(index, train_size=limit, stratify=digits.target, random_state=seed)
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, stratify=digits.target[index], random_state=seed
    )
    if train_scans is not None and train_scans < len(train_idx):
        train_idx, _ = train_test_split(
            train_idx, train_size=train_scans, stratify=digits.target[train_idx], random_state=seed
        )
    out = Path(out)
    for i in sorted(train_idx):
        folder = out / "train" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        _to_image(digits.images[i]).save(folder / f"digit_{i:04d}.png")
    (out / "test").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in sorted(test_idx):
        ids.append(f"test_{i:04d}.png")
        _to_image(digits.images[i]).save(out / "test" / ids[-1])
    labels = pd.DataFrame({"Id": ids, "Category": [str(digits.target[i]) for i in sorted(test_idx)]})
    labels.to_csv(out / "test_labels.csv", index=False)
    # Kaggle's sample submissions rarely follow file-name order: keep a fixed shuffled order.
    order = np.random.default_rng(seed).permutation(len(ids))
    pd.DataFrame({"Id": [ids[k] for k in order], "Category": "0"}).to_csv(out / "sample_submission.csv", index=False)
    return {"train": len(train_idx), "test": len(test_idx)}
