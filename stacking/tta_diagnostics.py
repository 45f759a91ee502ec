"""What TTA did, measured on out-of-fold rows: the table, the curve, fixed and broken counts, a heat map of 50 images.

Computed once at fit time from per-view probabilities of images no base model trained
on, saved in the bundle (``tta_diagnostics.json``), drawn by the report.
"""

from __future__ import annotations

import numpy as np

from stacking.meta import score
from stacking.tta import merge_views, needs_more_views

HEATMAP_IMAGES = 50
MARGINS = np.round(np.linspace(0.0, 1.0, 21), 2)  # adaptive TTA thresholds tried, smallest first
ROWS_CAP = 5000  # diagnostics use at most this many OOF rows, so memory stays bounded on large sets


def diagnostic_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """A fixed, sorted sample of at most ``ROWS_CAP`` OOF rows."""
    if len(rows) <= ROWS_CAP:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).permutation(rows)[:ROWS_CAP])


def tta_diagnostics(
    per_view: np.ndarray, labels: np.ndarray, names: list[str], served_views: int, merge: str = "mean"
) -> dict:
    """From (M, T, N, C) per-view probabilities: every TTA diagnostic, as plain JSON-ready data.

    Rows are the base models and the ensemble (their plain mean). Columns of the
    table: identity only ("none"), the first augmented view alone ("one view"), the
    served view count, and all T views.
    """
    per_view = np.concatenate([per_view, per_view.mean(axis=0, keepdims=True)])  # + ensemble
    rows = [*names, "ensemble"]
    views = per_view.shape[1]
    # cumulative[:, k]: the first k + 1 views merged as served
    cumulative = np.stack([merge_views(per_view[:, : k + 1], merge) for k in range(views)], axis=1)
    table, curve, changes = {}, {}, {}
    for i, name in enumerate(rows):
        columns = {"none": score(per_view[i, 0], labels)}
        if views > 1:
            columns["one view"] = score(per_view[i, 1], labels)
        columns[f"{served_views} views (served)"] = score(cumulative[i, served_views - 1], labels)
        columns[f"{views} views"] = score(cumulative[i, -1], labels)
        table[name] = columns
        curve[name] = [float((cumulative[i, k].argmax(axis=1) == labels).mean()) for k in range(views)]
        right_before = per_view[i, 0].argmax(axis=1) == labels
        right_after = cumulative[i, served_views - 1].argmax(axis=1) == labels
        changes[name] = {"fixed": int((~right_before & right_after).sum()), "broken": int((right_before & ~right_after).sum())}
    # A fixed sample across classes (OOF rows come grouped by class), shown grouped by true class.
    sample = np.random.default_rng(0).permutation(per_view.shape[2])[:HEATMAP_IMAGES]
    shown = sample[np.argsort(labels[sample], kind="stable")]
    return {
        "rows": int(per_view.shape[2]),
        "views": views,
        "served_views": served_views,
        "table": table,
        "accuracy_by_views": curve,
        "fixed_broken": changes,
        "heatmap": {
            "predicted": per_view[-1][:, shown].argmax(axis=-1).tolist(),  # ensemble, views x images
            "labels": labels[shown].tolist(),
        },
    }


def tune_adaptive(per_view: np.ndarray, labels: np.ndarray, served: int, first: int, merge: str) -> dict:
    """The smallest margin at which adaptive TTA is as accurate as full TTA on these OOF rows, and what it saves.

    Judged on the ensemble (plain mean of the base models), which the meta-learner
    builds on; at margin 1 every image gets every view, so a margin is always found.
    """
    full_views = per_view[:, :served]
    full = merge_views(full_views, merge)
    quick = merge_views(full_views[:, :first], merge)
    full_accuracy = float((full.mean(axis=0).argmax(axis=-1) == labels).mean())
    for margin in MARGINS:
        unsure = needs_more_views(full_views[:, :first], merge, margin)
        merged = np.where(unsure[None, :, None], full, quick)
        accuracy = float((merged.mean(axis=0).argmax(axis=-1) == labels).mean())
        if accuracy >= full_accuracy:
            break
    extra = float(unsure.mean())
    return {
        "margin": float(margin),
        "first_views": first,
        "served_views": served,
        "share_extra": extra,
        "passes_saved": float(1 - (first + extra * (served - first)) / served),
        "accuracy": accuracy,
        "full_accuracy": full_accuracy,
    }
