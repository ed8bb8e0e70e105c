"""Canary and shadow under load: the canary's share of answers, and what a shadow costs the live p99.

A real uvicorn (one worker) serves a model store holding two valid versions. Then:

1. the second version becomes the canary at 10% and 64 connections upload real PNGs until 10,000 answers have
   come back: the share the canary answered (the acceptance: 8% to 12%);
2. with the canary stopped, five interleaved pairs of phases, each pair one phase without a shadow and one with
   the second version as the shadow at 100% (the order alternating): every answer must come from the serving
   version, and the median over the pairs of p99 with shadow / p99 without is the shadow's cost (acceptance:
   at most 1.15). GET /models's shadow tally (compared, skipped, agreement, latency) is printed too.

Prints the figures; writes bench/RESULTS.md's "## Canary and shadow" section unless --no-write.

    python bench/traffic.py                          # 10,000 canary answers, 5 pairs of 10 s phases
    python bench/traffic.py --answers 2000 --seconds 3 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import update  # noqa: E402
from bench.swap import ADMIN, RESULTS, SAMPLES, Mode, start  # noqa: E402
from bench.swap_load import Tally, percentile, upload  # noqa: E402
from models.publishing import publish  # noqa: E402
from models.store import ModelStore  # noqa: E402
from tests.conftest import make_artifact  # noqa: E402  (the tests' helper)

SERVER_POLL_S = 2.0  # the server's default; the one worker follows each change at once anyway

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Load:
    """``connections`` clients made once and reused by every phase: a phase measures the server, not the clients'
    start-up (making an httpx client costs CPU, and its first request a connection)."""

    def __init__(self, url: str, connections: int) -> None:
        self.clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(connections)]
        self.admin = httpx.AsyncClient(base_url=url, timeout=60, headers=ADMIN_HEADERS)
        self.bodies = [path.read_bytes() for path in SAMPLES]

    async def close(self) -> None:
        for client in [*self.clients, self.admin]:
            await client.aclose()

    async def run(self, tally: Tally, *, total: int | None = None, seconds: float | None = None) -> None:
        """Upload until ``total`` requests were sent or ``seconds`` passed; tally each answer."""
        remaining = [total if total is not None else sys.maxsize]
        deadline = time.monotonic() + (seconds if seconds is not None else float("inf"))

        async def connection(http: httpx.AsyncClient) -> None:
            while remaining[0] > 0 and time.monotonic() < deadline:
                remaining[0] -= 1
                await upload(http, self.bodies[remaining[0] % len(self.bodies)], tally)

        await asyncio.gather(*(connection(http) for http in self.clients))

    async def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.admin.request(method, path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def canary_share(load: Load, canary: str, args: argparse.Namespace) -> tuple[list[str], bool]:
    await load.change("PUT", f"/models/{canary[:12]}/canary", {"percent": 10})
    tally = Tally()
    await load.run(tally, total=args.answers)
    await load.change("DELETE", f"/models/{canary[:12]}/canary")
    answered = len(tally.latencies)
    share = tally.versions[canary[:12]] / answered
    failed = tally.non_2xx + tally.transport_errors
    line = f"- canary at 10%: {tally.versions[canary[:12]]} of {answered} answers ({100 * share:.2f}%); failed {failed}"
    return [line], 0.08 <= share <= 0.12 and failed == 0


async def shadow_cost(load: Load, serving: str, shadow: str, args: argparse.Namespace) -> tuple[list[str], bool]:
    rows, ratios, only_serving = [], [], True
    for pair in range(args.pairs):
        p99: dict[bool, float] = {}
        for shadowed in (False, True) if pair % 2 == 0 else (True, False):
            if shadowed:
                await load.change("PUT", f"/models/{shadow[:12]}/shadow", {"percent": 100})
            tally = Tally()
            await load.run(tally, seconds=args.seconds)
            p99[shadowed] = percentile(tally.latencies, 0.99)
            rows.append(
                f"| {pair + 1} | {'shadow 100%' if shadowed else 'no shadow'} | {len(tally.latencies)} "
                f"| {1000 * percentile(tally.latencies, 0.5):.1f} | {1000 * p99[shadowed]:.1f} |"
            )
            if shadowed:
                rows[-1] += f" {_tally((await load.change('GET', '/models'))['shadow'])} |"
                await load.change("DELETE", f"/models/{shadow[:12]}/shadow")
                only_serving &= set(tally.versions) == {serving[:12]} and set(tally.statuses) == {200}
            else:
                rows[-1] += "  |"
        ratios.append(p99[True] / p99[False])
    ratio = statistics.median(ratios)
    head = ["| pair | phase | answers | p50 ms | p99 ms | shadow tally |", "|---" * 6 + "|"]
    note = (
        f"- shadow at 100%: every answer from the serving version: {only_serving}; p99 with / without, median of "
        f"{args.pairs} pairs: {ratio:.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    return [*head, *rows, "", note], only_serving and ratio <= 1.15


async def measure(url: str, serving: str, other: str, args: argparse.Namespace) -> tuple[list[str], bool]:
    load = Load(url, args.connections)
    try:
        await load.run(Tally(), total=4 * args.connections)  # every connection open, the server warm
        canary_lines, canary_passed = await canary_share(load, other, args)
        print("\n".join(canary_lines), flush=True)
        shadow_lines, shadow_passed = await shadow_cost(load, serving, other, args)
        print("\n".join(shadow_lines), flush=True)
    finally:
        await load.close()
    return [*canary_lines, "", *shadow_lines], canary_passed and shadow_passed


def _tally(shadow: dict[str, Any]) -> str:
    agreement = "-" if shadow["agreement"] is None else f"{shadow['agreement']:.3f}"
    latency = "-" if shadow["latency_ms"] is None else f"{shadow['latency_ms']:.2f} ms"
    return f"compared {shadow['compared']}, skipped {shadow['skipped']}, agreement {agreement}, latency {latency}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--answers", type=int, default=10_000, help="answers counted at 10%% canary (default 10000)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs of shadow / no-shadow phases")
    parser.add_argument("--seconds", type=float, default=10, help="length of each shadow phase (default 10)")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        store = ModelStore(Path(scratch) / "store")
        serving, other = [
            publish(store, make_artifact(Path(scratch), seed, 0.95), promote=seed == 1).digest for seed in (1, 2)
        ]
        with start(store.root, Mode(workers=1), SERVER_POLL_S, Path(scratch)) as servers:
            lines, passed = asyncio.run(measure(servers.url, serving, other, args))
    command = "python bench/traffic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = [f"`{command.strip()}` ({os.cpu_count()} CPUs, one worker):", "", *lines, ""]
    section.append(f"Verdict (canary 8-12%, shadow never answers, p99 within 1.15x): {passed}")
    print(section[-1])
    if not args.no_write:
        update(RESULTS, {"## Canary and shadow": section})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
