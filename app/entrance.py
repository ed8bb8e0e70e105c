"""POST /predict answered before FastAPI's router and dependency machinery: the same call, made earlier.

Per request, FastAPI's routing, exception and dependency layers cost more CPU than a small image's decode and
its share of the forward pass (``bench/request_cpu.py --route-only`` measures both ways). This middleware takes
every POST /predict and calls the very function the route calls, ``answer_predict``, and answers errors through
the same mapper, so the answer is the same byte for byte (tests/test_entrance.py sends generated requests both
ways). The route stays what OpenAPI documents, and what serves when the entrance is off.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError
from app.http_errors import error_response
from app.rest import answer_predict
from app.service import MODEL_VERSION_HEADER_RAW

PATH = "/predict"


class PredictEntrance:
    def __init__(self, app: ASGIApp, route: BaseRoute) -> None:
        self.app = app
        self.route = route  # named in the scope, so metrics and the access log see the route, as on its own path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        try:
            body = await read_body(receive)
            answer = await answer_predict(scope["app"].state, scope["headers"], scope["query_string"], body)
        except ServiceError as exc:  # anything else goes up to RequestContextMiddleware, as from the route
            await error_response(exc, scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["images"] = answer.images
        # The two messages Starlette's Response(payload, media_type="application/json", headers=...) sends for the
        # route, header for header, without building one per request.
        headers = [
            (MODEL_VERSION_HEADER_RAW, answer.model_version.encode()),
            (b"content-length", str(len(answer.payload)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer.payload})


async def read_body(receive: Receive) -> bytes:
    """The whole request body, as Starlette's Request.body() reads it; ClientDisconnect when the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
