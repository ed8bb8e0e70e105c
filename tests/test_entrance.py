"""The /predict entrance and the /predict route are one behaviour: generated requests get the same answer both ways.

Each request goes to two apps over the same model, one with the early entrance (as shipped) and one without
(the FastAPI route alone); status, headers and body must be identical once the measured ``inference_ms`` is
set aside. The request id is sent, so it is the same on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from models import build_metadata, save_artifact
from tests.conftest import garment, image_bytes, make_model

KEY = "s3cret"
PNG = image_bytes(garment(), "PNG")
LIGHT_JPEG = image_bytes(garment((60, 40), mode="RGB", light_background=True), "JPEG")
NOT_AN_IMAGE = b"%PDF-1.4 not an image"
BOUNDARY = "entrance7f3a"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, tuple[TestClient, TestClient]]]:
    """For keyless and keyed settings: (entrance, route-only) clients over the same artifact."""
    path = tmp_path_factory.mktemp("entrance") / "model.safetensors"
    model = make_model()
    save_artifact(path, model, build_metadata(model.state_dict()))
    base = Settings(model_path=Path(path), device="cpu", max_images_per_request=3, log_level="error")
    clients: dict[bool, tuple[TestClient, TestClient]] = {}
    for keyed in (False, True):
        configured = base.model_copy(update={"api_key": SecretStr(KEY) if keyed else None})
        both = (TestClient(create_app(configured)), TestClient(create_app(configured, predict_entrance=False)))
        for client in both:
            client.__enter__()
        clients[keyed] = both
    yield clients
    for both in clients.values():
        for client in both:
            client.__exit__(None, None, None)


field_names = st.sampled_from(["file", "files", "FILE", "File", "image", "files[]"])
images = st.sampled_from([PNG, LIGHT_JPEG, NOT_AN_IMAGE, b"", PNG[:40]])
filenames = st.one_of(st.none(), st.sampled_from(["g.png", "a b.jpg", "ü.png", "../x.png", ""]))
parts = st.lists(st.tuples(field_names, filenames, images), min_size=0, max_size=4)
query_values = {
    "top_k": st.sampled_from(["1", "3", "10", "0", "11", "x", "", "٣"]),
    "invert": st.sampled_from(["auto", "true", "false", "TRUE", "maybe"]),
    "return_input": st.sampled_from(["true", "false", "1", "no", "perhaps"]),
    "other": st.just("ignored"),
}
queries = st.lists(st.sampled_from(sorted(query_values)), max_size=4).flatmap(
    lambda names: st.tuples(*(st.tuples(st.just(n), query_values[n]) for n in names))
)
authorizations = st.lists(
    st.sampled_from([f"Bearer {KEY}", "Bearer wrong", f"bearer  {KEY} ", "Basic czNjcmV0", f"Bearer {KEY}x", ""]),
    max_size=2,
)
raw_types = st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain", ""])


def multipart(chosen: list[tuple[str, str | None, bytes]]) -> bytes:
    chunks = []
    for name, filename, data in chosen:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def assert_same_answer(
    clients: tuple[TestClient, TestClient], url: str, headers: list[tuple[str, str]], body: bytes
) -> httpx.Response:
    answers = [client.post(url, content=body, headers=headers) for client in clients]
    # content-length follows the body, whose inference_ms is measured, not computed: compared through the body.
    entrance, route = (
        [(k, v) for k, v in a.headers.multi_items() if k not in ("date", "content-length")] for a in answers
    )
    bodies = []
    for answer in answers:
        document = answer.json()
        if answer.status_code == 200:
            document.pop("inference_ms")
        bodies.append(document)
    assert answers[0].status_code == answers[1].status_code, (answers[0].text, answers[1].text)
    assert entrance == route
    assert bodies[0] == bodies[1]
    return answers[0]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    keyed=st.booleans(),
    chosen=parts,
    query=queries,
    authorization=authorizations,
    raw=st.one_of(st.none(), st.tuples(raw_types, images)),
)
def test_entrance_and_route_give_the_same_answer(
    pairs: dict[bool, tuple[TestClient, TestClient]],
    keyed: bool,
    chosen: list[tuple[str, str | None, bytes]],
    query: tuple[tuple[str, str], ...],
    authorization: list[str],
    raw: tuple[str, bytes] | None,
) -> None:
    headers = [("X-Request-ID", "parity-check")] + [("Authorization", value) for value in authorization]
    if raw is None:
        headers.append(("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"))
        body = multipart(chosen)
    else:
        headers.append(("Content-Type", raw[0]))
        body = raw[1]
    url = "/predict" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    assert_same_answer(pairs[keyed], url, headers, body)


def test_a_part_named_FILE_is_not_file_either_way(pairs: dict[bool, tuple[TestClient, TestClient]]) -> None:
    """Form field names are case-sensitive (RFC 7578): the fast lane once took 'FILE' as 'file'."""
    headers = [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"), ("X-Request-ID", "upper")]
    answer = assert_same_answer(pairs[False], "/predict", headers, multipart([("FILE", "g.png", PNG)]))
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "missing_field"


def test_two_authorization_headers_are_refused_either_way(pairs: dict[bool, tuple[TestClient, TestClient]]) -> None:
    """A wrong key then the right one: the fast lane once read the last header and let it in."""
    headers = [
        ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
        ("Authorization", "Bearer wrong"),
        ("Authorization", f"Bearer {KEY}"),
        ("X-Request-ID", "twice"),
    ]
    answer = assert_same_answer(pairs[True], "/predict", headers, multipart([("file", "g.png", PNG)]))
    assert answer.status_code == 401
    assert answer.json()["error"] == {
        "code": "unauthorized",
        "message": "missing or wrong API key: send one Authorization header",
        "request_id": "twice",
    }
    one = [headers[0], *headers[2:]]
    assert assert_same_answer(pairs[True], "/predict", one, multipart([("file", "g.png", PNG)])).status_code == 200
