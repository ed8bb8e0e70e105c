"""Connection-level abuse and several workers, measured against fashion-serve as shipped (app/cli.py).

    .venv/bin/python bench/connections.py            # the full run (~5 minutes)
    .venv/bin/python bench/connections.py --quick    # 200 of each kind, 1 wrk round (~2 minutes)

1. Held connections, at the default timeouts, one worker: N connections that send nothing, N that send half
   a request and then a header byte every 0.5 s, N that send headers and 100 of 1,000 body bytes, all at
   once; how long each lived, /predict latency meanwhile (one client thread, keep-alive, 20 requests/s)
   against before, and the server's RSS; then a second identical round, whose growth must stay under 5 MB.
2. Hostile headers: a 1 MB header line and 100,000 header lines, 20 of each: what came back, and RSS.
3. The protocol's cost: wrk, 64 connections of the `small` upload workload (bench/run.py's), one worker
   pinned to core 0, with the protocol fashion-serve loads against uvicorn's plain httptools, interleaved.
4. Two workers: RSS and PSS of each process and in all; 2,000 requests then 20 scrapes of /metrics; a
   worker SIGKILLed under 64-connection keep-alive load: answered, failed, and whether every failure was on
   a connection the killed worker held.

Needs artifacts/model.safetensors (`make model`) and wrk (`apt-get install wrk`). Figures go to stdout
and to bench/RESULTS.md, section "## Connections and workers".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import results_file  # noqa: E402
import run  # noqa: E402  (bench/run.py: its wrk runner, pinned servers and workloads)
import workloads  # noqa: E402

from app.config import Settings  # noqa: E402
from tests.conftest import garment, image_bytes  # noqa: E402
from tests.fashion_serve import port_of, read_response, run_fashion_serve, upload_request  # noqa: E402

HEADING = "## Connections and workers"
PNG = image_bytes(garment(), "PNG")
DEFAULTS = Settings()
MB = 1024 * 1024


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


async def hold_one(kind: str, port: int, gate: asyncio.Semaphore) -> float:
    """Open one connection of ``kind``; seconds from its start until the server closed it."""
    async with gate:  # at most `gate` handshakes at once: the listen backlog is finite
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kind == "headers":
        writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    elif kind == "body":
        writer.write(upload_request(b"\x89PNG" + b"\0" * 996)[:-900])

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while kind == "headers":
                await asyncio.sleep(0.5)
                writer.write(b"a")
                await writer.drain()

    trickler = asyncio.create_task(trickle())
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    trickler.cancel()
    writer.close()
    return time.monotonic() - started


def latency_sampler(port: int, stop: threading.Event, out: list[float]) -> None:
    """/predict on one keep-alive connection, 20 a second, in a thread of its own (milliseconds)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        started = time.perf_counter()
        connection.request("POST", "/predict", PNG, {"Content-Type": "image/png"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"/predict answered {response.status} during the held-connections round")
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    connection.close()


def percentiles(values: list[float]) -> str:
    cut = statistics.quantiles(values, n=100)
    return f"p50 {cut[49]:.1f} ms, p99 {cut[98]:.1f} ms ({len(values)} requests)"


def held_round(pid: int, port: int, count: int) -> dict[str, object]:
    baseline: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=latency_sampler, args=(port, stop, baseline))
    sampler.start()
    time.sleep(3)
    stop.set()
    sampler.join()
    during: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=latency_sampler, args=(port, stop, during))
    rss_before, peak = rss(pid), 0.0

    async def hold() -> dict[str, list[float]]:
        nonlocal peak
        gate = asyncio.Semaphore(256)
        tasks = {k: [asyncio.create_task(hold_one(k, port, gate)) for _ in range(count)] for k in KINDS}
        while not all(t.done() for ts in tasks.values() for t in ts):
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.5)
        return {kind: [t.result() for t in ts] for kind, ts in tasks.items()}

    sampler.start()
    lived = asyncio.run(hold())
    stop.set()
    sampler.join()
    time.sleep(2)
    return {"lived": lived, "baseline": baseline, "during": during, "rss": (rss_before, peak, rss(pid))}


