"""``POST /v1/predict``: stacked, TTA-averaged predictions for uploaded images."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Query, Request, Response, UploadFile

from app.batching import disconnected
from app.deps import APIKey, PredictorDep, ServingDep
from app.errors import ServiceError
from app.inference import Upload, serve_uploads
from app.schemas import ErrorBody, ImagePrediction, ModelRef, PredictResponse, TTAInfo
from stacking.choices import POLICIES
from stacking.inference.predictor import Prediction, Predictor

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[APIKey])


def _by_class(classes: list[str], probs: np.ndarray) -> dict[str, float]:
    return {c: float(p) for c, p in zip(classes, probs)}


def _entry(predictor: Predictor, result: Prediction, i: int, filename: str, details: bool) -> ImagePrediction:
    probs = result.probabilities[i]
    best = int(probs.argmax())
    as_dict = partial(_by_class, predictor.classes)
    return ImagePrediction(
        filename=filename,
        label=predictor.classes[best],
        confidence=float(probs[best]),
        probabilities=as_dict(probs),
        tta=TTAInfo(iterations=int(result.views[i]), agreement=float(result.agreement[i])),
        base_models={
            n: as_dict(result.base_probabilities[m, i])
            for m, n in enumerate(predictor.base_names)
            if result.base_ran[m, i]
        }
        if details
        else None,
        served_by=str(result.served_by[i]),
        cost_views=float(result.cost_views[i]),
    )


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict(
    request: Request,
    response: Response,
    predictor: PredictorDep,
    serving: ServingDep,
    files: Annotated[list[UploadFile], File(description="One or more images.")],
    tta: Annotated[int | None, Query(ge=0, description="TTA views (default: the bundle's policy).")] = None,
    details: Annotated[bool, Query(description="Add each base model's probabilities.")] = False,
    tta_policy: Annotated[Literal[POLICIES] | None, Query(description="TTA policy (default: the bundle's).")] = None,
) -> PredictResponse:
    """Images from concurrent requests are batched together; decoding runs off the event loop.

    A file that cannot be used gets an ``error`` entry and does not spoil the others;
    when no file is usable the request fails with the first file's error.
    """
    uploads = [Upload(f.filename or f"file{i}", await f.read(), f.content_type) for i, f in enumerate(files)]
    served = await serve_uploads(serving, predictor, uploads, tta, tta_policy, disconnected(request.receive))
    response.headers["Server-Timing"] = served.server_timing()
    entries = [
        ImagePrediction(filename=u.name, error=ErrorBody(code=row.code, message=row.message))
        if isinstance(row, ServiceError)
        else _entry(predictor, served.prediction, row, u.name, details)
        for u, row in zip(uploads, served.rows)
    ]
    return PredictResponse(model=ModelRef(name=predictor.name, version=predictor.version), predictions=entries)
