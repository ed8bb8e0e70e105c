"""Swap the serving version under load: no failed request, only valid versions answer, p99 close to no swaps.

A real uvicorn (one or two workers) serves a model store holding two valid versions. Connections upload real
PNGs for a while with no swap (the baseline), then as long again while the serving version changes every few
seconds through the admin API, a corrupt and a too-weak artifact are published (and refused) a third of the
way in, and a rollback is called two thirds of the way in. Prints, per worker count and phase: requests,
non-2xx, transport errors, the versions that answered, p50 and p99, and the p99 ratio; writes
bench/RESULTS.md's "## Model swaps under load" section unless --no-write.

    python bench/swap.py                      # 64 connections, 60 s a phase, a swap every 3 s, 1 and 2 workers
    python bench/swap.py --seconds 20 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import update  # noqa: E402
from models.publishing import publish  # noqa: E402
from models.store import ModelStore  # noqa: E402
from tests.conftest import free_port, make_artifact, serve_process  # noqa: E402  (the tests' helpers)

RESULTS = ROOT / "bench" / "RESULTS.md"
SAMPLES = sorted((ROOT / "app" / "static" / "samples").glob("*.png"))
ADMIN = "bench-admin-key"


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    versions: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: int = 0


@contextlib.contextmanager
def start(store: Path, workers: int, log_dir: Path) -> Iterator[str]:
    """The server on the store, ready on every worker; its URL."""
    port = free_port()
    env = {"FASHION_MODEL_STORE": str(store), "FASHION_ADMIN_KEY": ADMIN, "FASHION_MODEL_POLL_S": "0.5"}
    command = ["-m", "uvicorn", "app.main:app", "--port", str(port), "--no-access-log", "--workers", str(workers)]
    with serve_process("uvicorn", command, port, env, log_dir, "/readyz", ready_timeout=120, stop_timeout=30) as server:
        time.sleep(3 * workers)  # /readyz answered from one worker: give the others their start-up too
        yield server.url


async def load(url: str, connections: int, seconds: float, tally: Tally) -> None:
    bodies = [path.read_bytes() for path in SAMPLES]
    deadline = time.monotonic() + seconds

    async def connection(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            sent = index
            while time.monotonic() < deadline:
                sent += 1
                started = time.perf_counter()
                try:
                    files = {"file": ("x.png", bodies[sent % len(bodies)], "image/png")}
                    response = await http.post("/predict", files=files)
                except httpx.HTTPError:
                    tally.transport_errors += 1
                    continue
                tally.latencies.append(time.perf_counter() - started)
                tally.statuses[response.status_code] += 1
                tally.versions[response.headers.get("x-model-version", "-")] += 1

    await asyncio.gather(*(connection(i) for i in range(connections)))


async def swapper(
    url: str, store: ModelStore, good: list[str], bad: list[Path], seconds: float, every: float
) -> list[str]:
    """Activate the two good versions in turn; publish the bad ones at 1/3; roll back at 2/3. The events, in order."""
    events: list[str] = []
    started = time.monotonic()
    published = rolled_back = False
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        turn = 0
        while time.monotonic() - started < seconds - every:
            await asyncio.sleep(every)
            elapsed = time.monotonic() - started
            if not published and elapsed > seconds / 3:
                results = [await asyncio.to_thread(publish, store, path, promote=True) for path in bad]
                events += [f"published {r.digest[:12]}: {r.reason}" for r in results]
                published = True
            if not rolled_back and elapsed > 2 * seconds / 3:
                response = await http.post("/models/rollback")
                events.append(f"rollback: {response.status_code} {response.text[:80]}")
                rolled_back = True
                continue
            turn += 1
            response = await http.post(f"/models/{good[turn % 2][:12]}/activate")
            events.append(f"activate {good[turn % 2][:12]}: {response.status_code}")
    return events


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def run(workers: int, args: argparse.Namespace, scratch: Path) -> tuple[list[str], bool]:
    store = ModelStore(scratch / f"store-{workers}")
    good = [publish(store, make_artifact(scratch, seed, 0.95), promote=seed == 1).digest for seed in (1, 2)]
    corrupt = scratch / "corrupt.safetensors"
    corrupt.write_bytes(store.path_of(good[0]).read_bytes()[:4000])
    bad = [corrupt, make_artifact(scratch, 3, 0.5)]
    with start(store.root, workers, scratch) as url:
        baseline = Tally()
        asyncio.run(load(url, args.connections, args.seconds, baseline))
        swapping = Tally()

        async def both() -> list[str]:
            task = asyncio.create_task(swapper(url, store, good, bad, args.seconds, args.swap_every))
            await load(url, args.connections, args.seconds, swapping)
            return await task

        events = asyncio.run(both())
    return report(workers, baseline, swapping, good, events)


def report(
    workers: int, baseline: Tally, swapping: Tally, good: list[str], events: list[str]
) -> tuple[list[str], bool]:
    valid = {digest[:12] for digest in good}
    lines = []
    for name, tally in (("no swaps", baseline), ("swapping", swapping)):
        non_2xx = sum(count for status, count in tally.statuses.items() if not 200 <= status < 300)
        versions = ", ".join(f"{version} x{count}" for version, count in sorted(tally.versions.items()))
        lines.append(
            f"| {workers} | {name} | {len(tally.latencies)} | {non_2xx} | {tally.transport_errors} | {versions} "
            f"| {1000 * percentile(tally.latencies, 0.5):.1f} | {1000 * percentile(tally.latencies, 0.99):.1f} |"
        )
    ratio = percentile(swapping.latencies, 0.99) / percentile(baseline.latencies, 0.99)
    passed = (
        set(swapping.versions) <= valid
        and all(200 <= status < 300 for status in swapping.statuses)
        and swapping.transport_errors == 0
        and len(set(swapping.versions)) == 2
    )
    swaps = sum(event.startswith("activate") for event in events)
    notes = [
        f"- {workers} worker(s): p99 swapping / no swaps = {ratio:.2f}; {swaps} activations; "
        + "; ".join(event for event in events if not event.startswith("activate"))
    ]
    return lines + notes, passed and ratio <= 1.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase (default 60)")
    parser.add_argument("--swap-every", type=float, default=3.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)
    head = ["| workers | phase | answers | non-2xx | transport errors | versions | p50 ms | p99 ms |", "|---" * 8 + "|"]
    rows, notes, verdicts = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for workers in args.workers:
            lines, passed = run(workers, args, Path(scratch))
            rows += [line for line in lines if line.startswith("|")]
            notes += [line for line in lines if line.startswith("-")]
            verdicts.append(passed)
            print("\n".join(lines), flush=True)
    command = "python bench/swap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = [f"`{command.strip()}` ({os.cpu_count()} CPUs):", "", *head, *rows, "", *notes, ""]
    section.append(f"Verdict (no failures, only the two valid versions, p99 within 1.5x): {all(verdicts)}")
    print("\n".join(section))
    if not args.no_write:
        update(RESULTS, {"## Model swaps under load": section})
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
