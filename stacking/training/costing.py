"""What every way a bundle can answer scores and costs, measured at fit time (the choice at load time is
``stacking.inference.options``).

A stack pays for every base model, view and fold on every image. The options beside it
are each base model alone, the plain mean, the cascade (``stacking.training.cascade``) and the
student (``stacking.training.distill``). Each is scored on rows it never trained on and costed
twice: forward passes per image (image-views through base models, fold models counted)
and milliseconds per image, measured through the prediction path on the machine that
fitted the bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import (
    CascadeEntry,
    CascadeTuning,
    CostedScores,
    Manifest,
    OptionEntry,
    ScoreRow,
    Scores,
    ServingEntry,
    ServingTiming,
    StageEntry,
    StudentEntry,
)
from stacking.data.images import Pixels
from stacking.inference.options import CASCADE, STACK, STUDENT
from stacking.inference.predictor import Predictor
from stacking.inference.tta import TTAPolicy
from stacking.meta.leaderboard import stack_name
from stacking.meta.learners import meta_cv_folds
from stacking.training.cascade import Costs, Tolerance, tune_cascade

TIMING_IMAGES = 32  # images each option is timed on
TIMING_REPEATS = 3  # timed calls after a warm-up call; the median counts


def median_seconds(call: Callable[[], object], repeats: int = TIMING_REPEATS) -> float:
    """Median wall time of ``call`` after one untimed call (which traces and allocates)."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure_costs(predictor: Predictor, pixels: Pixels) -> ServingTiming:
    """Milliseconds per image on ``pixels``: each base model on its served views (every fold model), one view of
    its first fold model (the cascade's early stages), and the whole stack."""
    n = len(pixels)
    views = predictor.views()
    base_ms, view_ms = {}, {}
    for m, name in enumerate(predictor.base_names):
        base_ms[name] = median_seconds(lambda m=m: predictor.model_forward(m).folds(pixels, views)) * 1000 / n
        single = predictor.first_fold_forward(m)
        view_ms[name] = (
            base_ms[name] / len(views)
            if single is predictor.model_forward(m)
            else median_seconds(lambda single=single: single.folds(pixels, views)) * 1000 / n / len(views)
        )
    stack_ms = median_seconds(lambda: predictor.predict(pixels, serve_as=STACK)) * 1000 / n
    return ServingTiming(
        images=n,
        served_views=len(views),
        runtimes=predictor.runtimes,
        base_ms=base_ms,
        view_ms=view_ms,
        stack_ms=stack_ms,
    )


def fold_counts(manifest: Manifest) -> np.ndarray:
    """Fold models served per base model (one, or K with kfold's fold-average)."""
    return np.array([len(entry.files) for entry in manifest.base_models])


def _option(
    name: str,
    kind: str,
    scores: Scores | ScoreRow | CostedScores,
    rows: int,
    scored_on: str,
    views: float,
    ms: float | None,
    servable: bool = False,
) -> OptionEntry:
    return OptionEntry(
        name=name,
        kind=kind,
        servable=servable,
        accuracy=scores.accuracy,
        log_loss=scores.log_loss,
        rows=rows,
        scored_on=scored_on,
        cost_views=round(views, 3),
        ms_per_image=None if ms is None else round(ms, 4),
    )


def student_option(student: StudentEntry) -> OptionEntry:
    held = student.scores
    return _option(
        STUDENT, "serving", held.student, held.rows, held.scored_on, 1.0, student.ms_per_image, servable=True
    )


