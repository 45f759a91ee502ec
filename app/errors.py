"""Errors in the shape each API defines: ``/v1`` answers ``{"error": {"code", "message"}}``; the Open Inference
Protocol's routes (``/v2``) answer ``{"error": "<message>"}``, the shape Triton's and KServe's clients read."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("stackserve")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    499: "client_closed",
    500: "internal_error",
    503: "unavailable",
}
PROTOCOL_PREFIX = "/v2"  # routes whose errors take the Open Inference Protocol's shape


class ServiceError(Exception):
    """An error answered with ``status`` and the JSON error shape (and ``headers``, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code or CODES.get(status, "error")
        self.headers = headers or {}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, path: str = ""
) -> JSONResponse:
    """The error for a request to ``path``, in the shape of the API that path belongs to."""
    if path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/"):
        return JSONResponse({"error": message}, status, headers=headers)
    return JSONResponse(
        {"error": {"code": code or CODES.get(status, "error"), "message": message}}, status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.headers, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}", path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None), path=request.url.path
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the client gets the same error shape as for any other failure.
        logger.exception("unexpected error", exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", path=request.url.path)
