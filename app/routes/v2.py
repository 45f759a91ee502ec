"""The Open Inference Protocol's REST routes (``/v2``), as Triton's and KServe's HTTP clients send them.

The body is read as JSON whatever its ``Content-Type`` (clients send none, ``application/json``, or
``application/octet-stream`` with binary tensors after the JSON). With the binary tensor data extension the JSON
header is the first ``Inference-Header-Content-Length`` bytes, and an input with ``parameters.binary_data_size``
takes that many bytes from what follows; in JSON a ``BYTES`` element is a base64 string. Outputs come back binary
when asked (``binary_data`` per output, or ``binary_data_output`` for all), ``probabilities`` as its top classes with
``classification`` (the classification extension), gzip-compressed when the client accepts it (the app's
middleware). Errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import zlib
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from app.batching import disconnected
from app.deps import APIKey, ModelStateDep, PredictorDep, ServingDep
from app.errors import ServiceError
from app.inference import Serving
from app.open_inference import protocol
from app.open_inference.tensors import raw_contents, unpack_bytes
from stacking.inference.predictor import Predictor

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
HEADER_LENGTH = "inference-header-content-length"
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # what tritonclient may compress bodies with


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the input's bytes follow the JSON.")
    data: list[Any] | None = Field(None, description="Encoded images (PNG, JPEG, ...), each a base64 string.")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: return this output as binary.")


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="tta (views), tta_policy, timeout (microseconds), binary_data_output."
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ProtocolErrorResponse(BaseModel):
    error: str


class ResponseOutput(TensorMetadata):
    parameters: dict[str, Any] = Field(
        description="binary_data_size when the output follows the JSON as binary; "
        "served_by, cost_views per image (comma-separated)."
    )
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


ERRORS = {code: {"model": ProtocolErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
NOT_READY = {503: {"model": ServerReadyResponse}}
MODEL_NOT_READY = {503: {"model": ModelReadyResponse}, 404: {"model": ProtocolErrorResponse}}
INFER_ANSWERS = {200: {"model": InferResponse, "content": {"application/octet-stream": {}}}, **ERRORS}


def _inline_schema(model: type[BaseModel]) -> dict:
    """``model``'s JSON schema with its nested models written in place, for an ``openapi_extra`` request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(InferRequest)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
# Both infer routes (plain and versioned): the answer is JSON or binary, so no response model validates it.
INFER_ROUTE = {
    "response_model": None,
    "responses": INFER_ANSWERS,
    "dependencies": [APIKey],
    "openapi_extra": INFER_BODY,
}


@router.get("", response_model=ServerMetadataResponse)
def server_metadata() -> dict:
    return protocol.server_metadata()


@router.get("/health/live", response_model=LiveResponse)
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=ServerReadyResponse, responses=NOT_READY)
def ready(state: ModelStateDep):
    """200 ``{"ready": true}`` once loaded and warmed up; 503 ``{"ready": false}`` before and while draining
    (``/readyz`` says why)."""
    return JSONResponse({"ready": state.ready}, 200 if state.ready else 503)


def _metadata(predictor: Predictor, name: str, model_version: str = "") -> dict:
    return protocol.model_metadata(protocol.served_model(predictor, name, model_version))


@router.get("/models/{name}", response_model=ModelMetadataResponse, dependencies=[APIKey], responses=ERRORS)
def model_metadata(name: str, predictor: PredictorDep) -> dict:
    return _metadata(predictor, name)


@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadataResponse, dependencies=[APIKey], responses=ERRORS
)
def versioned_model_metadata(name: str, version: str, predictor: PredictorDep) -> dict:
    return _metadata(predictor, name, version)


def _model_ready(serving: Serving, name: str, model_version: str = "") -> JSONResponse:
    protocol.served_model(serving.predictor(), name, model_version)
    return JSONResponse({"name": name, "ready": serving.state.ready}, 200 if serving.state.ready else 503)


@router.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=MODEL_NOT_READY)
def model_ready(name: str, serving: ServingDep):
    return _model_ready(serving, name)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse, responses=MODEL_NOT_READY)
def versioned_model_ready(name: str, version: str, serving: ServingDep):
    return _model_ready(serving, name, version)


def _decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``; inflating past ``limit`` bytes is refused (a zip bomb)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ENCODINGS:
        raise ServiceError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServiceError(400, f"request body: not valid {encoding} ({exc})") from None
    if len(plain) > limit:
        raise ServiceError(413, f"request body inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise ServiceError(400, f"request body: {encoding} stream is cut short")
    return plain


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensors after it."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ServiceError(
            400,
            f"Inference-Header-Content-Length: {header_length!r} is not a byte count within the {len(body)}-byte body",
        )
    return body[: int(header_length)], body[int(header_length) :]


def _parse(header: bytes) -> InferRequest:
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServiceError(400, f"request body: not JSON ({exc})") from None
    try:
        return InferRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request body"
        raise ServiceError(400, f"{where}: {first.get('msg', 'invalid')}") from None


def _flat(data: list[Any]) -> list[Any]:
    """Tensor data may be nested row by row; the protocol's order is row-major."""
    return [item for value in data for item in (_flat(value) if isinstance(value, list) else [value])]


