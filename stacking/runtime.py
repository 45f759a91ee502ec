"""Where a base model's forward pass runs: TensorFlow, or the model's exported LiteRT file.

LiteRT (``ai-edge-litert``, XNNPACK kernels on the CPU) was chosen by measurement
(the manual's speed page; ``benchmarks/runtimes.py``): 1.3-6.5x TensorFlow's image-views/s on
every architecture measured at 96 px, never behind OpenVINO, one 59 MB wheel, and no
TensorFlow needed to run it. A runner takes float32 view rows
(R, H, W, 3) of raw 0..255 pixels, the same rows whichever runtime (``tta.make_views``),
and returns (K, R, C): one answer per fold model of its base model.

TensorFlow is imported only by a runner that needs it, so a bundle served wholly
from exported files starts without loading TensorFlow at all.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Sequence

import numpy as np

TF, LITERT = "tf", "litert"
EXPORTED = LITERT  # the one exported runtime; its files sit beside the .keras files
SUFFIX = ".tflite"


def has_tensorflow() -> bool:
    """False in the serving-only install (the slim image), which runs exported files alone."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or sys.modules["tensorflow"] = None
        return False


def cores() -> int:
    """The cores this process may use (a container's or a Ray worker's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


class KerasRunner:
    """A base model's Keras models (one, or one per fold) in one compiled TensorFlow function."""

    runtime = TF
    batch_independent = False  # a convolution's rounding follows the batch shape: calls keep one shape

    def __init__(self, models: Sequence):
        import tensorflow as tf

        self.models = list(models)
        self.folds, self.classes = len(self.models), int(self.models[0].output_shape[-1])
        rows = tf.TensorSpec((None, *self.models[0].input_shape[1:]), tf.float32)
        self._tf = tf
        self._run = tf.function(lambda x: tf.stack([m(x, training=False) for m in self.models]), input_signature=[rows])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self._run(self._tf.constant(rows)).numpy()

    @staticmethod
    def threads() -> dict[str, int]:
        """TensorFlow's thread pools (0: its default, one thread per core)."""
        import tensorflow as tf

        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }

    @staticmethod
    def set_threads(intra_op: int, inter_op: int) -> None:
        """TensorFlow's thread pools (0 leaves one as it is); possible only before its runtime starts, which raises
        RuntimeError after."""
        import tensorflow as tf

        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)


class LiteRTRunner:
    """A base model's exported ``.tflite`` files (one, or one per fold), each run by a LiteRT interpreter.

    One interpreter per file and call shape (the row count), made on first use: an
    interpreter's tensors are sized once, and every call of the fixed call shape reuses
    them. Interpreters are not thread-safe, so calls are serialised.
    """

    runtime = LITERT
    batch_independent = True  # XNNPACK gives an image the same bits at any call size (tests/test_runtime.py)

    def __init__(self, files: Sequence[bytes], threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter
        self.files = list(files)
        self.num_threads = threads or cores()
        self._by_rows: dict[int, list] = {}
        self._lock = threading.Lock()
        first = self._interpreters(1)[0]
        self.folds, self.classes = len(self.files), int(first.get_output_details()[0]["shape"][-1])

    def _interpreters(self, rows: int) -> list:
        if rows not in self._by_rows:
            made = []
            for content in self.files:
                interpreter = self._interpreter(model_content=content, num_threads=self.num_threads)
                interpreter.resize_tensor_input(
                    interpreter.get_input_details()[0]["index"],
                    [rows, *interpreter.get_input_details()[0]["shape"][1:]],
                )
                interpreter.allocate_tensors()
                made.append(interpreter)
            self._by_rows[rows] = made
        return self._by_rows[rows]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, np.float32)
        with self._lock:
            out = []
            for interpreter in self._interpreters(len(rows)):
                interpreter.set_tensor(interpreter.get_input_details()[0]["index"], rows)
                interpreter.invoke()
                out.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
        return np.stack(out)

    def threads(self) -> dict[str, int]:
        return {"num_threads": self.num_threads}


def export_litert(model, calibration: np.ndarray | None = None) -> bytes:
    """A Keras model (preprocessing inside) as a LiteRT flatbuffer taking float32 (R, H, W, 3) raw pixels.

    Float32 weights and arithmetic; or, given ``calibration`` view rows (training
    images), post-training static INT8 quantization by LiteRT's own converter: int8
    weights (per channel) and activations (ranges from the calibration rows), float32
    in and out, so runners need not know which. Only LiteRT's built-in operators: a
    model that needs TensorFlow's own kernels (Flex ops) could not run without
    TensorFlow, so its conversion fails instead.
    """
    import tensorflow as tf

    rows = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False), input_signature=[rows])
    # The function, not the model, as the trackable: given a loaded Keras 3 model the converter reads its
    # variables' memory after they are gone (NaN and 1e35 weights, seen here).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():  # said of every INT8 model whose input stays float32, as ours does
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        return converter.convert()
