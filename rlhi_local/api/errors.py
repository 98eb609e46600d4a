"""Our errors leave the API as an HTTP status and an OpenAI-shaped `{"error": {...}}` body."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from ..errors import (
    BusyError,
    ContextLengthError,
    EngineError,
    InvalidRequestError,
    NotFoundError,
    RlhiError,
    StoreError,
)

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    503: "overloaded_error",
}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def rlhi_error_response(exc: RlhiError) -> JSONResponse:
    if isinstance(exc, ContextLengthError):
        return error_response(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return error_response(400, str(exc), code="invalid_request")
    if isinstance(exc, NotFoundError):
        return error_response(404, str(exc), code="not_found")
    if isinstance(exc, BusyError):
        return error_response(503, str(exc), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, StoreError):
        log.error("store error: %s", exc)
        return error_response(500, str(exc), code="store_error")
    if isinstance(exc, EngineError):
        return error_response(500, str(exc), code="engine_error")
    return error_response(500, str(exc), code="internal_error")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        param = _loc(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
        else:
            message = "; ".join(f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
        return error_response(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}."
        elif exc.status_code == 400 and "parsing the body" in message:
            message = "The request body could not be parsed as JSON (too deeply nested, or not UTF-8)."
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RlhiError)
    async def _rlhi(request: Request, exc: RlhiError) -> JSONResponse:
        return rlhi_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error: {type(exc).__name__}. See the daemon log.")
