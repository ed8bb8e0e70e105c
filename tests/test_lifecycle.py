"""Serving from a model store (app/lifecycle.py, app/routes/models.py): follow, swap, refuse, roll back."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from models.publishing import publish
from models.store import ModelStore, StoreState, activated
from tests.conftest import BAD_VERSION_NAMES, garment, image_bytes, make_artifact, run_server, wait_for

ADMIN = "admin-key-for-tests"
PNG = image_bytes(garment(), "PNG")


@dataclasses.dataclass
class Versions:
    store: ModelStore
    good: str  # serving after setup
    other: str  # a second good version, available
    weak: str  # below the minimum accuracy: refused


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    store = ModelStore(tmp_path / "store")
    good = publish(store, make_artifact(tmp_path, 1, accuracy=0.93)).digest
    other = publish(store, make_artifact(tmp_path, 2, accuracy=0.93), promote=False).digest
    weak = publish(store, make_artifact(tmp_path, 3, accuracy=0.5)).digest
    return Versions(store, good, other, weak)


def store_settings(store: ModelStore, **changes: object) -> Settings:
    values: dict[str, object] = {"model_store": store.root, "device": "cpu", "model_poll_s": 0.05}
    return Settings(**(values | changes))  # type: ignore[arg-type]


def admin(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predicted_version(client: TestClient) -> str:
    response = client.post("/predict", files={"file": ("g.png", PNG, "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == response.json()["model_version"]
    version: str = response.json()["model_version"]
    return version


def test_models_lists_every_version_with_its_state(make_client: Callable[..., TestClient], versions: Versions) -> None:
    junk = "ee" * 32
    (versions.store.root / f"{junk}.safetensors").write_bytes(b"not an artifact")
    client = make_client(store_settings(versions.store))
    body = client.get("/models").json()
    assert body["serving"] == body["state_serving"] == versions.good[:12]
    by_id = {entry["id"]: entry for entry in body["versions"]}
    assert by_id.keys() == {versions.good, versions.other, versions.weak, junk}
    assert (by_id[junk]["state"], by_id[junk]["reason"]) == ("refused", "it is not a readable artifact")
    assert by_id[versions.good]["state"] == "serving" and by_id[versions.good]["accuracy"] == 0.93
    assert by_id[versions.good]["loaded"] and not by_id[versions.other]["loaded"]
    assert body["shadow"] is None and body["canary"] is None
    assert by_id[versions.other]["state"] == "available" and by_id[versions.other]["created"]
    assert by_id[versions.weak] | {"created": None} == {
        "version": versions.weak[:12],
        "id": versions.weak,
        "state": "refused",
        "reason": "its recorded accuracy 0.5000 is below the minimum 0.9000",
        "accuracy": 0.5,
        "created": None,
        "loaded": False,
    }
    assert predicted_version(client) == versions.good[:12]


def test_models_is_keyed_like_model(make_client: Callable[..., TestClient], versions: Versions) -> None:
    client = make_client(store_settings(versions.store, api_key=SecretStr("api-key")))
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers=admin("api-key")).status_code == 200


def test_changes_are_off_without_an_admin_key(make_client: Callable[..., TestClient], versions: Versions) -> None:
    client = make_client(store_settings(versions.store))
    for response in (
        client.post(f"/models/{versions.other[:12]}/activate", headers=admin()),
        client.post("/models/rollback", headers=admin()),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["message"] == (
            "model changes are off: set FASHION_ADMIN_KEY on the server to allow them"
        )
    assert versions.store.read_state().serving == versions.good


@pytest.mark.parametrize("headers", [{}, admin("wrong"), admin("api-key"), {"Authorization": ADMIN}])
def test_changes_need_the_admin_key(
    make_client: Callable[..., TestClient], versions: Versions, headers: dict[str, str]
) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN), api_key=SecretStr("api-key")))
    response = client.post(f"/models/{versions.other[:12]}/activate", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("missing or wrong admin key")
    assert client.post("/models/rollback", headers=headers).status_code == 401
    assert versions.store.read_state().serving == versions.good


def test_activate_then_rollback_with_the_admin_key(
    make_client: Callable[..., TestClient], versions: Versions, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    logging.getLogger("app").addHandler(caplog.handler)  # after the app set its own handlers; it does not propagate
    with caplog.at_level(logging.INFO, logger="app.audit"):
        response = client.post(f"/models/{versions.other[:12]}/activate", headers=admin())
    assert response.status_code == 200, response.text
    assert response.json() | {"generation": 0} == {
        "serving": versions.other[:12],
        "previous": versions.good[:12],
        "generation": 0,
    }
    assert predicted_version(client) == versions.other[:12]  # this worker follows before answering
    audit = [record.getMessage() for record in caplog.records if record.name == "app.audit"]
    assert len(audit) == 1 and f"activate to {versions.other[:12]} (was {versions.good[:12]})" in audit[0]
    assert ADMIN not in caplog.text
    logging.getLogger("app").removeHandler(caplog.handler)
    response = client.post("/models/rollback", headers=admin())
    assert response.status_code == 200 and response.json()["serving"] == versions.good[:12]
    assert predicted_version(client) == versions.good[:12]
    response = client.post("/models/rollback", headers=admin())
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "no version served before this one: nothing to roll back to"


@pytest.mark.parametrize(("version", "status"), BAD_VERSION_NAMES)
def test_a_version_is_hex_digits_of_a_stored_version(
    make_client: Callable[..., TestClient], versions: Versions, version: str, status: int
) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    response = client.post(f"/models/{version}/activate", headers=admin())
    assert response.status_code == status, response.text
    assert versions.store.read_state().serving == versions.good


def test_a_refused_version_cannot_be_activated(make_client: Callable[..., TestClient], versions: Versions) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    response = client.post(f"/models/{versions.weak[:12]}/activate", headers=admin())
    assert response.status_code == 409
    assert response.json()["error"]["message"] == (
        f"version {versions.weak[:12]} is refused: its recorded accuracy 0.5000 is below the minimum 0.9000"
    )
    assert versions.store.read_state().serving == versions.good
    assert predicted_version(client) == versions.good[:12]


def name_in_state(store: ModelStore, digest: str) -> None:
    """What a bad hand edit or a half-synchronised volume could do: point the state at ``digest`` unchecked."""
    store.update_state(lambda state: dataclasses.replace(activated(state, digest, "by hand"), last_good=state.serving))


@pytest.mark.parametrize("target", ["missing", "weak", "corrupt"])
def test_a_worker_starts_on_the_last_good_version_when_the_state_names_a_bad_one(
    make_client: Callable[..., TestClient], versions: Versions, target: str, capfd: pytest.CaptureFixture[str]
) -> None:
    digest = {"missing": "ab" * 32, "weak": versions.weak, "corrupt": "cd" * 32}[target]
    if target == "corrupt":  # a half-copied file under a version's name
        (versions.store.root / f"{digest}.safetensors").write_bytes(b"\x08" + b"\x00" * 100)
    name_in_state(versions.store, digest)
    client = make_client(store_settings(versions.store))
    assert client.get("/readyz").status_code == 200
    assert predicted_version(client) == versions.good[:12]
    body = client.get("/models").json()
    assert body["serving"] == versions.good[:12] and body["state_serving"] == digest[:12]
    assert f"the state names {digest[:12]}, which this worker refused" in body["note"]
    assert "/" not in body["note"]  # no paths
    assert f"the state names {digest[:12]}, which this worker refused" in capfd.readouterr().err  # the JSON log


def test_an_empty_store_serves_503_until_a_version_is_published(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "empty")
    store.root.mkdir()
    client = make_client(store_settings(store))
    response = client.get("/readyz")
    assert response.status_code == 503 and "publish one" in response.json()["error"]["message"]
    digest = publish(store, make_artifact(tmp_path, 1)).digest
    wait_for(lambda: client.get("/readyz").status_code == 200, "the published version to serve")
    assert predicted_version(client) == digest[:12]


def test_a_version_deleted_while_it_serves_keeps_serving_from_memory(
    make_client: Callable[..., TestClient], versions: Versions
) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    versions.store.path_of(versions.good).unlink()
    versions.store.update_state(lambda state: state)  # a new generation: the worker reads the state again
    time.sleep(0.2)  # several poll intervals
    assert predicted_version(client) == versions.good[:12]
    body = client.get("/models").json()
    assert [entry["state"] for entry in body["versions"] if entry["id"] == versions.good] == ["serving"]
    assert client.post(f"/models/{versions.other[:12]}/activate", headers=admin()).status_code == 200
    assert predicted_version(client) == versions.other[:12]
    assert client.post("/models/rollback", headers=admin()).status_code == 409  # its file is gone: refused
    assert predicted_version(client) == versions.other[:12]


def test_a_request_finishes_on_the_version_it_started_on(
    make_client: Callable[..., TestClient], versions: Versions
) -> None:
    """A slow request on the old version, a swap in the middle: it answers from the old version, the next from
    the new, and the old batcher stops once that request is done (the old model then answers directly)."""
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    old = client.app.state.service  # type: ignore[attr-defined]
    real_predict = old.predictor.predict
    entered = threading.Event()

    def slow_predict(pixels: torch.Tensor) -> object:
        entered.set()
        time.sleep(0.5)
        return real_predict(pixels)

    old.batcher._predict = slow_predict
    answers: list[str] = []
    request = threading.Thread(target=lambda: answers.append(predicted_version(client)))
    request.start()
    assert entered.wait(10)
    assert client.post(f"/models/{versions.other[:12]}/activate", headers=admin()).status_code == 200
    assert old.batcher is not None  # the slow request is still inside it
    assert predicted_version(client) == versions.other[:12]
    request.join(10)
    assert answers == [versions.good[:12]]
    wait_for(lambda: old.batcher is None, "the old batcher to stop")


def test_the_admin_key_must_differ_from_the_api_key() -> None:
    with pytest.raises(ValueError, match="FASHION_ADMIN_KEY: must differ from FASHION_API_KEY"):
        Settings(api_key=SecretStr("same"), admin_key=SecretStr("same"))


def test_state_round_trips_through_json() -> None:
    state = StoreState(generation=3, serving="a" * 64, history=["b" * 64], refused={"c" * 64: "why"})
    assert StoreState.from_json(state.to_json()) == state


@pytest.mark.timeout(120)
def test_two_workers_follow_swaps_under_load_without_a_failed_request(versions: Versions, tmp_path: Path) -> None:
    """A real uvicorn with two worker processes under steady requests while the state swaps between two good
    versions and a corrupt and a too-weak version are published and promoted: every answer is 200 from one of
    the two good versions, /readyz never fails, and both workers serve the final version soon after."""
    env = {"FASHION_MODEL_STORE": str(versions.store.root), "FASHION_DEVICE": "cpu", "FASHION_MODEL_POLL_S": "0.1"}
    with run_server(env, tmp_path, "--workers", "2") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        answers: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                response = http.post("/predict", files={"file": ("g.png", PNG, "image/png")})
                answers.append((response.status_code, response.headers.get("X-Model-Version")))
                answers.append((http.get("/readyz").status_code, None))

        clients = [threading.Thread(target=load) for _ in range(3)]
        for thread in clients:
            thread.start()
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(versions.store.path_of(versions.good).read_bytes()[:5000])
        for step, digest in enumerate([versions.other, versions.good, versions.other, versions.good, versions.other]):
            versions.store.update_state(lambda state, digest=digest: activated(state, digest, "swap test"))
            if step == 2:
                assert not publish(versions.store, broken, promote=True).promoted
                assert not publish(versions.store, make_artifact(tmp_path, 9, accuracy=0.2), promote=True).promoted
            time.sleep(0.4)
        wait_for(lambda: answers[-1][1] == versions.other[:12], "the final version to answer")
        stop.set()
        for thread in clients:
            thread.join(30)
        final = [http.post("/predict", files={"file": ("g.png", PNG, "image/png")}) for _ in range(10)]
    assert {(status, version) for status, version in answers} <= {
        (200, versions.good[:12]),
        (200, versions.other[:12]),
        (200, None),
    }
    assert {version for _, version in answers} == {versions.good[:12], versions.other[:12], None}
    assert {response.headers["X-Model-Version"] for response in final} == {versions.other[:12]}
    # Each worker loaded a version at start and swapped at least once (a late starter may skip the early swaps);
    # the refused versions were never named by the state, so no worker tried them.
    assert server.log().count("serving version") >= 4 and "refused" not in server.log()


def test_the_store_wins_over_the_model_path(
    make_client: Callable[..., TestClient], versions: Versions, artifact_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    client = make_client(store_settings(versions.store, model_path=artifact_path))
    assert predicted_version(client) == versions.good[:12]
    assert "FASHION_MODEL_STORE is set, so FASHION_MODEL_PATH" in capfd.readouterr().err


def test_the_open_inference_protocol_names_the_version_too(
    make_client: Callable[..., TestClient], versions: Versions
) -> None:
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}
    for digest in (versions.good, versions.other):
        if digest != versions.good:
            assert client.post(f"/models/{digest[:12]}/activate", headers=admin()).status_code == 200
        response = client.post("/v2/models/fashion-mnist/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == response.json()["model_version"] == digest[:12]


def test_a_store_this_server_cannot_write_refuses_changes_in_words(
    make_client: Callable[..., TestClient], versions: Versions
) -> None:
    """The Kubernetes pods mount the store read-only: a change is a 409 that says so, and serving goes on."""
    client = make_client(store_settings(versions.store, admin_key=SecretStr(ADMIN)))
    lock = versions.store.root / ".state.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()  # the lock cannot be opened for writing (as root, chmod would not stop a write)
    for response in (
        client.post(f"/models/{versions.other[:12]}/activate", headers=admin()),
        client.put(f"/models/{versions.other[:12]}/canary", headers=admin(), json={"percent": 10}),
        client.post(f"/models/{versions.weak[:12]}/activate", headers=admin()),  # refused; the refusal unrecorded
    ):
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert "cannot be written from here" in message or "is refused" in message
        assert str(versions.store.root) not in message
    assert versions.store.read_state().serving == versions.good
    assert predicted_version(client) == versions.good[:12]
    assert client.get("/models").status_code == 200
