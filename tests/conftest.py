"""Fixtures: a tiny deterministic model artifact, an app around it, and real image bytes."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import NeuralNetwork, build_metadata, save_artifact

DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")


def make_model(seed: int = 0) -> NeuralNetwork:
    torch.manual_seed(seed)
    return NeuralNetwork().eval()


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
    from training.data import load_fashion_mnist

    data = load_fashion_mnist(DEBIAN_DATA)
    return data.test_images[:16], data.test_labels[:16]
