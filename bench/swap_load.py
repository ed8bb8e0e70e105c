"""bench/swap.py's measuring side: the upload load and its tally, and how long each process took to follow a change.

How long a change takes to reach every process is read from the servers' own logs: each worker logs one
"serving version X (was Y)" line, with its time, when it swaps. That counts every worker of every replica alike
(uvicorn's workers share one port and cannot be asked one by one), and costs the servers nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from tests.haproxy import REPLICA_HEADER

SWAPPED = re.compile(r"serving version ([0-9a-f]{12}) \(was ")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    versions: collections.Counter[str] = field(default_factory=collections.Counter)
    replicas: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: int = 0

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


@dataclass(frozen=True)
class Change:
    """A change of the serving version: asked at ``asked`` (wall clock, as the logs' times), to ``version``."""

    asked: float
    version: str


async def load(url: str, bodies: list[bytes], connections: int, seconds: float, tally: Tally) -> None:
    """``connections`` clients, each uploading one PNG after another for ``seconds``; every answer tallied."""
    deadline = time.monotonic() + seconds

    async def connection(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            sent = index
            while time.monotonic() < deadline:
                sent += 1
                await upload(http, bodies[sent % len(bodies)], tally)

    await asyncio.gather(*(connection(i) for i in range(connections)))


async def upload(http: httpx.AsyncClient, body: bytes, tally: Tally) -> None:
    """One POST /predict of ``body``, tallied: latency, status, version and replica, or a transport error."""
    started = time.perf_counter()
    try:
        response = await http.post("/predict", files={"file": ("x.png", body, "image/png")})
    except httpx.HTTPError:
        tally.transport_errors += 1
        return
    tally.latencies.append(time.perf_counter() - started)
    tally.statuses[response.status_code] += 1
    tally.versions[response.headers.get("x-model-version", "-")] += 1
    tally.replicas[response.headers.get(REPLICA_HEADER, "-")] += 1


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def swaps_logged(log_paths: list[Path]) -> list[tuple[float, str]]:
    """Every "serving version" line in the servers' logs: (its time, the version), in time order."""
    found = []
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            with_time = _json_line(line)
            if with_time is not None and (match := SWAPPED.search(str(with_time.get("message", "")))):
                found.append((_seconds(str(with_time["time"])), match[1]))
    return sorted(found)


def follow_times(
    changes: list[Change], swaps: list[tuple[float, str]], processes: int, serving: str, end: float
) -> list[float]:
    """For each change of what serves (``serving`` at first), the seconds until the last of ``processes`` logged
    that it serves the new version; infinity when fewer than all did so before the next change (or ``end``).
    A change to the version that already serves is left out: nobody swaps for it."""
    real = []
    for change in changes:
        if change.version != serving:
            real.append(change)
            serving = change.version
    times = []
    for index, change in enumerate(real):
        until = real[index + 1].asked if index + 1 < len(real) else end
        window = [at for at, version in swaps if change.asked <= at < until and version == change.version]
        followed = [at - change.asked for at in window]
        times.append(max(followed) if len(followed) == processes else float("inf"))
    return times


def _json_line(line: str) -> dict[str, object] | None:
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and "time" in parsed else None


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
