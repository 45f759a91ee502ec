"""The one place test-time augmentation happens: for OOF predictions, ``predict`` and the service.

A policy is an ordered list of views (identity first); ``N`` views means its first
N. Deterministic policies use flips, shifts and zoomed crops; ``random`` draws each
view's flip, shift and zoom once from the training augmentation's ranges with a
fixed seed, so every image gets the same views whatever its batch. For a batch of
B images and T views, every base model runs once on a B x T tensor in one call of
its runtime (TensorFlow, or its exported file), in inference mode, at its own input size:
a view has one geometry (a flip, a shift and a zoom as fractions of the side) made in
pixels at each size (``ViewSet``), and the rows of one size are made once for every
model that takes it; the views are
then merged (mean or geometric mean, the identity view weighted as tuned on out-of-fold images). The config check
keeps views within the training augmentation (no flips for a model never shown
one), so TTA sees nothing the models were not taught to handle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass as settings_dataclass

from models.choices import STRICT
from stacking.choices import MERGES, TTAMerge, TTAPolicyName
from stacking.data.images import Pixels

RANDOM_VIEWS = 32  # views the random policy can draw
EPS = 1e-7
CALL_ROWS = 64  # image-views per compiled call, by default


@dataclass(frozen=True)
class View:
    """Mirror horizontally, zoom into the centre by ``zoom``, then move by (dx, dy) pixels, edges repeated."""

    flip: bool = False
    dx: int = 0
    dy: int = 0
    zoom: float = 1.0

    @property
    def name(self) -> str:
        parts = (["hflip"] if self.flip else []) + ([f"zoom{self.zoom:.2f}"] if self.zoom != 1.0 else [])
        parts += [f"shift({self.dx},{self.dy})"] if self.dx or self.dy else []
        return "+".join(parts) or "identity"


@dataclass(frozen=True)
class ViewSet:
    """The same T views at each input size: ``by_size[s]`` in pixels of an s x s image. Slicing selects views."""

    by_size: dict[int, tuple[View, ...]]

    def at(self, size: int) -> list[View]:
        return list(self.by_size[size])

    def __len__(self) -> int:
        return len(next(iter(self.by_size.values())))

    def __getitem__(self, views: slice) -> ViewSet:
        return ViewSet({s: v[views] for s, v in self.by_size.items()})

    @property
    def names(self) -> list[str]:
        """Each view's name at the largest size."""
        return [v.name for v in self.by_size[max(self.by_size)]]

    @staticmethod
    def identity(sizes: Sequence[int]) -> ViewSet:
        return ViewSet({s: (View(),) for s in sizes})

    @staticmethod
    def of(size: int, views: Sequence[View]) -> ViewSet:
        """Views made for one size alone (one model's)."""
        return ViewSet({size: tuple(views)})


