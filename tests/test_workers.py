"""fashion-serve with two workers: /metrics adds up both, and a worker SIGKILLed under load is replaced.

One server for the module (starting two workers is most of the time); the kill test runs last.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import multiprocess

from tests.conftest import LiveServer, garment, image_bytes
from tests.fashion_serve import port_of, read_response, run_fashion_serve, upload_request

pytestmark = pytest.mark.slow
PREDICT_SERIES = 'fashion_requests_total{method="POST",route="/predict",status="200"}'


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("metrics")
    (directory / "counter_1.db").write_bytes(b"stale")  # an earlier run's file: fashion-serve must clear it
    return directory


@pytest.fixture(scope="module")
def server(artifact_path: Path, metrics_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "FASHION_MODEL_PATH": str(artifact_path),
        "FASHION_DEVICE": "cpu",
        "FASHION_TORCH_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with run_fashion_serve(env, tmp_path_factory.mktemp("workers"), "--workers", "2") as live:
        yield live
    assert live.process.returncode == 0, live.log()  # SIGTERM: every worker drained and the parent exited 0


def _workers(server: LiveServer) -> list[psutil.Process]:
    """The uvicorn workers: the parent's children that are not multiprocessing's resource tracker."""
    children = psutil.Process(server.process.pid).children()
    return [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]


def _predict_count(text: str) -> float:
    match = re.search(re.escape(PREDICT_SERIES) + r" (\S+)", text)
    return float(match.group(1)) if match else 0.0


async def _requests_on_new_connections(port: int, total: int, concurrency: int = 16) -> list[int]:
    """``total`` /predict requests, each on its own connection so that both workers accept some."""
    request = upload_request(image_bytes(garment(), "PNG"), close=True)
    statuses: list[int] = []

    async def one_client(count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            statuses.append((await read_response(reader))[0])
            writer.close()

    await asyncio.gather(*(one_client(total // concurrency) for _ in range(concurrency)))
    return statuses


def test_metrics_add_up_across_workers(server: LiveServer, metrics_dir: Path) -> None:
    assert len(_workers(server)) == 2
    assert not (metrics_dir / "counter_1.db").exists()
    statuses = asyncio.run(_requests_on_new_connections(port_of(server), 2_000))
    assert statuses == [200] * 2_000
    scrapes = [_predict_count(httpx.get(server.url + "/metrics").text) for _ in range(20)]
    assert scrapes == [2_000.0] * 20
    # Both workers counted some of them (or this test would prove nothing about merging).
    counts = {path.name: _counted_in(path) for path in metrics_dir.glob("counter_*.db")}
    assert sorted(count > 0 for count in counts.values()) == [True, True], counts


def _counted_in(path: Path) -> float:
    """/predict 200s in one worker's counter file."""
    for metric in multiprocess.MultiProcessCollector.merge([str(path)]):
        for sample in metric.samples:
            labels = sample.labels
            if sample.name == "fashion_requests_total" and labels.get("route") == "/predict":
                return sample.value
    return 0.0


async def _load_until(port: int, connections: int, stop: asyncio.Event) -> tuple[int, list[int]]:
    """Keep-alive /predict load; (answers, client ports whose connection broke). A broken one reconnects."""
    request = upload_request(image_bytes(garment(), "PNG"))
    answered = 0
    broken: list[int] = []

    async def one_connection() -> None:
        nonlocal answered
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            local_port = writer.get_extra_info("sockname")[1]
            try:
                while not stop.is_set():
                    writer.write(request)
                    status, _ = await read_response(reader)
                    assert status == 200, status
                    answered += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                broken.append(local_port)
            finally:
                writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return answered, broken


def test_a_sigkilled_worker_is_replaced_and_only_its_requests_fail(server: LiveServer) -> None:
    port = port_of(server)
    before = _workers(server)
    assert len(before) == 2

    async def scenario() -> tuple[int, list[int], set[int]]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load_until(port, 64, stop))
        await asyncio.sleep(1.5)
        victim = before[0]
        # The client ports of the victim's connections, just before it dies: the only ones allowed to fail.
        victims = {c.raddr.port for c in victim.net_connections("tcp") if c.raddr and c.laddr.port == port}
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while server.log().count("Application startup complete.") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the replacement takes connections too
        stop.set()
        answered, broken = await load
        return answered, broken, victims

    answered, broken, victims = asyncio.run(scenario())
    after = _workers(server)
    assert len(after) == 2 and before[1] in after and before[0] not in after, server.log()
    assert "died" in server.log()
    assert broken, "the killed worker held connections, so some requests must have failed"
    assert set(broken) <= victims, (sorted(broken), sorted(victims))
    assert answered > 0
    # The dead worker's live gauge is gone: two live workers serve the model.
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r"^fashion_model_info\{.*\} 2\.0$", text, re.MULTILINE), text
