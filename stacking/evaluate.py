"""The comparison table: each base model, their plain mean and the served stack, on labelled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stacking.datasets import load_pixels, read_evaluation_set
from stacking.meta import score
from stacking.predictor import Predictor


def compare(
    predictor: Predictor, pixels: np.ndarray, labels: np.ndarray, views: int | None = None, policy: str | None = None
) -> list[dict]:
    """One row per base model, the mean, and the stack: accuracy and log-loss."""
    prediction = predictor.predict(pixels, views, policy)
    rows = [{"model": name, **score(prediction.base_probabilities[m], labels)}
            for m, name in enumerate(predictor.base_names)]
    rows.append({"model": "mean", **score(prediction.base_probabilities.mean(axis=0), labels)})
    rows.append({"model": f"stack ({predictor.manifest['meta_learner']['kind']})",
                 **score(prediction.probabilities, labels)})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal."""
    width = max(len("model"), *(len(r["model"]) for r in rows))
    lines = [f"{'model':<{width}}  accuracy  log_loss", f"{'-' * width}  --------  --------"]
    lines += [f"{r['model']:<{width}}  {r['accuracy']:>8.4f}  {r['log_loss']:>8.4f}" for r in rows]
    return "\n".join(lines)


def evaluate_folder(
    predictor: Predictor,
    images: Path,
    labels_csv: Path | None,
    views: int | None = None,
    policy: str | None = None,
    on_bad_image: str = "error",
) -> tuple[list[dict], int, list]:
    """:func:`compare` on class folders, or a folder plus an Id,Category CSV: (rows, images used, skipped)."""
    labelled = read_evaluation_set(images, labels_csv, predictor.classes)
    labelled, pixels, bad = load_pixels(labelled, predictor.image_size, on_bad_image)
    return compare(predictor, pixels, labelled.labels, views, policy), len(labelled.paths), bad
