"""Swap the serving version under load: no failed request, only valid versions answer, p99 close to no swaps.

Three ways to serve one model store: one uvicorn worker, two workers, and two replicas (separate fashion-serve
processes, each on its own port) behind Debian's haproxy, standing in for a Kubernetes Service. In each, after a
warm-up, connections upload real PNGs for a while with no swap (the baseline), then as long again while the
serving version changes every few seconds through the admin API, a corrupt and a too-weak artifact are published
(and refused) a third of the way in, and a rollback is called two thirds of the way in. Prints, per mode and
phase: requests, non-2xx, transport errors, the versions that answered, p50 and p99; then each acceptance check
and how long the slowest process took to serve each change (from the servers' logs, bench/swap_load.py).
Writes bench/RESULTS.md's "## Model swaps under load" section unless --no-write.

    python bench/swap.py                      # 64 connections, 60 s a phase, a swap every 3 s, all three modes
    python bench/swap.py --seconds 20 --workers 1 --replicas 0
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench.swap_load import Change, Tally, follow_times, load, percentile, swaps_logged  # noqa: E402
from models.publishing import publish  # noqa: E402
from models.store import ModelStore, file_digest  # noqa: E402
from tests.conftest import make_artifact  # noqa: E402  (the tests' helpers)
from tests.haproxy import HAPROXY, run_haproxy, run_replicas  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SAMPLES = sorted((ROOT / "app" / "static" / "samples").glob("*.png"))
ADMIN = "bench-admin-key"
P99_RATIO_LIMIT = 1.5
FOLLOW_LIMIT_S = 5.0


@dataclass(frozen=True)
class Mode:
    workers: int  # uvicorn workers in each replica
    replicas: int = 1  # more than one: separate processes behind haproxy

    @property
    def processes(self) -> int:
        return self.workers * self.replicas

    def __str__(self) -> str:
        if self.replicas > 1:
            return f"{self.replicas} replicas x {self.workers} worker{'s' * (self.workers > 1)}, haproxy"
        return f"{self.workers} worker{'s' * (self.workers > 1)}"


@dataclass
class Servers:
    url: str  # where the load goes: the one server, or haproxy in front of the replicas
    logs: list[Path]


@dataclass
class Swaps:
    events: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


@dataclass
class Run:
    mode: Mode
    baseline: Tally
    swapping: Tally
    swaps: Swaps
    valid: set[str]
    refused: set[str]
    followed: list[float]


@contextlib.contextmanager
def start(store: Path, mode: Mode, poll_s: float, log_dir: Path) -> Iterator[Servers]:
    """The replicas on the store, every worker of each serving; haproxy in front when there are several."""
    env = {"FASHION_MODEL_STORE": str(store), "FASHION_ADMIN_KEY": ADMIN, "FASHION_MODEL_POLL_S": str(poll_s)}
    with contextlib.ExitStack() as stack:
        replicas = stack.enter_context(run_replicas(mode.replicas, env, log_dir, mode.workers))
        logs = [replica.log_path for replica in replicas]
        deadline = time.monotonic() + 120
        while len(swaps_logged(logs)) < mode.processes:  # /readyz answered from one worker: wait for them all
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker logged the version it serves in 120 s: see {logs}")
            time.sleep(0.2)
        url = replicas[0].url
        if mode.replicas > 1:
            url = stack.enter_context(run_haproxy([replica.url for replica in replicas], log_dir)).url
        yield Servers(url, logs)


async def change(http: httpx.AsyncClient, path: str, label: str, swaps: Swaps) -> None:
    asked = time.time()
    response = await http.post(path)
    swaps.events.append(f"{label}: {response.status_code}")
    if response.status_code == 200:
        swaps.changes.append(Change(asked, response.json()["serving"]))


async def swapper(url: str, store: ModelStore, good: list[str], bad: list[Path], seconds: float, every: float) -> Swaps:
    """Activate the two good versions in turn; publish the bad ones at 1/3; roll back at 2/3."""
    swaps = Swaps()
    started = time.monotonic()
    published = rolled_back = False
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        turn = 0
        while time.monotonic() - started < seconds - every:
            await asyncio.sleep(every)
            elapsed = time.monotonic() - started
            if not published and elapsed > seconds / 3:
                results = [await asyncio.to_thread(publish, store, path, promote=True) for path in bad]
                swaps.events += [f"published {r.digest[:12]}: {r.reason}" for r in results]
                published = True
            if not rolled_back and elapsed > 2 * seconds / 3:
                await change(http, "/models/rollback", "rollback", swaps)
                rolled_back = True
                continue
            turn += 1
            version = good[turn % 2][:12]
            await change(http, f"/models/{version}/activate", f"activate {version}", swaps)
    return swaps


def run(mode: Mode, args: argparse.Namespace, scratch: Path) -> Run:
    store = ModelStore(scratch / f"store-{mode.workers}x{mode.replicas}")
    good = [publish(store, make_artifact(scratch, seed, 0.95), promote=seed == 1).digest for seed in (1, 2)]
    corrupt = scratch / "corrupt.safetensors"
    corrupt.write_bytes(store.path_of(good[0]).read_bytes()[:4000])
    bad = [corrupt, make_artifact(scratch, 3, 0.5)]
    bodies = [path.read_bytes() for path in SAMPLES]
    with start(store.root, mode, args.poll, scratch) as servers:
        asyncio.run(load(servers.url, bodies, args.connections, args.warmup, Tally()))
        baseline, swapping = Tally(), Tally()
        asyncio.run(load(servers.url, bodies, args.connections, args.seconds, baseline))

        async def both() -> Swaps:
            task = asyncio.create_task(swapper(servers.url, store, good, bad, args.seconds, args.swap_every))
            await load(servers.url, bodies, args.connections, args.seconds, swapping)
            return await task

        swaps = asyncio.run(both())
        # The last change may come just before the load ends: give every process the limit to follow it.
        last = swaps.changes[-1].asked if swaps.changes else 0.0
        time.sleep(max(0.0, last + FOLLOW_LIMIT_S - time.time()))
        followed = follow_times(swaps.changes, swaps_logged(servers.logs), mode.processes, good[0][:12], time.time())
    valid = {digest[:12] for digest in good}
    return Run(mode, baseline, swapping, swaps, valid, {file_digest(path)[:12] for path in bad}, followed)


def checks(run: Run) -> dict[str, bool]:
    """The issue's acceptance checks for one mode, each named with its figure."""
    ratio = percentile(run.swapping.latencies, 0.99) / percentile(run.baseline.latencies, 0.99)
    slowest = max(run.followed, default=float("nan"))
    tallies = (run.baseline, run.swapping)
    return {
        "no non-2xx": all(tally.non_2xx == 0 for tally in tallies),
        "no transport errors": all(tally.transport_errors == 0 for tally in tallies),
        "every answer from one of the two valid versions, both answered": set(run.swapping.versions) == run.valid,
        "the refused versions never answered": not set(run.swapping.versions) & run.refused,
        f"p99 swapping / no swaps = {ratio:.2f}, within {P99_RATIO_LIMIT}x": ratio <= P99_RATIO_LIMIT,
        f"all {run.mode.processes} processes served each of {len(run.followed)} changes within "
        f"{FOLLOW_LIMIT_S:g} s (slowest {slowest:.2f} s)": bool(run.followed) and slowest <= FOLLOW_LIMIT_S,
    }


