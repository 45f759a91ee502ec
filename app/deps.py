"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.errors import ServiceError
from app.inference import Serving
from app.state import ModelState
from stacking.inference.predictor import Predictor


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_model_state(request: Request) -> ModelState:
    return request.app.state.serving.state


def get_predictor(request: Request) -> Predictor:
    return request.app.state.serving.predictor()


# Declared to OpenAPI as the model routes' security scheme; checked here, so a missing key answers in our own
# error shape (401), not FastAPI's 403.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed by the model routes when the service has STACKSERVE_API_KEY set.",
)


def require_api_key(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)]) -> None:
    if not request.app.state.serving.key_matches(key or ""):
        raise ServiceError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})


ServingDep = Annotated[Serving, Depends(get_serving)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
APIKey = Depends(require_api_key)