@settings_dataclass(frozen=True, config=STRICT)
class TTAPolicy:
    """A named, ordered view list; stored in the bundle manifest so serving matches validation."""

    name: TTAPolicyName = TTAPolicyName.FLIP
    """The policy (``policy`` in the file's [tta]): which views, in which order."""
    views: int = Field(2, ge=0)
    """The number of views used by default."""
    shift: float = Field(0.06, ge=0, lt=1)
    """Shift views move by (random: up to) this fraction of the image side."""
    zoom: float = Field(0.1, ge=0, lt=1)
    """Zoom views crop the centre by (random: up to) this fraction."""
    seed: int = 0
    """Draws the random policy's views."""
    allow_flip: bool = True
    """Random views may mirror; set from the training augmentation."""
    identity_weight: float = Field(1.0, gt=0)
    """The identity view's weight when merging; tuned by the fit."""
    merge: TTAMerge = TTAMerge.MEAN
    """Mean of probabilities, or geometric (mean of log-probabilities)."""
    adaptive_views: int = Field(0, ge=0)
    """Adaptive TTA: run this many views first (0: off), the rest only on images whose views disagree or whose
    margin (top-1 minus top-2 probability) is below adaptive_margin."""
    adaptive_margin: float = Field(0.0, ge=0)
    """Adaptive TTA's margin; the fit tunes it on out-of-fold images."""

    def view_list(self, image_size: int, views: int | None = None) -> list[View]:
        """The first ``views`` (default: the policy's count) views; at least the identity."""
        s = max(1, round(self.shift * image_size))
        shifts = [
            View(dx=s),
            View(dx=-s),
            View(dy=s),
            View(dy=-s),
            View(dx=s, dy=s),
            View(dx=-s, dy=-s),
            View(dx=s, dy=-s),
            View(dx=-s, dy=s),
        ]
        z = 1 + self.zoom
        candidates = {
            TTAPolicyName.NONE: [View()],
            TTAPolicyName.FLIP: [View(), View(flip=True)],
            TTAPolicyName.SHIFT: [View(), *shifts],
            TTAPolicyName.FLIP_SHIFT: [
                View(),
                View(flip=True),
                *[v for sh in shifts for v in (sh, View(True, sh.dx, sh.dy))],
            ],
            TTAPolicyName.ZOOM: [
                View(),
                View(zoom=1 + self.zoom / 2),
                View(zoom=z),
                *[View(dx=v.dx, dy=v.dy, zoom=z) for v in shifts[4:]],
            ],
            TTAPolicyName.RANDOM: [View(), *self._random_views(image_size)],
        }[self.name]
        n = self.views if views is None else views
        return candidates[: max(1, min(n, len(candidates)))]

    def _random_views(self, image_size: int) -> list[View]:
        rng = np.random.default_rng(self.seed)
        views = []
        for _ in range(RANDOM_VIEWS - 1):
            flip = bool(self.allow_flip and rng.random() < 0.5)
            dx, dy = (int(round(rng.uniform(-self.shift, self.shift) * image_size)) for _ in range(2))
            views.append(View(flip, dx, dy, float(round(1 + rng.uniform(0, self.zoom), 3))))
        return views

    def views_at(self, sizes: Sequence[int], views: int | None = None) -> ViewSet:
        """The first ``views`` views at each of ``sizes``: the same geometry, in each size's pixels."""
        return ViewSet({s: tuple(self.view_list(s, views)) for s in sizes})

    def max_views(self, image_size: int) -> int:
        return len(self.view_list(image_size, views=10_000))

    def as_dict(self) -> dict:
        """The manifest's ``tta`` entry."""
        return {
            "policy": self.name.value,
            "views": self.views,
            "shift": self.shift,
            "zoom": self.zoom,
            "seed": self.seed,
            "allow_flip": self.allow_flip,
            "merge": self.merge.value,
            "identity_weight": self.identity_weight,
            "adaptive_views": self.adaptive_views,
            "adaptive_margin": self.adaptive_margin,
        }

    def merge_views(self, per_view: np.ndarray) -> np.ndarray:
        """(M, T, N, C) -> (M, N, C), merged as this policy serves."""
        return merge_views(per_view, self.merge, self.identity_weight)

    @classmethod
    def from_dict(cls, entry: dict) -> TTAPolicy:
        return cls(name=entry["policy"], **{k: v for k, v in entry.items() if k != "policy"})


