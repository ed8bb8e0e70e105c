"""Bombs against a real uvicorn process: each gets a 4xx or is cut off in bounded time, in bounded memory.

The server's resident memory is measured in the test: its peak (VmHWM, reset through /proc/PID/clear_refs;
sampled with psutil where that is not allowed) against its resident size just before the attack.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tests.conftest import LiveServer, garment, image_bytes, run_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MB = 1024 * 1024
BODY_TIMEOUT_S = 2.0
NOTHING_DECODED_MB = 64  # a refused bomb costs its bytes, not its pixels (50000x50000 gray would be 2.4 GB)
BYTES_PER_PIXEL = 16  # measured peak while one RGBA image decodes: the pixels, their grayscale and copies


@pytest.fixture(scope="module")
def server(artifact_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Default limits (10 MB bodies, 40 Mpx images, 2 decodes at once), but a short body timeout."""
    env = {"FASHION_MODEL_PATH": str(artifact_path), "FASHION_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with run_server(env, tmp_path_factory.mktemp("bombs")) as live:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            for _ in range(10):  # warm: allocator, thread pools, first-request work
                assert_serves(http)
        yield live
    assert live.process.returncode in (0, -15), live.log()[-3000:]  # stopped by us, never crashed


def assert_serves(http: httpx.Client) -> None:
    response = http.post("/predict", files={"file": ("ok.png", image_bytes(garment(), "PNG"), "image/png")})
    assert response.status_code == 200, response.text


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


class PeakRss:
    """Peak resident memory of a process while the block runs, in MB above its resident size at the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        self.baseline = self.process.memory_info().rss
        try:  # "5" resets the peak (Linux >= 4.0)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.samples.append(self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = max([*self.samples, self.process.memory_info().rss])
            return
        status = Path(f"/proc/{self.pid}/status").read_text()
        self.peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB


# --- images that declare more than they are ---


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed gray PNG header declaring width x height, with sixteen rows of data: a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def gif_with_frames(frames: int, screen: tuple[int, int] | None = None) -> bytes:
    """A GIF of ``frames`` 28x28 frames (one encoded frame repeated); optionally a different declared screen."""
    one = image_bytes(garment().convert("P"), "GIF")
    flags = one[10]
    header_end = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    header, frame = bytearray(one[:header_end]), one[header_end:-1]  # the last byte is the trailer, ';'
    assert frame[:1] in (b"!", b","), "expected an extension or image block after the global colour table"
    if screen is not None:
        header[6:10] = struct.pack("<HH", *screen)
    return bytes(header) + frame * frames + b";"


def post_image(http: httpx.Client, data: bytes, how: str) -> httpx.Response:
    if how == "raw":
        return http.post("/predict", content=data, headers={"Content-Type": "application/octet-stream"})
    if how == "multipart":
        return http.post("/predict", files={"file": ("bomb", data, "image/png")})
    return http.post("/predict", files=[("files", (f"bomb{i}", data, "image/png")) for i in range(8)])


@pytest.mark.parametrize("how", ["raw", "multipart", "batch-of-8"])
def test_png_declaring_50000x50000_is_413_before_decoding(server: LiveServer, how: str) -> None:
    bomb = png_declaring(50_000, 50_000)
    assert len(bomb) < 10_000
    with httpx.Client(base_url=server.url, timeout=60) as http, PeakRss(server.process.pid) as memory:
        response = post_image(http, bomb, how)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "image_too_large"
        assert "50000x50000" in error["message"] and "40,000,000" in error["message"]
        assert_serves(http)
    assert memory.growth_mb < NOTHING_DECODED_MB


def test_gif_with_thousands_of_frames_is_read_from_its_first_frame(server: LiveServer) -> None:
    gif = gif_with_frames(20_000)
    with Image.open(io.BytesIO(gif)) as check:  # really that many frames, as Pillow sees it
        assert check.n_frames == 20_000
    with httpx.Client(base_url=server.url, timeout=60) as http, PeakRss(server.process.pid) as memory:
        for how in ("raw", "multipart"):
            response = post_image(http, gif, how)
            assert response.status_code == 200, response.text
        assert_serves(http)
    assert memory.growth_mb < NOTHING_DECODED_MB  # 20,000 decoded frames would be 15 MB each as RGB: 300 GB


def test_gif_declaring_a_huge_screen_is_413(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http, PeakRss(server.process.pid) as memory:
        response = post_image(http, gif_with_frames(3, screen=(65_535, 65_535)), "raw")
        assert response.status_code == 413, response.text
        assert "65535x65535" in response.json()["error"]["message"]
    assert memory.growth_mb < NOTHING_DECODED_MB


def _concurrently(count: int, call: object) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: call(), range(count)))  # type: ignore[operator]


def test_pixel_bombs_under_the_limit_decode_two_at_a_time_in_bounded_memory(server: LiveServer) -> None:
    """A 100 kB PNG may declare 4 Mpx of RGBA that really decode; many at once must not multiply the memory."""
    side, concurrent = 2000, 12
    data = image_bytes(Image.new("RGBA", (side, side), (0, 0, 0, 0)), "PNG")
    assert len(data) < 100_000
    one_decode_mb = side * side * BYTES_PER_PIXEL / MB
    with httpx.Client(base_url=server.url, timeout=120) as http:

        def send() -> httpx.Response:
            return http.post("/predict", content=data, headers={"Content-Type": "image/png"})

        assert send().status_code == 200  # once alone: the allocator has its arenas before we measure
        with PeakRss(server.process.pid) as memory:
            responses = _concurrently(concurrent, send)
        assert [r.status_code for r in responses] == [200] * concurrent
    # Two decode slots (FASHION_DECODE_CONCURRENCY): about 2 x one decode. Unbounded, the 12 requests would
    # run on the default thread pool's min(32, cores + 4) threads at once: 6+ x one decode.
    assert memory.growth_mb < 4 * one_decode_mb, (memory.growth_mb, one_decode_mb)


def test_small_upload_declaring_a_big_image_does_not_stall_other_requests(server: LiveServer) -> None:
    """A 5 kB palette PNG of 6000x6000 takes ~0.4 s to decode: 32 of them on the event loop would stall it."""
    bomb = image_bytes(Image.new("P", (6000, 6000)), "PNG")
    assert len(bomb) < 32 * 1024  # small enough to have been decoded inline, on the loop
    files = [("files", (f"b{i}.png", bomb, "image/png")) for i in range(32)]
    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=120) as http, ThreadPoolExecutor(1) as pool:
        batch = pool.submit(http.post, "/predict", files=files)
        time.sleep(0.5)  # let the batch start decoding
        while not batch.done():
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        assert batch.result().status_code == 200
    assert latencies, "the batch finished before the first probe"
    # Generous for a loaded machine: stalled, the probe waits for the whole batch (32 x ~0.4 s).
    assert max(latencies) < 3.0, latencies


# --- enormous and odd multipart bodies ---

SMALL_PNG = image_bytes(garment(), "PNG")


def raw_request(port: int, head: bytes, body_chunks: Iterator[bytes], read_timeout: float = 30) -> tuple[bytes, int]:
    """Send ``head`` then chunks until the server answers or closes; return (the reply, body bytes sent)."""
    sent, reply = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except OSError:  # the server closed the connection: it has answered
                break
            if select.select([sock], [], [], 0)[0]:  # an answer (or a close) is waiting: stop sending
                with contextlib.suppress(OSError):
                    reply += sock.recv(65536)
                break
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
    return reply, sent


def multipart_head(boundary: bytes, length: int | None) -> bytes:
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    return b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=%s\r\n%s\r\n\r\n" % (
        boundary,
        framing,
    )


def test_enormous_declared_multipart_is_413_before_the_body(server: LiveServer) -> None:
    with PeakRss(server.process.pid) as memory:
        reply, _ = raw_request(port_of(server), multipart_head(b"b", 50 * 1024 * MB), iter([b"--b\r\n"]))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply and b'"request_id"' in reply
    assert memory.growth_mb < NOTHING_DECODED_MB


def test_enormous_streamed_multipart_is_cut_off_near_the_limit(server: LiveServer) -> None:
    opening = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    block = b"\0" * 65536

    def chunks() -> Iterator[bytes]:
        yield b"%x\r\n%s\r\n" % (len(opening), opening)
        for _ in range(50 * 16):  # 50 MB, five times the limit
            yield b"%x\r\n%s\r\n" % (len(block), block)

    with PeakRss(server.process.pid) as memory:
        reply, sent = raw_request(port_of(server), multipart_head(b"b", None), chunks())
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 20 * MB  # answered near the 10 MB limit, not after the 50 MB
    assert memory.growth_mb < 3 * 10  # at most the limit buffered (parts over 1 MB spool to disk)


def _many_parts(count: int, disposition: bytes = b'name="x"', content: bytes = b"v") -> bytes:
    part = b"--b\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (disposition, content)
    return part * count + b"--b--\r\n"


def _nested(depth: int) -> bytes:
    """A file part holding multipart/mixed inside multipart/mixed, ``depth`` levels deep."""
    inner = b"not an image"
    for level in range(depth):
        boundary = b"n%d" % level
        inner = b"--%s\r\nContent-Type: multipart/mixed; boundary=n%d\r\n\r\n%s\r\n--%s--\r\n" % (
            boundary,
            level + 1,
            inner,
            boundary,
        )
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
    return head + b"Content-Type: multipart/mixed; boundary=n0\r\n\r\n" + inner + b"\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("shape", "body", "status", "fragment"),
    [
        ("100k tiny fields", _many_parts(100_000), 400, "Too many fields"),
        ("1k files", _many_parts(1000, b'name="files"; filename="f.png"', SMALL_PNG), 400, "Too many files"),
        (
            "a 5 MB field name",
            _many_parts(1, b'name="%s"; filename="x.png"' % (b"f" * 5 * MB), SMALL_PNG),
            400,
            "malformed multipart body",
        ),
        ("2000 levels of nesting", _nested(2000), 415, "not an image"),
    ],
)
def test_odd_multipart_bodies_are_4xx_in_bounded_memory(
    server: LiveServer, shape: str, body: bytes, status: int, fragment: str
) -> None:
    assert len(body) < 10 * MB
    with httpx.Client(base_url=server.url, timeout=120) as http, PeakRss(server.process.pid) as memory:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        response = http.post("/predict", content=body, headers=headers)
        assert response.status_code == status, (shape, response.text[:300])
        assert fragment in response.json()["error"]["message"], shape
        assert_serves(http)
    assert memory.growth_mb < 3 * len(body) / MB + NOTHING_DECODED_MB, shape


# --- slow clients ---


def trickle(port: int, head: bytes, piece: bytes, every_s: float, give_up_s: float) -> tuple[bytes, float, bool]:
    """Send ``head``, then ``piece`` every ``every_s``; return the reply, when it came, and whether we were cut off."""
    started = time.monotonic()
    reply, closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(every_s)
        while time.monotonic() - started < give_up_s:
            if piece:
                try:
                    sock.sendall(piece)
                except OSError:
                    closed = True
                    break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            reply += data
    return reply, time.monotonic() - started, closed


SLOW_HEADS = {
    "content-length": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n",
    "chunked": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n",
    "multipart": multipart_head(b"b", 100_000)
    + b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n',
}


@pytest.mark.parametrize("framing", list(SLOW_HEADS))
@pytest.mark.parametrize("piece", [b"", b"x"], ids=["silent", "trickling"])
def test_slow_client_gets_408_and_is_cut_off(server: LiveServer, framing: str, piece: bytes) -> None:
    if framing == "chunked" and piece:
        piece = b"1\r\nx\r\n"
    reply, seconds, closed = trickle(port_of(server), SLOW_HEADS[framing], piece, every_s=0.1, give_up_s=60)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b'"code":"request_timeout"' in reply.replace(b" ", b"")
    assert b"connection: close" in reply.lower()
    assert closed, "the server must close the connection, not wait for the rest"
    assert seconds < 60  # the 2 s body timeout, with room for a loaded machine


def test_many_slow_clients_at_once_while_others_are_served(server: LiveServer) -> None:
    count = 50
    head = SLOW_HEADS["content-length"]
    with PeakRss(server.process.pid) as memory, ThreadPoolExecutor(count) as pool:
        slow = [pool.submit(trickle, port_of(server), head, b"x", 0.2, 60) for _ in range(count)]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(5):
                assert_serves(http)
        results = [future.result() for future in slow]
    assert all(reply.startswith(b"HTTP/1.1 408") and closed for reply, _, closed in results)
    assert memory.growth_mb < NOTHING_DECODED_MB
