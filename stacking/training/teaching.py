"""Consistent teaching (Beyer et al. 2022, "a good teacher is patient and consistent"): the student learns the
stack's answer on the very picture it sees.

A pool of ``copies`` pictures per taught image is drawn once: a flip, shift and zoom within the training
augmentation's ranges (a TTA ``View``: one geometry, made in pixels at every size), and with mixup a blend with
another image of the same teacher group (the image's own share drawn from Beta(a, a), the larger part). Each
picture is made in uint8 at every size a base model takes and at the student's; the stack answers it as it serves
(its TTA views, its meta-learner), and the student trains on the picture at its size with that answer as target.
A pool answered once through the exported runtimes costs ``copies`` teacher answers per image, however many
epochs the student takes over it.

Honesty: a picture is answered only by models that never trained on any image in it. With ``kfold`` a row of fold
k is answered by fold k's models (which trained on the other folds) and blended only with rows of fold k; with
``holdout`` every taught row was held out from every base model. Unlabelled images no model trained on: the stack
as served (every fold's models) answers them, and they are blended among themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import Manifest
from stacking.choices import Final, Protocol
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.tta import TTAForward, TTAPolicy, View, make_views, run_tta
from stacking.meta.learners import full_probabilities, meta_features

SERVED = -1  # the teacher group of unlabelled images: the stack as served, every fold's models
CHUNK = 256  # pictures made and answered at once


@dataclass(frozen=True)
class Plan:
    """Every picture of the pool: its image, the image blended in (itself when none), the image's own share, and
    its geometry as fractions of the side (a flip, a shift, a zoom into the centre)."""

    rows: np.ndarray  # (P,) int
    partners: np.ndarray  # (P,) int
    share: np.ndarray  # (P,) float32 in [0.5, 1]
    flip: np.ndarray  # (P,) bool
    shift: np.ndarray  # (P, 2) float32: dx, dy
    zoom: np.ndarray  # (P,) float32 >= 1

    def __len__(self) -> int:
        return len(self.rows)


def draw_plan(groups: np.ndarray, copies: int, flip: bool, shift: float, zoom: float, mixup: float, seed: int) -> Plan:
    """``copies`` pictures of each image (image-major), blended only within its group. ``mixup``: Beta(a, a)'s a,
    0 for no blending; ``flip``, ``shift``, ``zoom``: the training augmentation's ranges."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(groups)), copies)
    partners = rows.copy()
    if mixup > 0:
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            mine = np.flatnonzero(groups[rows] == g)
            partners[mine] = members[rng.integers(0, len(members), len(mine))]
        drawn = rng.beta(mixup, mixup, len(rows))
        share = np.maximum(drawn, 1 - drawn).astype(np.float32)
    else:
        share = np.ones(len(rows), np.float32)
    return Plan(
        rows=rows,
        partners=partners,
        share=share,
        flip=(rng.random(len(rows)) < 0.5) & flip,
        shift=rng.uniform(-shift, shift, (len(rows), 2)).astype(np.float32),
        zoom=(1 + rng.uniform(0, zoom, len(rows))).astype(np.float32),
    )


