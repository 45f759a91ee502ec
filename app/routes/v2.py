"""Open Inference Protocol (V2, as KServe and Triton speak it) beside ``/v1``.

``POST /v2/models/{name}/infer`` takes one BYTES input holding encoded images (each a
base64 string, as JSON carries bytes) and returns the ``probabilities`` tensor (FP32,
images x classes) and the ``label`` tensor (BYTES). A tensor cannot hold a per-image
error, so one unusable image refuses the whole request, naming its index.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.deps import APIKey, BatcherDep, ModelStateDep, PredictorDep, SettingsDep
from app.errors import ServiceError, error_response
from app.inference import Upload, serve_uploads
from stacking.choices import POLICIES
from stacking.predictor import Predictor

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["BYTES"]
    data: list[str] = Field(description="Encoded images (PNG, JPEG, ...), each base64.")
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: str


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = Field(None, description="Optional: tta (views), tta_policy.")


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[str]
    parameters: dict[str, str | float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


OUTPUTS = ("probabilities", "label")


def _model(predictor: Predictor, name: str) -> Predictor:
    if name != predictor.name:
        raise ServiceError(404, f"model {name!r} is not served here; this server serves {predictor.name!r}")
    return predictor


@router.get("")
def server_metadata() -> dict:
    return {"name": "stackserve", "version": "1", "extensions": []}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=None)
def ready(state: ModelStateDep):
    if state.ready:
        return {"ready": True}
    return error_response(503, "not ready: " + ("draining" if state.draining else state.error or "loading the bundle"))


@router.get("/models/{name}", dependencies=[APIKey])
def model_metadata(name: str, predictor: PredictorDep) -> dict:
    model = _model(predictor, name)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "stackserve",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.classes)]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {"classes": model.classes, "tta": model.manifest.tta.model_dump()},
    }


@router.get("/models/{name}/ready", response_model=None)
def model_ready(name: str, state: ModelStateDep):
    if state.predictor is None or not state.ready:
        return error_response(503, "not ready")
    _model(state.predictor, name)
    return {"name": name, "ready": True}


def _decode_base64(i: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, f"inputs[0].data[{i}]: not base64") from None


@router.post("/models/{name}/infer", response_model=InferResponse, response_model_exclude_none=True,
             dependencies=[APIKey])
async def infer(name: str, body: InferRequest, request: Request, response: Response, predictor: PredictorDep,
                batcher: BatcherDep, settings: SettingsDep) -> InferResponse:
    model = _model(predictor, name)
    tensor = body.inputs[0]
    if tensor.shape != [len(tensor.data)]:
        raise ServiceError(400, f"inputs[0].shape {tensor.shape} does not match its {len(tensor.data)} data items")
    if not tensor.data:
        raise ServiceError(400, "inputs[0].data: no images")
    wanted = [o.name for o in body.outputs] if body.outputs else list(OUTPUTS)
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise ServiceError(400, f"outputs: unknown {unknown}; this model has {list(OUTPUTS)}")
    parameters = body.parameters or {}
    tta, policy = parameters.get("tta"), parameters.get("tta_policy")
    if tta is not None and (not isinstance(tta, int) or isinstance(tta, bool) or tta < 0):
        raise ServiceError(422, f"parameters.tta: {tta!r} is not a non-negative integer")
    if policy is not None and policy not in POLICIES:
        raise ServiceError(422, f"parameters.tta_policy: {policy!r} is not one of {', '.join(POLICIES)}")
    uploads = [Upload(f"inputs[0].data[{i}]", _decode_base64(i, text)) for i, text in enumerate(tensor.data)]
    served = await serve_uploads(request, model, batcher, settings, uploads, tta, policy)
    bad = next((row for row in served.rows if isinstance(row, ServiceError)), None)
    if bad is not None:
        raise bad
    response.headers["Server-Timing"] = served.server_timing()
    probs = served.prediction.probabilities
    # Parameters are scalars in the protocol: one entry per image, comma-separated, in the images' order.
    how = {"served_by": ",".join(str(s) for s in served.prediction.served_by),
           "cost_views": ",".join(f"{c:g}" for c in served.prediction.cost_views)}
    outputs = {
        "probabilities": OutputTensor(name="probabilities", shape=list(probs.shape), datatype="FP32",
                                      data=[float(p) for p in probs.ravel()], parameters=how),
        "label": OutputTensor(name="label", shape=[len(probs)], datatype="BYTES",
                              data=[model.classes[int(k)] for k in probs.argmax(axis=1)], parameters=how),
    }
    return InferResponse(model_name=model.name, model_version=model.version, id=body.id,
                         outputs=[outputs[n] for n in wanted])

