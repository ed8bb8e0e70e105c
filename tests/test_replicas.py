"""Two replicas on one model store behind a real haproxy (standing in for a Kubernetes Service): an activation
through the balancer reaches both within 5 s while requests through it keep succeeding.

The figures under a 64-connection load, and with the default poll interval, are bench/swap.py's (--replicas).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from models.publishing import publish
from models.store import ModelStore
from tests.conftest import garment, image_bytes, make_artifact
from tests.haproxy import HAPROXY, REPLICA_HEADER, run_haproxy, run_replicas

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAPROXY.is_file(), reason=f"{HAPROXY} is absent: apt-get install haproxy (.ci/run does)"),
]

ADMIN_KEY = "replicas-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PNG = image_bytes(garment(), "PNG")
FOLLOW_WITHIN_S = 5.0  # the bound for every replica to serve a change


def serving(url: str) -> str | None:
    """The version the replica at ``url`` serves, asked of it directly (one worker: one answer)."""
    answer: str | None = httpx.get(url + "/models", timeout=5).json()["serving"]
    return answer


@dataclass
class Answers:
    """What clients got through the balancer: (status, version, replica) per answer, and transport errors."""

    got: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def steady_load(url: str, clients: int = 4) -> Iterator[Answers]:
    """``clients`` threads uploading a PNG to ``url`` one request after another, until the block ends."""
    answers, stop = Answers(), threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post("/predict", files={"file": ("g.png", PNG, "image/png")})
                except httpx.HTTPError as exc:
                    answers.errors.append(repr(exc))
                    continue
                headers = response.headers
                answers.got.append((response.status_code, headers.get("X-Model-Version"), headers.get(REPLICA_HEADER)))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


@pytest.mark.timeout(180)
def test_both_replicas_serve_an_activation_within_5_s_with_no_failed_request(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    first = publish(store, make_artifact(tmp_path, 1, accuracy=0.95), promote=True).digest[:12]
    second = publish(store, make_artifact(tmp_path, 2, accuracy=0.95), promote=False).digest[:12]
    env = {
        "FASHION_MODEL_STORE": str(store.root),
        "FASHION_DEVICE": "cpu",
        "FASHION_MODEL_POLL_S": "0.2",
        "FASHION_ADMIN_KEY": ADMIN_KEY,
    }
    with run_replicas(2, env, tmp_path) as replicas, run_haproxy([r.url for r in replicas], tmp_path) as balancer:
        assert {serving(replica.url) for replica in replicas} == {first}
        with steady_load(balancer.url) as answers:
            time.sleep(0.5)
            before = len(answers.got)
            asked = time.monotonic()
            change = httpx.post(f"{balancer.url}/models/{second}/activate", headers=ADMIN, timeout=30)
            assert change.status_code == 200, change.text
            followed = {replica.url: wait_until_serving(replica.url, second, asked) for replica in replicas}
            time.sleep(0.5)  # a request that started before the last replica followed has ended by now
            after = len(answers.got)
            time.sleep(0.5)
        balancer_log = balancer.log()
    got = answers.got
    assert not answers.errors and {status for status, _, _ in got} == {200}, (answers.errors[:3], balancer_log)
    assert all(seconds <= FOLLOW_WITHIN_S for seconds in followed.values()), followed
    assert before > 0 and after > before, "requests went through the balancer before and after the change"
    assert {replica for _, _, replica in got} == {"r1", "r2"}, "round robin sends to both replicas"
    assert {version for _, version, _ in got} == {first, second}
    assert len(got) > after and {version for _, version, _ in got[after:]} == {second}, "once both follow"


def wait_until_serving(url: str, version: str, since: float) -> float:
    """Seconds from ``since`` until the replica at ``url`` serves ``version``; fails the test after the bound."""
    while (elapsed := time.monotonic() - since) <= FOLLOW_WITHIN_S:
        if serving(url) == version:
            return elapsed
        time.sleep(0.05)
    pytest.fail(f"{url} still serves {serving(url)}, not {version}, {FOLLOW_WITHIN_S:g} s after the change")
