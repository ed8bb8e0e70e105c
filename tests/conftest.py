"""Fixtures: a tiny deterministic model artifact, an app around it, and real image bytes."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import NeuralNetwork, TrustParts, build_metadata, save_artifact
from training.data import Split, load_fashion_mnist, split_validation
from training.train import TrainConfig, fit
from training.trust import fit_trust_parts

DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")


def make_model(seed: int = 0) -> NeuralNetwork:
    torch.manual_seed(seed)
    return NeuralNetwork().eval()


def make_artifact(directory: Path, seed: int, accuracy: float | None = 0.92) -> Path:
    """A tiny real artifact with fixed weights and a recorded accuracy."""
    model = make_model(seed)
    path = directory / f"model-{seed}-{accuracy}.safetensors"
    save_artifact(path, model, build_metadata(model.state_dict(), test_accuracy=accuracy))
    return path


@pytest.fixture(scope="session")
def model() -> NeuralNetwork:
    return make_model()


@pytest.fixture(scope="session")
def artifact_path(tmp_path_factory: pytest.TempPathFactory, model: NeuralNetwork) -> Path:
    path = tmp_path_factory.mktemp("artifact") / "model.safetensors"
    save_artifact(path, model, build_metadata(model.state_dict(), test_accuracy=0.5))
    return path


@pytest.fixture
def settings(artifact_path: Path) -> Settings:
    return Settings(model_path=artifact_path, device="cpu", max_upload_bytes=2 * 1024 * 1024, max_images_per_request=8)


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def factory(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan: model loaded and warmed
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], settings: Settings) -> TestClient:
    return make_client(settings)


# Version names a client may send that name no version: not 12 to 64 lower-case hex (422), or not in the store (404).
BAD_VERSION_NAMES = [
    ("not-hex-at-all", 422),
    ("ABCDEF012345", 422),  # upper case: versions are lower-case hex
    ("abc123", 422),  # too short to name a version
    ("..%2F..%2Fetc%2Fpasswd", 404),
    ("0123456789ab0123456789ab", 404),  # hex, not in the store
]


@dataclass
class LiveServer:
    """A real uvicorn process serving the app on a free loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def metric_sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the app's metrics registry (0 when the series does not exist yet)."""
    value = client.app.state.metrics.registry.get_sample_value(name, labels or {})  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_server(env: dict[str, str], log_dir: Path, *uvicorn_args: str, wait_ready: bool = True) -> Iterator[LiveServer]:
    """Start ``uvicorn app.main:app`` with FASHION_* ``env``; wait for /healthz (and /readyz); stop it after."""
    port = free_port()
    command = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), *uvicorn_args]
    with serve_process("uvicorn", command, port, env, log_dir, "/readyz" if wait_ready else "/healthz") as server:
        yield server


@contextlib.contextmanager
def serve_process(
    name: str,
    args: list[str],
    port: int,
    env: dict[str, str],
    log_dir: Path,
    ready_path: str,
    ready_timeout: float = 60,
    stop_timeout: float = 15,
    executable: str = sys.executable,
) -> Iterator[LiveServer]:
    """``<executable> <args>`` (python by default) from the repository root, serving on ``port``: wait for
    ``ready_path`` to answer 200, yield it, then SIGTERM it (SIGKILL after ``stop_timeout``). Its output goes to a
    log in ``log_dir``."""
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [executable, *args],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {ready_path} in {ready_timeout:g} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def live_server(artifact_path: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """The app with the tiny test model, in a real uvicorn process."""
    with run_server({"FASHION_MODEL_PATH": str(artifact_path), "FASHION_DEVICE": "cpu"}, tmp_path) as server:
        yield server


def image_bytes(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def garment(size: tuple[int, int] = (28, 28), mode: str = "L", light_background: bool = False) -> Image.Image:
    """A light rectangle (a 'garment') on a dark background, or the reverse."""
    background, foreground = (235, 20) if light_background else (0, 200)
    image = Image.new("L", size, background)
    w, h = size
    image.paste(foreground, (w // 4, h // 6, 3 * w // 4, 5 * h // 6))
    return image.convert(mode) if mode != "L" else image


@pytest.fixture(scope="session")
def fashion_test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """A few real FashionMNIST test images, read by the real loader (needs the Debian package)."""
    if not DEBIAN_DATA.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_fashion_mnist(DEBIAN_DATA)
    return data.test_images[:16], data.test_labels[:16]


@pytest.fixture(scope="session")
def real_split() -> Split:
    """A real split, cut down so a model trains in seconds: 12,000 training and 3,000 validation images."""
    if not DEBIAN_DATA.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    full = split_validation(load_fashion_mnist(DEBIAN_DATA))
    return Split(full.train_images[:12000], full.train_labels[:12000], full.validation_images[:3000],
                 full.validation_labels[:3000], full.description)  # fmt: skip


@pytest.fixture(scope="session")
def trained_model(real_split: Split) -> NeuralNetwork:
    """The trainer's fit on the real split, two epochs: really trained (tests must not change it)."""
    split = real_split
    config = TrainConfig(epochs=2, batch_size=256, precision="fp32")
    result = fit(split.train_images, split.train_labels, split.validation_images, split.validation_labels, config,
                 torch.device("cpu"), show_progress=False)  # fmt: skip
    assert result.final is not None and result.final.accuracy > 0.75  # really trained, not a random model
    return result.model.eval()


@pytest.fixture(scope="session")
def trust_parts(trained_model: NeuralNetwork, real_split: Split) -> TrustParts:
    """Its calibration, "not a garment" detector and reference outputs, fitted as training does (quick clusters)."""
    return fit_trust_parts(trained_model, real_split, quick=True).parts


@pytest.fixture(scope="session")
def trained_artifact(
    tmp_path_factory: pytest.TempPathFactory, trained_model: NeuralNetwork, trust_parts: TrustParts
) -> Path:
    """That model and its trust parts, saved as the trainer saves them."""
    path = tmp_path_factory.mktemp("trained") / "model.safetensors"
    metadata = build_metadata(trained_model.state_dict(), parts=trust_parts)
    return save_artifact(path, trained_model, metadata, trust_parts)
