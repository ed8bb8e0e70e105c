"""A really trained model through the app: the trainer's artifact with its trust parts, and a quickstart ``model.pth``.

The trainer's own functions train the MLP on real FashionMNIST images (a cut-down split, two epochs: seconds) and
fit its calibration and "not a garment" detector; real test images then go through /predict as PNG uploads and
through /v2, and the answers must be what the model itself computes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from models import CLASS_NAMES, Scorer, explain, load_artifact
from tests.conftest import DEBIAN_DATA, metric_sample

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="no dataset-fashion-mnist")]
IMAGES = 256
PER_REQUEST = 8  # the settings fixture's limit


@pytest.fixture(scope="module")
def trained(trained_artifact: Path) -> Path:
    return trained_artifact


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


def served(client: TestClient, images: torch.Tensor, query: str = "") -> list[dict]:
    predictions = []
    for start in range(0, len(images), PER_REQUEST):
        files = [
            ("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(images[start : start + PER_REQUEST])
        ]
        response = client.post("/predict" + query, files=files)
        assert response.status_code == 200, response.text
        predictions += response.json()["predictions"]
    return predictions


def probabilities(predictions: list[dict]) -> torch.Tensor:
    return torch.tensor([[p["probabilities"][name] for name in CLASS_NAMES] for p in predictions])


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
    predictions = served(client, images)
    loaded = load_artifact(path)
    expected = Scorer(loaded.model, loaded.parts.calibration, loaded.parts.ood).score(images)
    assert torch.allclose(probabilities(predictions), expected.probabilities, atol=1e-5)
    assert (probabilities(predictions).argmax(dim=1) == labels).float().mean().item() > 0.75  # chance: 0.10
    info = client.get("/model").json()
    assert info["version"] == loaded.metadata.weights_sha256[:12]
    assert (info["calibrated"], info["ood_detector"]) == ((True, True) if artifact == "trained" else (False, False))
    if artifact == "trained":
        assert [p["ood_score"] for p in predictions] == pytest.approx(expected.ood_score.tolist(), abs=1e-5)
        assert sum(p["in_distribution"] for p in predictions) >= 0.85 * IMAGES  # the threshold passes ~95%
    else:
        assert {(p["ood_score"], p["in_distribution"]) for p in predictions} == {(None, None)}


def test_calibration_keeps_every_class_and_changes_the_probabilities(
    trained: Path, quickstart_pth: Path, make_client: Callable[..., TestClient], settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:  # fmt: skip
    """The .pth holds the same weights without the temperature: same argmax, other probabilities."""
    answers = [
        served(make_client(settings.model_copy(update={"model_path": path})), test_set[0][:64])
        for path in (trained, quickstart_pth)
    ]
    assert [p["class_index"] for p in answers[0]] == [p["class_index"] for p in answers[1]]
    assert not torch.allclose(probabilities(answers[0]), probabilities(answers[1]), atol=1e-3)


def test_not_a_garment_is_flagged(trained: Path, make_client: Callable[..., TestClient], settings: Settings) -> None:
    client = make_client(settings.model_copy(update={"model_path": trained}))
    generator = torch.Generator().manual_seed(3)
    odd = torch.stack([
        torch.full((28, 28), 128, dtype=torch.uint8),  # a flat grey field
        torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=generator),  # noise
        torch.zeros(28, 28, dtype=torch.uint8),  # black
    ])  # fmt: skip
    assert [p["in_distribution"] for p in served(client, odd)] == [False, False, False]


def test_explanations_sum_to_the_logit_change_and_are_deterministic(
    trained: Path, make_client: Callable[..., TestClient], settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:  # fmt: skip
    client = make_client(settings.model_copy(update={"model_path": trained}))
    images = test_set[0][:PER_REQUEST]
    first, again = served(client, images, "?explain=true"), served(client, images, "?explain=true")
    assert [p["explanation"] for p in first] == [p["explanation"] for p in again]
    model = load_artifact(trained).model
    with torch.inference_mode():
        logits = model(images.float().div(255))
        black = model(torch.zeros(1, 28, 28))
    for prediction, row in zip(first, logits, strict=True):
        explanation = prediction["explanation"]
        assert explanation["class_index"] == prediction["class_index"]
        change = float(row[prediction["class_index"]] - black[0, prediction["class_index"]])
        total = float(torch.tensor(explanation["attributions"]).sum())
        assert abs(change) > 0.5  # a real change to explain, not a rounding error
        assert total == pytest.approx(change, rel=0.01)
        assert explanation["logit_change"] == pytest.approx(change, rel=1e-4)
        assert explanation["heatmap"].startswith("data:image/png;base64,")
    direct = explain(model, images)
    served_maps = torch.tensor([p["explanation"]["attributions"] for p in first])
    assert torch.equal(served_maps, direct.attributions)  # float32, written exactly
    assert all(p["explanation"] is None for p in served(client, images))  # off by default


def test_trained_model_over_the_inference_protocol_equals_predict(
    trained: Path, make_client: Callable[..., TestClient], settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:  # fmt: skip
    client = make_client(settings.model_copy(update={"model_path": trained}))
    images = test_set[0][:PER_REQUEST]
    pixels = (images.float() / 255).flatten().tolist()
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [PER_REQUEST, 784], "data": pixels}]}
    response = client.post("/v2/models/fashion-mnist/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert sorted(outputs) == ["class_index", "in_distribution", "ood_score", "probabilities"]
    rest = served(client, images)
    assert torch.allclose(torch.tensor(outputs["probabilities"]).view(-1, 10), probabilities(rest), atol=1e-6)
    assert outputs["ood_score"] == pytest.approx([p["ood_score"] for p in rest], abs=1e-5)
    assert outputs["in_distribution"] == [p["in_distribution"] for p in rest]


def test_drift_gauges_see_a_stream_of_blank_and_inverted_images(
    trained: Path, make_client: Callable[..., TestClient], settings: Settings,
    test_set: tuple[torch.Tensor, torch.Tensor],
) -> None:  # fmt: skip
    """Real garments, then the same garments on a white background, then blank images: each shift shows."""
    client = make_client(settings.model_copy(update={"model_path": trained}))

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metric_sample(client, name, labels)

    def intensity_mean() -> float:
        return sample("fashion_input_intensity_sum") / sample("fashion_input_intensity_count")

    garments = test_set[0][:64]
    served(client, garments)
    training_mean = sample("fashion_training_input_intensity")
    assert 0.2 < training_mean < 0.4  # FashionMNIST's mean pixel
    assert intensity_mean() == pytest.approx(training_mean, abs=0.08)
    assert sample("fashion_inverted_total") == 0
    assert sum(sample("fashion_predicted_class_total", {"class_name": name}) for name in CLASS_NAMES) == 64
    flagged_before = sample("fashion_out_of_distribution_total")

    served(client, 255 - garments)  # dark garments on white: auto-invert undoes it, and says so
    assert sample("fashion_inverted_total") == 64
    assert intensity_mean() == pytest.approx(training_mean, abs=0.08)

    served(client, torch.zeros(32, 28, 28, dtype=torch.uint8))  # a camera left on a black table
    assert sample("fashion_out_of_distribution_total") - flagged_before >= 32
    assert intensity_mean() < training_mean - 0.05  # the traffic's mean drifts below the training mean
    assert sample("fashion_prediction_confidence_count") == 64 + 64 + 32
