"""Soak: tens of thousands of mixed requests at concurrency against a real uvicorn on loopback.

Valid single images (PNG multipart, JPEG raw body), batches, and hostile input (garbage, truncated and
bomb images, wrong content types, missing fields, oversized bodies, bad parameters) plus probes, in a
fixed shuffled mix. Pass: zero 5xx, every request answered exactly once with its expected status (each
carries a unique X-Request-ID that its response must echo, and the server's access log must hold each id
exactly once), and the server's RSS growth after warm-up under the stated bound. Bounded in count and
time. Writes its figures under `## Soak` in bench/RESULTS.md (only that section; the rest is not ours).

    .venv/bin/python bench/soak.py                      # 30,000 requests, 32 at a time
    .venv/bin/python bench/soak.py --requests 2000      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import platform
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import results_file  # a sibling script: bench/ is on sys.path when this runs as bench/soak.py
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Soak"
UPLOAD_LIMIT = 256 * 1024  # small, so that "oversized" requests are cheap to send
MB = 1024 * 1024
NAMELESS_PART = b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n"  # a part without a name: 400


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: how to send it and which statuses are correct answers."""

    name: str
    weight: int
    expected: frozenset[int]
    build: Callable[[random.Random], dict[str, object]]  # httpx.request keyword arguments


