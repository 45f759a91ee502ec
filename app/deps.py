"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.batching import Batcher
from app.errors import ServiceError
from app.settings import Settings
from app.state import ModelState
from stacking.predictor import Predictor


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model_state(request: Request) -> ModelState:
    return request.app.state.model


def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


def get_predictor(request: Request) -> Predictor:
    """The loaded predictor (also while draining: requests that still arrive are answered)."""
    state: ModelState = request.app.state.model
    if state.predictor is None:
        raise ServiceError(503, "the model is not loaded yet" if state.error is None else f"the model failed to load: {state.error}")
    return state.predictor


def require_api_key(request: Request) -> None:
    """With ``api_key`` set, the model routes need it in ``X-API-Key`` (compared in constant time)."""
    expected = request.app.state.settings.api_key
    given = request.headers.get("x-api-key", "")
    if expected and not secrets.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
APIKey = Depends(require_api_key)
