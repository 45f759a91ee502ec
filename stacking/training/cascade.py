"""The cascade: the cheapest stage that is sure enough answers; the rest go on, the last ones to the whole stack.

Stages, cheapest first: one base model on its identity view, the same model on all its
served views, then the stack. A stage answers an image when its top probability reaches
the stage's threshold; the stack answers what is left exactly as it answers alone. The
early stages run one network: the base model, or with ``kfold``'s fold-average its first
fold model alone. One fold model's answer on an image it never saw is exactly what an
OOF row holds, so the thresholds are tuned on answers of the very kind they will judge.

The thresholds (and which base model goes first) are tuned on the OOF rows only: the base
models' OOF answers and the stack's cross-validated ones, which no model trained on. The
choice is the least expected cost (milliseconds measured per stage) whose accuracy on
those rows is within a tolerance of the stack's and whose log-loss is no worse than
the stack's plus another (``Tolerance``: the fit's ``cascade_accuracy_tolerance`` and
``cascade_log_loss_tolerance``); plain stacking is always a candidate,
so a cascade never costs more than the stack. The choice is cross-validated over the OOF
rows (tuned on four fifths, scored on the fifth left out), as honest an estimate of what
it will do on new images as the stack's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stacking.inference.tta import TTAPolicy
from stacking.meta.learners import EPS, score

NEVER = 2.0  # a threshold no probability reaches: the stage is skipped
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, NEVER)


@dataclass(frozen=True)
class Tolerance:
    """What the cascade may give up against the stack on the tuning rows.

    The defaults: 0.1 point of accuracy and no log-loss. Accuracy alone is blind to how sure the early answers
    are, and on OOF rows it often ties at every threshold (measured on noisy digits: a stage at p >= 0.5 tied the
    stack there and lost 0.75 points on test images; allowing 0.005 nats lost 0.37 points at 25% of the stack's
    passes, 0 lost none at 42%).
    """

    accuracy: float = 0.001
    log_loss: float = 0.0


@dataclass(frozen=True)
class Costs:
    """What the tuning weighs: measured ms per image-view of each early stage's network and of one stack answer."""

    view_ms: np.ndarray  # (M,) one view through base model m's first (or only) fold model, per image
    stack_ms: float  # the whole stack, per image
    stack_views: float  # forward passes of one stack answer per image (adaptive TTA: on average)


@dataclass(frozen=True)
class Candidate:
    model: int  # the base model the early stages run
    thresholds: tuple[float, ...]  # one per early stage: its identity view, then (with TTA) its served views

    def stages(self, names: list[str], views: int, networks: list[str]) -> list[dict]:
        """The stages that run (a threshold of NEVER skips its stage), the stack last.

        ``networks``: what each base model's early stages run, by name (``tiny_cnn``, ``tiny_cnn/fold0``).
        """
        counts = [1, views][: len(self.thresholds)]
        stages = [
            {"name": f"{networks[self.model]}@{v}", "model": names[self.model], "views": v, "threshold": t}
            for v, t in zip(counts, self.thresholds)
            if t < NEVER
        ]
        return [*stages, {"name": "stack", "model": None, "views": 0, "threshold": 0.0}]


@dataclass
class Outcome:
    """A candidate on some rows: which stage answered each row, its answer and what it cost."""

    stage: np.ndarray  # (N,) index among the stages that run
    probabilities: np.ndarray  # (N, C)
    ms: np.ndarray  # (N,)
    views: np.ndarray  # (N,) forward passes


def stage_probabilities(per_view: np.ndarray, m: int, views: int, policy: TTAPolicy) -> np.ndarray:
    """Base model m's answer on its first ``views`` views: (M, T, N, C) -> (N, C), merged as served."""
    return policy.merge_views(per_view[m : m + 1, :views])[0]


def run_candidate(
    candidate: Candidate, early: list[tuple[int, np.ndarray]], stack: np.ndarray, costs: Costs
) -> Outcome:
    """A candidate on rows whose early answers (``(views, (N, C))`` per early stage) and stack answers are known.

    A row pays for each stage it reaches: the views of model m not yet run, then the stack.
    """
    m, n = candidate.model, len(stack)
    answered, stage = np.zeros(n, bool), np.zeros(n, int)
    probabilities, ms, views = stack.copy(), np.zeros(n), np.zeros(n)
    seen = index = 0  # views of model m already run for the rows still open
    for (count, probs), threshold in zip(early, candidate.thresholds):
        if threshold >= NEVER:
            continue
        open_rows = ~answered
        ms[open_rows] += costs.view_ms[m] * (count - seen)
        views[open_rows] += count - seen
        seen = count
        sure = open_rows & (probs.max(axis=1) >= threshold)
        probabilities[sure], stage[sure] = probs[sure], index
        answered |= sure
        index += 1
    rest = ~answered
    ms[rest] += costs.stack_ms
    views[rest] += costs.stack_views
    stage[rest] = index
    return Outcome(stage, probabilities, ms, views)


