"""Leaderboard rows: each base model, each meta candidate and the chosen stack, scored alike.

Shared by ``stacking evaluate`` (labelled images) and the fit (the OOF rows, where the
candidates' answers come from the meta-folds that left each row out). Accuracy comes
with a bootstrap 95% interval (resampling the images), so a reader can tell a real
gain from luck on a small set.
"""

from __future__ import annotations

import numpy as np

from stacking.bundle.manifest import Selection
from stacking.meta.learners import score

BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(right: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of accuracy over ``samples`` resamples of the images."""
    rng = np.random.default_rng(seed)
    means = np.array([right[rng.integers(0, len(right), len(right))].mean() for _ in range(samples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_difference(
    ours: np.ndarray, theirs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of a per-image score (right or wrong, or log-loss) of one answer minus another's on the same images,
    and its 95% paired bootstrap interval: each resample of the images scores both, so what they share cancels out."""
    delta = np.asarray(ours, float) - np.asarray(theirs, float)
    rng = np.random.default_rng(seed)
    means = np.array([delta[rng.integers(0, len(delta), len(delta))].mean() for _ in range(samples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(delta.mean()), float(low), float(high)


def table_row(name: str, kind: str, probs: np.ndarray, labels: np.ndarray) -> dict:
    scores = score(probs, labels)
    low, high = bootstrap_interval(np.asarray(probs).argmax(axis=1) == labels)
    return {
        "name": name,
        "kind": kind,
        "accuracy": scores["accuracy"],
        "ci_low": low,
        "ci_high": high,
        "log_loss": scores["log_loss"],
        "ece": scores["ece"],
    }


def stack_name(selection: Selection) -> str:
    """How the chosen stack is named in tables: ``stack (logreg)``, ``stack (mean + temperature)``."""
    return f"stack ({selection.kind}{' + temperature' if selection.calibration else ''})"


def leaderboard(
    base_names: list[str],
    base_probs: np.ndarray,
    candidates: dict[str, np.ndarray],
    chosen: np.ndarray,
    selection: Selection,
    labels: np.ndarray,
) -> list[dict]:
    """Rows for (M, N, C) base probabilities, each candidate's (N, C) and the chosen stack's (N, C)."""
    rows = [table_row(name, "base", base_probs[m], labels) for m, name in enumerate(base_names)]
    rows += [table_row(name, "candidate", probs, labels) for name, probs in candidates.items()]
    return [*rows, table_row(stack_name(selection), "chosen", chosen, labels)]
