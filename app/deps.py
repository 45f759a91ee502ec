"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ServiceError
from app.inference import Serving
from app.state import ModelState
from stacking.predictor import Predictor


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_model_state(request: Request) -> ModelState:
    return request.app.state.serving.state


def get_predictor(request: Request) -> Predictor:
    return request.app.state.serving.predictor()


def require_api_key(request: Request) -> None:
    if not request.app.state.serving.key_matches(request.headers.get("x-api-key", "")):
        raise ServiceError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})


ServingDep = Annotated[Serving, Depends(get_serving)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
APIKey = Depends(require_api_key)