def _image(rng: random.Random, side: int, fmt: str, mode: str = "L") -> bytes:
    image = Image.new("L", (side, side), rng.randrange(0, 60))
    image.paste(rng.randrange(150, 255), (side // 4, side // 6, 3 * side // 4, 5 * side // 6))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def kinds() -> list[Kind]:
    """The mix. Payloads are built once per kind (a few variants each) so the client spends little CPU."""
    rng = random.Random(0)
    pngs = [_image(rng, side, "PNG") for side in (28, 28, 64, 120)]
    jpegs = [_image(rng, side, "JPEG", "RGB") for side in (28, 96, 300)]
    truncated = [data[: len(data) // 2] for data in (_image(rng, 200, "PNG"), _image(rng, 300, "JPEG", "RGB"))]
    garbage = [rng.randbytes(size) for size in (0, 17, 1000, 5000)]
    bomb = _png_declaring(50_000, 50_000)
    oversized = rng.randbytes(UPLOAD_LIMIT + 1024)

    def files(data: bytes, field: str = "file") -> dict[str, object]:
        return {"method": "POST", "url": "/predict", "files": {field: ("x.png", data, "image/png")}}

    def raw(data: bytes, content_type: str) -> dict[str, object]:
        return {"method": "POST", "url": "/predict", "content": data, "headers": {"Content-Type": content_type}}

    def batch(r: random.Random) -> dict[str, object]:
        parts = [("files", (f"{i}.png", r.choice(pngs + jpegs), "image/png")) for i in range(r.randint(2, 8))]
        return {"method": "POST", "url": "/predict", "files": parts}

    ok = frozenset({200})
    return [
        Kind("png-multipart", 30, ok, lambda r: files(r.choice(pngs))),
        Kind("jpeg-raw-body", 10, ok, lambda r: raw(r.choice(jpegs), "image/jpeg")),
        Kind("batch-2-to-8", 15, ok, batch),
        Kind(
            "png-top-k-return-input",
            5,
            ok,
            lambda r: {**files(r.choice(pngs)), "params": {"top_k": 5, "return_input": "true"}},
        ),
        Kind("garbage-bytes", 8, frozenset({400, 415}), lambda r: files(r.choice(garbage))),
        Kind("truncated-image", 6, frozenset({400}), lambda r: files(r.choice(truncated))),
        Kind("bomb-50000x50000", 4, frozenset({413}), lambda r: raw(bomb, "image/png")),
        Kind("wrong-content-type", 4, frozenset({415}), lambda r: raw(r.choice(pngs), "text/plain")),
        Kind("missing-field", 4, frozenset({422}), lambda r: files(r.choice(pngs), "picture")),
        Kind(
            "malformed-multipart",
            3,
            frozenset({400}),
            lambda r: raw(NAMELESS_PART, "multipart/form-data; boundary=x"),
        ),
        Kind("oversized-body", 2, frozenset({413}), lambda r: raw(oversized, "application/octet-stream")),
        Kind("bad-parameter", 3, frozenset({422}), lambda r: {**files(r.choice(pngs)), "params": {"top_k": 99}}),
        Kind("probes", 6, ok, lambda r: {"method": "GET", "url": r.choice(["/healthz", "/readyz", "/model"])}),
    ]


@dataclass
class Tally:
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # transport errors and timeouts: no answer
    mismatched_ids: int = 0
    ids: list[str] = field(default_factory=list)


class RssSampler(threading.Thread):
    """The server's resident size every ``every`` seconds, with the request count at each sample."""

    def __init__(self, pid: int, progress: Callable[[], int], every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.progress = progress
        self.every = every
        self.samples: list[tuple[int, int]] = []  # (requests done, rss bytes)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.samples.append((self.progress(), self.process.memory_info().rss))

    def rss_after(self, done: int) -> int:
        return next((rss for count, rss in self.samples if count >= done), self.samples[-1][1])


async def soak(url: str, plan: list[Kind], concurrency: int, deadline: float, tally: Tally, done: list[int]) -> None:
    queue: asyncio.Queue[tuple[int, Kind]] = asyncio.Queue()
    for index, kind in enumerate(plan):
        queue.put_nowait((index, kind))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(worker_id: int) -> None:
        rng = random.Random(worker_id)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            while not queue.empty() and time.monotonic() < deadline:
                index, kind = queue.get_nowait()
                request_id = f"soak-{index}"
                arguments = kind.build(rng)
                headers = {**arguments.pop("headers", {}), "X-Request-ID": request_id}  # type: ignore[dict-item]
                started = time.perf_counter()
                try:
                    response = await http.request(**arguments, headers=headers)  # type: ignore[arg-type]
                except httpx.HTTPError as exc:
                    tally.lost.append(f"{kind.name} {request_id}: {type(exc).__name__}: {exc}")
                    continue
                finally:
                    done[0] += 1
                tally.latencies[kind.name].append(time.perf_counter() - started)
                tally.statuses[(kind.name, response.status_code)] += 1
                tally.ids.append(request_id)
                if response.headers.get("x-request-id") != request_id:
                    tally.mismatched_ids += 1
                if response.status_code not in kind.expected:
                    tally.unexpected.append(f"{kind.name}: {response.status_code} {response.text[:200]}")

    # One connection pool per worker, so each worker holds one keep-alive connection like a real client.
    await asyncio.gather(*(worker(i) for i in range(concurrency)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FASHION_MODEL_PATH": str(model),
        "FASHION_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "FASHION_LOG_LEVEL": "info",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    command.append("--no-access-log")  # as `make serve`: the app writes its own access log
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"uvicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"uvicorn was not ready in 120 s:\n{log_path.read_text()[-3000:]}")


def access_log_ids(log_path: Path) -> collections.Counter[str]:
    ids: collections.Counter[str] = collections.Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"app.access"' in line:
            request_id = json.loads(line).get("request_id", "")
            if request_id.startswith("soak-"):
                ids[request_id] += 1
    return ids


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30_000, help="requests to send (default 30000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop sending after this long (default 900)")
    parser.add_argument("--rss-bound-mb", type=float, default=64, help="allowed RSS growth after warm-up (default 64)")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="report file; our section only (default bench/RESULTS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"{args.model} not found: train one with `make model`")

    mix = kinds()
    rng = random.Random(42)
    plan = rng.choices(mix, weights=[kind.weight for kind in mix], k=args.requests)
    tally, done = Tally(), [0]
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "uvicorn.log"
        process, url = start_server(args.model, log_path)
        try:
            sampler = RssSampler(process.pid, lambda: done[0])
            rss_start = sampler.process.memory_info().rss
            sampler.start()
            started = time.monotonic()
            asyncio.run(soak(url, plan, args.concurrency, started + args.max_seconds, tally, done))
            seconds = time.monotonic() - started
            time.sleep(1.0)  # let the last samples land
            sampler.stopped.set()
            sampler.join()
            rss_end = sampler.process.memory_info().rss
            alive = process.poll() is None
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        logged = access_log_ids(log_path)
        server_log_tail = log_path.read_text(errors="replace")[-2000:]

    sent = done[0]
    answered = sum(tally.statuses.values())
    warm = sent // 10
    rss_warm = sampler.rss_after(warm)
    rss_peak = max(rss for _, rss in sampler.samples)
    growth_mb = (rss_end - rss_warm) / MB
    server_errors = sum(count for (_, status), count in tally.statuses.items() if status >= 500)
    duplicated_in_log = sum(1 for count in logged.values() if count > 1)
    missing_in_log = sum(1 for request_id in tally.ids if request_id not in logged)
    checks = [
        ("every planned request sent within the time bound", sent == args.requests, f"{sent:,} of {args.requests:,}"),
        ("zero 5xx", server_errors == 0, str(server_errors)),
        ("zero lost answers (transport errors, timeouts)", not tally.lost, str(len(tally.lost))),
        ("every answer had the status its kind expects", not tally.unexpected, f"{len(tally.unexpected)} unexpected"),
        ("each response echoed its own X-Request-ID", tally.mismatched_ids == 0, f"{tally.mismatched_ids} mismatched"),
        (
            "the access log holds each request id exactly once",
            missing_in_log == 0 and duplicated_in_log == 0 and len(logged) == answered,
            f"{len(logged):,} ids logged, {missing_in_log} missing, {duplicated_in_log} twice",
        ),
        ("the server is still alive", alive, "yes" if alive else "no"),
        (
            f"RSS growth after warm-up under {args.rss_bound_mb:g} MB",
            growth_mb < args.rss_bound_mb,
            f"{growth_mb:+.1f} MB ({rss_warm / MB:.0f} -> {rss_end / MB:.0f} MB)",
        ),
    ]

    rows = ["| kind | share | sent | statuses | p50 ms | p99 ms |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    total_weight = sum(kind.weight for kind in mix)
    for kind in mix:
        statuses = sorted((status, count) for (name, status), count in tally.statuses.items() if name == kind.name)
        latencies = tally.latencies.get(kind.name, [])
        rows.append(
            f"| {kind.name} | {100 * kind.weight / total_weight:.0f}% | {len(latencies):,} | "
            + ", ".join(f"{status}: {count:,}" for status, count in statuses)
            + f" | {1000 * percentile(latencies, 0.5):.1f} | {1000 * percentile(latencies, 0.99):.1f} |"
        )
    all_latencies = [value for values in tally.latencies.values() for value in values]
    p50, p99 = 1000 * percentile(all_latencies, 0.5), 1000 * percentile(all_latencies, 0.99)
    command = "bench/soak.py" + ("" if argv is None else " " + " ".join(argv))
    lines = [
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"{sent:,} requests, {args.concurrency} in flight, against one uvicorn process on loopback "
        f"(upload limit {UPLOAD_LIMIT // 1024} KiB; other settings default).",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; client and server share the cores, so latencies include"
        " queueing behind the Python client (throughput is measured by bench/run.py, not here)",
        f"- {seconds:.1f} s, {sent / seconds:,.0f} requests/s; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {1000 * max(all_latencies, default=0):.0f} ms",
        f"- server RSS: {rss_start / MB:.0f} MB at start, {rss_warm / MB:.0f} MB after warm-up "
        f"(first {warm:,} requests), {rss_end / MB:.0f} MB at the end, {rss_peak / MB:.0f} MB peak",
        "",
        *rows,
        "",
        *(f"- {'PASS' if passed else 'FAIL'}: {text}: {figure}" for text, passed, figure in checks),
    ]
    print("\n".join(lines))
    for problem in (tally.unexpected + tally.lost)[:10]:
        print("  ", problem)
    if not all(passed for _, passed, _ in checks):
        print("server log tail:\n" + server_log_tail, file=sys.stderr)
    if not args.no_write:
        results_file.update(args.out, {HEADING: lines})
        print(f"written to {args.out} ({HEADING})", file=sys.stderr)
    return 0 if all(passed for _, passed, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
