"""Canary, shadow and pinning (app/traffic.py, app/service.py's choose_service, app/routes/traffic.py)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from app.config import Settings
from app.predictor import PixelBatch
from models.publishing import publish
from models.store import (
    ModelStore,
    NotInRole,
    RoleConflict,
    StoreState,
    Traffic,
    activated,
    rolled_back,
    with_traffic,
    without_traffic,
)
from tests.conftest import BAD_VERSION_NAMES, image_bytes, make_artifact, metric_sample, wait_for
from tests.test_lifecycle import ADMIN, PNG, admin, store_settings

ROLES = ["canary", "shadow"]


@dataclasses.dataclass
class Store:
    store: ModelStore
    good: str  # serving after setup
    other: str  # a second good version with other weights, available
    spare: str  # a third good version, available (never loaded unless named)
    twin: str  # the serving version's weights in another file (another recorded accuracy): agrees on every image
    weak: str  # below the minimum accuracy: refused

    def settings(self, **changes: object) -> Settings:
        return store_settings(self.store, **({"admin_key": SecretStr(ADMIN)} | changes))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Published once (each publish validates its version); every test gets a copy of its own."""
    directory = tmp_path_factory.mktemp("traffic")
    models = ModelStore(directory / "store")
    good = publish(models, make_artifact(directory, 1, accuracy=0.93)).digest
    other = publish(models, make_artifact(directory, 2, accuracy=0.93), promote=False).digest
    spare = publish(models, make_artifact(directory, 4, accuracy=0.93), promote=False).digest
    twin = publish(models, make_artifact(directory, 1, accuracy=0.94), promote=False).digest
    weak = publish(models, make_artifact(directory, 3, accuracy=0.5), promote=False).digest
    return Store(models, good, other, spare, twin, weak)


@pytest.fixture
def store(published: Store, tmp_path: Path) -> Store:
    shutil.copytree(published.store.root, tmp_path / "store")
    return dataclasses.replace(published, store=ModelStore(tmp_path / "store"))


def change(client: TestClient, method: str, version: str, role: str, **kwargs: Any) -> httpx.Response:
    return client.request(method, f"/models/{version}/{role}", **kwargs)


def start(client: TestClient, digest: str, role: str, percent: float) -> httpx.Response:
    response = change(client, "PUT", digest[:12], role, json={"percent": percent}, headers=admin())
    assert response.status_code == 200, response.text
    return response


