"""Domain errors carry their HTTP status and code; one place turns every error into the same JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("app.errors")


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidImage(ServiceError):
    status_code = 400
    code = "invalid_image"


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class RequestTimeout(ServiceError):
    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    status_code = 413
    code = "image_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class MissingField(ServiceError):
    status_code = 422
    code = "missing_field"


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"


class ModelFailed(ServiceError):
    """The forward pass raised: only that batch's requests get this; the traceback is logged once per batch."""

    status_code = 500
    code = "model_error"


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, dict[str, str]]:
    error = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    level = logging.WARNING if exc.status_code >= 500 else logging.INFO  # the client's fault, or ours
    log.log(level, "rejected %s %s: %s %s", request.method, request.url.path, exc.status_code, exc.message)
    return JSONResponse(error_body(exc.code, exc.message, _request_id(request)), exc.status_code, headers=exc.headers)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail), _request_id(request)), exc.status_code, headers=exc.headers)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return JSONResponse(error_body("validation_error", "; ".join(parts), _request_id(request)), 422)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Log the traceback with the request id; tell the client only that it failed and which id to quote."""
    request_id = _request_id(request)
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
    return JSONResponse(error_body("internal_error", "internal server error", request_id), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected)