def _images(tensor: RequestInput, binary: bytes) -> tuple[list[bytes], int]:
    """The input's encoded images and how many of the binary bytes they took."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise ServiceError(
                400,
                f"inputs[0].parameters.binary_data_size: {size!r}; the body has {len(binary)} "
                f"bytes after its JSON header",
            )
        if tensor.data is not None:
            raise ServiceError(400, "inputs[0]: both data and binary_data_size; send the images one way")
        return protocol.image_files(unpack_bytes(binary[:size], "inputs[0] (binary)")), size
    if tensor.data is None:
        raise ServiceError(400, "inputs[0]: no data (nor parameters.binary_data_size for binary data)")
    images = []
    for i, text in enumerate(_flat(tensor.data)):
        try:
            if not isinstance(text, str):
                raise TypeError
            images.append(base64.b64decode(text, validate=True))
        except (TypeError, binascii.Error, ValueError):
            raise ServiceError(
                400,
                f"inputs[0].data[{i}]: not base64 (in JSON each image file is a base64 "
                f"string; send raw bytes with the binary tensor data extension)",
            ) from None
    return images, 0


def _requested(body: InferRequest, classes: int) -> tuple[list[tuple[str, bool]], dict[str, int]]:
    """Each requested output and whether it goes back binary; and those asked for as classifications."""
    everything = (body.parameters or {}).get("binary_data_output", False)
    if not isinstance(everything, bool):
        raise ServiceError(400, f"parameters.binary_data_output: {everything!r} is not true or false")
    asked = body.outputs or []
    names = protocol.requested_outputs([o.name for o in asked])
    flags, classification = {}, {}
    for i, o in enumerate(asked):
        parameters = o.parameters or {}
        flags[o.name] = parameters.get("binary_data", everything)
        if not isinstance(flags[o.name], bool):
            raise ServiceError(400, f"outputs[{i}].parameters.binary_data: {flags[o.name]!r} is not true or false")
        if "classification" in parameters:
            classification[o.name] = protocol.read_classification(i, o.name, parameters["classification"], classes)
    return [(name, flags.get(name, everything)) for name in names], classification


def _json_data(tensor: protocol.Tensor) -> list:
    if tensor.datatype == "BYTES":
        return [item.decode() for item in tensor.values.ravel()]
    return tensor.values.ravel().tolist()


@dataclass
class _Parsed:
    """What an infer body asks for, read off the event loop."""

    body: InferRequest
    images: list[bytes]
    outputs: list[tuple[str, bool]]
    classification: dict[str, int]
    options: protocol.Options


def _read(raw: bytes, encoding: str | None, header_length: str | None, limit: int, classes: int) -> _Parsed:
    """Inflate, split, parse and base64-decode the body: CPU work of up to ``limit`` bytes, so the routes run it in
    the decoders' pool, never on the event loop that HTTP and gRPC share."""
    header, binary = _split(_decompressed(raw, encoding, limit), header_length)
    body = _parse(header)
    protocol.check_inputs([(t.name, t.datatype, t.shape) for t in body.inputs])
    images, used = _images(body.inputs[0], binary)
    if used != len(binary):
        raise ServiceError(
            400,
            f"request body: {len(binary) - used} bytes after the JSON header that no input's binary_data_size claims",
        )
    protocol.check_count(body.inputs[0].shape, len(images))
    outputs, classification = _requested(body, classes)
    return _Parsed(body, images, outputs, classification, protocol.read_parameters(body.parameters or {}))


async def _infer(request: Request, serving: Serving, name: str, model_version: str = "") -> Response:
    model = protocol.served_model(serving.predictor(), name, model_version)
    read = functools.partial(
        _read,
        await request.body(),
        request.headers.get("content-encoding"),
        request.headers.get(HEADER_LENGTH),
        serving.settings.max_body_bytes,
        len(model.classes),
    )
    parsed = await asyncio.get_running_loop().run_in_executor(serving.decoders, read)
    body, outputs = parsed.body, parsed.outputs
    served = await protocol.infer(serving, model, parsed.images, parsed.options, disconnected(request.receive))
    tensors = protocol.output_tensors(model, served.prediction, [n for n, _ in outputs], parsed.classification)
    document: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if body.id is not None:
        document["id"] = body.id
    document["outputs"], chunks = [], []
    for tensor, binary_out in zip(tensors, (b for _, b in outputs)):
        entry = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
            "parameters": dict(tensor.parameters),
        }
        if binary_out:
            chunks.append(raw_contents(tensor.datatype, tensor.values))
            entry["parameters"]["binary_data_size"] = len(chunks[-1])
        else:
            entry["data"] = _json_data(tensor)
        document["outputs"].append(entry)
    text = json.dumps(document, separators=(",", ":")).encode()
    headers = {"Server-Timing": served.server_timing()}
    if not chunks:
        return Response(text, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(text))
    return Response(text + b"".join(chunks), media_type="application/octet-stream", headers=headers)


@router.post("/models/{name}/infer", **INFER_ROUTE)
async def infer(name: str, request: Request, serving: ServingDep) -> Response:
    """Classify the images of the ``images`` input (JSON, or binary tensors after a JSON header)."""
    return await _infer(request, serving, name)


@router.post("/models/{name}/versions/{version}/infer", **INFER_ROUTE)
async def versioned_infer(name: str, version: str, request: Request, serving: ServingDep) -> Response:
    """As ``/v2/models/{name}/infer``, for the version given (the served one)."""
    return await _infer(request, serving, name, version)
