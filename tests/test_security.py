"""Who may call what, which headers cross origins, and what the logs record (and never record)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.logs import ACCESS_LOGGER, AccessBufferingHandler, JsonFormatter
from tests.conftest import garment, image_bytes, run_server, wait_for

API_KEY = "s3cret-Key-that-must-never-be-logged-7f3a"
PROTECTED = [
    ("POST", "/predict"),
    ("GET", "/model"),
    ("GET", "/model/params"),
]


def png() -> bytes:
    return image_bytes(garment(), "PNG")


def call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    if method == "POST":
        return client.post(path, files={"file": ("g.png", png(), "image/png")}, headers=headers)
    return client.get(path, headers=headers)


@pytest.fixture
def keyed_settings(artifact_path: Path) -> Settings:
    return Settings(model_path=artifact_path, device="cpu", api_key=API_KEY, log_level="debug")


@contextlib.contextmanager
def app_logs() -> Iterator[io.StringIO]:
    """Every record of the `app` loggers, formatted by the app's JSON formatter (enter after create_app,
    which replaces the handlers)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("app")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def log_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {API_KEY}", f"Bearer {API_KEY}x", f"Bearer {API_KEY[:-1]}", "Bearer", ""],
)
def test_protected_route_without_the_right_key_is_401(
    make_client: Callable[..., TestClient],
    keyed_settings: Settings,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    client = make_client(keyed_settings)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = call(client, method, path, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert "Authorization: Bearer" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_route_with_the_key_is_200(
    make_client: Callable[..., TestClient], keyed_settings: Settings, method: str, path: str
) -> None:
    client = make_client(keyed_settings)
    for scheme in ("Bearer", "bearer"):
        response = call(client, method, path, {"Authorization": f"{scheme} {API_KEY}"})
        assert response.status_code == 200, response.text


UNAUTHORIZED_MESSAGE = "missing or wrong API key: send 'Authorization: Bearer <key>'"
WRONG_KEYS = [None, "Bearer wrong-key", f"Bearer {API_KEY}x", "Bearer", f"Basic {API_KEY}"]
# The fast lane (app/fastlane.py) answers POST /predict without a query string; any query string goes to the route.
BOTH_PATHS = ["", "?top_k=3"]


def assert_unauthorized(response: httpx.Response, message: str = UNAUTHORIZED_MESSAGE) -> None:
    """The REST API's 401, exactly."""
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    request_id = response.headers["x-request-id"]
    assert response.json() == {"error": {"code": "unauthorized", "message": message, "request_id": request_id}}


def v2_keyed_routes(client: TestClient) -> list[tuple[str, str]]:
    """The /v2 routes behind the key, with the model's real version, so only the key can make them fail."""
    version = client.get("/readyz").json()["model_version"]
    model = "/v2/models/fashion-mnist"
    return [
        ("GET", model),
        ("GET", f"{model}/versions/{version}"),
        ("POST", f"{model}/infer"),
        ("POST", f"{model}/versions/{version}/infer"),
    ]


def call_v2(client: TestClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "POST":
        pixels = {"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}
        return client.post(path, json={"inputs": [pixels]}, headers=headers)
    return client.get(path, headers=headers)


@pytest.mark.parametrize("authorization", WRONG_KEYS)
def test_v2_metadata_and_infer_without_the_right_key_are_401(
    make_client: Callable[..., TestClient], keyed_settings: Settings, authorization: str | None
) -> None:
    """Every keyed /v2 route, versioned ones included, in the protocol's error shape; the right key opens each."""
    client = make_client(keyed_settings)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in v2_keyed_routes(client):
        denied = call_v2(client, method, path, headers)
        assert denied.status_code == 401, path
        assert denied.headers["www-authenticate"] == "Bearer"
        assert denied.json() == {"error": UNAUTHORIZED_MESSAGE}
        assert call_v2(client, method, path, {"Authorization": f"Bearer {API_KEY}"}).status_code == 200, path


def test_v2_unknown_model_or_version_is_401_before_404(
    make_client: Callable[..., TestClient], keyed_settings: Settings
) -> None:
    """Without the key, nothing is told about which models or versions exist."""
    client = make_client(keyed_settings)
    for method, path in [("GET", "/v2/models/other"), ("POST", "/v2/models/fashion-mnist/versions/0/infer")]:
        denied = call_v2(client, method, path, {"Authorization": "Bearer wrong-key"})
        assert (denied.status_code, denied.json()) == (401, {"error": UNAUTHORIZED_MESSAGE}), path
        assert call_v2(client, method, path, {"Authorization": f"Bearer {API_KEY}"}).status_code == 404, path


@pytest.mark.parametrize("query", BOTH_PATHS)
@pytest.mark.parametrize("authorization", WRONG_KEYS)
def test_raw_image_body_without_the_right_key_is_401(
    make_client: Callable[..., TestClient], keyed_settings: Settings, query: str, authorization: str | None
) -> None:
    client = make_client(keyed_settings)
    headers = {"Content-Type": "image/png"} | ({} if authorization is None else {"Authorization": authorization})
    assert_unauthorized(client.post(f"/predict{query}", content=png(), headers=headers))
    headers["Authorization"] = f"Bearer {API_KEY}"
    assert client.post(f"/predict{query}", content=png(), headers=headers).status_code == 200


@pytest.mark.parametrize("query", BOTH_PATHS)
def test_two_authorization_headers_wrong_then_right_are_401(
    make_client: Callable[..., TestClient], keyed_settings: Settings, query: str
) -> None:
    client = make_client(keyed_settings)
    headers = [("Authorization", "Bearer wrong-key"), ("Authorization", f"Bearer {API_KEY}")]
    response = client.post(f"/predict{query}", files={"file": ("g.png", png(), "image/png")}, headers=headers)
    assert_unauthorized(response, "missing or wrong API key: send one Authorization header")


@pytest.mark.parametrize("query", BOTH_PATHS)
def test_two_authorization_headers_right_then_wrong_are_401(
    make_client: Callable[..., TestClient], keyed_settings: Settings, query: str
) -> None:
    client = make_client(keyed_settings)
    headers = [("Authorization", f"Bearer {API_KEY}"), ("Authorization", "Bearer wrong-key")]
    response = client.post(f"/predict{query}", files={"file": ("g.png", png(), "image/png")}, headers=headers)
    assert_unauthorized(response, "missing or wrong API key: send one Authorization header")


@pytest.mark.parametrize("query", BOTH_PATHS)
def test_upper_case_file_field_is_a_missing_field(client: TestClient, query: str) -> None:
    """Form field names are case-sensitive (RFC 7578, and python-multipart behind the route): 'FILE' is not 'file'."""
    response = client.post(f"/predict{query}", files={"FILE": ("g.png", png(), "image/png")})
    assert response.status_code == 422
    message = "no image: send it in form field 'file' (or several in 'files')"
    request_id = response.headers["x-request-id"]
    assert response.json() == {"error": {"code": "missing_field", "message": message, "request_id": request_id}}


def test_probes_stay_open_when_a_key_is_set(make_client: Callable[..., TestClient], keyed_settings: Settings) -> None:
    client = make_client(keyed_settings)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_without_a_configured_key_nothing_asks_for_one(client: TestClient) -> None:
    for method, path in PROTECTED:
        assert call(client, method, path).status_code == 200, path


def test_api_key_never_appears_in_app_logs(make_client: Callable[..., TestClient], keyed_settings: Settings) -> None:
    client = make_client(keyed_settings)
    with app_logs() as logs:
        for authorization in (f"Bearer {API_KEY}", f"Bearer {API_KEY}-wrong", f"Basic {API_KEY}"):
            for method, path in PROTECTED:
                call(client, method, path, {"Authorization": authorization})
    lines = log_lines(logs)
    assert any(line.get("status") == 401 for line in lines)  # the rejections were logged...
    assert any(line.get("status") == 200 for line in lines)
    assert API_KEY not in logs.getvalue()  # ...without the key


@pytest.mark.slow
def test_api_key_never_appears_in_a_real_servers_output(artifact_path: Path, tmp_path: Path) -> None:
    """The whole process output (uvicorn's own logs too), at debug level, with right and wrong keys."""
    env = {"FASHION_MODEL_PATH": str(artifact_path), "FASHION_API_KEY": API_KEY, "FASHION_LOG_LEVEL": "debug"}
    with run_server(env, tmp_path, "--log-level", "debug") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for authorization in (f"Bearer {API_KEY}", f"Bearer {API_KEY}-wrong", "Bearer nope"):
                headers = {"Authorization": authorization}
                ok = authorization == f"Bearer {API_KEY}"
                assert http.get("/model", headers=headers).status_code == (200 if ok else 401)
                files = {"file": ("g.png", png(), "image/png")}
                assert http.post("/predict", files=files, headers=headers).status_code == (200 if ok else 401)
                http.post("/predict", content=b"junk", headers={**headers, "Content-Type": "image/png"})
                malformed = {**headers, "Content-Type": "multipart/form-data; boundary=b"}
                http.post("/predict", content=b"preamble\r\n--b\r\nbroken", headers=malformed)
        output = server.log()
    # The app's lines are JSON; the only plain text is uvicorn's own ("INFO:     Started server process").
    app_lines = [line for line in output.splitlines() if not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):", line)]
    entries = [json.loads(line) for line in app_lines]
    assert all(isinstance(entry, dict) for entry in entries)
    assert any(entry.get("route") == "/predict" for entry in entries)  # the access log was written...
    assert API_KEY not in output  # ...and the key is nowhere in it


def test_cors_is_off_by_default(client: TestClient) -> None:
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    preflight = client.options(
        "/predict", headers={**origin, "Access-Control-Request-Method": "POST"}
    )  # no CORS middleware: the route answers, and grants nothing
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_configured_origins(make_client: Callable[..., TestClient], artifact_path: Path) -> None:
    allowed = "https://app.example"
    client = make_client(Settings(model_path=artifact_path, device="cpu", cors_origins=[allowed]))
    preflight_headers = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    preflight = client.options("/predict", headers={"Origin": allowed, **preflight_headers})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = client.post("/predict", files={"file": ("g.png", png(), "image/png")}, headers={"Origin": allowed})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == allowed
    # A page on that origin may pin a version, and read which version and request answered it.
    pinning = {**preflight_headers, "Access-Control-Request-Headers": "x-model-version"}
    assert client.options("/predict", headers={"Origin": allowed, **pinning}).status_code == 200
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-model-version" in exposed and "x-request-id" in exposed

    other = {"Origin": "https://evil.example"}
    assert client.options("/predict", headers={**other, **preflight_headers}).status_code == 400
    assert "access-control-allow-origin" not in client.get("/healthz", headers=other).headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "trace-42.a_b"})
    assert response.headers["x-request-id"] == "trace-42.a_b"
    error = client.post("/predict", content=b"nope", headers={"X-Request-ID": "trace-43", "Content-Type": "image/png"})
    assert error.headers["x-request-id"] == "trace-43"
    assert error.json()["error"]["request_id"] == "trace-43"


@pytest.mark.parametrize("offered", [None, "", "x" * 65, "has space", "semi;colon", "ünï"])
def test_request_id_is_generated_when_absent_or_unsafe(client: TestClient, offered: str | None) -> None:
    headers = {} if offered is None else {"X-Request-ID": offered.encode()}
    first = client.get("/healthz", headers=headers).headers["x-request-id"]
    second = client.get("/healthz", headers=headers).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert first != second


def test_access_log_is_one_json_line_per_request_with_its_fields(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png(), "image/png")) for i in range(3)]
    with app_logs() as logs:
        client.post("/predict", files=files, headers={"X-Request-ID": "batch-of-three"})
        client.post("/predict", content=b"junk", headers={"X-Request-ID": "bad-one", "Content-Type": "image/png"})
        client.get("/healthz", headers={"X-Request-ID": "probe"})
        client.get("/no/such/route", headers={"X-Request-ID": "lost"})
    access = [line for line in log_lines(logs) if line["logger"] == "app.access"]
    by_id = {line["request_id"]: line for line in access}
    assert len(access) == len(by_id) == 4  # exactly one line per request
    batch = by_id["batch-of-three"]
    assert (batch["route"], batch["method"], batch["status"], batch["batch_size"]) == ("/predict", "POST", 200, 3)
    assert isinstance(batch["latency_ms"], float) and batch["latency_ms"] > 0
    assert (by_id["bad-one"]["status"], by_id["bad-one"]["route"]) == (415, "/predict")
    assert (by_id["probe"]["route"], by_id["probe"]["status"], by_id["probe"]["batch_size"]) == ("/healthz", 200, None)
    assert (by_id["lost"]["route"], by_id["lost"]["status"]) == ("unmatched", 404)
    for line in access:
        assert {"time", "level", "logger", "message"} <= set(line)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (image_bytes(garment((64, 64)), "PNG")[:-30], "image/png", 400),
        (b"plain text", "image/png", 415),
        (b"", "image/png", 400),
        (b"x", "text/plain", 415),
    ],
)
def test_bad_input_is_a_short_info_line_without_traceback(
    client: TestClient, body: bytes, content_type: str, status: int
) -> None:
    with app_logs() as logs:
        response = client.post("/predict", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    lines = log_lines(logs)
    assert all(line["level"] in ("info", "debug") for line in lines), lines
    assert not any("exception" in line or "Traceback" in str(line["message"]) for line in lines)
    rejected = [line for line in lines if line["logger"] == "app.errors"]
    assert len(rejected) == 1 and str(status) in str(rejected[0]["message"])
    assert len(str(rejected[0]["message"])) < 300


def test_every_torch_load_is_weights_only() -> None:
    """A full unpickle runs whatever code the file carries; only tensors may come out of torch.load."""
    root = Path(__file__).resolve().parent.parent
    calls = []
    for source in [*root.glob("app/**/*.py"), *root.glob("models/**/*.py"), *root.glob("training/**/*.py")]:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{source.relative_to(root)}:{node.lineno}", keywords.get("weights_only")))
    assert calls, "expected the artifact loader's torch.load"
    assert all(weights_only == "True" for _, weights_only in calls), calls


def test_access_lines_go_out_in_blocks_and_before_any_other_line() -> None:
    """Access lines wait for a block (or the interval); any other line first writes them, so the order holds."""

    class CountingStream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = CountingStream()
    handler = AccessBufferingHandler(stream, flush_s=0.2, max_bytes=10_000)
    handler.setFormatter(JsonFormatter())
    other = logging.getLogger("app.other.test-block")
    other.propagate, other.handlers = False, [handler]
    other.setLevel(logging.INFO)
    handler.emit(logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", None, None))
    handler.emit(logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", None, None))
    assert stream.getvalue() == ""  # pending
    other.warning("something else")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == [ACCESS_LOGGER, ACCESS_LOGGER, "app.other.test-block"]
    assert stream.writes == 1  # three lines, one write
    handler.emit(logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "late", None, None))
    wait_for(lambda: '"late"' in stream.getvalue(), "the interval to write the lone line", 5)
    assert stream.getvalue().count("\n") == 4  # the interval wrote the lone line, without another record
    for _ in range(200):  # a full block goes out at once
        handler.emit(logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "x" * 100, None, None))
    assert stream.getvalue().count("\n") >= 4 + 60