def _candidates(models: int, early_stages: int) -> list[Candidate]:
    grids = [THRESHOLDS] * early_stages
    combos = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, early_stages)
    return [
        Candidate(m, tuple(float(t) for t in combo))
        for m in range(models)
        for combo in combos
        if not (m > 0 and (combo >= NEVER).all())
    ]  # the plain stack once, not once per model


def _accuracy_and_log_loss(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """As ``meta.score`` computes them (clipped, renormalised), without its other metrics: run for every candidate."""
    probs = np.clip(probs, EPS, 1.0)
    picked = probs[np.arange(len(labels)), labels] / probs.sum(axis=1)
    return float((probs.argmax(axis=1) == labels).mean()), float(-np.log(picked).mean())


def _best(
    candidates: list[Candidate],
    early: list[list[tuple[int, np.ndarray]]],
    stack: np.ndarray,
    labels: np.ndarray,
    costs: Costs,
    rows: np.ndarray,
    tolerance: Tolerance,
) -> Candidate:
    """The cheapest candidate on ``rows`` within the tolerances of the stack's accuracy and log-loss there (ties: the
    more accurate)."""
    target_accuracy, target_log_loss = _accuracy_and_log_loss(stack[rows], labels[rows])
    best, best_key = None, None
    for c in candidates:
        outcome = run_candidate(c, [(v, p[rows]) for v, p in early[c.model]], stack[rows], costs)
        accuracy, loss = _accuracy_and_log_loss(outcome.probabilities, labels[rows])
        key = (float(outcome.ms.mean()), -accuracy)
        holds = (
            accuracy >= target_accuracy - tolerance.accuracy - 1e-12
            and loss <= target_log_loss + tolerance.log_loss + 1e-12
        ) or all(t >= NEVER for t in c.thresholds)  # the plain stack is always allowed
        if holds and (best_key is None or key < best_key):
            best, best_key = c, key
    return best


def _summary(outcome: Outcome, labels: np.ndarray, stage_names: list[str]) -> dict:
    scores = score(outcome.probabilities, labels)
    return {
        "accuracy": scores["accuracy"],
        "log_loss": scores["log_loss"],
        "ms_per_image": float(outcome.ms.mean()),
        "cost_views": float(outcome.views.mean()),
        "rows": int(len(labels)),
        "answered_by": {name: float((outcome.stage == i).mean()) for i, name in enumerate(stage_names)},
    }


def tune_cascade(
    per_view: np.ndarray,
    stack: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    policy: TTAPolicy,
    costs: Costs,
    folds: list[tuple[np.ndarray, np.ndarray]],
    networks: list[str] | None = None,
    tolerance: Tolerance = Tolerance(),
) -> dict:
    """Stages and thresholds from (M, T, N, C) OOF served views and the stack's (N, C) cross-validated answers.

    ``folds``: the meta step's (train, test) rows (``meta_cv_folds``), grouped when the fit was: the stack's answers
    come from those folds, and a near-duplicate on both sides of a split would flatter the estimate.
    ``networks``: how the stages name what they run (default: the base models' names).

    Returns the stages chosen on every row, their scores there, and the cross-validated
    estimate (each fold's rows answered by the choice made on the others).
    """
    views, networks = per_view.shape[1], networks or names
    counts = [1, views] if views > 1 else [1]
    early = [[(v, stage_probabilities(per_view, m, v, policy)) for v in counts] for m in range(len(names))]
    candidates = _candidates(len(names), len(counts))
    everything = np.arange(len(labels))
    chosen = _best(candidates, early, stack, labels, costs, everything, tolerance)
    stages = chosen.stages(names, views, networks)
    on_oof = _summary(run_candidate(chosen, early[chosen.model], stack, costs), labels, [s["name"] for s in stages])

    probabilities, stage_rows = stack.copy(), np.zeros(len(labels), int)
    ms, passes, picks = np.zeros(len(labels)), np.zeros(len(labels)), []
    for tuned_on, held in folds:
        pick = _best(candidates, early, stack, labels, costs, tuned_on, tolerance)
        outcome = run_candidate(pick, [(v, p[held]) for v, p in early[pick.model]], stack[held], costs)
        probabilities[held], ms[held], passes[held] = outcome.probabilities, outcome.ms, outcome.views
        stage_rows[held] = outcome.stage == len(pick.stages(names, views, networks)) - 1  # 1 where the stack answered
        picks.append(
            [s["name"] + (f">={s['threshold']:g}" if s["model"] else "") for s in pick.stages(names, views, networks)]
        )
    cv = score(probabilities, labels)
    stack_scores = score(stack, labels)
    return {
        "stages": stages,
        "on_oof": on_oof,
        "cross_validated": {
            "accuracy": cv["accuracy"],
            "log_loss": cv["log_loss"],
            "ms_per_image": float(ms.mean()),
            "cost_views": float(passes.mean()),
            "escalated_to_stack": float(stage_rows.mean()),
            "folds": len(folds),
            "choices": picks,
        },
        "stack": {
            "accuracy": stack_scores["accuracy"],
            "log_loss": stack_scores["log_loss"],
            "ms_per_image": costs.stack_ms,
            "cost_views": costs.stack_views,
        },
        "candidates_tried": len(candidates),
    }
