"""Start ``fashion-serve`` (app/cli.py: the command the image runs) as a real process, and speak raw HTTP to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import LiveServer, free_port, serve_process


@contextlib.contextmanager
def run_fashion_serve(
    env: dict[str, str], log_dir: Path, *args: str, ready_timeout: float = 90
) -> Iterator[LiveServer]:
    """``python -m app.cli`` on a free loopback port; waits for /readyz; SIGTERM after."""
    port = free_port()
    command = ["-m", "app.cli", "--host", "127.0.0.1", "--port", str(port), *args]
    with serve_process("fashion-serve", command, port, env, log_dir, "/readyz", ready_timeout, 30) as server:
        yield server


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def upload_request(body: bytes, path: str = "/predict", close: bool = False) -> bytes:
    """A raw-body /predict request, as bytes to write on a socket."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length (all this server sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)
