"""``stacking predict``: a Kaggle ``Id,Category`` submission from a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stacking.datasets import ImageSet, list_images, load_pixels
from stacking.errors import UserError
from stacking.files import write_atomically
from stacking.predictor import Predictor

CHUNK = 256  # images decoded and predicted at a time, so memory stays flat on large folders


def find_sample_submission(images_dir: Path) -> Path | None:
    """``sample_submission.csv`` in the image folder or beside it, as Kaggle lays it out."""
    for candidate in (Path(images_dir) / "sample_submission.csv", Path(images_dir).parent / "sample_submission.csv"):
        if candidate.is_file():
            return candidate
    return None


def order_by_sample(ids: list[str], sample: Path, skipped: set[str] = frozenset()) -> list[str]:
    """The sample submission's Id order (less ``skipped`` images); an error names ids missing on either side."""
    table = pd.read_csv(sample, dtype=str, keep_default_na=False)
    if "Id" not in table.columns:
        raise UserError(f"{sample}: no Id column")
    wanted, have = [i for i in table["Id"] if i not in skipped], set(ids)
    missing = [i for i in wanted if i not in have]
    extra = sorted(have - set(wanted))
    if missing or extra:
        raise UserError(
            f"{sample}: {len(missing)} Id(s) without an image (e.g. {missing[:3]}), "
            f"{len(extra)} image(s) not in it (e.g. {extra[:3]})"
        )
    return wanted


def predict_folder(
    predictor: Predictor,
    images_dir: Path,
    out: Path,
    views: int | None = None,
    policy: str | None = None,
    on_bad_image: str = "error",
    sample_submission: Path | None = None,
    probabilities_out: Path | None = None,
) -> tuple[pd.DataFrame, list]:
    """Predict every image in ``images_dir``; write ``Id,Category`` to ``out``; return (table, skipped).

    ``probabilities_out`` also gets every class probability (``Id`` then one column per class).
    """
    paths = list_images(images_dir)
    if not paths:
        raise UserError(f"{images_dir}: no images")
    probabilities: list[np.ndarray] = []
    ids, skipped = [], []
    with tqdm(total=len(paths), desc="predict", unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(paths), CHUNK):
            chunk = ImageSet(paths[start : start + CHUNK], predictor.classes)
            kept, pixels, bad = load_pixels(chunk, predictor.image_size, on_bad_image)
            skipped += bad
            if kept.paths:
                probabilities.append(predictor.predict(pixels, views, policy).probabilities)
                ids += kept.ids
            bar.update(len(chunk.paths))
    if not probabilities:
        raise UserError(f"{images_dir}: none of the {len(paths)} images could be read")
    probs = pd.DataFrame(np.concatenate(probabilities), index=pd.Index(ids, name="Id"), columns=predictor.classes)
    sample = sample_submission or find_sample_submission(images_dir)
    if sample is not None:
        probs = probs.loc[order_by_sample(ids, sample, {Path(p).name for p, _ in skipped})]
    table = pd.DataFrame({"Id": probs.index, "Category": [predictor.classes[i] for i in probs.to_numpy().argmax(axis=1)]})
    write_atomically(out, table.to_csv(index=False))
    if probabilities_out is not None:
        write_atomically(probabilities_out, probs.reset_index().to_csv(index=False))
    return table, skipped
