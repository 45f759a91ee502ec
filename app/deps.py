"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.errors import ServiceError
from app.inference import Serving
from app.settings import Settings
from app.state import ModelState
from stacking.predictor import Predictor


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_settings(request: Request) -> Settings:
    return request.app.state.serving.settings


def get_model_state(request: Request) -> ModelState:
    return request.app.state.serving.state


def get_predictor(request: Request) -> Predictor:
    return request.app.state.serving.predictor()


def api_key_matches(expected: str, given: str) -> bool:
    """With ``api_key`` set, the model routes (HTTP and gRPC) need it, compared in constant time."""
    return not expected or secrets.compare_digest(given.encode(), expected.encode())


def require_api_key(request: Request) -> None:
    if not api_key_matches(request.app.state.serving.settings.api_key, request.headers.get("x-api-key", "")):
        raise ServiceError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})


ServingDep = Annotated[Serving, Depends(get_serving)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
APIKey = Depends(require_api_key)
