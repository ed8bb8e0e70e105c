"""Domain errors: plain exceptions with a stable code and a message a client can act on. No HTTP here.

Each protocol turns them into its own status and body in one place, app/http_errors.py.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "internal_error"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # for a refusal that will pass if the client simply waits


class InvalidImage(ServiceError):
    code = "invalid_image"


class InvalidRequest(ServiceError):
    code = "invalid_request"


class InvalidParameter(ServiceError):
    """A query or protocol parameter outside what the endpoint takes."""

    code = "validation_error"


class Unauthorized(ServiceError):
    code = "unauthorized"


class Forbidden(ServiceError):
    """The action is switched off on this server (not a matter of which key was sent)."""

    code = "forbidden"


class Conflict(ServiceError):
    """The action cannot apply to the current state: a refused version, nothing to roll back to, a race."""

    code = "conflict"


class RequestTimeout(ServiceError):
    code = "request_timeout"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    code = "image_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class MissingField(ServiceError):
    code = "missing_field"


class ModelNotFound(ServiceError):
    code = "model_not_found"


class NotReady(ServiceError):
    code = "not_ready"


class Overloaded(ServiceError):
    code = "overloaded"


class Cancelled(ServiceError):
    """The request ran past its deadline and was cancelled."""

    code = "timeout"


class ModelFailed(ServiceError):
    """The forward pass raised: only that batch's requests get this; the traceback is logged once per batch."""

    code = "model_error"
