"""The model as the Open Inference Protocol sees it, shared by REST and gRPC: one ``BYTES`` input of encoded
image files, the ``probabilities`` (``FP64``, images x classes: the very numbers ``/v1`` answers) and ``label``
(``BYTES``) outputs, the request parameters it reads, and the checks every transport makes the same way.

A tensor cannot hold a per-image error, so one unusable image refuses the whole request, naming its index.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from app.errors import ServiceError
from app.inference import Served, Serving, Upload, serve_uploads
from stacking.choices import POLICIES
from stacking.inference.predictor import Prediction, Predictor

SERVER = "stackserve"
PLATFORM = "stackserve"
EXTENSIONS = ["binary_tensor_data", "classification"]
INPUT = "images"
OUTPUTS = ("probabilities", "label")
DATATYPES = {"probabilities": "FP64", "label": "BYTES"}
# Request parameters read here: tta and tta_policy are ours; timeout (microseconds) is Triton's. Others are ignored,
# as the protocol lets a server do with parameters it does not know.
PARAMETERS = ("tta", "tta_policy", "timeout")


@functools.cache
def server_version() -> str:
    try:
        return version("stackserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0"


def server_metadata() -> dict:
    return {"name": SERVER, "version": server_version(), "extensions": EXTENSIONS}


def served_model(predictor: Predictor, name: str, model_version: str = "") -> Predictor:
    """The predictor, if ``name`` (and ``model_version``, when given) is what this server serves."""
    if name != predictor.name:
        raise ServiceError(404, f"model {name!r} is not served here; this server serves {predictor.name!r}")
    if model_version and model_version != predictor.version:
        raise ServiceError(
            404, f"model {name!r} has no version {model_version!r}; this server serves version {predictor.version!r}"
        )
    return predictor


def model_metadata(predictor: Predictor) -> dict:
    return {
        "name": predictor.name,
        "versions": [predictor.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": DATATYPES["probabilities"], "shape": [-1, len(predictor.classes)]},
            {"name": "label", "datatype": DATATYPES["label"], "shape": [-1]},
        ],
    }


def check_inputs(inputs: Sequence[tuple[str, str, Sequence[int]]]) -> None:
    """``inputs``: each tensor's (name, datatype, shape). One ``BYTES`` tensor named ``images``, shape [N] or [N, 1]."""
    if len(inputs) != 1:
        raise ServiceError(400, f"inputs: {len(inputs)} tensors; this model takes one, {INPUT!r} (BYTES)")
    name, datatype, shape = inputs[0]
    if name != INPUT:
        raise ServiceError(400, f"inputs[0].name: {name!r} is not an input of this model; it takes one, {INPUT!r}")
    if datatype != "BYTES":
        raise ServiceError(
            400,
            f"inputs[0].datatype: {datatype!r}; input {INPUT!r} is BYTES, each element one "
            f"encoded image file (PNG, JPEG, ...)",
        )
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise ServiceError(400, f"inputs[0].shape: {list(shape)}; input {INPUT!r} is [N] or [N, 1] for N images")


def check_count(shape: Sequence[int], count: int) -> None:
    if math.prod(shape) != count:
        raise ServiceError(400, f"inputs[0].shape {list(shape)} does not match its {count} elements")
    if count == 0:
        raise ServiceError(400, f"inputs[0]: no images in {INPUT!r}")


def image_files(elements: Sequence[bytes]) -> list[bytes]:
    """Binary ``BYTES`` elements (the binary extension, gRPC) as image files: each is the file's own bytes or, as
    KServe's examples send images, its base64 text (no image format starts with only base64 characters)."""
    files = []
    for element in elements:
        try:
            files.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            files.append(bytes(element))
    return files


@dataclass
class Options:
    """What the request's parameters ask of the served model."""

    tta: int | None = None
    policy: str | None = None
    timeout_s: float | None = None  # the client's deadline, shorter than the service's own


def read_parameters(parameters: Mapping[str, object]) -> Options:
    tta, policy, timeout = (parameters.get(k) for k in PARAMETERS)
    if tta is not None and (not isinstance(tta, int) or isinstance(tta, bool) or tta < 0):
        raise ServiceError(422, f"parameters.tta: {tta!r} is not a non-negative integer")
    if policy is not None and policy not in POLICIES:
        raise ServiceError(422, f"parameters.tta_policy: {policy!r} is not one of {', '.join(POLICIES)}")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise ServiceError(422, f"parameters.timeout: {timeout!r} is not a number of microseconds")
    return Options(tta, policy, timeout / 1e6 if timeout else None)


def requested_outputs(names: Sequence[str]) -> list[str]:
    """The outputs asked for, in the asked order (all of them when none is named)."""
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise ServiceError(400, f"outputs: unknown {unknown}; this model has {list(OUTPUTS)}")
    return list(names) or list(OUTPUTS)


def read_classification(index: int, name: str, count: object, classes: int) -> int:
    """The classification extension's top-``count`` request on output ``index``."""
    if name != "probabilities":
        raise ServiceError(
            400,
            f"outputs[{index}].parameters.classification: only 'probabilities' can be returned "
            f"as classifications, not {name!r}",
        )
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= classes:
        raise ServiceError(
            400, f"outputs[{index}].parameters.classification: {count!r}; ask for 1 to {classes} classes"
        )
    return count


def classifications(probabilities: np.ndarray, classes: Sequence[str], count: int) -> np.ndarray:
    """Each image's ``count`` most probable classes as the extension writes them: ``b"<value>:<index>:<label>"``,
    most probable first (the lower index first on a tie)."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    return np.array(
        [[f"{row[k]:f}:{k}:{classes[k]}".encode() for k in ks] for row, ks in zip(probabilities, top)], dtype=object
    ).reshape(len(probabilities), count)


@dataclass
class Tensor:
    """An answer tensor: ``values`` float64 (images x classes) or an object array of ``bytes``."""

    name: str
    datatype: str
    values: np.ndarray
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.values.shape)


def output_tensors(
    predictor: Predictor, prediction: Prediction, names: Sequence[str], classification: Mapping[str, int] | None = None
) -> list[Tensor]:
    """The outputs ``names``; those in ``classification`` as their top classes (BYTES, images x count)."""
    probabilities = np.asarray(prediction.probabilities, dtype=np.float64)
    labels = np.array([predictor.classes[int(k)].encode() for k in probabilities.argmax(axis=1)], dtype=object)
    # Parameters are scalars in the protocol: one entry per image, comma-separated, in the images' order.
    how = {
        "served_by": ",".join(str(s) for s in prediction.served_by),
        "cost_views": ",".join(f"{c:g}" for c in prediction.cost_views),
    }
    values = {"probabilities": probabilities, "label": labels}
    tensors = []
    for name in names:
        if name in (classification or {}):
            top = classifications(probabilities, predictor.classes, classification[name])
            tensors.append(Tensor(name, "BYTES", top, dict(how)))
        else:
            tensors.append(Tensor(name, DATATYPES[name], values[name], dict(how)))
    return tensors


async def infer(
    serving: Serving, predictor: Predictor, images: list[bytes], options: Options, gone: Awaitable[None] | None = None
) -> Served:
    """Every image through the shared serving path (admission, decoding, the batcher); the first unusable one
    refuses the request."""
    uploads = [Upload(f"{INPUT}[{i}]", data) for i, data in enumerate(images)]
    served = await serve_uploads(serving, predictor, uploads, options.tta, options.policy, gone, options.timeout_s)
    bad = next((row for row in served.rows if isinstance(row, ServiceError)), None)
    if bad is not None:
        raise bad
    return served
