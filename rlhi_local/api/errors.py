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
    DiskFullError,
    EngineError,
    InvalidRequestError,
    NotFoundError,
    RlhiError,
    StoreError,
    StoreUnwritableError,
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
    507: "insufficient_storage",
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
    if isinstance(exc, DiskFullError):
        log.error("store error: %s", exc)
        return error_response(507, str(exc), code="disk_full")
    if isinstance(exc, StoreUnwritableError):
        log.error("store error: %s", exc)
        return error_response(503, str(exc), code="store_unwritable", headers={"Retry-After": "10"})
    if isinstance(exc, StoreError):
        log.error("store error: %s", exc)
        return error_response(500, str(exc), code="store_error")
    if isinstance(exc, EngineError):
        return error_response(500, str(exc), code="engine_error")
    return error_response(500, str(exc), code="internal_error")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _document_400_not_422(app: FastAPI) -> None:
    """FastAPI documents a 422 with its own `{"detail": [...]}` body on every route that takes
    input, but a validation failure here is a 400 with the OpenAI error shape (below): document
    that 400 instead, so the OpenAPI document promises only what the daemon answers."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI keeps it in app.openapi_schema: edited in place, built once
        error = {"$ref": "#/components/schemas/ErrorBody"}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {"description": "Invalid request",
                                                 "content": {"application/json": {"schema": error}}})
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    _document_400_not_422(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        param = _loc(tuple(first.get("loc", ())))
        content_type = request.headers.get("content-type", "")
        if first.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
        elif param == "body" and "json" not in content_type.lower():
            # FastAPI reads a body as JSON only when the request says it is (curl -d does not).
            message = (f"The request body must be JSON, sent with 'Content-Type: application/json'; "
                       f"this request's Content-Type is {content_type[:100]!r}.")
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
