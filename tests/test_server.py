"""The app in a real uvicorn process: what a deployed server does on the wire."""

import socket
import time
from pathlib import Path

import httpx

from tests.conftest import LiveServer, garment, image_bytes, run_server


def test_uvicorn_serves_predict_and_docs(live_server: LiveServer) -> None:
    files = {"file": ("g.png", image_bytes(garment(), "PNG"), "image/png")}
    response = httpx.post(live_server.url + "/predict", files=files, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    assert abs(sum(response.json()["probabilities"].values()) - 1) < 1e-5
    assert httpx.get(live_server.url + "/docs", timeout=10).status_code == 200


def test_inference_time_is_measured_below_a_millisecond_under_uvloop(live_server: LiveServer) -> None:
    # uvloop's loop.time() moves in millisecond steps: a ~50 us forward pass timed with it reads 0.
    files = {"file": ("g.png", image_bytes(garment(), "PNG"), "image/png")}
    times = [httpx.post(live_server.url + "/predict", files=files, timeout=10).json()["inference_ms"] for _ in range(5)]
    assert all(0 < ms < 1000 for ms in times), times


def test_uvicorn_cuts_off_oversized_streamed_body_before_it_ends(artifact_path: Path, tmp_path: Path) -> None:
    env = {"FASHION_MODEL_PATH": str(artifact_path), "FASHION_MAX_UPLOAD_BYTES": "100000"}
    with run_server(env, tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"\0" * 16384
            sent, reply = 0, b""
            sock.settimeout(0.05)
            for _ in range(1000):  # up to 16 MB, but the server must answer after ~100 kB
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                except OSError:
                    break
                try:
                    reply += sock.recv(4096)
                except TimeoutError:
                    continue
                if reply:
                    break
            sock.settimeout(10)
            deadline = time.monotonic() + 10
            while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
                reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 2_000_000


def test_openapi_documents_errors_and_upload_body(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert {"400", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "multipart/form-data" in predict["requestBody"]["content"]
    for path in ("/model", "/model/params", "/healthz", "/readyz"):
        assert path in schema["paths"]
