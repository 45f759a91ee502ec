"""The served model's life: loading off the event loop, warm-up, readiness, draining on SIGTERM."""

from __future__ import annotations

import logging
import threading

from app import metrics
from app.settings import Settings
from stacking.bundle.manifest import Manifest
from stacking.inference.predictor import Predictor
from stacking.runtime import KerasRunner

logger = logging.getLogger("stackserve")


def set_thread_counts(settings: Settings) -> None:
    """TensorFlow's thread pools; only possible before its runtime starts, so done first thing when loading.

    Not set, TensorFlow is not even imported here: a bundle served from exported files never loads it.
    """
    if not (settings.intra_op_threads or settings.inter_op_threads):
        return
    try:
        KerasRunner.set_threads(settings.intra_op_threads, settings.inter_op_threads)
    except RuntimeError as exc:  # the runtime already started in this process: keep its pools, say so
        logger.warning("TensorFlow thread counts not applied: %s", exc)


class ModelState:
    """Holds the ``Predictor`` once it is verified, loaded and warmed up; ready until draining starts."""

    def __init__(self, settings: Settings, verified: Manifest | None = None):
        """``verified``: the manifest the CLI's pre-flight checked, so loading does not hash the bundle again."""
        self.settings = settings
        self.verified = verified
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.draining = False
        self._loaded = threading.Event()

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and not self.draining

    def load(self) -> None:
        """Load and warm up every view count a request may ask for; a failure is kept for ``/readyz``."""
        try:
            set_thread_counts(self.settings)
            predictor = Predictor(
                self.settings.bundle,
                self.settings.call_rows,
                self.settings.trust,
                self.settings.runtime,
                self.settings.runtime_threads or None,
                self.settings.serve_as,
                self.settings.latency_budget_ms,
                self.verified,
            )
            predictor.warm_up(self.settings.max_tta if self.settings.warm_up_views else None)
            metrics.MODEL.labels(predictor.name, predictor.version).set(1)
            self.predictor = predictor
            self._loaded.set()
        except Exception as exc:  # noqa: BLE001  reported by /readyz, the process stays up
            self.error = f"{type(exc).__name__}: {exc}"

    def start_loading(self) -> None:
        threading.Thread(target=self.load, name="load-bundle", daemon=True).start()