def predict(client: TestClient, png: bytes = PNG, pin: str | None = None) -> dict[str, Any]:
    headers = {"X-Model-Version": pin} if pin else {}
    response = client.post("/predict", files={"file": ("g.png", png, "image/png")}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["X-Model-Version"] == body["model_version"]
    return body


def listing(client: TestClient) -> dict[str, Any]:
    response = client.get("/models")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def states(client: TestClient) -> dict[str, tuple[str, bool]]:
    return {entry["version"]: (entry["state"], entry["loaded"]) for entry in listing(client)["versions"]}


def metric(client: TestClient, name: str, version: str | None = None) -> float:
    return metric_sample(client, name, {"version": version} if version else None)


def noise_pngs(count: int) -> list[bytes]:
    """Varied images, so two versions with different weights disagree on some and agree on others."""
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
    return [image_bytes(Image.fromarray(image.numpy(), mode="L"), "PNG") for image in images]


def test_traffic_changes_are_off_without_an_admin_key(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store_settings(store.store))
    for role in ROLES:
        for method, body in (("PUT", {"percent": 10}), ("DELETE", None)):
            response = change(client, method, store.other[:12], role, json=body, headers=admin())
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "forbidden"
    assert store.store.read_state().canary is None and store.store.read_state().shadow is None


def test_traffic_changes_need_the_admin_key(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store.settings(api_key=SecretStr("api-key")))
    for headers in ({}, admin("wrong"), admin("api-key"), {"Authorization": ADMIN}):
        for role in ROLES:
            for method, body in (
                ("PUT", b'{"percent": 10}'),
                ("PUT", b'{"percent": 500}'),
                ("PUT", b"{no"),
                ("DELETE", None),
            ):
                response = change(client, method, store.other[:12], role, content=body, headers=headers)
                assert response.status_code == 401, (headers, response.text)  # before the body is looked at
                assert response.json()["error"]["message"].startswith("missing or wrong admin key")
    assert store.store.read_state().canary is None and store.store.read_state().shadow is None


def test_a_traffic_version_is_hex_digits_of_a_stored_version(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(store.settings())
    for version, status in BAD_VERSION_NAMES:
        for role in ROLES:
            for method, body in (("PUT", {"percent": 10}), ("DELETE", None)):
                response = change(client, method, version, role, json=body, headers=admin())
                assert response.status_code == status, (version, method, response.text)
    assert store.store.read_state().canary is None and store.store.read_state().shadow is None


def test_percent_is_above_0_and_at_most_100(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store.settings())
    bodies = [{"percent": 0}, {"percent": -5}, {"percent": 100.5}, {"percent": "ten"}, {}, None, "{not json", [10]]
    for body in bodies:
        for role in ROLES:
            content = body.encode() if isinstance(body, str) else None
            json_body = None if isinstance(body, str) else body
            response = change(client, "PUT", store.other[:12], role, json=json_body, content=content, headers=admin())
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"] == "validation_error"
            assert response.json()["error"]["message"].startswith("body")
    assert store.store.read_state().canary is None and store.store.read_state().shadow is None


def test_a_version_has_one_role_and_activating_it_ends_its_role(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(store.settings())
    for role in ROLES:
        response = change(client, "PUT", store.good[:12], role, json={"percent": 10}, headers=admin())
        assert response.status_code == 409
        assert (
            response.json()["error"]["message"] == f"version {store.good[:12]} is serving: it cannot also be the {role}"
        )
    response = change(client, "PUT", store.weak[:12], "canary", json={"percent": 10}, headers=admin())
    assert response.status_code == 409 and "is refused: its recorded accuracy 0.5000" in response.text
    assert start(client, store.other, "canary", 10).json() | {"generation": 0} == {
        "role": "canary",
        "version": store.other[:12],
        "percent": 10.0,
        "serving": store.good[:12],
        "generation": 0,
    }
    response = change(client, "PUT", store.other[:12], "shadow", json={"percent": 10}, headers=admin())
    assert response.status_code == 409 and "is the canary: stop that first" in response.text
    response = change(client, "DELETE", store.other[:12], "shadow", headers=admin())
    assert response.status_code == 404 and response.json()["error"]["message"] == (
        f"version {store.other[:12]} is not the shadow"
    )
    assert client.post(f"/models/{store.other[:12]}/activate", headers=admin()).status_code == 200
    assert store.store.read_state().canary is None and listing(client)["canary"] is None
    assert states(client)[store.other[:12]] == ("serving", True)
    assert states(client)[store.good[:12]] == ("available", False)  # released: no role names it


def test_the_canary_answers_its_share_of_requests_until_deleted(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(store.settings())
    start(client, store.other, "canary", 25)
    assert listing(client)["canary"] == {"version": store.other[:12], "percent": 25.0, "answered": 0}
    assert states(client)[store.other[:12]] == ("canary", True)
    answers = [predict(client)["model_version"] for _ in range(400)]
    assert set(answers) == {store.good[:12], store.other[:12]}
    assert 0.15 <= answers.count(store.other[:12]) / len(answers) <= 0.35  # 25% +- 4.6 standard deviations
    canary_answers = answers.count(store.other[:12])
    assert listing(client)["canary"]["answered"] == canary_answers
    assert metric(client, "fashion_predictions_by_version_total", store.other[:12]) == canary_answers
    assert metric(client, "fashion_predictions_by_version_total", store.good[:12]) == 400 - canary_answers
    start(client, store.other, "canary", 50)  # a new share: this worker's tally goes on
    assert listing(client)["canary"] == {"version": store.other[:12], "percent": 50.0, "answered": canary_answers}
    response = change(client, "DELETE", store.other[:12], "canary", headers=admin())
    assert response.status_code == 200 and response.json()["percent"] is None
    assert {predict(client)["model_version"] for _ in range(30)} == {store.good[:12]}
    assert listing(client)["canary"] is None and store.store.read_state().canary is None
    assert states(client)[store.other[:12]] == ("available", False)


def test_a_pinned_version_answers_whatever_the_canary(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store.settings())
    start(client, store.other, "canary", 50)
    assert {predict(client, pin=store.other[:12])["model_version"] for _ in range(20)} == {store.other[:12]}
    assert {predict(client, pin=store.good)["model_version"] for _ in range(20)} == {store.good[:12]}
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}
    for digest in (store.good, store.other):
        response = client.post("/v2/models/fashion-mnist/infer", json=body, headers={"X-Model-Version": digest[:20]})
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == response.json()["model_version"] == digest[:12]


@pytest.mark.parametrize(
    ("pin", "status"),
    [
        ("spare", 404),  # in the store, not loaded
        ("weak", 404),  # refused
        ("0123456789ab", 404),  # in no store
        ("not-a-version", 422),
        ("ABCDEF012345", 422),
        ("abc123", 422),
        ("twice", 422),
    ],
)
def test_a_pin_names_a_loaded_version(
    make_client: Callable[..., TestClient], store: Store, pin: str, status: int
) -> None:
    client = make_client(store.settings())
    start(client, store.other, "canary", 50)
    named = {"spare": store.spare[:12], "weak": store.weak[:12]}.get(pin, pin)
    headers = [("X-Model-Version", store.good[:12])] * 2 if pin == "twice" else [("X-Model-Version", named)]
    response = client.post("/predict", files={"file": ("g.png", PNG, "image/png")}, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == {404: "model_not_found", 422: "validation_error"}[status]
    if status == 404:
        loaded = ", ".join(sorted([store.good[:12], store.other[:12]]))
        assert error["message"] == f"version {named} is not loaded here (loaded: {loaded})"


def test_a_pin_names_the_one_version_of_a_single_file(client: TestClient) -> None:
    version = predict(client)["model_version"]
    assert predict(client, pin=version)["model_version"] == version
    response = client.post("/predict", files={"file": ("g.png", PNG)}, headers={"X-Model-Version": "0" * 12})
    assert response.status_code == 404


def shadow_tally(client: TestClient) -> dict[str, Any]:
    shadow: dict[str, Any] = listing(client)["shadow"]
    return shadow


@pytest.mark.parametrize("which", ["twin", "other"])
def test_the_shadow_compares_answers_and_never_answers(
    make_client: Callable[..., TestClient], store: Store, which: str
) -> None:
    client = make_client(store.settings())
    shadow = getattr(store, which)
    start(client, shadow, "shadow", 100)
    assert states(client)[shadow[:12]] == ("shadow", True)
    pngs = noise_pngs(16)
    served = [predict(client, png) for png in pngs]
    assert {body["model_version"] for body in served} == {store.good[:12]}
    wait_for(lambda: shadow_tally(client)["compared"] == len(pngs), "the shadow to compare every answer")
    # What the shadow version says of each image, asked directly: the agreement the shadow must have counted.
    shadowed = [predict(client, png, pin=shadow[:12])["class_index"] for png in pngs]
    agreed = sum(body["class_index"] == other for body, other in zip(served, shadowed, strict=True))
    assert (agreed == len(pngs)) == (which == "twin")  # the same weights agree on all; others do not
    tally = shadow_tally(client)
    assert tally | {"latency_ms": None} == {
        "version": shadow[:12],
        "percent": 100.0,
        "compared": len(pngs),
        "agreement": pytest.approx(agreed / len(pngs)),
        "skipped": 0,
        "latency_ms": None,
    }
    assert tally["latency_ms"] > 0
    assert metric(client, "fashion_shadow_compared_total", shadow[:12]) == len(pngs)
    assert metric(client, "fashion_shadow_agreed_total", shadow[:12]) == agreed
    assert metric(client, "fashion_shadow_seconds_count") == len(pngs)
    # The shadow's runs are not answers: only the pinned requests count as the shadow version's predictions.
    assert metric(client, "fashion_predictions_by_version_total", shadow[:12]) == len(pngs)
    # The drift gauges count answers (served and pinned); the forward passes' sizes count the shadow's work too.
    assert metric(client, "fashion_images_total") == 2 * len(pngs)
    assert metric(client, "fashion_batch_size_sum") == 3 * len(pngs)


def test_the_shadow_is_skipped_while_live_requests_are_in_the_model(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    """One request holds the serving model while three queue behind it: the first answer comes out while the
    three are in the next forward pass, so its shadow run is skipped; the last of the three finds the model free."""
    client = make_client(store.settings())
    start(client, store.other, "shadow", 100)
    serving = client.app.state.service  # type: ignore[attr-defined]
    real_predict, entered, gate = serving.batcher._predict, threading.Event(), threading.Event()

    def gated_predict(pixels: PixelBatch) -> object:
        entered.set()
        assert gate.wait(10)
        return real_predict(pixels)

    serving.batcher._predict = gated_predict
    answers: list[str] = []
    first = threading.Thread(target=lambda: answers.append(predict(client)["model_version"]))
    first.start()
    assert entered.wait(10)
    queued = [threading.Thread(target=lambda: answers.append(predict(client)["model_version"])) for _ in range(3)]
    for thread in queued:
        thread.start()
    wait_for(lambda: serving.batcher.queued_images == 3, "three requests queued behind the first")
    gate.set()
    for thread in [first, *queued]:
        thread.join(10)
    assert answers == [store.good[:12]] * 4
    wait_for(lambda: shadow_tally(client)["compared"] + shadow_tally(client)["skipped"] == 4, "every answer tallied")
    tally = shadow_tally(client)
    assert tally["skipped"] >= 1 and tally["compared"] >= 1, tally
    assert metric(client, "fashion_shadow_skipped_total", store.other[:12]) == tally["skipped"]


def test_a_failing_shadow_never_touches_the_answers(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store.settings())
    start(client, store.other, "shadow", 100)
    shadow = client.app.state.follower.shadow  # type: ignore[attr-defined]

    def broken(pixels: PixelBatch) -> object:
        raise RuntimeError("a bug in the shadow version")

    shadow.service.batcher._predict = broken
    assert {predict(client)["model_version"] for _ in range(5)} == {store.good[:12]}
    wait_for(lambda: shadow_tally(client)["skipped"] == 5, "the failed runs counted as skipped")
    assert shadow_tally(client)["compared"] == 0


def test_delete_stops_the_shadow(make_client: Callable[..., TestClient], store: Store) -> None:
    client = make_client(store.settings())
    start(client, store.other, "shadow", 100)
    for _ in range(3):
        predict(client)
    wait_for(lambda: shadow_tally(client)["compared"] == 3, "three shadow runs")
    response = change(client, "DELETE", store.other[:12], "shadow", headers=admin())
    assert response.status_code == 200, response.text
    assert response.json() | {"generation": 0} == {
        "role": "shadow",
        "version": store.other[:12],
        "percent": None,
        "serving": store.good[:12],
        "generation": 0,
    }
    assert listing(client)["shadow"] is None and store.store.read_state().shadow is None
    assert client.app.state.service.mirror is None  # type: ignore[attr-defined]
    for _ in range(5):
        predict(client)
    assert metric(client, "fashion_shadow_compared_total", store.other[:12]) == 3
    assert states(client)[store.other[:12]] == ("available", False)


def test_a_worker_follows_a_change_another_worker_made(make_client: Callable[..., TestClient], store: Store) -> None:
    """The state changed on disk (another worker's or replica's admin call): this worker follows within its poll
    interval, and a role naming a version it refuses gets no traffic while it keeps serving."""
    client = make_client(store.settings())
    store.store.update_state(lambda state: with_traffic(state, "canary", store.other, 100))
    wait_for(lambda: predict(client)["model_version"] == store.other[:12], "the canary to answer")
    store.store.update_state(lambda state: with_traffic(state, "canary", store.weak, 100))
    wait_for(lambda: states(client)[store.other[:12]] == ("available", False), "the old canary to be released")
    assert {predict(client)["model_version"] for _ in range(10)} == {store.good[:12]}
    assert states(client)[store.weak[:12]] == ("refused", False)


def test_the_open_inference_protocol_serves_each_loaded_version(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(store.settings())
    start(client, store.other, "canary", 10)
    start(client, store.twin, "shadow", 100)
    loaded = {store.good[:12], store.other[:12], store.twin[:12]}
    index = client.post("/v2/repository/index").json()
    assert sorted(index, key=lambda entry: entry["version"]) == [
        {"name": "fashion-mnist", "version": version, "state": "READY", "reason": ""} for version in sorted(loaded)
    ]
    model = "/v2/models/fashion-mnist"
    assert client.get(model).json()["versions"] == [store.good[:12], *sorted(loaded - {store.good[:12]})]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}
    for version in loaded:
        assert client.get(f"{model}/versions/{version}").json()["versions"][0] == version
        assert client.get(f"{model}/versions/{version}/ready").json() == {"name": "fashion-mnist", "ready": True}
        response = client.post(f"{model}/versions/{version}/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == response.json()["model_version"] == version
    for version in (store.spare[:12], "not-a-version", "ABCDEF012345"):  # in the store, not loaded; not versions
        response = client.post(f"{model}/versions/{version}/infer", json=body)
        assert response.status_code == 404, response.text
        assert response.json()["error"].startswith(f"model 'fashion-mnist' has no loaded version '{version}'; loaded: ")
    assert client.get(f"{model}/versions/{store.spare[:12]}/ready").status_code == 404


def test_state_transitions_keep_one_role_per_version() -> None:
    """models/store.py's rules, whoever calls them (the admin routes, a script): the pure functions alone."""
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    state = activated(StoreState(serving=a), b, "activate b")
    state = with_traffic(dataclasses.replace(state, refused={c: "was weak"}), "canary", c, 10)
    assert (state.canary, state.refused) == (Traffic(c, 10.0), {})  # validated again: no longer refused
    with pytest.raises(RoleConflict, match="is serving"):
        with_traffic(state, "shadow", b, 50)
    with pytest.raises(RoleConflict, match="is the canary"):
        with_traffic(state, "shadow", c, 50)
    state = with_traffic(state, "shadow", a, 50)
    assert rolled_back(state).serving == a and rolled_back(state).shadow is None  # rolling back to it ends the role
    assert activated(state, c, "promote the canary").canary is None
    with pytest.raises(NotInRole, match="is not the canary"):
        without_traffic(state, "canary", a)
    assert without_traffic(state, "shadow", a).shadow is None and without_traffic(state, "shadow", a).canary
    assert StoreState.from_json(state.to_json()) == state
