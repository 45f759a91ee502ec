"""Assembles the FastAPI app: settings, middleware, routers, and the lifespan that loads the model."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from app.batching import Batcher
from app.errors import install_error_handlers
from app.inference import Serving
from app.middleware import BodyLimitMiddleware, RequestMiddleware
from app.routes import health, model, page, predict, v2
from app.settings import Settings
from app.state import ModelState
from stacking.bundle.manifest import Manifest


def _drain_on_sigterm(state: ModelState) -> None:
    """On SIGTERM, turn not-ready first, then let the server's own handler stop it gracefully.

    uvicorn then stops accepting connections and finishes the requests in flight; it
    restores its handlers on exit, which removes this wrapper too.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals can only be handled on the main thread (e.g. under a test client)
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum, frame) -> None:
        state.draining = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handle)


def create_app(settings: Settings | None = None, verified: Manifest | None = None) -> FastAPI:
    """The service for ``settings.bundle``; the bundle loads in the background after start-up.

    ``verified``: the bundle's manifest as a pre-flight (``stacking serve``) has just checked it.
    """
    settings = settings or Settings()
    state = ModelState(settings, verified)
    batcher = Batcher(state, settings.max_batch, settings.max_wait_ms / 1000, settings.queue_size)
    # Decoding gets its own few threads: one per core is enough, and dozens would fight the models for the GIL.
    decoders = ThreadPoolExecutor(settings.decode_threads or os.cpu_count(), thread_name_prefix="decode")

    serving = Serving(settings, state, batcher, decoders)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Loading off the event loop keeps /healthz answering and /readyz honest (503) meanwhile.
        state.start_loading()
        batcher.start()
        grpc_server = None
        if settings.grpc_port is not None:  # the same process, event loop and batcher as HTTP
            from app.open_inference.grpc_service import start_grpc_server

            grpc_server = await start_grpc_server(serving)
        _drain_on_sigterm(state)
        yield
        if grpc_server is not None:
            await grpc_server.stop(settings.graceful_timeout_s)
        await batcher.stop()
        decoders.shutdown(wait=True)

    app = FastAPI(title="stackserve", version="1", lifespan=lifespan)
    app.state.serving = serving
    install_error_handlers(app)
    for router in (predict.router, model.router, v2.router, health.router, page.router):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Content-Type",
                "Content-Encoding",
                "X-API-Key",
                "X-Request-ID",
                "Inference-Header-Content-Length",
            ],
            expose_headers=["X-Request-ID", "Server-Timing", "Retry-After", "Inference-Header-Content-Length"],
        )
    app.add_middleware(GZipMiddleware, minimum_size=1024)  # for clients that accept it (tritonclient, if asked)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestMiddleware)  # added last: outermost, so it sees every answer
    return app
