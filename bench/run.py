"""Throughput and latency of fashion-serve against a naive server and the HTTP ceiling, in one run.

    .venv/bin/python bench/run.py            # the full run (~8 minutes): 3 rounds, medians reported
    .venv/bin/python bench/run.py --quick    # a smoke run (~1 minute)

Every server runs as one uvicorn worker pinned to one core (``taskset -c 0``); wrk, from Debian
(``apt-get install wrk``), runs on another core (``taskset -c 1``) with one thread, sending real
multipart uploads (bench/upload.lua). The servers:

* ``app``: fashion-serve as shipped (uvloop + httptools through app/server.py's connection limits, dynamic
  batching, metrics in multiprocess files, 1 torch thread);
* ``app-nobatch``: the same with FASHION_BATCHING=false;
* ``naive``: bench/naive_server.py, quickstart-style (PIL, ToTensor, model, softmax per request);
* ``ceiling-asyncio`` / ``ceiling-uvloop``: bench/ceiling_server.py, the same multipart parsing and a
  constant answer, with asyncio + h11 and with uvloop + httptools (through the same protocol as ``app``).

All servers are started at once and measured interleaved (round by round, cell by cell, server by
server), so noise from a shared machine spreads over all of them; each figure is the median over rounds.
The table goes to stdout and, with the acceptance checks, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import results_file  # noqa: E402  (bench/ is a folder of scripts, not a package)
import workloads  # noqa: E402

LUA = ROOT / "bench" / "upload.lua"
RESULTS = ROOT / "bench" / "RESULTS.md"
CONCURRENCY = (1, 16, 64)
# What fashion-serve runs (app/cli.py): uvloop and httptools, through the protocol with connection limits.
FAST = ("--loop", "uvloop", "--http", "app.server:BoundedHttpToolsProtocol")
PLAIN = ("--loop", "asyncio", "--http", "h11")


@dataclass(frozen=True)
class Server:
    name: str
    module: str
    flags: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/openapi.json"
    multiprocess_metrics: bool = False  # as the image runs the app: metrics in PROMETHEUS_MULTIPROC_DIR files


SERVERS = {
    "app": Server("app", "app.main:app", FAST, {"FASHION_TORCH_THREADS": "1"}, "/readyz", True),
    "app-nobatch": Server(
        "app-nobatch",
        "app.main:app",
        FAST,
        {"FASHION_TORCH_THREADS": "1", "FASHION_BATCHING": "false"},
        "/readyz",
        True,
    ),
    "naive": Server("naive", "bench.naive_server:app", ()),  # uvicorn's defaults, as a quickstart runs it
    "ceiling-asyncio": Server("ceiling-asyncio", "bench.ceiling_server:app", PLAIN),
    "ceiling-uvloop": Server("ceiling-uvloop", "bench.ceiling_server:app", FAST),
}


@dataclass
class Cell:
    """One (workload, connections, server) measurement, over all rounds."""

    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)  # milliseconds
    p95: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0

    def add(self, wrk: dict[str, float]) -> None:
        self.rps.append(wrk["requests"] / (wrk["duration_us"] / 1e6))
        self.p50.append(wrk["p50_us"] / 1000)
        self.p95.append(wrk["p95_us"] / 1000)
        self.p99.append(wrk["p99_us"] / 1000)
        self.errors += int(sum(wrk[k] for k in ("connect", "read", "write", "status", "timeout")))
        self.requests += int(wrk["requests"])

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(server: Server, args: argparse.Namespace, logs: Path) -> Iterator[str]:
    """Start one pinned uvicorn worker, wait until it answers, yield its /predict URL, then stop it."""
    port = free_port()
    command = ["taskset", "-c", str(args.server_core), sys.executable, "-m", "uvicorn", server.module]
    command += ["--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning", *server.flags]
    env = {**os.environ, "FASHION_MODEL_PATH": str(args.model), **server.env}
    if server.multiprocess_metrics:
        (logs / f"{server.name}-metrics").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(logs / f"{server.name}-metrics")
    with open(logs / f"{server.name}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}{server.ready_path}", process, logs / f"{server.name}.log")
        yield f"http://127.0.0.1:{port}/predict"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s; log in {log}")


def check_answers(url: str, workload: workloads.Workload) -> None:
    """One request per workload before measuring: a server that answers errors fast must not look fast."""
    body = Path(workload.manifest.read_text().split()[0]).read_bytes()
    request = urllib.request.Request(url, body, {"Content-Type": workloads.CONTENT_TYPE}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    if "class_index" not in answer:
        raise SystemExit(f"{url} answered {answer} for {workload.name}")


def wrk(url: str, workload: workloads.Workload, connections: int, seconds: int, core: int) -> dict[str, float]:
    command = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    command += ["-s", str(LUA), url, "--", str(workload.manifest), workloads.CONTENT_TYPE]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> tuple[dict[tuple[str, int, str], Cell], dict[str, workloads.Workload]]:
    cells: dict[tuple[str, int, str], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="fashion-bench-") as tmp, ExitStack() as stack:
        loads = workloads.build(Path(tmp))
        logs = Path(tmp)
        urls = {name: stack.enter_context(running(SERVERS[name], args, logs)) for name in args.servers}
        for url in urls.values():
            for load in loads.values():
                check_answers(url, load)
                wrk(url, load, 16, args.warmup, args.client_core)  # warm caches, allocators, JIT-free paths
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))  # no server always goes first
            for load in loads.values():
                for connections in CONCURRENCY:
                    for name in order:
                        result = wrk(urls[name], load, connections, args.duration, args.client_core)
                        cells.setdefault((load.name, connections, name), Cell()).add(result)
                        print(
                            f"round {round_ + 1}/{args.rounds} {load.name:6} c={connections:<3} {name:16} "
                            f"{cells[load.name, connections, name].rps[-1]:8.0f} req/s",
                            file=sys.stderr,
                            flush=True,
                        )
        return cells, loads


def table(cells: dict[tuple[str, int, str], Cell], servers: list[str]) -> list[str]:
    rows = [
        "| workload | conns | server | req/s | p50 ms | p95 ms | p99 ms | errors | × naive | × ceiling |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (load, connections, name), cell in cells.items():
        naive = cells.get((load, connections, "naive"))
        ceiling = cells.get((load, connections, ceiling_for(name, servers)))
        ratio_naive = f"{cell.median('rps') / naive.median('rps'):.2f}" if naive else "-"
        ratio_ceiling = f"{cell.median('rps') / ceiling.median('rps'):.2f}" if ceiling else "-"
        rows.append(
            f"| {load} | {connections} | {name} | {cell.median('rps'):,.0f} | {cell.median('p50'):.2f} | "
            f"{cell.median('p95'):.2f} | {cell.median('p99'):.2f} | {cell.errors} | {ratio_naive} | {ratio_ceiling} |"
        )
    return rows


def ceiling_for(name: str, servers: list[str]) -> str:
    """Compare each server with the ceiling on its own event loop: uvloop + httptools for the app, and for the
    naive server too, since uvicorn picks them by default when installed (uvicorn[standard])."""
    if name != "ceiling-asyncio":
        return "ceiling-uvloop" if "ceiling-uvloop" in servers else "ceiling-asyncio"
    return "ceiling-asyncio"


def acceptance(cells: dict[tuple[str, int, str], Cell], servers: list[str]) -> list[tuple[str, bool, str]]:
    """The issue's criteria, each with the figures it was judged on."""
    if "app" not in servers or "naive" not in servers:
        return []
    checks = []

    def rps(load: str, connections: int, name: str) -> float:
        return cells[load, connections, name].median("rps")

    app64, naive64 = rps("small", 64, "app"), rps("small", 64, "naive")
    checks.append(("small, 64 conns: ≥ 2× naive", app64 >= 2 * naive64, f"{app64 / naive64:.2f}×"))
    ceiling = ceiling_for("app", servers)
    if ceiling in servers:
        ratio = app64 / rps("small", 64, ceiling)
        checks.append((f"small, 64 conns: ≥ 0.7× {ceiling}", ratio >= 0.7, f"{ratio:.2f}×"))
    p99 = cells["small", 64, "app"].median("p99")
    checks.append(("small, 64 conns: p99 < 50 ms", p99 < 50, f"{p99:.1f} ms"))
    errors = sum(cell.errors for (load, _, name), cell in cells.items() if name == "app")
    checks.append(("app: zero errors (all cells)", errors == 0, f"{errors} errors"))
    app16, naive16 = rps("photos", 16, "app"), rps("photos", 16, "naive")
    checks.append(("photos, 16 conns: ≥ 2× naive", app16 >= 2 * naive16, f"{app16 / naive16:.2f}×"))
    for load in ("small", "photos"):
        mine, theirs = cells[load, 1, "app"].median("p50"), cells[load, 1, "naive"].median("p50")
        checks.append((f"{load}, 1 conn: p50 ≤ naive + 1 ms", mine <= theirs + 1, f"{mine:.2f} ms vs {theirs:.2f} ms"))
    return checks


