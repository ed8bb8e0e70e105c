"""Faults: no model, a model that must exist, untrustworthy artifacts, and a model that fails mid-batch."""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from models import NeuralNetwork
from tests.conftest import garment, image_bytes, wait_for

ROOT = Path(__file__).resolve().parent.parent


def predict(client: TestClient, request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return client.post(
        "/predict", files={"file": ("g.png", image_bytes(garment(), "PNG"), "image/png")}, headers=headers
    )


def settings_for(path: Path) -> Settings:
    return Settings(model_path=path, device="cpu")


def assert_not_ready(client: TestClient, *fragments: str) -> None:
    """/readyz and every model route answer 503 naming the reason; liveness still answers."""
    assert client.get("/healthz").status_code == 200
    for response in (client.get("/readyz"), predict(client), client.get("/model"), client.get("/model/params")):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        error = response.json()["error"]
        assert error["code"] == "not_ready"
        assert error["message"].startswith("model not loaded: ")
        for fragment in fragments:
            assert fragment in error["message"], error["message"]


def test_missing_model_starts_and_answers_503_with_the_reason(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.safetensors"
    client = make_client(settings_for(missing))
    assert_not_ready(client, str(missing), "no such file", "python -m training")


def _header(path: Path) -> tuple[int, dict[str, object]]:
    size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return size, json.loads(path.read_bytes()[8 : 8 + size])


def _with_metadata(source: Path, target: Path, **changes: object) -> Path:
    """A copy of the artifact whose metadata document has ``changes`` (weights untouched)."""
    tensors = safetensors.torch.load_file(source)
    _, header = _header(source)
    document = json.loads(header["__metadata__"]["fashion_serve"])  # type: ignore[index]
    document.update(changes)
    safetensors.torch.save_file(tensors, target, metadata={"fashion_serve": json.dumps(document)})
    return target


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def _corrupt(kind: str, good: Path, tmp_path: Path) -> tuple[Path, str]:
    """An untrustworthy artifact of ``kind`` and the reason the server must give for refusing it."""
    data = good.read_bytes()
    target = tmp_path / f"{kind}.safetensors"
    if kind == "random-bytes":
        target.write_bytes(os.urandom(4096))
        return target, "not a readable safetensors file"
    if kind == "truncated":
        target.write_bytes(data[: len(data) // 2])
        return target, "not a readable safetensors file"
    if kind == "empty":
        target.write_bytes(b"")
        return target, "not a readable safetensors file"
    if kind == "flipped-weight-bit":
        flipped = bytearray(data)
        flipped[-5] ^= 0x10  # inside the last tensor's bytes, the header untouched
        target.write_bytes(bytes(flipped))
        return target, "weights checksum mismatch"
    if kind == "swapped-weights":
        tensors = safetensors.torch.load_file(good)
        tensors["linear_relu_stack.4.bias"] = torch.zeros_like(tensors["linear_relu_stack.4.bias"])
        _, header = _header(good)
        safetensors.torch.save_file(tensors, target, metadata=header["__metadata__"])  # type: ignore[arg-type]
        return target, "weights checksum mismatch"
    if kind == "no-metadata":
        safetensors.torch.save_file(safetensors.torch.load_file(good), target)
        return target, "no 'fashion_serve' metadata"
    if kind == "bad-metadata-json":
        safetensors.torch.save_file(safetensors.torch.load_file(good), target, metadata={"fashion_serve": "{nope"})
        return target, "metadata is not valid"
    if kind == "other-architecture":
        return _with_metadata(good, target, architecture="ResNet50"), "architecture 'ResNet50'"
    if kind == "future-format":
        return _with_metadata(good, target, format_version=99), "format version 99 is not supported"
    if kind == "wrong-class-count":
        return _with_metadata(good, target, class_names=["a", "b"]), "expected 10 class names, found 2"
    if kind == "class-names-not-a-list":
        return _with_metadata(good, target, class_names=10), "class_names must be a list of strings, not 10"
    if kind == "class-names-not-strings":
        names = list(range(10))
        return _with_metadata(good, target, class_names=names), "class_names must be a list of strings"
    if kind == "checksum-not-a-string":
        return _with_metadata(good, target, weights_sha256=1234), "weights checksum mismatch: metadata says sha256 1234"
    if kind == "wrong-shapes":
        tensors = {"linear_relu_stack.0.weight": torch.zeros(3, 3)}
        target = tmp_path / "shapes.pth"
        torch.save(tensors, target)
        return target, "do not fit"
    if kind == "pickle-with-code":
        target = tmp_path / "evil.pth"
        target.write_bytes(pickle.dumps({"linear_relu_stack.0.weight": _Evil()}))
        return target, "not a loadable weights-only state dict"
    raise AssertionError(kind)


CORRUPTIONS = [
    "random-bytes",
    "truncated",
    "empty",
    "flipped-weight-bit",
    "swapped-weights",
    "no-metadata",
    "bad-metadata-json",
    "other-architecture",
    "future-format",
    "wrong-class-count",
    "class-names-not-a-list",
    "class-names-not-strings",
    "checksum-not-a-string",
    "wrong-shapes",
    "pickle-with-code",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_untrustworthy_artifact_is_refused_with_file_and_reason(
    make_client: Callable[..., TestClient],
    artifact_path: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    path, reason = _corrupt(kind, artifact_path, tmp_path)
    client = make_client(settings_for(path))
    assert_not_ready(client, str(path), reason)
    assert "pwned" not in capfd.readouterr().out  # weights_only=True: the pickle's code never ran


def _start_uvicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "0"]
    return subprocess.run(
        command, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "flipped-weight-bit"])
def test_require_model_fails_start_up_with_the_message(artifact_path: Path, tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        path, reason = tmp_path / "absent.safetensors", "no such file"
    else:
        path, reason = _corrupt(kind, artifact_path, tmp_path)
    result = _start_uvicorn({"FASHION_MODEL_PATH": str(path), "FASHION_REQUIRE_MODEL": "true"})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"cannot start: {path}: {reason}" in output
    assert "Application startup failed" in output


class FlakyModel(torch.nn.Module):
    """Wraps the real model: the first forward pass waits for ``release``; the second raises."""

    def __init__(self, inner: NeuralNetwork) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(len(inputs))
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never released the first batch"
        if self.calls == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        output: torch.Tensor = self.inner(inputs)
        return output


@pytest.fixture
def app_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the app's loggers, which do not propagate to the root logger."""
    logger = logging.getLogger("app")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.timeout(120)
def test_model_failure_fails_only_its_batch_and_the_next_batch_works(
    client: TestClient, app_caplog: pytest.LogCaptureFixture
) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    predictor = service.predictor
    flaky = FlakyModel(predictor.model)
    predictor.model = flaky
    with ThreadPoolExecutor(max_workers=5) as pool:
        first = pool.submit(predict, client, "first")  # batch 1: holds the model
        assert flaky.entered.wait(60)
        doomed = [pool.submit(predict, client, f"doomed-{i}") for i in range(4)]  # queue up: batch 2
        wait_for(lambda: service.batcher.queued_images == 4, "four queued images", 60)
        flaky.release.set()
        assert first.result(60).status_code == 200
        for i, future in enumerate(doomed):
            response = future.result(60)
            assert response.status_code == 500
            error = response.json()["error"]
            assert (error["code"], error["request_id"]) == ("model_error", f"doomed-{i}")
            assert "retry" in error["message"]
            assert "CUDA" not in error["message"]  # internals stay in the log
            assert response.headers["x-request-id"] == f"doomed-{i}"
    assert flaky.batch_sizes == [1, 4]  # the four failed together, as one batch
    tracebacks = [record for record in app_caplog.records if record.exc_info]
    assert [record.getMessage() for record in tracebacks] == ["model failed on a batch of 4 images"]
    rejected = [r.getMessage() for r in app_caplog.records if r.name == "app.errors" and r.levelno == logging.WARNING]
    assert len(rejected) == 4 and all("500" in message for message in rejected)
    after = predict(client, "after")
    assert after.status_code == 200, after.text
    assert client.get("/readyz").status_code == 200
    assert flaky.batch_sizes == [1, 4, 1]


@pytest.mark.timeout(120)
def test_model_failure_without_batching_fails_only_that_request(
    make_client: Callable[..., TestClient], artifact_path: Path
) -> None:
    client = make_client(Settings(model_path=artifact_path, device="cpu", batching=False))
    predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
    flaky = FlakyModel(predictor.model)
    flaky.release.set()
    predictor.model = flaky
    assert predict(client).status_code == 200
    failed = predict(client, "unlucky")
    assert failed.status_code == 500
    assert failed.json() == {
        "error": {"code": "internal_error", "message": "internal server error", "request_id": "unlucky"}
    }
    assert failed.headers["x-request-id"] == "unlucky"
    assert predict(client).status_code == 200


class HungModel(torch.nn.Module):
    """Wraps the real model: the first forward pass hangs until ``release``; later ones work."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.release = threading.Event()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(60), "the test never released the model"
        output: torch.Tensor = self.inner(inputs)
        return output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("batching", [True, False])
def test_hung_model_answers_503_after_the_request_timeout_and_recovers(
    make_client: Callable[..., TestClient], artifact_path: Path, batching: bool
) -> None:
    settings = Settings(model_path=artifact_path, device="cpu", request_timeout_s=1.0, batching=batching)
    client = make_client(settings)
    predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
    hung = HungModel(predictor.model)
    predictor.model = hung
    try:
        response = predict(client, "stuck")
        assert response.status_code == 503, response.text
        assert response.headers["x-request-id"] == "stuck"
        error = response.json()["error"]
        assert (error["code"], error["request_id"]) == ("timeout", "stuck")
        assert "longer than 1 s" in error["message"]
        assert client.get("/healthz").status_code == 200  # the server answers while the model is stuck
    finally:
        hung.release.set()
    after = predict(client, "after")
    assert after.status_code == 200, after.text
    assert hung.calls == 2


def test_no_writable_temp_directory_still_serves_large_multipart_parts(
    make_client: Callable[..., TestClient], artifact_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only root filesystem without a tmpfs: parts over 1 MB must not need a temp file."""
    client = make_client(Settings(model_path=artifact_path, device="cpu"))
    big = image_bytes(Image.effect_noise((1200, 1200), 60), "PNG")
    assert len(big) > 1024 * 1024  # over Starlette's default spool size
    monkeypatch.setattr(tempfile, "tempdir", "/proc/no-temp-directory-here")
    with pytest.raises(OSError), tempfile.TemporaryFile():  # the premise: nothing can be spooled to disk
        pass
    files = [("files", (f"{i}.png", big, "image/png")) for i in range(2)]
    for response in (client.post("/predict", files=files), client.post("/predict", files={"file": files[0][1]})):
        assert response.status_code == 200, response.text
