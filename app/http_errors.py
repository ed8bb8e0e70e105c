"""The one place errors become HTTP answers: each domain error's status, and the body in each protocol's shape.

REST answers ``{"error": {"code", "message", "request_id"}}``; the Open Inference Protocol under /v2 answers
``{"error": "message"}``, its own shape. Every route, middleware and the /predict entrance answer through
``error_response``, so the same failure gets the same status, headers and body whichever way it came, and an
unexpected exception is logged here, once, with the request id the client is told to quote.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

from app.errors import ServiceError

log = logging.getLogger("app.errors")
OIP_PREFIX = "/v2"

STATUS = {
    "invalid_image": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "model_not_found": 404,
    "request_timeout": 408,
    "conflict": 409,
    "payload_too_large": 413,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "missing_field": 422,
    "validation_error": 422,
    "model_error": 500,
    "internal_error": 500,
    "not_ready": 503,
    "overloaded": 503,
    "timeout": 503,
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(exc: Exception, scope: Scope) -> JSONResponse:
    """The answer to ``exc`` for the request in ``scope``: a domain error, an HTTP error, or a bug (logged)."""
    if isinstance(exc, ServiceError):
        return _service_error(exc, scope)
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return _answer(scope, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _answer(scope, 422, "validation_error", "; ".join(parts))
    request_id = _request_id(scope)
    log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
    return _answer(scope, 500, "internal_error", "internal server error")


def _service_error(exc: ServiceError, scope: Scope) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    level = logging.WARNING if status >= 500 else logging.INFO  # ours, or the client's
    log.log(level, "rejected %s %s: %s %s", scope.get("method"), scope.get("path"), status, exc.message)
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 408:
        headers["Connection"] = "close"  # the client is too slow to finish this body; don't wait for the next
    return _answer(scope, status, exc.code, exc.message, headers)


def _answer(scope: Scope, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any]
    if is_oip(scope):
        status = 400 if status == 422 else status  # the protocol has no 422: a malformed request is a 400
        # The protocol's body has no request id: a client reporting a bug quotes it from the message.
        body = {"error": f"{message} (request id {_request_id(scope)})" if status == 500 else message}
    else:
        body = {"error": rest_error(code, message, _request_id(scope))}
    return JSONResponse(body, status, headers=headers)


def rest_error(code: str, message: str, request_id: str | None) -> dict[str, str]:
    error = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    return error


def is_oip(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def _request_id(scope: Scope) -> str | None:
    request_id: str | None = scope.get("state", {}).get("request_id")
    return request_id


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request.scope)


def install_error_handlers(app: FastAPI) -> None:
    """Route errors; an unexpected exception escapes the routes to RequestContextMiddleware, which answers here too."""
    for kind in (ServiceError, HTTPException, RequestValidationError):
        app.add_exception_handler(kind, _handle)
