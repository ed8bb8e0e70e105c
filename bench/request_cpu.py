"""CPU per /predict request inside the app, this checkout against another: a regression check a busy machine can run.

    .venv/bin/python bench/request_cpu.py --baseline /tmp/before     # writes "CPU per request" in bench/RESULTS.md
    .venv/bin/python bench/request_cpu.py --rounds 3 --no-write      # this checkout alone, printed

bench/run.py's requests per second move with whatever else the machine runs; CPU time spent per request moves far
less. Each checkout's app (``app.main.create_app``, as that checkout has it) is driven in its own process, pinned
to one core, with its metrics in multiprocess files as the image keeps them, through ASGI with no sockets: the
workloads' real multipart bodies (bench/workloads.py), so many requests at once (64 for ``small``, 16 for the
photos, as the acceptance cells), each answered 200. What is counted is the process's CPU time (all threads: the
model runs on its own) per request, from the middleware to the JSON body; HTTP parsing by uvicorn is not in it.
Checkouts alternate round by round; each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CONNECTIONS = {"small": 64, "photos": 16, "mixed": 16}
REQUESTS = {"small": 3000, "photos": 800, "mixed": 400}


def child(model: Path, workload: str, concurrency: int, requests: int, entrance: bool) -> None:
    """In the checkout's own process (cwd first on sys.path): drive its app and print CPU microseconds a request."""
    sys.path[:0] = [os.getcwd(), str(BENCH)]
    import uvloop
    import workloads

    from app.config import Settings
    from app.main import create_app

    load = workloads.build(Path(tempfile.mkdtemp(prefix="fashion-cpu-")))[workload]
    bodies = [Path(path).read_bytes() for path in load.manifest.read_text().split()]

    async def call(app: Any, body: bytes) -> None:
        headers = [(b"host", b"bench"), (b"content-type", workloads.CONTENT_TYPE.encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "state": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # a client that stays connected
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise SystemExit(f"{workload}: the app answered {status}")

    async def measure() -> float:
        settings = Settings(model_path=model, device="cpu", torch_threads=1, log_level="warning")
        app = create_app(settings) if entrance else create_app(settings, predict_entrance=False)
        async with app.router.lifespan_context(app):
            for body in bodies * 2:  # warm: every body once, allocators, lazy imports
                await call(app, body)
            done, started = 0, time.process_time()
            while done < requests:
                await asyncio.gather(*(call(app, bodies[(done + i) % len(bodies)]) for i in range(concurrency)))
                done += concurrency
            return (time.process_time() - started) / done * 1e6

    print(json.dumps({"cpu_us": uvloop.run(measure())}))


def run_child(checkout: Path, args: argparse.Namespace, workload: str, entrance: bool = True) -> float:
    command = ["taskset", "-c", str(args.core), sys.executable, str(Path(__file__).resolve()), "--child", workload]
    command += ["--model", str(args.model.resolve()), "--requests", str(REQUESTS[workload] * args.scale)]
    command += [] if entrance else ["--no-entrance"]
    with tempfile.TemporaryDirectory(prefix="fashion-cpu-metrics-") as metrics:  # as the image and bench/run.py run it
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics}
        done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{checkout} {workload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["cpu_us"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. a `git worktree` of an older commit)")
    parser.add_argument(
        "--route-only",
        action="store_true",
        help="also this checkout with /predict's early entrance off (the route alone)",
    )
    parser.add_argument("--workloads", nargs="+", choices=list(CONNECTIONS), default=list(CONNECTIONS))
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each figure is the median (default 5)")
    parser.add_argument("--scale", type=int, default=1, help="multiply the requests per measurement")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section, write nothing")
    parser.add_argument("--child", choices=list(CONNECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-entrance", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"{args.model} not found: train one with `make model`")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args.model, args.child, CONNECTIONS[args.child], args.requests, not args.no_entrance)
        return
    sys.path.insert(0, str(BENCH))
    import results_file
    from run import describe

    checkouts = {"app": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    if args.route_only:
        checkouts["route only"] = ROOT
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for workload in args.workloads:
            names = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
            for name in names:
                measured = run_child(checkouts[name], args, workload, entrance=name != "route only")
                cpu.setdefault((workload, name), []).append(measured)
                print(f"round {round_ + 1} {workload:6} {name:10} {measured:7.1f} us", file=sys.stderr)
    rows = ["| workload | conns | checkout | CPU µs a request | × app | each round |", "|---|--:|---|--:|--:|---|"]
    for (workload, name), values in cpu.items():
        median = statistics.median(values)
        ratio = median / statistics.median(cpu[workload, "app"])
        each = ", ".join(f"{value:.0f}" for value in values)
        rows.append(f"| {workload} | {CONNECTIONS[workload]} | {name} | {median:,.1f} | {ratio:.2f} | {each} |")
    command = " ".join(["bench/request_cpu.py", *(argv if argv is not None else sys.argv[1:])])
    section = [
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, pinned to core "
        f"{args.core}, load average {load_before} before it: CPU time per request inside the app (ASGI, no sockets),"
        f" median of {args.rounds} rounds, checkouts alternated.",
        "",
        *(f"- `{name}`: {describe(path)}" for name, path in checkouts.items() if name != "route only"),
        *(
            ["- `route only`: `app` with /predict's early entrance off (app/entrance.py), the FastAPI route alone"]
            if args.route_only
            else []
        ),
        "",
        *rows,
    ]
    print("\n".join(section))
    if not args.no_write:
        results_file.update(args.out, {"## CPU per request": section})


if __name__ == "__main__":
    main()
