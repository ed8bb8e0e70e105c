"""Start ``fashion-serve`` (app/cli.py: the command the image runs) as a real process, and speak raw HTTP to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import LiveServer, free_port

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def run_fashion_serve(
    env: dict[str, str], log_dir: Path, *args: str, ready_timeout: float = 90
) -> Iterator[LiveServer]:
    """``python -m app.cli`` on a free loopback port; waits for /readyz; SIGTERM after, and checks it exits 0."""
    port = free_port()
    log_path = log_dir / f"fashion-serve-{port}.log"
    command = [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(port), *args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fashion-serve exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fashion-serve was not ready in {ready_timeout:g} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