KINDS = {"idle": DEFAULTS.idle_timeout_s, "headers": DEFAULTS.header_timeout_s, "body": DEFAULTS.body_timeout_s}


def held_connections(model: Path, count: int, logs: Path) -> list[str]:
    env = {"FASHION_MODEL_PATH": str(model), "FASHION_TORCH_THREADS": "1"}
    lines = [
        f"### Held connections: {count:,} of each kind at once, default timeouts, one worker",
        "",
        "| round | kind | timeout | lived (min / max) | closed within timeout + 2 s |",
        "|---|---|---|---|---|",
    ]
    after: list[float] = []
    with run_fashion_serve(env, logs) as server:
        pid = server.process.pid
        for number in (1, 2):
            result = held_round(pid, port_of(server), count)
            for kind, timeout in KINDS.items():
                lived = result["lived"][kind]  # type: ignore[index]
                within = sum(s <= timeout + 2 for s in lived)
                span = f"{min(lived):.1f} / {max(lived):.1f} s"
                lines.append(f"| {number} | {kind} | {timeout:g} s | {span} | {within:,}/{count:,} |")
            before, peak, end = result["rss"]  # type: ignore[misc]
            after.append(end)
            lines.append(
                f"| {number} | /predict latency | | before: {percentiles(result['baseline'])}; "  # type: ignore[arg-type]
                f"while held: {percentiles(result['during'])} | RSS {before:.0f} MB, peak {peak:.0f}, after {end:.0f} |"  # type: ignore[arg-type]
            )
    growth = after[1] - after[0]
    lines += ["", f"RSS growth of the second round: {growth:+.1f} MB ({'PASS' if growth < 5 else 'FAIL'}: under 5 MB)."]
    return lines


def hostile_headers(model: Path, logs: Path) -> list[str]:
    attacks = {
        "a 1 MB header line": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MB + b"\r\n\r\n",
        "100,000 header lines": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 100_000 + b"\r\n",
    }
    lines = [
        "### Hostile headers, 20 of each, one worker",
        "",
        "| request | answers | RSS before / after |",
        "|---|---|---|",
    ]
    with run_fashion_serve({"FASHION_MODEL_PATH": str(model)}, logs) as server:
        for name, request in attacks.items():
            before = rss(server.process.pid)
            outcomes = [send_and_read_status(port_of(server), request) for _ in range(20)]
            tally = ", ".join(f"{outcomes.count(o)}× {o}" for o in sorted(set(outcomes)))
            lines.append(f"| {name} | {tally} | {before:.0f} / {rss(server.process.pid):.0f} MB |")
    return lines


def send_and_read_status(port: int, request: bytes) -> str:
    async def exchange() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(request)
                await writer.drain()
            return str((await read_response(reader))[0])
        except (ConnectionError, asyncio.IncompleteReadError):
            return "closed"
        finally:
            writer.close()

    return asyncio.run(exchange())


def protocol_cost(model: Path, rounds: int, seconds: int) -> list[str]:
    bounded = ("--loop", "uvloop", "--http", "app.server:BoundedHttpToolsProtocol")
    plain = ("--loop", "uvloop", "--http", "httptools")
    threads = {"FASHION_TORCH_THREADS": "1"}
    args = argparse.Namespace(server_core=0, model=model)
    servers = {
        "shipped: bounded protocol, multiprocess metrics": run.Server(
            "conn-0", "app.main:app", bounded, threads, "/readyz", True
        ),
        "bounded protocol, metrics in memory": run.Server("conn-1", "app.main:app", bounded, threads, "/readyz"),
        "uvicorn's httptools, metrics in memory": run.Server("conn-2", "app.main:app", plain, threads, "/readyz"),
    }
    with tempfile.TemporaryDirectory(prefix="fashion-conn-") as tmp, contextlib.ExitStack() as stack:
        cells: dict[str, run.Cell] = {name: run.Cell() for name in servers}
        load = workloads.build(Path(tmp))["small"]
        urls = {name: stack.enter_context(run.running(server, args, Path(tmp))) for name, server in servers.items()}
        for url in urls.values():
            run.wrk(url, load, 16, 1, 1)
        for _ in range(rounds):
            for name, url in urls.items():
                cells[name].add(run.wrk(url, load, 64, seconds, 1))
    lines = [
        f"### Throughput: wrk, `small` uploads, 64 connections, {rounds} × {seconds} s interleaved, medians",
        "",
        "| protocol | requests/s | p50 | p99 | errors |",
        "|---|---|---|---|---|",
    ]
    for name, cell in cells.items():
        p50, p99 = cell.median("p50"), cell.median("p99")
        lines.append(f"| {name} | {cell.median('rps'):,.0f} | {p50:.1f} ms | {p99:.1f} ms | {cell.errors} |")
    return lines


