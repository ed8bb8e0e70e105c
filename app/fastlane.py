"""A fast lane for the common /predict request, beside FastAPI's route, with the same answers.

Measured on one core (bench/), FastAPI's per-request machinery around /predict (routing, dependency
and query-parameter solving, python-multipart's callback parser) cost more than decoding the image and
running the model together. This pure-ASGI middleware answers the plain case itself: ``POST /predict``
without a query string, one image either in multipart field ``file`` with a simple filename, or as a raw
``image/*`` body. Everything else, and anything it is not sure about, is replayed, body included, to the
FastAPI route, which stays the reference: its OpenAPI schema, its parsing, its error messages.

Errors from the image or the model are answered by the app's own ServiceError handler, so the status,
body and log line are those of the route.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, handle_service_error
from app.imaging import InvertMode
from app.routes.predict import router
from app.service import Upload

PATH = "/predict"
ROUTE = next(route for route in router.routes if getattr(route, "path", None) == PATH)
JSON_HEADERS = [(b"content-type", b"application/json")]
# The one shape of part header taken here; a quoted name or filename with anything unusual goes to the route.
PART_HEADERS = re.compile(
    rb'content-disposition: *form-data; *name="file"; *filename="([A-Za-z0-9._ ()+-]{0,255})"'
    rb"(?:\r\ncontent-type: *[a-z0-9.+/-]{1,100})?",
    re.IGNORECASE,
)
BOUNDARY = re.compile(rb"multipart/form-data; *boundary=([A-Za-z0-9'()+_,./:=?-]{1,70})", re.IGNORECASE)


class PredictFastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        try:
            body, pending = await _read_body(receive)
        except ServiceError as exc:  # the body limit's 413, or a body too slow to arrive
            await _answer_error(scope, receive, send, exc)
            return
        state = scope["app"].state
        upload = None if pending else _plain_upload(scope["headers"], body, state.settings)
        if upload is None or state.service is None:
            await self.app(scope, _replay(body, pending, receive), send)
            return
        scope["route"] = ROUTE  # so metrics and the access log name the route as on the FastAPI path
        scope.setdefault("state", {})["images"] = 1
        service = state.service
        try:
            result = await service.classify(
                [upload], invert=InvertMode.AUTO, top_k=state.settings.top_k, return_input=False
            )
        except ServiceError as exc:  # the image's or the model's fault: the route's own answer
            await _answer_error(scope, receive, send, exc)
            return
        payload = result.to_json(service.predictor.version, batch=False)
        headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body; if something other than body chunks arrives, it is kept for the replay."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), []


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    """A receive that hands the route the body already read, then whatever the server says next."""
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": bool(pending)}, *pending]

    async def replayed() -> Message:
        return queue.pop(0) if queue else await receive()

    return replayed


async def _answer_error(scope: Scope, receive: Receive, send: Send, exc: ServiceError) -> None:
    response = await handle_service_error(Request(scope), exc)
    await response(scope, receive, send)


def _plain_upload(headers: list[tuple[bytes, bytes]], body: bytes, settings: Any) -> Upload | None:
    """The one image of a plain request, or None when the route should judge the request."""
    content_type = authorization = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"authorization":
            authorization = value
    if settings.api_key is not None and not _key_matches(authorization, settings.api_key.get_secret_value()):
        return None
    if content_type.startswith(b"image/"):
        return Upload(filename=None, data=body) if body else None
    match = BOUNDARY.fullmatch(content_type)
    return _single_file_part(body, b"--" + match[1]) if match else None


def _key_matches(authorization: bytes, key: str) -> bool:
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())


def _single_file_part(body: bytes, delimiter: bytes) -> Upload | None:
    """``file`` when the body is exactly one part in field ``file`` and nothing else."""
    opening = delimiter + b"\r\n"
    closing = b"\r\n" + delimiter + b"--"
    if not body.startswith(opening) or not body.rstrip(b"\r\n").endswith(closing):
        return None
    head_end = body.find(b"\r\n\r\n", len(opening))
    if head_end < 0:
        return None
    header = PART_HEADERS.fullmatch(body, len(opening), head_end)
    data_end = body.find(b"\r\n" + delimiter, head_end + 4)
    if header is None or data_end != len(body.rstrip(b"\r\n")) - len(closing) or data_end == head_end + 4:
        return None
    return Upload(filename=header[1].decode("ascii"), data=body[head_end + 4 : data_end])
