"""``Predictor``: a verified bundle loaded once, turning pixels into stacked probabilities.

The CLI (``predict``, ``evaluate``) and the HTTP service both predict through this
class, so the same bundle, images and TTA give the same probabilities everywhere. It takes
``Pixels``: each image decoded once, at every size its base models (``sizes``) take.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io  # first: before TensorFlow (see stacking.bundle.estimators)
from stacking.bundle import Trust
from stacking.bundle.manifest import Manifest
from stacking.choices import RUNTIME, TTA_POLICY
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.options import CASCADE, STACK, STUDENT, resolve_serve_as
from stacking.inference.tta import CALL_ROWS, TTAForward, TTAPolicy, TTAResult, ViewSet, adaptive_views, run_tta
from stacking.meta.learners import full_probabilities, meta_features, single_threaded


@dataclass
class Prediction:
    """The served answer for N images, with each base model's and what it cost."""

    probabilities: np.ndarray  # (N, C) the served answer
    base_probabilities: np.ndarray  # (M, N, C) each base model, TTA-averaged (zeros where it did not run)
    agreement: np.ndarray  # (N,) share of views whose label equals the served label
    views: np.ndarray  # (N,) TTA views run per image (fewer where adaptive TTA or the cascade was sure early)
    features: np.ndarray | None  # (K, N, F) what the meta-learner saw per fold (None: the stack did not answer)
    served_by: np.ndarray  # (N,) "stack", "student", or "cascade/<stage>"
    cost_views: np.ndarray  # (N,) forward passes spent on the image (image-views through networks, folds counted)
    base_ran: np.ndarray  # (M, N) whether base model m ran on image n
    seconds: dict[str, float] = field(default_factory=dict)  # "forward" (networks, all views) and "meta"

    def rows(self, start: int, stop: int) -> Prediction:
        """Images ``start:stop`` of this prediction (a batch split back into its requests)."""
        return Prediction(
            self.probabilities[start:stop],
            self.base_probabilities[:, start:stop],
            self.agreement[start:stop],
            self.views[start:stop],
            None if self.features is None else self.features[:, start:stop],
            self.served_by[start:stop],
            self.cost_views[start:stop],
            self.base_ran[:, start:stop],
            dict(self.seconds),
        )

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        """One prediction from parts over consecutive images (a request split into batches)."""
        features = [p.features for p in parts]
        return Prediction(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.base_probabilities for p in parts], axis=1),
            np.concatenate([p.agreement for p in parts]),
            np.concatenate([p.views for p in parts]),
            None if any(f is None for f in features) else np.concatenate(features, axis=1),
            np.concatenate([p.served_by for p in parts]),
            np.concatenate([p.cost_views for p in parts]),
            np.concatenate([p.base_ran for p in parts], axis=1),
            {k: sum(p.seconds.get(k, 0.0) for p in parts) for k in parts[0].seconds},
        )