def environment() -> list[str]:
    import fastapi
    import PIL
    import torch
    import uvicorn

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; servers pinned to core 0, wrk (one thread) to core 1",
        f"- Python {platform.python_version()}, torch {torch.__version__}, FastAPI {fastapi.__version__}, "
        f"uvicorn {uvicorn.__version__}, Pillow {PIL.__version__}, {wrk_version}",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per cell: a smoke run (~1 min)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default 3)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per cell per round (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per server and workload")
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown report (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    if shutil.which("wrk") is None:
        parser.error("wrk not found: `apt-get install wrk` (Debian) provides it")
    if not args.model.exists():
        parser.error(f"{args.model} not found: train one with `make model`")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    cells, loads = measure(args)
    rows = table(cells, args.servers)
    checks = acceptance(cells, args.servers)
    print("\n".join(rows))
    for text, passed, figure in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}: {figure}")
    command = "bench/run.py" + (" --quick" if args.quick else "")
    head = [
        "# Benchmark results",
        "",
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"in {time.monotonic() - started:.0f} s: {args.rounds} round(s) of {args.duration} s per cell, "
        "servers interleaved; each figure is the median over rounds (errors: the sum).",
        "",
        *environment(),
        *(f"- `{w.name}`: {w.description}, {w.mean_image_bytes:,} bytes on average" for w in loads.values()),
        "",
        *rows,
        "",
        "`× ceiling`: against the ceiling on the same event loop (uvloop + httptools for `app`).",
    ]
    verdicts = [f"- {'PASS' if passed else 'FAIL'}: {text}: {figure}" for text, passed, figure in checks]
    results_file.update(args.out, {"## Acceptance": verdicts}, head=head)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
