"""A fit's base models exported to LiteRT, checked against Keras, timed, and given the runtime that serves them.

Each trained model is converted (``runtime.export_litert``) and run on the images it
predicted out of fold, with the same views; the export is kept only if every
probability is within ``MAX_ABS_DIFF`` of Keras' and no label changes where Keras
was sure by more than that. Then both runtimes are timed side by side at the served
call shape, and ``--runtime auto`` serves the exported file unless TensorFlow was
clearly faster. With ``--quantize int8`` each model is also quantized (static,
calibrated on its own training images) and the INT8 file serves only where, on the
model's OOF rows, accuracy holds, log-loss rises by at most ``INT8_LOG_LOSS_TOLERANCE``
and it is faster than float32. The OOF rows are then the served file's answers, so the
meta-learner learns from the numbers it will be served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stacking.choices import AUTO, Precision
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.tta import CALL_ROWS, TTAForward, View, ViewSet, make_views
from stacking.meta.learners import score
from stacking.runtime import EXPORTED, TF, KerasRunner, LiteRTRunner

MAX_ABS_DIFF = 1e-4  # float32 exports agree to ~3e-8 here; more means the conversion changed the model
TF_MUST_WIN_BY = 1.05  # auto keeps TensorFlow only when the export is this much slower: timings are noisy
TIMING_REPEATS = 7
CALIBRATION_IMAGES = 200  # training images whose activations set the INT8 ranges
INT8_LOG_LOSS_TOLERANCE = 0.01  # nats of OOF log-loss an INT8 export may add (and no accuracy lost)


@dataclass
class Parity:
    rows: int  # image-views compared
    max_abs_diff: float
    label_changes: int  # where Keras' top-2 margin exceeded MAX_ABS_DIFF and the export's label differs

    @staticmethod
    def of(keras_answers: np.ndarray, exported: np.ndarray) -> Parity:
        """(..., C) answers of both on the same view rows."""
        keras_answers = keras_answers.reshape(-1, keras_answers.shape[-1])
        exported = exported.reshape(keras_answers.shape)
        top2 = np.sort(keras_answers, axis=-1)[:, -2:]
        sure = top2[:, 1] - top2[:, 0] > MAX_ABS_DIFF
        changed = keras_answers.argmax(axis=-1) != exported.argmax(axis=-1)
        diff = float(np.abs(keras_answers - exported).max()) if keras_answers.size else 0.0  # NaN stays NaN
        return Parity(len(keras_answers), diff, int((changed & sure).sum()))

    def merge(self, other: Parity) -> Parity:
        # np.maximum, not max(): a NaN on either side must survive the merge
        return Parity(
            self.rows + other.rows,
            float(np.maximum(self.max_abs_diff, other.max_abs_diff)),
            self.label_changes + other.label_changes,
        )

    def problem(self) -> str | None:
        """Why the export is refused, or None."""
        if not self.max_abs_diff <= MAX_ABS_DIFF:  # NaN too
            return f"max |p| difference {self.max_abs_diff:.3g} > {MAX_ABS_DIFF:g} on {self.rows} OOF image-views"
        if self.label_changes:
            return f"{self.label_changes} of {self.rows} OOF image-views change label"
        return None

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "label_changes": self.label_changes,
            "max_abs_limit": MAX_ABS_DIFF,
        }


def exported_answers(content: bytes, pixels: np.ndarray, views: list[View], image_size: int) -> np.ndarray:
    """(T, N, C) the exported file's answers per view on images at its ``image_size``, in the served call shape."""
    return _answers(LiteRTRunner([content]), pixels, views, image_size)


def keras_answers(model, pixels: np.ndarray, views: list[View], image_size: int) -> np.ndarray:
    return _answers(KerasRunner([model]), pixels, views, image_size)


def _answers(runner, pixels: np.ndarray, views: list[View], size: int) -> np.ndarray:
    return TTAForward([runner], [size], CALL_ROWS)(Pixels({size: pixels}), ViewSet.of(size, views))[0]


