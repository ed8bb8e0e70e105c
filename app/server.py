"""uvicorn's httptools protocol with the connection limits it lacks; ``fashion-serve`` loads it (``--http``).

uvicorn closes a keep-alive connection that goes quiet between requests (``--timeout-keep-alive``) and the
app answers a stalled body with 408 (``FASHION_BODY_TIMEOUT_S``), but a connection that never sends a byte,
or sends half a request line and stops, stays open for good, and httptools accepts headers of any size and
count. This class adds, at the costs measured in bench/RESULTS.md:

* an idle timeout from the moment a connection opens to its first byte (then closed, nothing to answer);
* a headers deadline from a request's first byte to the end of its headers (then 408 and closed), armed only
  when a read ends inside the headers, so a request whose headers come in one read pays no timer;
* limits on one header line, all headers together and their count (then 431 and closed). Bytes are counted
  as they arrive while headers are incomplete, so memory never grows with what a client sends;
* a deadline for the rest of a body the app answered early (a 401, a 404): the body timeout, from the
  answer, then closed. uvicorn would read it at the client's pace for as long as the client likes.

It overrides uvicorn internals (``connection_made``, ``data_received``, ``on_message_begin``,
``on_headers_complete``, ``on_message_complete``, ``on_response_complete``, ``send_400_response``,
``timeout_keep_alive_task``, ``cycle``); pyproject.toml pins the
uvicorn and httptools minor versions it was written against and tests/test_connections.py drives every path
through real sockets.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import Settings, get_settings
from app.http_errors import rest_error


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    max_header_line_bytes: int
    max_header_bytes: int
    max_headers: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.idle_timeout_s,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.max_header_line_bytes,
            settings.max_header_bytes,
            settings.max_headers,
        )

    def headers_problem(self, url: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why these complete headers are refused, or None. Lines are counted with their separators."""
        if len(headers) > self.max_headers:
            return f"more than {self.max_headers} header lines"
        longest = total = len(url) + 12  # the request line: method, spaces, HTTP/1.1, CRLF
        for name, value in headers:
            line = len(name) + len(value) + 4
            total += line
            longest = max(longest, line)
        if longest > self.max_header_line_bytes:
            return f"a request or header line is longer than {self.max_header_line_bytes:,} bytes"
        if total > self.max_header_bytes:
            return f"the request line and headers exceed {self.max_header_bytes:,} bytes"
        return None


@cache
def _limits() -> ConnectionLimits:
    return ConnectionLimits.from_settings(get_settings())


class HeadersRefused(Exception):
    """Raised inside the parser's callback to stop it; uvicorn then calls send_400_response, which answers 431."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits()
        self._in_headers = False  # between a request's first byte and the end of its headers
        self._requests_begun = 0
        self._header_bytes = 0  # bytes of reads that began and ended inside the current request's headers
        self._headers_deadline: asyncio.TimerHandle | None = None
        self._unread_body_deadline: asyncio.TimerHandle | None = None
        self._refusal: str | None = None

    # uvicorn annotates the parameter as its own transport type; asyncio calls it with a plain transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive timer is what a silent new connection needs: the first byte cancels it, it closes.
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.idle_timeout_s, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_headers_deadline()
        self._cancel_unread_body_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        begun = self._requests_begun
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        if self._requests_begun != begun:  # a request began in this read: its clock starts now
            self._cancel_headers_deadline()
            self._headers_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)
            return
        # The read that began a request is not counted (where the request starts in it is unknown): at most
        # one read, as bounded as the buffer uvicorn reads into.
        self._header_bytes += len(data)
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(
                431, "headers_too_large", f"the request line and headers exceed {self.limits.max_header_bytes:,} bytes"
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._requests_begun += 1
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_headers_deadline()
        self._refusal = self.limits.headers_problem(self.url, self.headers)
        if self._refusal is not None:
            raise HeadersRefused(self._refusal)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_unread_body_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the request just answered, unless a later pipelined one is already parsed
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            self._unread_body_deadline = self.loop.call_later(self.limits.body_timeout_s, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(431, "headers_too_large", self._refusal)

    def _headers_too_slow(self) -> None:
        self._headers_deadline = None
        if self._in_headers and not self.transport.is_closing():
            message = f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"
            self._refuse(408, "request_timeout", message)

    def _cancel_headers_deadline(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None

    def _cancel_unread_body_deadline(self) -> None:
        if self._unread_body_deadline is not None:
            self._unread_body_deadline.cancel()
            self._unread_body_deadline = None

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer and close; if an earlier (pipelined) request's answer is still being written, only close."""
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": rest_error(code, message, None)}).encode()  # before any request id exists
            head = [STATUS_LINE[status]]
            for name, value in [
                *self.server_state.default_headers,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]:
                head += [name, b": ", value, b"\r\n"]
            self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
