"""Pure ASGI middleware: body and time limits, and a request id, access log line and metrics per request."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Cancelled, PayloadTooLarge, RequestTimeout
from app.http_errors import error_response
from app.logs import ACCESS_LOGGER
from app.metrics import Metrics

access_log = logging.getLogger(ACCESS_LOGGER)
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BodyLimitMiddleware:
    """Bound what a request may cost: its body's size and arrival time, and its total time.

    A declared Content-Length over ``max_bytes`` is answered at once; a chunked or lying body is cut
    off as soon as the running count passes the limit (the route sees PayloadTooLarge). A body still
    arriving ``body_timeout_s`` after the request began is a slow client: 408, connection closed. A
    request unanswered after ``request_timeout_s`` is cancelled with a 503. One loop timer per request
    (a microsecond or two) does both: ``asyncio.timeout`` around every read costs several times that.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float, request_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = min(body_timeout_s, request_timeout_s)
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(scope, receive, send, PayloadTooLarge(self.too_large_message(int(declared))), close=True)
            return
        guard = _RequestGuard(self, send)
        try:
            await self.app(scope, guard.receiver(receive), guard.send)
        except asyncio.CancelledError:
            if guard.expired != "request":
                raise
            guard.task.uncancel()
            message = f"the request took longer than {self.request_timeout_s:g} s and was cancelled; retry it"
            await _answer(scope, receive, send, Cancelled(message), close=True)
        finally:
            guard.timer.cancel()

    def slow_body_error(self) -> RequestTimeout:
        return RequestTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s")

    def too_large_message(self, size: int) -> str:
        return f"request body of {size:,}+ bytes exceeds the limit of {self.max_bytes:,} bytes"


class _RequestGuard:
    """One request's running byte count and its two deadlines, on one loop timer (body, then whole request)."""

    def __init__(self, limits: BodyLimitMiddleware, send: Send) -> None:
        self.limits = limits
        self._send = send
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "ASGI servers run each request in a task"
        self.task = task
        self.started = self.loop.time()
        self.received = 0
        self.reading = self.body_done = self.responded = False
        self.expired: str | None = None  # "body" or "request", once a deadline has passed
        self.timer = self.loop.call_at(self.started + limits.body_timeout_s, self._body_deadline)

    def _body_deadline(self) -> None:
        self.timer = self.loop.call_at(self.started + self.limits.request_timeout_s, self._request_deadline)
        if not self.body_done:
            self.expired = "body"
            if self.reading:  # waiting on the client: interrupt the read; otherwise the next read fails
                self.task.cancel()

    def _request_deadline(self) -> None:
        if not self.responded:  # a response under way is let finish
            self.expired = "request"
            self.task.cancel()

    def receiver(self, receive: Receive) -> Receive:
        async def limited_receive() -> Message:
            if self.body_done:  # later reads only wait for a disconnect, which may take as long as it likes
                return await receive()
            if self.expired == "body":
                raise self.limits.slow_body_error()
            return self._count(await self._read(receive))

        return limited_receive

    async def _read(self, receive: Receive) -> Message:
        self.reading = True
        try:
            return await receive()
        except asyncio.CancelledError:
            if self.expired != "body":
                raise
            self.task.uncancel()
            raise self.limits.slow_body_error() from None
        finally:
            self.reading = False

    def _count(self, message: Message) -> Message:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_bytes:
                raise PayloadTooLarge(self.limits.too_large_message(self.received))
            self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        self.responded = True
        await self._send(message)


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
        # A correlation id, not a secret: drawn without a system call.
        request_id = offered if REQUEST_ID_PATTERN.fullmatch(offered) else f"{random.getrandbits(64):016x}"
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
        except Exception as exc:
            if status:  # the response has begun: let the server drop the connection
                raise
            # Answered here, not by Starlette's ServerErrorMiddleware, so the 500 carries X-Request-ID and the
            # traceback is logged once, as JSON (that middleware re-raises, and uvicorn logs it again as text).
            await _answer(scope, receive, send_with_id, exc)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.labelled(self.metrics.requests, route, scope["method"], str(status)).inc()
            self.metrics.labelled(self.metrics.latency, route).observe(elapsed)
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


async def _answer(scope: Scope, receive: Receive, send: Send, exc: Exception, close: bool = False) -> None:
    response = error_response(exc, scope)
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)