class _NullTransport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)


async def _constant_app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


async def _protocol_us(protocol: type, requests: int) -> float:
    """CPU microseconds per keep-alive request through one protocol instance: parse, the app task, answer."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(app=_constant_app, log_level="warning", access_log=False)
    config.load()
    connection = protocol(config=config, server_state=ServerState(), app_state={})
    connection.connection_made(_NullTransport())
    request = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: python-httpx/0.28.1\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAuthorization: Bearer 0123456789abcdef\r\n"
        b"Content-Type: image/png\r\nContent-Length: 2\r\n\r\nok"
    )
    started = time.process_time()
    for _ in range(requests):
        connection.data_received(request)
        await asyncio.sleep(0)  # the app's task runs and answers
    elapsed = time.process_time() - started
    connection.connection_lost(None)
    return elapsed / requests * 1e6


def protocol_cpu(rounds: int, requests: int = 20_000) -> list[str]:
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from app.server import BoundedHttpToolsProtocol

    protocols = {"bounded (shipped)": BoundedHttpToolsProtocol, "uvicorn's httptools": HttpToolsProtocol}
    times: dict[str, list[float]] = {name: [] for name in protocols}
    loop = uvloop.new_event_loop()
    for _ in range(rounds):
        for name, protocol in protocols.items():
            times[name].append(loop.run_until_complete(_protocol_us(protocol, requests)))
    loop.close()
    lines = [
        f"### The protocol's cost in CPU time: {requests:,} keep-alive requests (9 headers) through one connection "
        f"object on uvloop, a constant app, no sockets; {rounds} rounds interleaved, the fastest",
        "",
        "| protocol | CPU per request |",
        "|---|---|",
    ]
    lines += [f"| {name} | {min(values):.1f} µs |" for name, values in times.items()]
    extra = min(times["bounded (shipped)"]) - min(times["uvicorn's httptools"])
    return [*lines, "", f"The limits add {extra:+.1f} µs a request."]


def two_workers(model: Path, logs: Path) -> list[str]:
    env = {"FASHION_MODEL_PATH": str(model), "FASHION_TORCH_THREADS": "1"}
    lines = ["### Two workers (fashion-serve --workers 2, in the venv)", ""]
    with run_fashion_serve(env, logs, "--workers", "2") as server:
        port = port_of(server)
        statuses = asyncio.run(new_connection_requests(port, 2_000))
        scrapes = [predict_count(port) for _ in range(20)]
        lines.append(
            f"- 2,000 /predict requests ({statuses.count(200):,} answered 200), then 20 scrapes of /metrics: "
            f"/predict counts {sorted(set(scrapes))} "
            f"({'PASS' if scrapes == [2000.0] * 20 else 'FAIL'}: 2,000 each time)"
        )
        lines += memory_lines(server.process.pid)
        lines += kill_under_load(server, port)
    return lines


def memory_lines(parent: int) -> list[str]:
    lines = ["", "| process | RSS | PSS |", "|---|---|---|"]
    total_rss = total_pss = 0.0
    for process in [psutil.Process(parent), *psutil.Process(parent).children()]:
        info = process.memory_full_info()
        role = (
            "parent (supervisor)"
            if process.pid == parent
            else ("resource tracker" if "resource_tracker" in " ".join(process.cmdline()) else "worker")
        )
        total_rss += info.rss / MB
        total_pss += info.pss / MB
        lines.append(f"| {role} {process.pid} | {info.rss / MB:.0f} MB | {info.pss / MB:.0f} MB |")
    lines.append(f"| all | {total_rss:.0f} MB | {total_pss:.0f} MB |")
    return [*lines, ""]


async def new_connection_requests(port: int, total: int) -> list[int]:
    request = upload_request(PNG, close=True)
    statuses: list[int] = []

    async def client(count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            statuses.append((await read_response(reader))[0])
            writer.close()

    await asyncio.gather(*(client(total // 16) for _ in range(16)))
    return statuses


def predict_count(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    match = re.search(r'^fashion_requests_total\{method="POST",route="/predict",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def kill_under_load(server: object, port: int) -> list[str]:
    parent = psutil.Process(server.process.pid)  # type: ignore[attr-defined]
    workers = [c for c in parent.children() if "resource_tracker" not in " ".join(c.cmdline())]
    victim = workers[0]
    answered: list[float] = []  # monotonic time of each answer
    broken: list[int] = []

    async def scenario() -> tuple[float, set[int], float]:
        stop = asyncio.Event()
        request = upload_request(PNG)

        async def connection() -> None:
            while not stop.is_set():
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                local = writer.get_extra_info("sockname")[1]
                try:
                    while not stop.is_set():
                        writer.write(request)
                        if (await read_response(reader))[0] != 200:
                            raise SystemExit("a non-200 answer under the kill load")
                        answered.append(time.monotonic())
                except (ConnectionError, asyncio.IncompleteReadError):
                    broken.append(local)
                finally:
                    writer.close()

        load = asyncio.gather(*(connection() for _ in range(64)))
        await asyncio.sleep(3)
        held = {c.raddr.port for c in victim.net_connections("tcp") if c.raddr and c.laddr.port == port}
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        while server.log().count("Application startup complete.") < 3:  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)
        replaced_at = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        await load
        return killed_at, held, replaced_at - killed_at

    killed_at, held, replaced_after = asyncio.run(scenario())
    on_victim = sum(port in held for port in broken)
    return [
        f"- SIGKILL to worker {victim.pid} after 3 s of 64-connection keep-alive /predict load ({len(held)} of the "
        f"connections on it): {len(answered):,} answered 200, {len(broken)} failed, {on_victim} of them on the killed "
        f"worker's connections ({'PASS' if on_victim == len(broken) else 'FAIL'}: only those); replacement ready "
        f"{replaced_after:.1f} s after the kill (it loads and warms the model before it accepts); "
        f"answers in the second after the kill: {sum(killed_at <= t < killed_at + 1 for t in answered)}, "
        f"in the second before: {sum(killed_at - 1 <= t < killed_at for t in answered)}."
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 of each kind and one short wrk round")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"{args.model} not found: train one with `make model`")
    count = 200 if args.quick else 2_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * 3 * count + 500
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fashion-conn-logs-") as tmp:
        logs = Path(tmp)
        lines = [
            *held_connections(args.model, count, logs),
            "",
            *hostile_headers(args.model, logs),
            "",
            *protocol_cpu(3 if args.quick else 7),
            "",
            *protocol_cost(args.model, 1 if args.quick else 3, 3 if args.quick else 8),
            "",
            *two_workers(args.model, logs),
        ]
    command = "bench/connections.py" + (" --quick" if args.quick else "")
    lines = [
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{time.monotonic() - started:.0f} s ({os.cpu_count()} cores; client and servers share them except in the "
        f"wrk table; load average {os.getloadavg()[0]:.1f} at the end: other work shared the machine).",
        "",
        *lines,
    ]
    print("\n".join(lines))
    results_file.update(args.out, {HEADING: lines})


if __name__ == "__main__":
    main()