def plan_serving(bundle: Path, manifest: Manifest, timing: ServingTiming, seed: int) -> ServingEntry | None:
    """The options of a fitted (or re-stacked) bundle: the cascade tuned on its OOF rows, everything costed.

    ``timing``: from :func:`measure_costs` (or the bundle's own, when only the meta step changed).
    None for a bundle whose OOF file predates per-view OOF answers (no cascade can be tuned).
    """
    oof = bundle_io.load_oof(bundle)
    if "views" not in oof:
        return None
    labels, names = oof["labels"], [str(n) for n in oof["models"]]
    folds = fold_counts(manifest)
    views_used = float(oof["views_used"].mean())  # adaptive TTA: fewer views where the first ones agree
    stack_views = float(folds.sum() * views_used)
    stack = bundle_io.load_meta_oof(bundle)["chosen"]
    costs = Costs(np.array([timing.view_ms[n] for n in names]), timing.stack_ms, stack_views)
    networks = [n if k == 1 else f"{n}/fold0" for n, k in zip(names, folds)]  # kfold: the first fold model alone
    meta_folds = meta_cv_folds(labels, oof.get("groups"), int(manifest.config.get("meta_folds", 5)), seed)
    tolerance = Tolerance(
        float(manifest.config.get("cascade_accuracy_tolerance", Tolerance.accuracy)),
        float(manifest.config.get("cascade_log_loss_tolerance", Tolerance.log_loss)),
    )
    policy = TTAPolicy.from_dict(manifest.tta.model_dump())
    tuned = tune_cascade(oof["views"], stack, labels, names, policy, costs, meta_folds, networks, tolerance)
    tuning = CascadeTuning.model_validate({k: v for k, v in tuned.items() if k != "stages"})
    rows, where = len(labels), "OOF rows"
    scores = {r.name: r for r in manifest.meta_learner.oof_scores}
    options = [
        _option(n, "base", manifest.metrics.oof[n], rows, where, folds[m] * views_used, timing.base_ms[n])
        for m, n in enumerate(names)
    ]
    if "mean" in scores:
        options.append(
            _option("mean", "candidate", scores["mean"], rows, f"{where} (meta-folds)", stack_views, timing.stack_ms)
        )
    options.append(
        _option(
            STACK,
            "chosen",
            scores[stack_name(manifest.meta_learner.selection)],
            rows,
            f"{where} (meta-folds)",
            stack_views,
            timing.stack_ms,
            servable=True,
        )
    )
    cv = tuning.cross_validated
    options.append(
        _option(
            CASCADE,
            "serving",
            cv,
            rows,
            f"{where}, thresholds cross-validated",
            cv.cost_views,
            cv.ms_per_image,
            servable=True,
        )
    )
    student = manifest.serving.student if manifest.serving else None
    if student is not None:
        options.append(student_option(student))
    cascade = CascadeEntry(
        stages=[StageEntry(**s) for s in tuned["stages"]],
        tolerance=tolerance.accuracy,
        log_loss_tolerance=tolerance.log_loss,
        tuning=tuning,
    )
    return ServingEntry(options=options, timing=timing, cascade=cascade, student=student)


def with_student(serving: ServingEntry, student: StudentEntry) -> ServingEntry:
    """The options with this student in place of any earlier one."""
    options = [o for o in serving.options if o.name != STUDENT] + [student_option(student)]
    return serving.model_copy(update={"options": options, "student": student})


def describe_cascade(serving: ServingEntry) -> str:
    """One line on the cascade, for the log."""
    cv, stack = serving.cascade.tuning.cross_validated, serving.cascade.tuning.stack
    stages = ", ".join(f"{s.name} (p >= {s.threshold:g})" if s.model else s.name for s in serving.cascade.stages)
    return (
        f"cascade: {stages}; cross-validated on the OOF rows: accuracy {cv.accuracy:.4f} against the stack's "
        f"{stack.accuracy:.4f}, {cv.cost_views:.3g} forward passes per image against {stack.cost_views:.3g}, "
        f"{cv.ms_per_image:.3g} ms against {stack.ms_per_image:.3g}; {cv.escalated_to_stack:.0%} escalated to the stack"
    )


def add_serving(
    bundle: Path, manifest: Manifest, pixels: Pixels, seed: int, trust: Trust, echo: Callable[[str], None]
) -> Manifest:
    """Time every option on ``pixels`` through the prediction path, tune the cascade, write the manifest again."""
    timing = measure_costs(Predictor(bundle, trust=trust), pixels[:TIMING_IMAGES].loaded())
    serving = plan_serving(bundle, manifest, timing, seed)
    echo(describe_cascade(serving))
    return bundle_io.write_manifest(bundle, manifest.model_copy(update={"serving": serving}))
