"""``Predictor``: a verified bundle loaded once, turning pixels into stacked probabilities.

The CLI (``predict``, ``evaluate``) and the HTTP service both predict through this
class, so the same bundle, images and TTA give the same probabilities everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io  # first: before TensorFlow (see stacking.bundle.estimators)
from stacking.bundle import Trust
from stacking.choices import RUNTIME, TTA_POLICY
from stacking.errors import UserError
from stacking.meta import full_probabilities, meta_features, single_threaded
from stacking.tta import CALL_ROWS, TTAForward, TTAPolicy, TTAResult, adaptive_views, run_tta


@dataclass
class Prediction:
    """Stacked and per-base-model probabilities for N images."""

    probabilities: np.ndarray  # (N, C) the served answer
    base_probabilities: np.ndarray  # (M, N, C) each base model, TTA-averaged
    agreement: np.ndarray  # (N,) share of views whose mean-of-models label equals the served label
    views: np.ndarray  # (N,) TTA views run per image (fewer where adaptive TTA was sure early)
    features: np.ndarray  # (K, N, F) what the meta-learner saw per fold, for scoring other candidates alike
    seconds: dict[str, float] = field(default_factory=dict)  # "forward" (base models, all views) and "meta"

    def rows(self, start: int, stop: int) -> "Prediction":
        """Images ``start:stop`` of this prediction (a batch split back into its requests)."""
        return Prediction(self.probabilities[start:stop], self.base_probabilities[:, start:stop],
                          self.agreement[start:stop], self.views[start:stop], self.features[:, start:stop],
                          dict(self.seconds))

    @staticmethod
    def concat(parts: list["Prediction"]) -> "Prediction":
        """One prediction from parts over consecutive images (a request split into batches)."""
        return Prediction(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.base_probabilities for p in parts], axis=1),
            np.concatenate([p.agreement for p in parts]),
            np.concatenate([p.views for p in parts]),
            np.concatenate([p.features for p in parts], axis=1),
            {k: sum(p.seconds.get(k, 0.0) for p in parts) for k in parts[0].seconds},
        )


class Predictor:
    """Everything needed to predict, from one bundle folder."""

    def __init__(self, bundle: Path, call_rows: int = CALL_ROWS, trust: Trust = Trust(), runtime: str = "auto",
                 threads: int | None = None):
        """``call_rows``: image-views per call at most (TensorFlow: every call padded to it; see ``TTAForward``);
        ``trust``: whether custom code may be imported, and whose signature the bundle must carry;
        ``runtime``: where the base models run (``auto``: as the fit chose per model, ``tf``, ``litert``);
        ``threads``: the exported runtime's threads (default: every core this process may use)."""
        if call_rows < 1:
            raise UserError(f"--call-rows {call_rows}: must be at least 1")
        RUNTIME.check(runtime)
        self.bundle, self.trust, self.runtime = Path(bundle), trust, runtime
        self.manifest = bundle_io.load_manifest(self.bundle, trust)
        self.sha256 = bundle_io.manifest_sha(self.bundle)
        self.name = self.bundle.resolve().name
        self.version = self.sha256[:12]
        self.classes: list[str] = self.manifest.classes
        self.image_size: int = self.manifest.image_size
        self.base_names = [b.name for b in self.manifest.base_models]
        self.tta = TTAPolicy.from_dict(self.manifest.tta.model_dump())
        self.forward = TTAForward(bundle_io.load_base_models(self.bundle, self.manifest, trust, runtime, threads),
                                  self.image_size, call_rows)
        self.meta = single_threaded(bundle_io.load_meta(self.bundle, self.manifest))
        self.tta_features: bool = self.manifest.meta_learner.features.tta_features

    @property
    def runtimes(self) -> dict[str, str]:
        """The runtime each base model runs on."""
        return {name: run.runtime for name, run in zip(self.base_names, self.forward.runners)}

    def runtime_info(self) -> dict:
        """What runs where, with which threads, so an operator can check the settings took."""
        return {"requested": self.runtime, "call_rows": self.forward.rows_per_call,
                "base_models": {name: {"runtime": run.runtime, "threads": run.threads()}
                                for name, run in zip(self.base_names, self.forward.runners)}}

    def policy(self, name: str | None = None) -> TTAPolicy:
        """The bundle's validated TTA policy, or another named one with the same shift and merge."""
        if name is None:
            return self.tta
        TTA_POLICY.check(name)
        return self.tta if name == self.tta.name else replace(self.tta, name=name)

    def max_views(self, policy: str | None = None) -> int:
        return self.policy(policy).max_views(self.image_size)

    def check_views(self, views: int | None, policy: str | None = None) -> None:
        """Refuse a TTA view count the policy cannot provide."""
        most = self.max_views(policy)
        if views is not None and not 0 <= views <= most:
            raise UserError(f"--tta {views}: must be between 0 and {most} for TTA policy {self.policy(policy).name!r}")

    def merged_views(self, pixels: np.ndarray, views: int | None = None, policy: str | None = None) -> TTAResult:
        """Each base model's TTA-merged probabilities for uint8 (N, size, size, 3) pixels."""
        chosen = self.policy(policy)
        return run_tta(self.forward, pixels, chosen.view_list(self.image_size, views), chosen)

    def predict(self, pixels: np.ndarray, views: int | None = None, policy: str | None = None) -> Prediction:
        """Stacked prediction for uint8 (N, size, size, 3) pixels with ``views`` views of ``policy``."""
        started = time.perf_counter()
        result = self.merged_views(pixels, views, policy)
        forwarded = time.perf_counter()
        features = np.stack([
            meta_features(merged, disagreement if self.tta_features else None)
            for merged, disagreement in zip(result.fold_merged, result.fold_disagreement)
        ])
        probs = self.stack(self.meta, features)
        seconds = {"forward": forwarded - started, "meta": time.perf_counter() - forwarded}
        agrees = (result.view_labels == probs.argmax(axis=1)[None, :]).sum(axis=0)
        return Prediction(probs, result.merged, agrees / result.views_used, result.views_used, features, seconds)

    def stack(self, meta, features: np.ndarray) -> np.ndarray:
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
        served = len(self.tta.view_list(self.image_size))
        for n in [served] if up_to is None else range(1, min(up_to, self.max_views()) + 1):
            views = self.tta.view_list(self.image_size, n)
            k = adaptive_views(self.tta, len(views))
            for part in [views[:k], views[k:]] if k < len(views) else [views]:
                for images in self.forward.call_sizes(len(part)):
                    self.forward.folds(np.zeros((images, self.image_size, self.image_size, 3), np.uint8), part)
        self.predict(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
