from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from models import CLASS_NAMES, NeuralNetwork, pixels_to_input
from tests.conftest import garment, image_bytes


def test_predict_png_returns_probabilities_for_all_classes(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("g.png", image_bytes(garment(), "PNG"), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["probabilities"]) == set(CLASS_NAMES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["class_name"] == CLASS_NAMES[body["class_index"]]
    assert body["top_k"][0]["class_index"] == body["class_index"]
    assert len(body["top_k"]) == 3
    assert len(body["model_version"]) == 12


def test_predict_fashion_test_image_matches_model_on_its_tensor(
    client: TestClient, model: NeuralNetwork, fashion_test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, _labels = fashion_test_images
    for pixels in images[:5]:
        png = image_bytes(Image.frombytes("L", (28, 28), bytes(pixels.flatten().tolist())), "PNG")
        body = client.post("/predict", files={"file": ("t.png", png, "image/png")}).json()
        with torch.no_grad():
            expected = torch.softmax(model(pixels_to_input(pixels)), dim=1)[0].tolist()
        served = [body["probabilities"][name] for name in CLASS_NAMES]
        assert served == pytest.approx(expected, abs=1e-5)
        assert body["inverted"] is False


def test_predict_raw_body_with_image_content_type(client: TestClient) -> None:
    response = client.post("/predict", content=image_bytes(garment(), "PNG"), headers={"content-type": "image/png"})
    assert response.status_code == 200
    assert response.json()["filename"] is None


def test_predict_many_files_returns_one_result_each_in_order(client: TestClient) -> None:
    files = [("files", (f"{i}.png", image_bytes(garment((28 + i, 28)), "PNG"), "image/png")) for i in range(3)]
    body = client.post("/predict", files=files).json()
    assert [p["filename"] for p in body["predictions"]] == ["0.png", "1.png", "2.png"]


def test_predict_text_file_named_png_is_415(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("x.png", b"hello, not an image", "image/png")})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_predict_missing_field_is_422(client: TestClient) -> None:
    response = client.post("/predict", files={"other": ("x.png", image_bytes(garment(), "PNG"), "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "missing_field"


def test_predict_truncated_png_is_400_and_server_goes_on(client: TestClient) -> None:
    data = image_bytes(garment((200, 200)), "PNG")
    response = client.post("/predict", files={"file": ("t.png", data[: len(data) // 2], "image/png")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"
    assert client.post("/predict", files={"file": ("g.png", image_bytes(garment(), "PNG"))}).status_code == 200


def test_readyz_without_model_is_503_with_reason(make_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(Settings(model_path=tmp_path / "none.safetensors", device="cpu"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "none.safetensors" in response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/predict", files={"file": ("g.png", image_bytes(garment(), "PNG"))}).status_code == 503


def test_model_params_lists_every_parameter_with_values(client: TestClient) -> None:
    body = client.get("/model/params", params={"values": 2}).json()
    assert body["parameters"][0]["name"] == "linear_relu_stack.0.weight"
    assert body["parameters"][0]["shape"] == [512, 784]
    assert len(body["parameters"][0]["values"]) == 2
    assert body["total_parameters"] == 669_706
    assert "linear_relu_stack" in body["module_tree"]


def test_metrics_expose_requests_latency_batches_and_model_without_created_series(client: TestClient) -> None:
    assert client.post("/predict", files={"file": ("g.png", image_bytes(garment(), "PNG"), "image/png")}).is_success
    text = client.get("/metrics").text
    assert 'fashion_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    for family in (
        "fashion_request_seconds",
        "fashion_batch_size",
        "fashion_queue_wait_seconds",
        "fashion_model_seconds",
    ):
        assert f"{family}_count" in text
    assert "fashion_queue_images 0.0" in text
    assert "fashion_model_info{" in text
    assert "_created" not in text
