"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import ModelStateDep
from app.errors import error_response
from app.metrics import render_metrics
from app.schemas import AliveResponse, ErrorResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=AliveResponse)
def healthz() -> dict:
    """200 while the process lives."""
    return {"status": "alive"}


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
def readyz(state: ModelStateDep):
    """200 once the bundle is verified, loaded and warmed up; 503 before, if loading failed, or while draining."""
    if state.ready:
        return {"status": "ready"}
    if state.draining:
        return error_response(503, "draining: the server is shutting down")
    message = "loading the bundle" if state.error is None else f"the bundle failed to load: {state.error}"
    return error_response(503, message)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