def served_rows(views: int) -> int:
    """Image-views per call in the served call shape (``Predictor``'s default): whole images, padded."""
    return max(1, CALL_ROWS // views) * views


def calibration_rows(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``CALIBRATION_IMAGES`` of a model's training images, as the float32 rows runners are given."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(pixels), min(CALIBRATION_IMAGES, len(pixels)), replace=False))
    return make_views(np.asarray(pixels[chosen]), [View()])


def int8_verdict(labels: np.ndarray, fp32_views: np.ndarray, int8_views: np.ndarray) -> dict:
    """Scores of the served views' mean (T, N, C) for both exports on OOF rows, and whether INT8 may serve."""
    fp32, int8 = (score(v.mean(axis=0), labels) for v in (fp32_views, int8_views))
    fp32, int8 = ({k: round(x[k], 6) for k in ("accuracy", "log_loss")} for x in (fp32, int8))
    rise = int8["log_loss"] - fp32["log_loss"]
    if int8["accuracy"] < fp32["accuracy"]:
        reason = f"OOF accuracy {int8['accuracy']:.4f} below float32's {fp32['accuracy']:.4f}"
    elif rise > INT8_LOG_LOSS_TOLERANCE:
        reason = (
            f"OOF log-loss {int8['log_loss']:.4f}, {rise:.4f} above float32's (tolerance {INT8_LOG_LOSS_TOLERANCE})"
        )
    else:
        reason = f"OOF accuracy {int8['accuracy']:.4f} (float32 {fp32['accuracy']:.4f}), log-loss {rise:+.4f}"
    kept = int8["accuracy"] >= fp32["accuracy"] and rise <= INT8_LOG_LOSS_TOLERANCE
    return {"fp32": fp32, "int8": int8, "log_loss_tolerance": INT8_LOG_LOSS_TOLERANCE, "kept": kept, "reason": reason}


def time_runtimes(
    models: list, files: list[bytes], image_size: int, views: int, int8_files: list[bytes] | None = None
) -> dict:
    """Milliseconds per call of the whole base model (every fold) under each runtime, measured in turn, medians."""
    rows = np.random.default_rng(0).uniform(0, 255, (served_rows(views), image_size, image_size, 3)).astype(np.float32)
    runners = {TF: KerasRunner(models), EXPORTED: LiteRTRunner(files)}
    if int8_files is not None:
        runners[f"{EXPORTED}_int8"] = LiteRTRunner(int8_files)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(TIMING_REPEATS + 1):
        for name, run in runners.items():
            started = time.perf_counter()
            run(rows)
            if repeat:  # the first call of each allocates and traces
                seconds[name].append(time.perf_counter() - started)
    ms = {f"{name}_ms": round(1000 * float(np.median(s)), 3) for name, s in seconds.items()}
    return {"call_rows": len(rows), **ms}


def choose(requested: str, timing: dict, int8_kept: bool) -> tuple[str, str]:
    """(runtime, precision) serving a base model whose export passed: the faster export (INT8 only if kept),
    unless ``auto`` saw TensorFlow clearly win."""
    precision = (
        Precision.INT8 if int8_kept and timing[f"{EXPORTED}_int8_ms"] < timing[f"{EXPORTED}_ms"] else Precision.FP32
    )
    exported_ms = timing[f"{EXPORTED}_int8_ms" if precision == Precision.INT8 else f"{EXPORTED}_ms"]
    if requested == AUTO and exported_ms > TF_MUST_WIN_BY * timing["tf_ms"]:
        return TF, Precision.FP32
    return EXPORTED, precision


def refuse(requested: str, name: str, reason: str) -> None:
    """With ``--runtime litert`` a failed export fails the fit; with ``auto`` the model stays on TensorFlow."""
    if requested == EXPORTED:
        raise UserError(f"--runtime {EXPORTED}: base model {name!r} could not be exported: {reason}")
