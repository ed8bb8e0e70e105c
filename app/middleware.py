"""Pure ASGI middleware: the body limit, and a request id, access log line and metrics per request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, error_body
from app.metrics import Metrics

access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app.errors")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` while reading them, not after buffering them.

    A declared Content-Length over the limit is answered at once; a chunked or lying body is
    cut off as soon as the running count passes the limit (the route sees PayloadTooLarge).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, error_body("payload_too_large", self._message(int(declared))), close=True)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return f"request body of {size:,}+ bytes exceeds the limit of {self.max_bytes:,} bytes"


class RequestContextMiddleware:
    """Give every request an id (the client's X-Request-ID if sane), return it, log and count the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if REQUEST_ID_PATTERN.fullmatch(offered) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0  # no response started yet
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = status or CLIENT_CLOSED_REQUEST  # nobody to answer; not our error
        except Exception:
            if status:  # the response has begun: let the server drop the connection
                raise
            # Answered here, not by Starlette's ServerErrorMiddleware, so the 500 carries X-Request-ID and the
            # traceback is logged once, as JSON (that middleware re-raises, and uvicorn logs it again as text).
            error_log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id)
            await _send_json(send_with_id, 500, error_body("internal_error", "internal server error", request_id))
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            state = scope.get("state", {})
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "batch_size": state.get("images"),
                },
            )


async def _send_json(send: Send, status: int, body: dict[str, object], close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