def report(run: Run) -> tuple[list[str], list[str], bool]:
    """The table rows and the notes for one mode, and whether every check passed."""
    rows = []
    for name, tally in (("no swaps", run.baseline), ("swapping", run.swapping)):
        versions = ", ".join(f"{version} x{count}" for version, count in sorted(tally.versions.items()))
        rows.append(
            f"| {run.mode} | {name} | {len(tally.latencies)} | {tally.non_2xx} | {tally.transport_errors} | {versions} "
            f"| {1000 * percentile(tally.latencies, 0.5):.1f} | {1000 * percentile(tally.latencies, 0.99):.1f} |"
        )
    verdicts = checks(run)
    activations = sum(event.startswith("activate") for event in run.swaps.events)
    others = "; ".join(event for event in run.swaps.events if not event.startswith("activate"))
    notes = [f"- {run.mode}: {activations} activations; {others}"]
    if run.mode.replicas > 1:
        shares = ", ".join(f"{name} x{count}" for name, count in sorted(run.swapping.replicas.items()))
        notes.append(f"  - answers by replica while swapping: {shares}")
    notes.append("  - seconds until every process served each change: " + ", ".join(f"{s:.2f}" for s in run.followed))
    notes += [f"  - [{'ok' if passed else 'FAIL'}] {name}" for name, passed in verdicts.items()]
    return rows, notes, all(verdicts.values())


def modes(args: argparse.Namespace) -> list[Mode]:
    chosen = [Mode(workers) for workers in args.workers]
    if args.replicas > 1:
        if not HAPROXY.is_file():
            raise SystemExit(f"--replicas needs haproxy at {HAPROXY} (apt-get install haproxy), or --replicas 0")
        chosen.append(Mode(1, args.replicas))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase (default 60)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before the baseline, not counted")
    parser.add_argument("--swap-every", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=2.0, help="FASHION_MODEL_POLL_S (default 2, the server's)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="one mode per worker count")
    parser.add_argument("--replicas", type=int, default=2, help="replicas behind haproxy (0: not this mode)")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)
    head = ["| mode | phase | answers | non-2xx | transport errors | versions | p50 ms | p99 ms |", "|---" * 8 + "|"]
    rows, notes, verdicts = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in modes(args):
            mode_rows, mode_notes, passed = report(run(mode, args, Path(scratch)))
            rows += mode_rows
            notes += mode_notes
            verdicts.append(passed)
            print("\n".join(mode_rows + mode_notes), flush=True)
    command = "python bench/swap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = [f"`{command.strip()}` ({os.cpu_count()} CPUs; poll {args.poll:g} s):", "", *head, *rows, "", *notes]
    section += ["", f"Verdict (every check of every mode): {all(verdicts)}"]
    print("\n".join(section))
    if not args.no_write:
        update(RESULTS, {"## Model swaps under load": section})
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
