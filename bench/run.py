"""Throughput and latency of fashion-serve against a naive server and the HTTP ceiling, in one run.

    .venv/bin/python bench/run.py            # the full run (~10 minutes): 3 rounds, medians reported
    .venv/bin/python bench/run.py --quick    # a smoke run (~2 minutes)
    .venv/bin/python bench/run.py --baseline /tmp/before   # and the app of another checkout, as `baseline`

Every server runs as one uvicorn worker pinned to one core (``taskset -c 0``); wrk, from Debian
(``apt-get install wrk``), runs on another core (``taskset -c 1``) with one thread, sending real
multipart uploads (bench/upload.lua). The servers:

* ``app``: fashion-serve as shipped (uvloop + httptools through app/server.py's connection limits, dynamic
  batching, metrics in multiprocess files, 1 torch thread);
* ``app-nobatch``: the same with FASHION_BATCHING=false;
* ``naive``: bench/naive_server.py, quickstart-style (PIL, ToTensor, model, softmax per request);
* ``ceiling-asyncio`` / ``ceiling-uvloop``: bench/ceiling_server.py, the same multipart parsing and a
  constant answer, with asyncio + h11 and with uvloop + httptools (through the same protocol as ``app``);
* ``baseline`` (with ``--baseline``): the app as another working tree has it, e.g. an older commit's.

The workloads are bench/workloads.py's: ``small`` and ``photos``, on which the throughput issue's acceptance
checks are judged, and ``mixed``, photos at the sizes clients send, whose ratio to naive is reported beside them.

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
from dataclasses import dataclass, field, replace
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
    checkout: Path = ROOT  # the working tree it is imported from


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
        process = subprocess.Popen(command, cwd=server.checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    """Every body once before measuring: a server that answers errors fast must not look fast."""
    for path in workload.manifest.read_text().split():
        request = urllib.request.Request(
            url, Path(path).read_bytes(), {"Content-Type": workloads.CONTENT_TYPE}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        if "class_index" not in answer:
            raise SystemExit(f"{url} answered {answer} for {workload.name} ({path})")


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
        loads = {name: load for name, load in workloads.build(Path(tmp)).items() if name in args.workloads}
        logs = Path(tmp)
        urls = {name: stack.enter_context(running(server, args, logs)) for name, server in chosen(args).items()}
        for url in urls.values():
            for load in loads.values():
                check_answers(url, load)
                wrk(url, load, 16, args.warmup, args.client_core)  # warm caches, allocators, JIT-free paths
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))  # no server always goes first
            for load in loads.values():
                for connections in args.connections:
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


def chosen(args: argparse.Namespace) -> dict[str, Server]:
    """The servers asked for; with --baseline, the app as another checkout has it too, measured interleaved."""
    servers = {name: SERVERS[name] for name in args.servers}
    if args.baseline is not None:
        servers["baseline"] = replace(SERVERS["app"], name="baseline", checkout=args.baseline.resolve())
    return servers


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


def acceptance(cells: dict[tuple[str, int, str], Cell], servers: list[str]) -> list[tuple[str, bool | None, str]]:
    """The throughput issue's criteria, each with the figures it was judged on, on the workloads it named
    (``small`` and ``photos``); then the ``mixed`` photos' ratio, reported with no target (None). A check whose
    cells were not measured (``--workloads``, ``--servers``) is left out."""
    checks: list[tuple[str, bool | None, str]] = []

    def rps(load: str, connections: int, name: str) -> float:
        return cells[load, connections, name].median("rps")

    def measured(load: str, connections: int, *names: str) -> bool:
        return all((load, connections, name) in cells for name in ("app", "naive", *names))

    ceiling = ceiling_for("app", servers)
    if measured("small", 64):
        app64, naive64 = rps("small", 64, "app"), rps("small", 64, "naive")
        checks.append(("small, 64 conns: ≥ 2× naive", app64 >= 2 * naive64, f"{app64 / naive64:.2f}×"))
        if measured("small", 64, ceiling):
            ratio = app64 / rps("small", 64, ceiling)
            checks.append((f"small, 64 conns: ≥ 0.7× {ceiling}", ratio >= 0.7, f"{ratio:.2f}×"))
        p99 = cells["small", 64, "app"].median("p99")
        checks.append(("small, 64 conns: p99 < 50 ms", p99 < 50, f"{p99:.1f} ms"))
    if any(name == "app" for _, _, name in cells):
        errors = sum(cell.errors for (_, _, name), cell in cells.items() if name == "app")
        checks.append(("app: zero errors (all cells)", errors == 0, f"{errors} errors"))
    if measured("photos", 16):
        app16, naive16 = rps("photos", 16, "app"), rps("photos", 16, "naive")
        checks.append(("photos, 16 conns: ≥ 2× naive", app16 >= 2 * naive16, f"{app16 / naive16:.2f}×"))
    for load in ("small", "photos"):
        if measured(load, 1):
            mine, theirs = cells[load, 1, "app"].median("p50"), cells[load, 1, "naive"].median("p50")
            figure = f"{mine:.2f} ms vs {theirs:.2f} ms"
            checks.append((f"{load}, 1 conn: p50 ≤ naive + 1 ms", mine <= theirs + 1, figure))
    for load, connections in (("small", 64), ("photos", 16), ("mixed", 16)):
        if measured(load, connections, "baseline"):
            mine, theirs = rps(load, connections, "app"), rps(load, connections, "baseline")
            figure = f"{mine / theirs:.2f}× ({mine:,.0f} vs {theirs:,.0f} req/s)"
            checks.append((f"{load}, {connections} conns: app × baseline (reported, no target)", None, figure))
    for connections in (16, 64):
        if measured("mixed", connections):
            app_mixed, naive_mixed = rps("mixed", connections, "app"), rps("mixed", connections, "naive")
            figure = f"{app_mixed / naive_mixed:.2f}× ({app_mixed:,.0f} vs {naive_mixed:,.0f} req/s)"
            checks.append((f"mixed, {connections} conns: × naive (reported, no target)", None, figure))
    return checks


def verdict(passed: bool | None) -> str:
    return "INFO" if passed is None else "PASS" if passed else "FAIL"


def environment(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> list[str]:
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
        f"- load average (1, 5, 15 min) before the run: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (the run itself keeps two cores busy: other work shows above 2)",
    ]


def describe(checkout: Path) -> str:
    """A checkout's commit, and whether its tracked files differ from it."""
    git = ["git", "-C", str(checkout)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return f"commit {commit or '?'}{' with local changes' if dirty.stdout.strip() else ''} (`{checkout}`)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per cell: a smoke run (~2 min)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default 3)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per cell per round (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per server and workload")
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument(
        "--workloads", nargs="+", choices=workloads.NAMES, default=list(workloads.NAMES), help="default: all"
    )
    parser.add_argument("--connections", nargs="+", type=int, default=list(CONCURRENCY), help="default: 1 16 64")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a `git worktree` of an older commit): its app joins the run as `baseline`",
    )
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
    started, load_before = time.monotonic(), os.getloadavg()
    cells, loads = measure(args)
    load_after = os.getloadavg()
    rows = table(cells, args.servers)
    checks = acceptance(cells, args.servers)
    print("\n".join(rows))
    for text, passed, figure in checks:
        print(f"{verdict(passed)}  {text}: {figure}")
    command = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    head = [
        "# Benchmark results",
        "",
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"in {time.monotonic() - started:.0f} s: {args.rounds} round(s) of {args.duration} s per cell, "
        "servers interleaved; each figure is the median over rounds (errors: the sum).",
        "",
        *environment(load_before, load_after),
        *(
            f"- `{name}`: the app at {describe(server.checkout)}"
            for name, server in chosen(args).items()
            if server.module == "app.main:app"
        ),
        *(f"- `{w.name}`: {w.description}, {w.mean_image_bytes:,} bytes on average" for w in loads.values()),
        "",
        *rows,
        "",
        "`× ceiling`: against the ceiling on the same event loop (uvloop + httptools for `app`).",
    ]
    verdicts = [f"- {verdict(passed)}: {text}: {figure}" for text, passed, figure in checks]
    results_file.update(args.out, {"## Acceptance": verdicts}, head=head)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