def _central_crop(x: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of each side, placed as ``tf.image.central_crop`` places it."""
    height, width = x.shape[1], x.shape[2]
    top, left = int((height - height * fraction) / 2), int((width - width * fraction) / 2)
    return x[:, top : height - top, left : width - left]


def _bilinear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows below and above each output row, and the weight of the upper one (half-pixel centres)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return lower, upper, (position - floor).astype(np.float32)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float32 (B, h, w, 3) as ``tf.image.resize`` does it (half-pixel centres, no antialias)."""
    y0, y1, dy = _bilinear_weights(x.shape[1], height)
    x0, x1, dx = _bilinear_weights(x.shape[2], width)
    dx = dx[None, None, :, None]
    top = x[:, y0][:, :, x0] + (x[:, y0][:, :, x1] - x[:, y0][:, :, x0]) * dx
    bottom = x[:, y1][:, :, x0] + (x[:, y1][:, :, x1] - x[:, y1][:, :, x0]) * dx
    return top + (bottom - top) * dy[None, :, None, None]


def _shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, repeating edge pixels (Keras' ``fill_mode="nearest"``)."""
    height, width = x.shape[1], x.shape[2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return x[:, rows][:, :, cols]


def make_views(pixels: np.ndarray, views: Sequence[View]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (T * B, H, W, 3), view-major: the rows every runtime is given.

    Made with numpy, not inside a model's graph, so TensorFlow and an exported runtime
    see the same float32 pixels (flips and shifts are exact; zooms interpolate).
    """
    x = pixels.astype(np.float32)
    out = []
    for v in views:
        y = x[:, :, ::-1] if v.flip else x
        if v.zoom != 1.0:
            y = _resize(_central_crop(y, 1 / v.zoom), x.shape[1], x.shape[2])
        out.append(_shift(y, v.dx, v.dy) if (v.dx or v.dy) else y)
    return np.concatenate(out, axis=0)


class Runner(Protocol):
    """One base model's forward pass: float32 view rows (R, H, W, 3) -> (K, R, C), one answer per fold model."""

    runtime: str  # "tf" or the exported runtime's name
    folds: int  # K
    classes: int  # C
    batch_independent: bool  # an image's answer has the same bits whatever the call's size and companions

    def __call__(self, rows: np.ndarray) -> np.ndarray: ...


class TTAForward:
    """Per-view class probabilities of several base models, each through its runner (``stacking.runtime``).

    ``runners[m]`` runs base model m: its one model, or the K fold models of a
    ``kfold`` fit, kept apart by :meth:`folds` and averaged by calling.

    Calls hold ``rows_per_call // views`` images (at least one). Under TensorFlow every
    call has that shape, the last chunk padded: a CPU convolution's rounding depends on
    the batch shape and on an image's place in it, and a tree meta-learner turns such
    last-bit differences into other leaves (up to 0.01-0.02 of probability on a few per
    cent of images, measured in issue #9); with one image per call (``rows_per_call`` =
    the view count) every image's answer is independent of its companions. Runners whose
    answers do not depend on the call (LiteRT's, tested) pad a short chunk only to the
    next power of two images, so a lone image pays for its own views alone, whatever
    ``rows_per_call``, and larger calls still buy throughput. ``benchmarks/throughput.py``
    measures both.
    """

    def __init__(self, runners: Sequence[Runner], sizes: Sequence[int], rows_per_call: int = CALL_ROWS):
        self.runners = list(runners)
        self.sizes = list(sizes)  # each runner's input side
        self.rows_per_call = rows_per_call
        self.seconds = np.zeros(len(self.runners))  # each runner's time so far (evaluate costs each base model)

    def call_sizes(self, views: int) -> list[int]:
        """Every number of images a call of ``views`` views may hold (each one shape to prepare)."""
        size = max(1, self.rows_per_call // views)
        if not all(run.batch_independent for run in self.runners):
            return [size]
        return sorted({min(size, 1 << k) for k in range(size.bit_length() + 1)})

    def folds(self, pixels: Pixels, views: ViewSet) -> np.ndarray:
        """Images at each runner's size -> float32 (K, M, T, N, C) probabilities per fold model, base model and view."""
        counts = self.call_sizes(len(views))
        most = counts[-1]
        chunks = []
        for i in range(0, len(pixels), most):
            chunk = pixels[i : i + most]
            call = next(s for s in counts if s >= len(chunk))
            rows = {}  # each size's view rows, made once for the runners that take it
            answers = []
            for m, run in enumerate(self.runners):
                size = self.sizes[m]
                if size not in rows:
                    padded = np.zeros((call, size, size, 3), np.uint8)
                    padded[: len(chunk)] = chunk.at(size)
                    rows[size] = make_views(padded, views.at(size))
                started = time.perf_counter()
                answers.append(run(rows[size]))
                self.seconds[m] += time.perf_counter() - started
            out = np.stack(answers, axis=1)  # (K, M, T * call, C), view-major
            chunks.append(out.reshape(*out.shape[:2], len(views), call, -1)[:, :, :, : len(chunk)])
        if not chunks:
            first = self.runners[0]
            return np.zeros((first.folds, len(self.runners), len(views), 0, first.classes), np.float32)
        return np.concatenate(chunks, axis=3)

    def __call__(self, pixels: Pixels, views: ViewSet) -> np.ndarray:
        """(M, T, N, C): each base model's probabilities per view, its fold models averaged."""
        return self.folds(pixels, views).mean(axis=0)


def merge_views(per_view: np.ndarray, method: str = "mean", identity_weight: float = 1.0) -> np.ndarray:
    """Combine the view axis: (M, T, N, C) -> (M, N, C) probabilities.

    ``mean`` averages probabilities; ``geometric`` averages log-probabilities (clipped,
    so a zero never gives -inf) and renormalises: never NaN. View 0 (the identity)
    counts ``identity_weight`` times as much as each other view.
    """
    weights = np.ones(per_view.shape[1])
    weights[0] = identity_weight
    weights = (weights / weights.sum())[None, :, None, None]
    if method == TTAMerge.MEAN:
        return (per_view * weights).sum(axis=1)
    if method == TTAMerge.GEOMETRIC:
        merged = np.exp((np.log(np.clip(per_view, EPS, 1.0)) * weights).sum(axis=1))
        return merged / merged.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown TTA merge {method!r}; expected one of {', '.join(MERGES)}")


def needs_more_views(first: np.ndarray, policy: TTAPolicy, margin: float) -> np.ndarray:
    """(M, k, N, C) first views -> (N,) True where views disagree or the ensemble's margin is below ``margin``."""
    labels = first.mean(axis=0).argmax(axis=-1)  # (k, N) ensemble label per view
    disagree = (labels != labels[:1]).any(axis=0)
    top2 = np.sort(policy.merge_views(first).mean(axis=0), axis=-1)[:, -2:]
    return disagree | (top2[:, 1] - top2[:, 0] < margin)


@dataclass
class TTAResult:
    """What TTA gives for N images: merged probabilities and what each view said.

    ``fold_*`` keep the K fold models of a kfold bundle apart (K = 1 otherwise): the
    meta-learner learnt from one fold model's OOF answers, so it is applied per fold.
    """

    fold_merged: np.ndarray  # (K, M, N, C) per fold model and base model
    fold_disagreement: np.ndarray  # (K, M, N) share of the views run whose label differs from the merged one
    view_labels: np.ndarray  # (T, N) ensemble label per view, -1 where the view was not run
    views_used: np.ndarray  # (N,)

    @property
    def merged(self) -> np.ndarray:
        """(M, N, C) each base model's probabilities, its fold models averaged."""
        return self.fold_merged.mean(axis=0)


def summarise_views(per_view: np.ndarray, unsure: np.ndarray, k: int, policy: TTAPolicy) -> TTAResult:
    """(K, M, T, N, C) per-view probabilities -> the served result.

    Images not ``unsure`` use only the first ``k`` views (their later views may be
    unset); unsure ones use all T.
    """
    n_views = per_view.shape[2]
    merged = np.stack([policy.merge_views(fold[:, :k]) for fold in per_view])
    if k < n_views and unsure.any():
        merged[:, :, unsure] = np.stack([policy.merge_views(fold[:, :, unsure]) for fold in per_view])
    used = np.where(unsure, n_views, k) if k < n_views else np.full(per_view.shape[3], n_views)
    ran = np.arange(n_views)[:, None] < used[None, :]  # (T, N)
    view_labels = np.where(ran, per_view.mean(axis=(0, 1)).argmax(axis=-1), -1)
    differs = (per_view.argmax(axis=-1) != merged.argmax(axis=-1)[:, :, None, :]) & ran
    return TTAResult(merged, differs.sum(axis=2) / used, view_labels, used)


def adaptive_views(policy: TTAPolicy, n_views: int) -> int:
    """How many views every image gets before adaptive TTA decides which need the rest."""
    return policy.adaptive_views if 0 < policy.adaptive_views < n_views else n_views


def served_result(per_view: np.ndarray, policy: TTAPolicy) -> TTAResult:
    """What serving would return, from every view's (M, T, N, C) probabilities (OOF rows: all views were run)."""
    k = adaptive_views(policy, per_view.shape[1])
    unsure = needs_more_views(per_view[:, :k], policy, policy.adaptive_margin)
    return summarise_views(per_view[None], unsure, k, policy)


def run_tta(forward: TTAForward, pixels: Pixels, views: ViewSet, policy: TTAPolicy) -> TTAResult:
    """All ``views``; or, with adaptive TTA, the first ones everywhere and the rest where needed."""
    k = adaptive_views(policy, len(views))
    first = forward.folds(pixels, views[:k])
    unsure = (
        needs_more_views(first.mean(axis=0), policy, policy.adaptive_margin)
        if k < len(views)
        else np.zeros(len(pixels), bool)
    )
    per_view = np.zeros((*first.shape[:2], len(views), *first.shape[3:]), first.dtype)
    per_view[:, :, :k] = first
    if unsure.any():
        per_view[:, :, k:, unsure] = forward.folds(pixels[unsure], views[k:])
    return summarise_views(per_view, unsure, k, policy)
