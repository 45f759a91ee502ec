"""``POST /v1/predict``: stacked, TTA-averaged predictions for uploaded images."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Query, UploadFile

from app.deps import PredictorDep, SettingsDep
from app.errors import ServiceError
from app.schemas import ErrorBody, ImagePrediction, ModelRef, PredictResponse, TTAInfo
from stacking.images import ImageDecodeError, decode_image
from stacking.predictor import Prediction, Predictor
from stacking.tta import POLICIES

router = APIRouter(prefix="/v1", tags=["predict"])

ACCEPTED_TYPES = ("image/", "application/octet-stream")


def _decode(upload: UploadFile, image_size: int, max_pixels: int) -> np.ndarray | ServiceError:
    """The upload's pixels, or the error that names why it cannot be used."""
    name = upload.filename or "upload"
    if upload.content_type and not upload.content_type.startswith(ACCEPTED_TYPES):
        return ServiceError(415, f"{name}: unsupported content type {upload.content_type!r}; send an image")
    try:
        return decode_image(upload.file.read(), image_size, max_pixels)
    except ImageDecodeError as exc:
        return ServiceError(400, f"{name}: {exc}")


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
        base_models={n: as_dict(result.base_probabilities[m, i]) for m, n in enumerate(predictor.base_names)}
        if details else None,
    )


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
def predict(
    predictor: PredictorDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="One or more images.")],
    tta: Annotated[int | None, Query(ge=0, description="TTA views (default: the bundle's policy).")] = None,
    details: Annotated[bool, Query(description="Add each base model's probabilities.")] = False,
    tta_policy: Annotated[Literal[POLICIES] | None, Query(description="TTA policy (default: the bundle's).")] = None,
) -> PredictResponse:
    """Runs in the thread pool (a plain ``def``), so decoding and the models never block the event loop.

    A file that cannot be used gets an ``error`` entry and does not spoil the others;
    when no file is usable the request fails with the first file's error.
    """
    if len(files) > settings.max_files:
        raise ServiceError(413, f"files: {len(files)} images in one request; the limit is {settings.max_files}")
    limit = min(settings.max_tta, predictor.max_views(tta_policy))
    if tta is not None and tta > limit:
        raise ServiceError(422, f"tta: {tta} views asked for; this service allows at most {limit}")
    decoded = [_decode(f, predictor.image_size, settings.max_pixels) for f in files]
    good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
    if not good:
        raise decoded[0]
    result = predictor.predict(np.stack([decoded[i] for i in good]), tta, tta_policy)
    entries: list[ImagePrediction] = []
    row = {i: k for k, i in enumerate(good)}
    for i, (upload, d) in enumerate(zip(files, decoded)):
        filename = upload.filename or f"file{i}"
        if isinstance(d, ServiceError):
            entries.append(ImagePrediction(filename=filename, error=ErrorBody(code=d.code, message=d.message)))
        else:
            entries.append(_entry(predictor, result, row[i], filename, details))
    return PredictResponse(model=ModelRef(name=predictor.name, version=predictor.version), predictions=entries)
