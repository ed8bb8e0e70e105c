"""Many swaps in a row: the server's memory must not grow with them (each swap loads a model and frees the old one).

One fashion-serve (one worker unless --workers) on a store of two versions. After a warm-up (each version served
once, some uploads), its memory is read: VmRSS and PSS (/proc/PID/status, /proc/PID/smaps_rollup), summed over the
server process and every process under it. Then --swaps activations alternate between the two versions through the
admin API, each followed by a few uploads, with a reading every tenth swap, and a last reading after a short rest.
Prints the series and the growth (the issue's bound: under 50 MB of RSS over 100 swaps); writes bench/RESULTS.md's
"## Model swaps: memory" section unless --no-write.

    python bench/swap_memory.py               # 100 swaps, one worker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import update  # noqa: E402
from bench.swap import ADMIN, RESULTS, SAMPLES  # noqa: E402
from models.publishing import publish  # noqa: E402
from models.store import ModelStore  # noqa: E402
from tests.conftest import make_artifact  # noqa: E402  (the tests' helpers)
from tests.haproxy import run_replicas  # noqa: E402

GROWTH_LIMIT_MB = 50.0
UPLOADS_PER_SWAP = 8
REST_S = 3.0  # the old model's batcher stops once its last request ends; give it that before the last reading


def process_tree(root: int) -> list[int]:
    """``root`` and every live process under it (uvicorn's workers, their helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory_mb(root: int) -> tuple[float, float]:
    """(RSS, PSS) in MB, summed over the process tree under ``root``. PSS shares pages between the processes
    that map them, so it does not count torch's library pages once per worker."""
    rss = pss = 0
    for pid in process_tree(root):
        rss += _kilobytes(Path(f"/proc/{pid}/status"), "VmRSS:")
        pss += _kilobytes(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    return rss / 1024, pss / 1024


def _kilobytes(path: Path, key: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0  # the process ended meanwhile
    return next((int(line.split()[1]) for line in lines if line.startswith(key)), 0)


def swap_loop(http: httpx.Client, versions: list[str], swaps: int, pid: int) -> list[tuple[int, float, float]]:
    """Activate the versions in turn ``swaps`` times, uploading after each; (swaps done, RSS, PSS) readings."""
    bodies = [path.read_bytes() for path in SAMPLES]
    readings = [(0, *memory_mb(pid))]
    for done in range(1, swaps + 1):
        response = http.post(f"/models/{versions[done % 2]}/activate", headers={"Authorization": f"Bearer {ADMIN}"})
        if response.status_code != 200:
            raise RuntimeError(f"activation {done} answered {response.status_code}: {response.text}")
        for upload in range(UPLOADS_PER_SWAP):
            files = {"file": ("x.png", bodies[(done + upload) % len(bodies)], "image/png")}
            if http.post("/predict", files=files).headers.get("x-model-version") is None:
                raise RuntimeError(f"an upload after activation {done} was not answered by a model")
        if done % 10 == 0:
            readings.append((done, *memory_mb(pid)))
    time.sleep(REST_S)
    readings.append((swaps, *memory_mb(pid)))
    return readings


def measure(swaps: int, workers: int, scratch: Path) -> list[tuple[int, float, float]]:
    store = ModelStore(scratch / "store")
    versions = [publish(store, make_artifact(scratch, seed, 0.95), promote=seed == 1).digest[:12] for seed in (1, 2)]
    env = {"FASHION_MODEL_STORE": str(store.root), "FASHION_ADMIN_KEY": ADMIN, "FASHION_MODEL_POLL_S": "0.5"}
    with run_replicas(1, env, scratch, workers) as (server,), httpx.Client(base_url=server.url, timeout=30) as http:
        swap_loop(http, versions, 4, server.process.pid)  # warm-up: each version loaded and freed once
        return swap_loop(http, versions, swaps, server.process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        readings = measure(args.swaps, args.workers, Path(scratch))
    (_, rss_before, pss_before), (_, rss_after, pss_after) = readings[0], readings[-1]
    growth = rss_after - rss_before
    command = "python bench/swap_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = [
        f"`{command.strip()}` ({os.cpu_count()} CPUs; {args.workers} worker(s), {UPLOADS_PER_SWAP} uploads per swap):",
        "",
        "| swaps done | RSS MB | PSS MB |",
        "|---|---|---|",
        *(f"| {done} | {rss:.1f} | {pss:.1f} |" for done, rss, pss in readings[:-1]),
        f"| {readings[-1][0]}, after {REST_S:g} s | {rss_after:.1f} | {pss_after:.1f} |",
        "",
        f"Growth over {args.swaps} swaps: RSS {growth:+.1f} MB, PSS {pss_after - pss_before:+.1f} MB. "
        f"Verdict (RSS growth under {GROWTH_LIMIT_MB:g} MB): {growth < GROWTH_LIMIT_MB}",
    ]
    print("\n".join(section))
    if not args.no_write:
        update(RESULTS, {"## Model swaps: memory": section})
    return 0 if growth < GROWTH_LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
