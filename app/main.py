"""Assembles the FastAPI app: settings, middleware, routers, and the lifespan that loads the model."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.errors import error_response, install_error_handlers
from app.metrics import MetricsMiddleware
from app.routes import health, model, page, predict
from app.settings import Settings
from app.state import ModelState


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings.bundle``; the bundle loads in the background after start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Loading off the event loop keeps /healthz answering and /readyz honest (503) meanwhile.
        app.state.model.start_loading()
        yield

    app = FastAPI(title="stackserve", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.model = ModelState(settings.bundle)

    @app.middleware("http")
    async def limit_body(request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return error_response(413, f"request body of {length} bytes exceeds the limit of {settings.max_body_bytes}")
        return await call_next(request)

    app.add_middleware(MetricsMiddleware)
    install_error_handlers(app)
    for router in (predict.router, model.router, health.router, page.router):
        app.include_router(router)
    return app
