"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ServiceError
from app.settings import Settings
from app.state import ModelState
from stacking.predictor import Predictor


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model_state(request: Request) -> ModelState:
    return request.app.state.model


def get_predictor(request: Request) -> Predictor:
    state: ModelState = request.app.state.model
    if not state.ready or state.predictor is None:
        raise ServiceError(503, "the model is not loaded yet" if state.error is None else f"the model failed to load: {state.error}")
    return state.predictor


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
