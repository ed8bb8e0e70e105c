"""A really trained model through the app: the trainer's own artifact, and the quickstart's ``model.pth`` beside it.

The trainer runs as a real process on the real FashionMNIST data (two epochs: a few seconds); real test images
go through /predict as PNG uploads and through /v2, and the answers must be what the model itself computes.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from models import CLASS_NAMES, load_artifact, pixels_to_input
from tests.conftest import DEBIAN_DATA

pytestmark = pytest.mark.slow
IMAGES = 256


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEBIAN_DATA.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("trained") / "model.safetensors"
    command = [sys.executable, "-m", "training", "--epochs", "2", "--out", str(out), "--no-report", "--seed", "1"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def quickstart_pth(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the quickstart's last step writes: ``torch.save(model.state_dict(), "model.pth")``."""
    path = tmp_path_factory.mktemp("quickstart") / "model.pth"
    torch.save(load_artifact(trained).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    from training.data import load_fashion_mnist

    data = load_fashion_mnist(DEBIAN_DATA)
    return data.test_images[:IMAGES], data.test_labels[:IMAGES]


def png(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def served_probabilities(client: TestClient, images: torch.Tensor) -> torch.Tensor:
    rows = []
    for start in range(0, len(images), 8):  # the settings' per-request limit
        files = [("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(images[start : start + 8])]
        response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        rows += [[p["probabilities"][name] for name in CLASS_NAMES] for p in response.json()["predictions"]]
    return torch.tensor(rows)


@pytest.mark.parametrize("artifact", ["trained", "quickstart_pth"])
def test_trained_model_answers_as_it_computes_and_classifies_well(
    artifact: str,
    request: pytest.FixtureRequest,
    make_client: Callable[..., TestClient],
    settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:
    path: Path = request.getfixturevalue(artifact)
    client = make_client(settings.model_copy(update={"model_path": path}))
    images, labels = test_set
    served = served_probabilities(client, images)
    model = load_artifact(path).model
    with torch.inference_mode():
        expected = torch.softmax(model(pixels_to_input(images)), dim=1)
    assert torch.allclose(served, expected, atol=1e-5)
    accuracy = (served.argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.80  # two epochs of the default recipe; chance is 0.10
    model_info = client.get("/model").json()
    assert model_info["version"] == load_artifact(path).metadata.weights_sha256[:12]


def test_the_pth_and_the_artifact_are_one_model_to_the_server(
    trained: Path, quickstart_pth: Path, make_client: Callable[..., TestClient], settings: Settings
) -> None:
    answers = []
    for path in (trained, quickstart_pth):
        client = make_client(settings.model_copy(update={"model_path": path}))
        response = client.post("/predict", files={"file": ("x.png", png(torch.full((28, 28), 90, dtype=torch.uint8)), "image/png")})
        body = response.json()
        answers.append((body["model_version"], body["probabilities"]))
    assert answers[0] == answers[1]


def test_trained_model_over_the_inference_protocol_equals_predict(
    trained: Path,
    make_client: Callable[..., TestClient],
    settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:
    client = make_client(settings.model_copy(update={"model_path": trained}))
    images = test_set[0][:8]
    pixels = (images.float() / 255).flatten().tolist()
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [8, 784], "data": pixels}]}
    response = client.post("/v2/models/fashion-mnist/infer", json=body)
    assert response.status_code == 200, response.text
    probabilities = torch.tensor(response.json()["outputs"][0]["data"]).view(8, 10)
    assert torch.allclose(probabilities, served_probabilities(client, images), atol=1e-6)
