"""What TTA did, measured on out-of-fold rows: the table, the curve, fixed and broken counts, a heat map of 50 images.

Computed once at fit time from per-view probabilities of images no base model trained
on, saved in the bundle (``tta_diagnostics.json``), drawn by the report.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from stacking.inference.tta import TTAPolicy, needs_more_views
from stacking.meta.learners import score

HEATMAP_IMAGES = 50
IDENTITY_WEIGHTS = (1.0, 1.5, 2.0, 3.0, 5.0)  # the identity view's weight, tried when tuning
MARGINS = np.round(np.linspace(0.0, 1.0, 21), 2)  # adaptive TTA thresholds tried, smallest first
ROWS_CAP = 5000  # diagnostics use at most this many OOF rows, so memory stays bounded on large sets


def diagnostic_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """A fixed, sorted sample of at most ``ROWS_CAP`` OOF rows."""
    if len(rows) <= ROWS_CAP:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).permutation(rows)[:ROWS_CAP])


def tta_diagnostics(
    per_view: np.ndarray, labels: np.ndarray, names: list[str], served_views: int, policy: TTAPolicy
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
    cumulative = np.stack([policy.merge_views(per_view[:, : k + 1]) for k in range(views)], axis=1)
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
        changes[name] = {
            "fixed": int((~right_before & right_after).sum()),
            "broken": int((right_before & ~right_after).sum()),
        }
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


def tune_adaptive(per_view: np.ndarray, labels: np.ndarray, served: int, policy: TTAPolicy) -> dict:
    """The smallest margin at which adaptive TTA is as accurate as full TTA on these OOF rows, and what it saves.

    Judged on the ensemble (plain mean of the base models), which the meta-learner
    builds on; at margin 1 every image gets every view, so a margin is always found.
    """
    first = policy.adaptive_views
    full_views = per_view[:, :served]
    full = policy.merge_views(full_views)
    quick = policy.merge_views(full_views[:, :first])
    full_accuracy = float((full.mean(axis=0).argmax(axis=-1) == labels).mean())
    for margin in MARGINS:
        unsure = needs_more_views(full_views[:, :first], policy, margin)
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


def tune_identity_weight(per_view: np.ndarray, labels: np.ndarray, served: int, policy: TTAPolicy) -> dict:
    """The identity view's weight with the lowest ensemble log-loss over the served views."""
    losses = {
        w: score(replace(policy, identity_weight=w).merge_views(per_view[:, :served]).mean(axis=0), labels)["log_loss"]
        for w in IDENTITY_WEIGHTS
    }
    return {"chosen": min(losses, key=losses.get), "log_loss_by_weight": {str(w): v for w, v in losses.items()}}


def tune_and_measure(
    per_view: np.ndarray, labels: np.ndarray, names: list[str], served: int, policy: TTAPolicy
) -> tuple[TTAPolicy, dict]:
    """Tune the identity weight (and adaptive margin) on OOF rows; measure TTA as it will be served.

    Returns the policy to serve and the diagnostics, with a few summary lines for the log.
    """
    summary = []
    identity = None
    if served > 1:
        identity = tune_identity_weight(per_view, labels, served, policy)
        policy = replace(policy, identity_weight=identity["chosen"])
        summary.append(f"TTA: identity view weight {identity['chosen']} (lowest OOF log-loss)")
    diagnostics = tta_diagnostics(per_view, labels, names, served, policy)
    diagnostics["identity_weight"] = identity
    if 0 < policy.adaptive_views < served:
        adaptive = tune_adaptive(per_view, labels, served, policy)
        policy = replace(policy, adaptive_margin=adaptive["margin"])
        diagnostics["adaptive"] = adaptive
        summary.append(
            f"adaptive TTA: margin {adaptive['margin']}, {adaptive['passes_saved']:.0%} of view passes "
            f"saved on OOF images, accuracy {adaptive['accuracy']:.4f} vs {adaptive['full_accuracy']:.4f}"
        )
    diagnostics["summary"] = summary
    return policy, diagnostics