class Predictor:
    """Everything needed to predict, from one bundle folder."""

    def __init__(
        self,
        bundle: Path,
        call_rows: int = CALL_ROWS,
        trust: Trust = Trust(),
        runtime: str = "auto",
        threads: int | None = None,
        serve_as: str = "stack",
        latency_budget_ms: float | None = None,
        verified: Manifest | None = None,
    ):
        """``call_rows``: image-views per call at most (TensorFlow: every call padded to it; see ``TTAForward``);
        ``trust``: whether custom code may be imported, and whose signature the bundle must carry;
        ``runtime``: where the base models run (``auto``: as the fit chose per model, ``tf``, ``litert``);
        ``threads``: the exported runtime's threads (default: every core this process may use);
        ``serve_as``: the option that answers (stack, cascade, student), or with ``latency_budget_ms`` the most
        accurate one whose measured cost fits (``stacking.training.costing``);
        ``verified``: the manifest a pre-flight (``stacking serve``) has just loaded with every check, so the files
        are not hashed twice."""
        if call_rows < 1:
            raise UserError(f"--call-rows {call_rows}: must be at least 1")
        RUNTIME.check(runtime)
        self.bundle, self.trust, self.runtime = Path(bundle), trust, runtime
        self.manifest = verified or bundle_io.load_manifest(self.bundle, trust)
        self.sha256 = bundle_io.manifest_sha(self.bundle)
        self.name = self.bundle.resolve().name
        self.version = self.sha256[:12]
        self.classes: list[str] = self.manifest.classes
        self.base_names = [b.name for b in self.manifest.base_models]
        self.base_sizes = [b.image_size for b in self.manifest.base_models]
        student = self.manifest.serving.student if self.manifest.serving else None
        self.student_size: int | None = student.image_size if student else None
        self.tta = TTAPolicy.from_dict(self.manifest.tta.model_dump())
        self.forward = TTAForward(
            bundle_io.load_base_models(self.bundle, self.manifest, trust, runtime, threads), self.base_sizes, call_rows
        )
        self.meta = single_threaded(bundle_io.load_meta(self.bundle, self.manifest))
        self.tta_features: bool = self.manifest.meta_learner.features.tta_features
        self.threads = threads
        self.latency_budget_ms = latency_budget_ms
        self.serve_as = resolve_serve_as(self.manifest, serve_as, latency_budget_ms)
        # The sizes images are decoded to: the served option's (the student's alone), or every one (``evaluate``).
        self.sizes = [self.student_size] if self.serve_as == STUDENT else sorted(set(self.base_sizes))
        self.every_size = sorted({*self.base_sizes, *([self.student_size] if self.student_size else [])})
        self._model_forwards: dict[int, TTAForward] = {}
        self._first_folds: dict[int, TTAForward] = {}
        self._student: TTAForward | None = None
        if self.serve_as == STUDENT:
            self.student_forward()  # a bad student file is refused now, not at the first request

    def model_forward(self, m: int) -> TTAForward:
        """Base model m alone (the cascade's early stages, and its cost)."""
        if m not in self._model_forwards:
            self._model_forwards[m] = TTAForward(
                [self.forward.runners[m]], [self.base_sizes[m]], self.forward.rows_per_call
            )
        return self._model_forwards[m]

    def first_fold_forward(self, m: int) -> TTAForward:
        """Base model m's first fold model alone (the cascade's early stages); the model itself when it has one."""
        if self.forward.runners[m].folds == 1:
            return self.model_forward(m)
        if m not in self._first_folds:
            runner = bundle_io.load_base_models(
                self.bundle, self.manifest, self.trust, self.runtime, self.threads, only=(m, 0)
            )[0]
            self._first_folds[m] = TTAForward([runner], [self.base_sizes[m]], self.forward.rows_per_call)
        return self._first_folds[m]

    def student_forward(self) -> TTAForward:
        """The distilled student's runner, loaded on first use."""
        if self._student is None:
            runner = bundle_io.load_student(self.bundle, self.manifest, self.runtime, self.threads)
            self._student = TTAForward([runner], [self.student_size], self.forward.rows_per_call)
        return self._student

    def serving_info(self) -> dict:
        """The option serving, why, and every option with its scores and cost (for ``/v1/model``)."""
        serving = self.manifest.serving
        return {
            "served_as": self.serve_as,
            "latency_budget_ms": self.latency_budget_ms,
            "options": [o.model_dump() for o in serving.options] if serving else [],
            "cascade": [s.model_dump() for s in serving.cascade.stages] if serving and serving.cascade else None,
        }

    @property
    def runtimes(self) -> dict[str, str]:
        """The runtime each base model runs on."""
        return {name: run.runtime for name, run in zip(self.base_names, self.forward.runners)}

    def runtime_info(self) -> dict:
        """What runs where, with which threads, so an operator can check the settings took."""
        return {
            "requested": self.runtime,
            "call_rows": self.forward.rows_per_call,
            "base_models": {
                name: {"runtime": run.runtime, "threads": run.threads()}
                for name, run in zip(self.base_names, self.forward.runners)
            },
        }

    def policy(self, name: str | None = None) -> TTAPolicy:
        """The bundle's validated TTA policy, or another named one with the same shift and merge."""
        if name is None:
            return self.tta
        TTA_POLICY.check(name)
        return self.tta if name == self.tta.name else replace(self.tta, name=name)

    def max_views(self, policy: str | None = None) -> int:
        return self.policy(policy).max_views(max(self.base_sizes))

    def check_views(self, views: int | None, policy: str | None = None) -> None:
        """Refuse a TTA view count the policy cannot provide."""
        most = self.max_views(policy)
        if views is not None and not 0 <= views <= most:
            raise UserError(f"--tta {views}: must be between 0 and {most} for TTA policy {self.policy(policy).name!r}")

    def views(self, count: int | None = None, policy: TTAPolicy | None = None) -> ViewSet:
        """The first ``count`` views (default: the bundle's) of ``policy`` (default: the bundle's) at each size."""
        return (policy or self.tta).views_at(sorted(set(self.base_sizes)), count)

    def merged_views(self, pixels: Pixels, views: int | None = None, policy: str | None = None) -> TTAResult:
        """Each base model's TTA-merged probabilities."""
        chosen = self.policy(policy)
        return run_tta(self.forward, pixels, self.views(views, chosen), chosen)

    def predict(
        self, pixels: Pixels, views: int | None = None, policy: str | None = None, serve_as: str | None = None
    ) -> Prediction:
        """The served answer for N images: the stack's with ``views`` views of ``policy``,
        the cascade's (those settings apply where the stack answers) or the student's (one view).

        ``serve_as``: another option than the one this predictor serves (``evaluate`` scores them all).
        """
        chosen = serve_as or self.serve_as
        if chosen == CASCADE:
            return self._cascade(pixels, views, policy)
        if chosen == STUDENT:
            return self._student_answer(pixels)
        return self._stack_answer(pixels, views, policy)

    def _stack_answer(self, pixels: Pixels, views: int | None, policy: str | None) -> Prediction:
        started = time.perf_counter()
        result = self.merged_views(pixels, views, policy)
        forwarded = time.perf_counter()
        features = np.stack(
            [
                meta_features(merged, disagreement if self.tta_features else None)
                for merged, disagreement in zip(result.fold_merged, result.fold_disagreement)
            ]
        )
        probs = self.meta_answer(self.meta, features)
        seconds = {"forward": forwarded - started, "meta": time.perf_counter() - forwarded}
        agrees = (result.view_labels == probs.argmax(axis=1)[None, :]).sum(axis=0)
        n, folds = len(pixels), sum(run.folds for run in self.forward.runners)
        return Prediction(
            probs,
            result.merged,
            agrees / result.views_used,
            result.views_used,
            features,
            np.full(n, STACK, object),
            result.views_used * float(folds),
            np.ones((len(self.base_names), n), bool),
            seconds,
        )

    def _cascade(self, pixels: Pixels, views: int | None, policy: str | None) -> Prediction:
        """Each image from the first stage sure enough of it; the rest from the stack, exactly as it answers alone."""
        stages = self.manifest.serving.cascade.stages
        n, m_count, c = len(pixels), len(self.base_names), len(self.classes)
        probs, base = np.zeros((n, c)), np.zeros((m_count, n, c))  # float64, as the stack answers
        agreement, used, cost = np.ones(n), np.zeros(n, int), np.zeros(n)
        served_by, ran = np.full(n, "", object), np.zeros((m_count, n), bool)
        open_rows, seen, started = np.arange(n), None, time.perf_counter()
        for stage in stages[:-1]:
            if not len(open_rows):
                break
            m = self.base_names.index(stage.model)
            forward = self.first_fold_forward(m)
            view_list = self.views(stage.views)
            done = 0 if seen is None else seen.shape[1]
            new = forward.folds(pixels[open_rows], view_list[done:])[:, 0]  # (1, T_new, open, C): one network
            seen = new if seen is None else np.concatenate([seen, new], axis=1)
            merged = self.tta.merge_views(seen)[0]
            sure = merged.max(axis=1) >= stage.threshold
            rows = open_rows[sure]
            probs[rows], base[m, rows], ran[m, rows] = merged[sure], merged[sure], True
            labels = seen[0].argmax(axis=-1)[:, sure]  # (T, answered) each view's label
            agreement[rows] = (labels == merged[sure].argmax(axis=1)[None]).mean(axis=0)
            used[rows], served_by[rows] = len(view_list), f"{CASCADE}/{stage.name}"
            cost[open_rows] += len(view_list) - done
            open_rows, seen = open_rows[~sure], seen[:, :, ~sure]
        seconds = {"forward": time.perf_counter() - started}
        if len(open_rows):
            rest = self._stack_answer(pixels[open_rows], views, policy)
            probs[open_rows], base[:, open_rows], ran[:, open_rows] = rest.probabilities, rest.base_probabilities, True
            agreement[open_rows], used[open_rows] = rest.agreement, rest.views
            cost[open_rows] += rest.cost_views
            served_by[open_rows] = f"{CASCADE}/{stages[-1].name}"
            seconds = {k: seconds.get(k, 0.0) + v for k, v in rest.seconds.items()}
        return Prediction(probs, base, agreement, used, None, served_by, cost, ran, seconds)

    def _student_answer(self, pixels: Pixels) -> Prediction:
        """The student on the identity view alone: one network, one view."""
        started = time.perf_counter()
        forward = self.student_forward()
        probs = forward.folds(pixels, ViewSet.identity([self.student_size]))[:, 0, 0].mean(axis=0)
        n = len(pixels)
        return Prediction(
            probs,
            np.zeros((len(self.base_names), *probs.shape), np.float32),
            np.ones(n),
            np.ones(n, int),
            None,
            np.full(n, STUDENT, object),
            np.full(n, float(forward.runners[0].folds)),
            np.zeros((len(self.base_names), n), bool),
            {"forward": time.perf_counter() - started},
        )

    def meta_answer(self, meta, features: np.ndarray) -> np.ndarray:
        """A meta-learner's (N, C) answer: applied to each fold's (N, F) features, the K answers averaged.

        It learnt from single fold models' OOF answers; fed the average of K fold
        models it would see smoother inputs than those it was fitted on.
        """
        return np.mean([full_probabilities(meta, X, len(self.classes)) for X in features], axis=0)

    def candidates(self) -> dict:
        """Every meta-learner candidate fitted at training time (the bundle's sha256 already checked)."""
        return {name: single_threaded(c) for name, c in bundle_io.load_candidates(self.bundle, self.manifest).items()}

    def warm_up(self, up_to: int | None = None) -> None:
        """Prepare every call shape before real traffic (trace, allocate), so none is made while a client waits.

        The bundle's view count, or every count from 1 to ``up_to`` (what a request may
        ask for). With adaptive TTA each count needs two view sets: the first views,
        and the rest that only unsure images get.
        """
        blank = Pixels.zeros  # (images, sizes)
        if self.serve_as != STUDENT:
            served = len(self.views())
            for n in [served] if up_to is None else range(1, min(up_to, self.max_views()) + 1):
                views = self.views(n)
                k = adaptive_views(self.tta, len(views))
                for part in [views[:k], views[k:]] if k < len(views) else [views]:
                    for images in self.forward.call_sizes(len(part)):
                        self.forward.folds(blank(images, self.sizes), part)
        if self.serve_as == CASCADE:
            done = 0
            for stage in self.manifest.serving.cascade.stages[:-1]:  # the views each early stage adds
                forward = self.first_fold_forward(self.base_names.index(stage.model))
                part = self.views(stage.views)[done:]
                for images in forward.call_sizes(len(part)):
                    forward.folds(blank(images, self.sizes), part)
                done = stage.views
        if self.serve_as == STUDENT:
            for images in self.student_forward().call_sizes(1):
                self.predict(blank(images, self.sizes))
        self.predict(blank(1, self.sizes))
