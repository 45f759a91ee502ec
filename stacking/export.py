"""A fit's base models exported to LiteRT, checked against Keras, timed, and given the runtime that serves them.

Each trained model is converted (``runtime.export_litert``) and run on the images it
predicted out of fold, with the same views; the export is kept only if every
probability is within ``MAX_ABS_DIFF`` of Keras' and no label changes where Keras
was sure by more than that. Then both runtimes are timed side by side at the served
call shape, and ``--runtime auto`` serves the exported file unless TensorFlow was
clearly faster. The OOF rows are then the served runtime's answers, so the
meta-learner learns from the numbers it will be served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stacking.errors import UserError
from stacking.runtime import EXPORTED, TF, KerasRunner, LiteRTRunner
from stacking.tta import CALL_ROWS, TTAForward, View

MAX_ABS_DIFF = 1e-4  # float32 exports agree to ~3e-8 here; more means the conversion changed the model
TF_MUST_WIN_BY = 1.05  # auto keeps TensorFlow only when the export is this much slower: timings are noisy
TIMING_REPEATS = 7


@dataclass
class Parity:
    rows: int  # image-views compared
    max_abs_diff: float
    label_changes: int  # where Keras' top-2 margin exceeded MAX_ABS_DIFF and the export's label differs

    @staticmethod
    def of(keras_answers: np.ndarray, exported: np.ndarray) -> "Parity":
        """(..., C) answers of both on the same view rows."""
        keras_answers = keras_answers.reshape(-1, keras_answers.shape[-1])
        exported = exported.reshape(keras_answers.shape)
        top2 = np.sort(keras_answers, axis=-1)[:, -2:]
        sure = top2[:, 1] - top2[:, 0] > MAX_ABS_DIFF
        changed = keras_answers.argmax(axis=-1) != exported.argmax(axis=-1)
        diff = float(np.abs(keras_answers - exported).max()) if keras_answers.size else 0.0  # NaN stays NaN
        return Parity(len(keras_answers), diff, int((changed & sure).sum()))

    def merge(self, other: "Parity") -> "Parity":
        return Parity(self.rows + other.rows, float(np.fmax(self.max_abs_diff, other.max_abs_diff)) if self.rows
                      else other.max_abs_diff,
                      self.label_changes + other.label_changes)

    def problem(self) -> str | None:
        """Why the export is refused, or None."""
        if not self.max_abs_diff <= MAX_ABS_DIFF:  # NaN too
            return f"max |p| difference {self.max_abs_diff:.3g} > {MAX_ABS_DIFF:g} on {self.rows} OOF image-views"
        if self.label_changes:
            return f"{self.label_changes} of {self.rows} OOF image-views change label"
        return None

    def as_dict(self) -> dict:
        return {"rows": self.rows, "max_abs_diff": self.max_abs_diff, "label_changes": self.label_changes,
                "max_abs_limit": MAX_ABS_DIFF}


def exported_answers(content: bytes, pixels: np.ndarray, views: list[View], image_size: int) -> np.ndarray:
    """(T, N, C) the exported file's answers per view, in the served call shape."""
    return TTAForward([LiteRTRunner([content])], image_size, CALL_ROWS)(pixels, views)[0]


def keras_answers(model, pixels: np.ndarray, views: list[View], image_size: int) -> np.ndarray:
    return TTAForward([KerasRunner([model])], image_size, CALL_ROWS)(pixels, views)[0]


def served_rows(views: int) -> int:
    """Image-views per call in the served call shape (``Predictor``'s default): whole images, padded."""
    return max(1, CALL_ROWS // views) * views


def time_runtimes(models: list, files: list[bytes], image_size: int, views: int) -> dict:
    """Milliseconds per call of the whole base model (every fold) under each runtime, measured in turn, medians."""
    rows = np.random.default_rng(0).uniform(0, 255, (served_rows(views), image_size, image_size, 3)).astype(np.float32)
    runners = {TF: KerasRunner(models), EXPORTED: LiteRTRunner(files)}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(TIMING_REPEATS + 1):
        for name, run in runners.items():
            started = time.perf_counter()
            run(rows)
            if repeat:  # the first call of each allocates and traces
                seconds[name].append(time.perf_counter() - started)
    ms = {name: round(1000 * float(np.median(s)), 3) for name, s in seconds.items()}
    return {"call_rows": len(rows), "tf_ms": ms[TF], f"{EXPORTED}_ms": ms[EXPORTED]}


def choose(requested: str, timing: dict) -> str:
    """The runtime that serves a base model whose export passed: the export unless ``auto`` saw TF clearly win."""
    if requested == "auto" and timing[f"{EXPORTED}_ms"] > TF_MUST_WIN_BY * timing["tf_ms"]:
        return TF
    return EXPORTED


def refuse(requested: str, name: str, reason: str) -> None:
    """With ``--runtime litert`` a failed export fails the fit; with ``auto`` the model stays on TensorFlow."""
    if requested == EXPORTED:
        raise UserError(f"--runtime {EXPORTED}: base model {name!r} could not be exported: {reason}")
