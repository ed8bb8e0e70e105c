"""The Open Inference Protocol (v2) endpoints, called by tritonclient, a client this project did not write,
against a real uvicorn process; its answers must equal /predict's on the same images."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from tritonclient.utils import InferenceServerException

from app.config import Settings
from models import CLASS_NAMES
from tests.conftest import LiveServer, garment, image_bytes, run_server

MODEL = "fashion-mnist"
MAX_IMAGES = 16
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(artifact_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "FASHION_MODEL_PATH": str(artifact_path),
        "FASHION_DEVICE": "cpu",
        "FASHION_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
        "FASHION_LOG_LEVEL": "warning",
    }
    with run_server(env, tmp_path_factory.mktemp("oip")) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    oip = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)
    yield oip
    oip.close()


def png(pixels: torch.Tensor) -> bytes:
    return image_bytes(Image.frombytes("L", (28, 28), bytes(pixels.flatten().tolist())), "PNG")


def predict_probabilities(server: LiveServer, images: list[bytes]) -> tuple[np.ndarray, list[int]]:
    """What /predict answers for ``images``, as an [N,10] array in class order and the class indices."""
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = httpx.post(server.url + "/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    rows = [[p["probabilities"][name] for name in CLASS_NAMES] for p in predictions]
    return np.array(rows, dtype=np.float32), [p["class_index"] for p in predictions]


def outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "class_index")]


def test_server_is_live_and_ready_with_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "fashion-serve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_names_the_model_and_its_weights_version(
    client: triton.InferenceServerClient, server: LiveServer
) -> None:
    version = httpx.get(server.url + "/readyz", timeout=10).json()["model_version"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["versions"] == [version]
    assert {(t["name"], t["datatype"]) for t in metadata["inputs"]} == {("pixels", "FP32"), ("image", "BYTES")}
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "class_index", "datatype": "INT64", "shape": [-1]},
    ]
    assert metadata["parameters"]["class_names"] == list(CLASS_NAMES)
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version=version)
    assert client.get_model_metadata(MODEL, model_version=version)["versions"] == [version]


def test_the_repository_index_lists_the_loaded_version(
    client: triton.InferenceServerClient, server: LiveServer
) -> None:
    version = httpx.get(server.url + "/readyz", timeout=10).json()["model_version"]
    assert client.get_model_repository_index() == [{"name": MODEL, "version": version, "state": "READY", "reason": ""}]


def test_unknown_model_or_version_is_not_ready_and_404(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("mnist")
    assert not client.is_model_ready(MODEL, model_version="000000000000")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("mnist")
    assert caught.value.status() == "404"
    assert "unknown model 'mnist'" in caught.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json"])
@pytest.mark.parametrize("flat", [False, True], ids=["Nx1x28x28", "Nx784"])
def test_infer_fp32_pixels_equals_predict(
    client: triton.InferenceServerClient,
    server: LiveServer,
    fashion_test_images: tuple[torch.Tensor, torch.Tensor],
    binary: bool,
    flat: bool,
) -> None:
    images, _labels = fashion_test_images
    tensor = (images.numpy().astype(np.float32) / 255).reshape(len(images), *((784,) if flat else (1, 28, 28)))
    request = triton.InferInput("pixels", list(tensor.shape), "FP32")
    request.set_data_from_numpy(tensor, binary_data=binary)
    result = client.infer(MODEL, [request], outputs=outputs(binary) if not binary else None, request_id="r1")
    expected, classes = predict_probabilities(server, [png(image) for image in images])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(images), 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    assert result.as_numpy("class_index").tolist() == classes
    assert result.as_numpy("class_index").dtype == np.int64
    response = result.get_response()
    assert (response["model_name"], response["id"]) == (MODEL, "r1")
    assert ("parameters" in response["outputs"][0]) is binary  # binary_data_size, or the data inline in JSON


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json-base64"])
def test_infer_encoded_png_bytes_equals_predict(
    client: triton.InferenceServerClient,
    server: LiveServer,
    fashion_test_images: tuple[torch.Tensor, torch.Tensor],
    binary: bool,
) -> None:
    images, _labels = fashion_test_images
    pngs = [png(image) for image in images[:8]]
    # JSON carries BYTES as strings: encoded images go base64; the binary extension carries raw bytes.
    data = np.array(pngs if binary else [base64.b64encode(p) for p in pngs], dtype=np.object_)
    request = triton.InferInput("image", [len(pngs)], "BYTES")
    request.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(MODEL, [request], outputs=outputs(binary))
    expected, classes = predict_probabilities(server, pngs)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5, rtol=0)
    assert result.as_numpy("class_index").tolist() == classes


def test_infer_asks_only_for_the_requested_output(client: triton.InferenceServerClient) -> None:
    request = triton.InferInput("pixels", [1, 784], "FP32")
    request.set_data_from_numpy(np.zeros((1, 784), dtype=np.float32))
    result = client.infer(MODEL, [request], outputs=[triton.InferRequestedOutput("class_index")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["class_index"]
    assert result.as_numpy("probabilities") is None


def test_fp32_values_between_8_bit_levels_round_to_the_nearest(
    client: triton.InferenceServerClient, server: LiveServer
) -> None:
    """The model knows 8-bit inputs: 0.31 (79.05/255) is served as 79/255, as /predict serves pixel value 79."""
    request = triton.InferInput("pixels", [1, 784], "FP32")
    request.set_data_from_numpy(np.full((1, 784), 0.31, dtype=np.float32))
    served = client.infer(MODEL, [request]).as_numpy("probabilities")
    expected, _ = predict_probabilities(server, [png(torch.full((28, 28), 79, dtype=torch.uint8))])
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "shape", "datatype", "data", "message"),
    [
        ("pixels", [1, 28, 28], "FP32", np.zeros((1, 28, 28), np.float32), "FP32 pixels are [N,1,28,28] or [N,784]"),
        ("pixels", [1, 784], "FP32", np.full((1, 784), 2.0, np.float32), "pixel values in [0, 1]"),
        ("pixels", [1, 784], "FP32", np.full((1, 784), np.nan, np.float32), "pixel values in [0, 1]"),
        ("pixels", [1, 784], "FP64", np.zeros((1, 784), np.float64), "has datatype FP64"),
        ("image", [1], "BYTES", np.array([b"not base64!"], np.object_), "must be a base64 string"),
    ],
    ids=["3-d", "above-1", "nan", "fp64", "not-base64"],
)
def test_bad_tensor_is_400_with_the_reason(
    client: triton.InferenceServerClient, name: str, shape: list[int], datatype: str, data: np.ndarray, message: str
) -> None:
    request = triton.InferInput(name, shape, datatype)
    request.set_data_from_numpy(data, binary_data=False)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [request])
    assert caught.value.status() == "400"
    assert message in caught.value.message()


def test_bytes_that_are_not_an_image_are_refused_and_the_server_goes_on(client: triton.InferenceServerClient) -> None:
    request = triton.InferInput("image", [1], "BYTES")
    request.set_data_from_numpy(np.array([b"hello, not a PNG"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [request])
    assert caught.value.status() == "415"
    assert "not an image" in caught.value.message()
    assert client.is_server_ready()


def test_too_many_images_is_413(client: triton.InferenceServerClient) -> None:
    request = triton.InferInput("pixels", [MAX_IMAGES + 1, 784], "FP32")
    request.set_data_from_numpy(np.zeros((MAX_IMAGES + 1, 784), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [request])
    assert caught.value.status() == "413"


def post_infer(server: LiveServer, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=content, headers=headers, timeout=10)


def fp32_request(count: int, binary: bool) -> dict[str, object]:
    tensor: dict[str, object] = {"name": "pixels", "datatype": "FP32", "shape": [count, 784]}
    tensor["parameters" if binary else "data"] = {"binary_data_size": count * 784 * 4} if binary else [0.0] * 784
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b"{not json", None, "not a valid inference request"),
        (b'{"inputs": []}', None, "expected exactly one input"),
        (json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32"}]}).encode(), None, "inputs.0.shape"),
        (json.dumps(fp32_request(1, True)).encode() + b"\0" * 12, {"Inference-Header-Content-Length": "0"}, "valid"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "within the body"),
        (json.dumps(fp32_request(1, True)).encode() + b"\0" * 12, "header", "declares binary_data_size 3136"),
        (json.dumps({**fp32_request(1, False), "outputs": [{"name": "logits"}]}).encode(), None, "unknown output"),
    ],
    ids=["bad-json", "no-input", "no-shape", "empty-header", "header-past-body", "short-binary", "unknown-output"],
)  # fmt: skip
def test_malformed_request_is_400_in_the_protocols_error_shape(
    server: LiveServer, content: bytes, headers: dict[str, str] | str | None, message: str
) -> None:
    if headers == "header":  # the JSON header's own length: the binary part is what is short
        headers = {"Inference-Header-Content-Length": str(len(json.dumps(fp32_request(1, True))))}
    response = post_infer(server, content, headers if isinstance(headers, dict) else None)
    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert message in body["error"]


def test_binary_bytes_elements_must_fit_their_lengths(server: LiveServer) -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    body = header + (1000).to_bytes(4, "little") + b"abcd"
    response = post_infer(server, body, {"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert response.json() == {"error": "BYTES element 0 claims 1000 bytes; fewer remain"}


def test_wrong_method_and_unknown_path_answer_in_the_protocols_shape(server: LiveServer) -> None:
    wrong_method = httpx.get(f"{server.url}/v2/models/{MODEL}/infer", timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert isinstance(wrong_method.json()["error"], str)
    unknown = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=10)  # nothing loads over HTTP
    assert unknown.status_code == 404
    assert unknown.json() == {"error": f"no such endpoint: POST /v2/repository/models/{MODEL}/load"}
    # The rest of the API keeps its own error shape.
    assert httpx.get(server.url + "/nowhere", timeout=10).json()["error"]["code"] == "not_found"


def test_api_key_guards_inference_and_metadata_but_not_health(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(settings.model_copy(update={"api_key": SecretStr("s3cret")}))
    denied = client.post(f"/v2/models/{MODEL}/infer", json=fp32_request(1, False))
    assert denied.status_code == 401
    assert denied.json() == {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"}
    assert client.get(f"/v2/models/{MODEL}").status_code == 401
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    allowed = client.post(
        f"/v2/models/{MODEL}/infer", json=fp32_request(1, False), headers={"Authorization": "Bearer s3cret"}
    )
    assert allowed.status_code == 200


def test_without_a_model_health_says_not_ready_and_inference_503(
    make_client: Callable[..., TestClient], settings: Settings, tmp_path: Path
) -> None:
    client = make_client(settings.model_copy(update={"model_path": tmp_path / "missing.safetensors"}))
    assert client.get("/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        response = client.get(path)
        assert response.status_code == 400  # the protocol: a 4xx status means "false"
        assert "model not loaded" in response.json()["error"]
    infer = client.post(f"/v2/models/{MODEL}/infer", json=fp32_request(1, False))
    assert infer.status_code == 503
    assert "model not loaded" in infer.json()["error"]


def test_bytes_input_follows_the_invert_parameter(make_client: Callable[..., TestClient], settings: Settings) -> None:
    client = make_client(settings)
    encoded = base64.b64encode(image_bytes(garment(light_background=True), "PNG")).decode()
    results = {}
    for invert in ("auto", "false"):
        body = {
            "parameters": {"invert": invert},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}],
        }
        response = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert response.status_code == 200, response.text
        results[invert] = response.json()["outputs"][0]["data"]
    assert results["auto"] != results["false"]