def pictures(plan: Plan, picks: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The pictures ``picks`` of ``plan`` made from ``images`` (uint8 (N, s, s, 3), or rows read from the cache)
    at their size: blended, then the view's geometry, rounded to uint8."""
    size = images.shape[1]
    own = np.asarray(images[plan.rows[picks]], np.float32)
    other = np.asarray(images[plan.partners[picks]], np.float32)
    share = plan.share[picks][:, None, None, None]
    blended = share * own + (1 - share) * other
    out = np.empty((len(picks), size, size, 3), np.uint8)
    for i, p in enumerate(picks):
        dx, dy = (int(round(float(f) * size)) for f in plan.shift[p])
        view = View(bool(plan.flip[p]), dx, dy, float(plan.zoom[p]))
        out[i] = np.clip(np.rint(make_views(blended[i : i + 1], [view])[0]), 0, 255)
    return out


class Teacher:
    """The stack answering pictures as it serves them, one fold's models at a time (``SERVED``: all of them)."""

    def __init__(self, bundle: Path, manifest: Manifest, trust: Trust, runtime: str = "auto"):
        if manifest.protocol.final_models == Final.REFIT:
            raise UserError(
                f"{bundle}: its served models trained on every image (--final refit), so none can answer a new "
                "picture of a training image honestly; use --teaching fixed, or fit again keeping the fold models"
            )
        oof_folds = manifest.protocol.folds if manifest.protocol.name == Protocol.KFOLD else 1
        self.sizes = [b.image_size for b in manifest.base_models]
        self.models = len(self.sizes)
        if oof_folds == 1:
            self.forwards = [TTAForward(bundle_io.load_base_models(bundle, manifest, trust, runtime), self.sizes)]
        else:
            self.forwards = [
                TTAForward(
                    [
                        bundle_io.load_base_models(bundle, manifest, trust, runtime, only=(m, k))[0]
                        for m in range(self.models)
                    ],
                    self.sizes,
                )
                for k in range(oof_folds)
            ]
        self.meta = bundle_io.load_meta(bundle, manifest)
        self.policy = TTAPolicy.from_dict(manifest.tta.model_dump())
        self.views = self.policy.views_at(sorted(set(self.sizes)))
        self.tta_features = manifest.meta_learner.features.tta_features
        self.classes = len(manifest.classes)
        self.passes = 0  # forward passes of one network on one view, so far

    def answer(self, pixels: Pixels, group: int) -> np.ndarray:
        """(N, C): the stack's answer on ``pixels`` from fold ``group``'s models (``SERVED``: every fold's, as the
        stack serves: their answers averaged)."""
        forwards = self.forwards if group == SERVED else [self.forwards[group]]
        answers = []
        for forward in forwards:
            result = run_tta(forward, pixels, self.views, self.policy)
            disagreement = result.fold_disagreement[0] if self.tta_features else None
            answers.append(
                full_probabilities(self.meta, meta_features(result.fold_merged[0], disagreement), self.classes)
            )
            self.passes += int(result.views_used.sum()) * self.models
        return np.mean(answers, axis=0).astype(np.float32)


@dataclass
class Pool:
    """The pictures at the student's size (on disk, read in batches) and the stack's answer on each."""

    pixels: np.ndarray  # (P, s, s, 3) uint8, a memory-mapped file
    targets: np.ndarray  # (P, C) float32
    plan: Plan
    teacher_passes: int
    seconds: float


def build_pool(
    teacher: Teacher,
    images: Pixels,
    groups: np.ndarray,
    plan: Plan,
    student_size: int,
    folder: Path,
    echo: Callable[[str], None],
) -> Pool:
    """Make every picture of ``plan`` from ``images`` (at the teacher's sizes and the student's) and have the
    teacher answer it, one group at a time; the pictures at the student's size go to ``folder/pool.npy``."""
    started, passes = time.perf_counter(), teacher.passes
    out = np.lib.format.open_memmap(
        Path(folder) / "pool.npy", "w+", np.uint8, (len(plan), student_size, student_size, 3)
    )
    targets = np.zeros((len(plan), teacher.classes), np.float32)
    sizes = sorted(set(teacher.sizes))
    for group in np.unique(groups):
        picks = np.flatnonzero(groups[plan.rows] == group)
        for i in range(0, len(picks), CHUNK):
            chunk = picks[i : i + CHUNK]
            made = {s: pictures(plan, chunk, images.at(s)) for s in {*sizes, student_size}}
            targets[chunk] = teacher.answer(Pixels({s: made[s] for s in sizes}), int(group))
            out[chunk] = made[student_size]
    out.flush()
    seconds = time.perf_counter() - started
    used = teacher.passes - passes
    echo(
        f"teacher: {len(plan)} pictures answered by the stack ({used} forward passes, "
        f"{used / max(len(plan), 1):.3g} per picture) in {seconds:.1f} s"
    )
    return Pool(out, targets, plan, used, seconds)
