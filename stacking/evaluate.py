"""The comparison table on labelled images: every base model, every meta candidate and the served stack.

Accuracy comes with a bootstrap 95% interval (resampling the images), so a reader
can tell a real gain from luck on a small test set. Diversity is the pairwise
correlation of the base models' OOF probabilities: models that agree everywhere
cannot help each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io
from stacking.datasets import load_pixels, read_evaluation_set
from stacking.meta import score
from stacking.predictor import Predictor

BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(right: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of accuracy over ``samples`` resamples of the images."""
    rng = np.random.default_rng(seed)
    means = np.array([right[rng.integers(0, len(right), len(right))].mean() for _ in range(samples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def table_row(name: str, kind: str, probs: np.ndarray, labels: np.ndarray) -> dict:
    scores = score(probs, labels)
    low, high = bootstrap_interval(np.asarray(probs).argmax(axis=1) == labels)
    return {"name": name, "kind": kind, "accuracy": scores["accuracy"], "ci_low": low, "ci_high": high,
            "log_loss": scores["log_loss"], "ece": scores["ece"]}


def compare(
    predictor: Predictor, pixels: np.ndarray, labels: np.ndarray, views: int | None = None, policy: str | None = None
) -> list[dict]:
    """One row per base model, per meta candidate (each fitted on the OOF rows), and the served stack."""
    prediction = predictor.predict(pixels, views, policy)
    rows = [table_row(name, "base", prediction.base_probabilities[m], labels)
            for m, name in enumerate(predictor.base_names)]
    rows += [table_row(name, "candidate", predictor.stack(candidate, prediction.features), labels)
             for name, candidate in predictor.candidates().items()]
    selection = predictor.manifest["meta_learner"]["selection"]
    chosen = selection["kind"] + (" + temperature" if selection["calibration"] else "")
    rows.append(table_row(f"stack ({chosen})", "chosen", prediction.probabilities, labels))
    return rows


def diversity(bundle: Path) -> tuple[list[str], np.ndarray]:
    """Base model names and the (M, M) correlation of their flattened OOF probabilities."""
    oof = bundle_io.load_oof(bundle)
    probs = oof["probabilities"]
    return [str(n) for n in oof["models"]], np.corrcoef(probs.reshape(len(probs), -1))


def format_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal."""
    width = max(len("model"), *(len(r["name"]) for r in rows))
    lines = [f"{'model':<{width}}  {'kind':<9}  accuracy  95% interval     log_loss  ECE",
             f"{'-' * width}  {'-' * 9}  --------  ---------------  --------  ------"]
    lines += [f"{r['name']:<{width}}  {r['kind']:<9}  {r['accuracy']:>8.4f}  [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
              f"  {r['log_loss']:>8.4f}  {r['ece']:.4f}" for r in rows]
    return "\n".join(lines)


def format_diversity(names: list[str], corr: np.ndarray) -> str:
    width = max(len(n) for n in names)
    lines = ["correlation of base models' OOF probabilities (diversity: lower means more to gain)",
             " " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names)]
    lines += [f"{n:<{width}}  " + "  ".join(f"{v:>8.4f}" for v in row) for n, row in zip(names, corr)]
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
