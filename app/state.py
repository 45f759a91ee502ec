"""The loaded model, shared by the routes: loaded and warmed up off the event loop."""

from __future__ import annotations

import threading
from pathlib import Path

from stacking.predictor import Predictor


class ModelState:
    """Holds the ``Predictor`` once it is verified, loaded and warmed up."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Load and warm up; a failure is kept for ``/readyz`` instead of killing the process."""
        try:
            predictor = Predictor(self.bundle)
            predictor.warm_up()
            self.predictor = predictor
            self._ready.set()
        except Exception as exc:  # noqa: BLE001  reported by /readyz, the process stays up
            self.error = f"{type(exc).__name__}: {exc}"

    def start_loading(self) -> None:
        threading.Thread(target=self.load, name="load-bundle", daemon=True).start()
