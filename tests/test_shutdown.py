"""Graceful shutdown, as Kubernetes does it: SIGTERM, then the server stops accepting connections,
finishes every request already in flight, and exits 0, within uvicorn's --timeout-graceful-shutdown.

The deployment sets that limit through UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN (uvicorn reads each option from
UVICORN_<OPTION>), so the tests set it the same way. A long batching wait holds every request inside the
server for seconds, so "in flight at SIGTERM" is certain rather than a race.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, garment, image_bytes, run_server

IN_FLIGHT = 32  # below the default max_batch_size, so all of them wait in one batch
BATCH_WAIT_MS = 6000  # long enough that a loaded machine still sends everything and SIGTERMs first
pytestmark = pytest.mark.slow


async def one_request(client: httpx.AsyncClient, index: int, trace: Any) -> int | str:
    """Half go to /predict, half to the OIP endpoint; the result is the status, or the transport error's name."""
    try:
        if index % 2:
            response = await client.post(
                "/predict",
                content=image_bytes(garment(), "PNG"),
                headers={"content-type": "image/png"},
                extensions={"trace": trace},
            )
        else:
            tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}
            response = await client.post(
                "/v2/models/fashion-mnist/infer", json={"inputs": [tensor]}, extensions={"trace": trace}
            )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return response.status_code


async def new_connections_refused(url: str, within_s: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with httpx.AsyncClient(timeout=1) as fresh:
                await fresh.get(url + "/healthz")
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    return False


async def sigterm_under_load(server: LiveServer) -> tuple[list[int | str], bool, int]:
    """Start IN_FLIGHT requests, SIGTERM once all are sent and read, then collect every outcome.

    Returns the outcomes, whether new connections were refused, and how many requests were still
    pending when that was seen (all of them, if the drain happened after SIGTERM).
    """
    sent = 0
    all_sent = asyncio.Event()

    async def trace(event: str, _info: dict[str, Any]) -> None:
        nonlocal sent
        if event == "http11.send_request_body.complete":
            sent += 1
            if sent == IN_FLIGHT:
                all_sent.set()

    limits = httpx.Limits(max_connections=IN_FLIGHT)  # one connection per request
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        tasks = [asyncio.create_task(one_request(client, i, trace)) for i in range(IN_FLIGHT)]
        await asyncio.wait_for(all_sent.wait(), timeout=BATCH_WAIT_MS / 3000)
        await asyncio.sleep(0.3)  # the server's event loop parses what already sits in its sockets
        server.process.send_signal(signal.SIGTERM)
        refused = await new_connections_refused(server.url)
        pending = sum(not task.done() for task in tasks)
        return list(await asyncio.gather(*tasks)), refused, pending


def serve_and_terminate(
    artifact_path: Path, tmp_path: Path, graceful_timeout_s: int
) -> tuple[list[int | str], bool, int, int, str]:
    """Serve with that graceful-shutdown limit, SIGTERM under load: outcomes, refusal, pending, exit code, log."""
    env = {
        "FASHION_MODEL_PATH": str(artifact_path),
        "FASHION_DEVICE": "cpu",
        "FASHION_LOG_LEVEL": "warning",
        "FASHION_MAX_BATCH_WAIT_MS": str(BATCH_WAIT_MS),
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": str(graceful_timeout_s),
    }
    with run_server(env, tmp_path) as server:
        outcomes, refused, pending = asyncio.run(sigterm_under_load(server))
        exit_code = server.process.wait(timeout=30)
    return outcomes, refused, pending, exit_code, server.log()


def test_sigterm_finishes_every_request_in_flight_then_exits_cleanly(artifact_path: Path, tmp_path: Path) -> None:
    outcomes, refused, pending, exit_code, log = serve_and_terminate(artifact_path, tmp_path, graceful_timeout_s=30)
    assert pending == IN_FLIGHT, "every request should still have been in flight when shutdown began"
    assert refused, "after SIGTERM the server should refuse new connections"
    assert outcomes == [200] * IN_FLIGHT, "zero failed in-flight requests"
    # A clean exit. uvicorn re-raises the SIGTERM it caught once shutdown is complete, so that a parent
    # sees the usual "terminated by SIGTERM" status (Kubernetes records 143); 0 is as good.
    assert exit_code in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log


def test_a_graceful_timeout_shorter_than_the_work_cuts_requests_off(artifact_path: Path, tmp_path: Path) -> None:
    """The control: with less time than the requests need, the same check sees failures."""
    outcomes, _refused, pending, _exit_code, log = serve_and_terminate(artifact_path, tmp_path, graceful_timeout_s=1)
    assert pending == IN_FLIGHT
    assert all(outcome != 200 for outcome in outcomes), outcomes
    assert "timeout graceful shutdown exceeded" in log
