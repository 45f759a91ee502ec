"""The comparison table on labelled images: every base model, every meta candidate and the served stack.

Diversity is the pairwise correlation of the base models' OOF probabilities: models
that agree everywhere cannot help each other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io
from stacking.data.cache import PixelCache
from stacking.data.datasets import load_pixels, read_evaluation_set
from stacking.data.images import Pixels
from stacking.inference.options import CASCADE, STACK, STUDENT, servable
from stacking.inference.predictor import Predictor
from stacking.meta.leaderboard import leaderboard, paired_difference, table_row
from stacking.meta.learners import EPS

WARM_UP_IMAGES = 64


def compare(
    predictor: Predictor, pixels: Pixels, labels: np.ndarray, views: int | None = None, policy: str | None = None
) -> list[dict]:
    """One row per base model, per meta candidate (each fitted on the OOF rows), the stack, and (kind ``serving``)
    the cascade and the student where the bundle has them.

    Every row says what it cost here: ``cost_views`` (forward passes per image, fold models
    counted) and ``ms_per_image`` (the models' time, measured on these images; candidates
    share the stack's); ``served`` marks the option this predictor serves, and its row has
    ``paired``: its accuracy minus the best member's (by OOF accuracy, never these labels) and
    the plain mean's, each with a 95% paired bootstrap interval.
    """
    n = max(len(pixels), 1)
    options = [STACK, *(o for o in (CASCADE, STUDENT) if o in servable(predictor.manifest))]
    for option in options:  # untimed first: tracing, allocation and interpreters are not what an image costs
        predictor.predict(pixels[:WARM_UP_IMAGES], views, policy, serve_as=option)
    before = predictor.forward.seconds.copy()
    prediction = predictor.predict(pixels, views, policy, serve_as=STACK)
    model_ms = (predictor.forward.seconds - before) * 1000 / n
    candidates = {
        name: predictor.meta_answer(candidate, prediction.features)
        for name, candidate in predictor.candidates().items()
    }
    selection = predictor.manifest.meta_learner.selection
    rows = leaderboard(
        predictor.base_names, prediction.base_probabilities, candidates, prediction.probabilities, selection, labels
    )
    stack_cost = (float(prediction.cost_views.mean()), sum(prediction.seconds.values()) * 1000 / n)
    views_run = float(prediction.views.mean())
    costs = [(run.folds * views_run, float(ms)) for run, ms in zip(predictor.forward.runners, model_ms)]
    costs += [stack_cost] * (len(rows) - len(costs))
    answers = {STACK: prediction.probabilities}
    for option in options[1:]:
        answer = predictor.predict(pixels, views, policy, serve_as=option)
        answers[option] = answer.probabilities
        rows.append(table_row(option, "serving", answer.probabilities, labels))
        costs.append((float(answer.cost_views.mean()), sum(answer.seconds.values()) * 1000 / n))
    for row, (views_cost, ms) in zip(rows, costs):
        row.update(
            cost_views=round(views_cost, 3),
            ms_per_image=round(ms, 4),
            served=row["kind"] == "chosen" if predictor.serve_as == STACK else row["name"] == predictor.serve_as,
        )
    served = next(row for row in rows if row["served"])
    served["paired"] = _paired(predictor, answers[predictor.serve_as], prediction, candidates, labels)
    return rows


def _paired(
    predictor: Predictor, served: np.ndarray, prediction, candidates: dict[str, np.ndarray], labels: np.ndarray
) -> list[dict]:
    """The served answer against its best member (by OOF accuracy) and against the plain mean, image by image."""
    oof = predictor.manifest.metrics.oof
    best = max(range(len(predictor.base_names)), key=lambda m: oof[predictor.base_names[m]].accuracy)
    others = {f"best member ({predictor.base_names[best]})": prediction.base_probabilities[best]}
    if "mean" in candidates:
        others["plain mean"] = candidates["mean"]
    out = []
    for name, probs in others.items():
        entry = {"against": name}
        for metric, per_image in (("accuracy", _right), ("log_loss", _nll)):
            difference, low, high = paired_difference(per_image(served, labels), per_image(probs, labels))
            entry[metric] = {"difference": difference, "ci_low": low, "ci_high": high}
        out.append(entry)
    return out


def _right(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs.argmax(axis=1) == labels


def _nll(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's log-loss, its probabilities clipped and renormalised as ``score`` does."""
    clipped = np.clip(np.asarray(probs, np.float64), EPS, 1.0)
    return -np.log(clipped[np.arange(len(labels)), labels] / clipped.sum(axis=1))


def format_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal."""
    width = max(len("model"), *(len(r["name"]) + 2 for r in rows))
    lines = [
        f"{'model':<{width}}  {'kind':<9}  accuracy  95% interval     log_loss  ECE     passes  ms/image",
        f"{'-' * width}  {'-' * 9}  --------  ---------------  --------  ------  ------  --------",
    ]
    lines += [
        f"{(r['name'] + (' *' if r.get('served') else '')):<{width}}  {r['kind']:<9}  {r['accuracy']:>8.4f}  "
        f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]  {r['log_loss']:>8.4f}  {r['ece']:.4f}  "
        f"{r['cost_views']:>6.3g}  {r['ms_per_image']:>8.3f}"
        for r in rows
    ]
    served = next((r for r in rows if r.get("served")), None)
    paired = [
        f"{served['name']} against the {p['against']}: "
        + ", ".join(
            f"{p[m]['difference']:+.4f} {m.replace('_', '-')} [{p[m]['ci_low']:+.4f}, {p[m]['ci_high']:+.4f}]"
            for m in ("accuracy", "log_loss")
        )
        + " (95% paired bootstrap intervals)"
        for p in (served or {}).get("paired", [])
    ]
    return "\n".join(
        [
            *lines,
            "* the option served (--serve-as); passes: forward passes per image (image-views "
            "through networks, fold models counted); ms/image: the networks' time on these images",
            *paired,
        ]
    )


def evaluate_folder(
    predictor: Predictor,
    images: Path,
    labels_csv: Path | None,
    views: int | None = None,
    policy: str | None = None,
    on_bad_image: str = "error",
    cache: PixelCache | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[list[dict], int, list]:
    """:func:`compare` on class folders, or a folder plus an Id,Category CSV: (rows, images used, skipped).

    The images go through the pixel cache (``cache``; ``echo`` hears how many were decoded)."""
    labelled = read_evaluation_set(images, labels_csv, predictor.classes)
    labelled, pixels, bad = load_pixels(labelled, predictor.every_size, on_bad_image, cache, echo)
    return compare(predictor, pixels, labelled.labels, views, policy), len(labelled.paths), bad


def record_evaluation(
    predictor: Predictor,
    rows: list[dict],
    data: Path,
    labels_csv: Path | None,
    count: int,
    skipped: list,
    views: int | None = None,
    policy: str | None = None,
) -> Path | None:
    """Keep the table in the bundle's report folder and redraw the page; return its path (None: read-only bundle).

    The record names the bundle state it measured (manifest sha): after ``stacking meta``
    the report calls it out of date instead of showing another model's scores.
    """
    from stacking.reporting.report import write_report  # the report shows this table; imported here to avoid a cycle

    tta = predictor.manifest.tta
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle_sha": predictor.sha256,
        "data": str(Path(data).resolve()),
        "labels": str(Path(labels_csv).resolve()) if labels_csv else None,
        "images": count,
        "skipped": [str(path) for path, _ in skipped],
        "views": tta.views if views is None else views,
        "policy": policy or tta.policy,
        "rows": rows,
    }
    try:
        bundle_io.save_evaluation(predictor.bundle, record)
        return write_report(predictor.bundle, predictor.manifest)
    except OSError:
        return None
