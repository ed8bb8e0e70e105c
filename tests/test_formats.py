"""Every format and mode a client may send, as real bytes through the real /predict handler."""

import base64
import io

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import garment, image_bytes


def predict(client: TestClient, data: bytes, name: str = "x", **params: str) -> dict:  # type: ignore[type-arg]
    response = client.post(
        "/predict", files={"file": (name, data, "application/octet-stream")}, params={"return_input": "true", **params}
    )
    assert response.status_code == 200, response.text
    return response.json()


def seen(body: dict) -> torch.Tensor:  # type: ignore[type-arg]
    """The 28x28 input the model saw, decoded from the response's PNG data URL."""
    png = base64.b64decode(body["input_image"].removeprefix("data:image/png;base64,"))
    image = Image.open(io.BytesIO(png))
    assert image.size == (28, 28) and image.mode == "L"
    return torch.tensor(list(image.tobytes()), dtype=torch.uint8).view(28, 28)


def reference() -> torch.Tensor:
    return torch.tensor(list(garment().tobytes()), dtype=torch.uint8).view(28, 28)


@pytest.mark.parametrize(
    ("fmt", "save_args", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("GIF", {}, 0),
        ("JPEG", {"quality": 95}, 12),
    ],
)
def test_predict_each_format_sees_the_same_pixels(
    client: TestClient, fmt: str, save_args: dict, tolerance: int
) -> None:  # type: ignore[type-arg]
    body = predict(client, image_bytes(garment(), fmt, **save_args))
    difference = (seen(body).int() - reference().int()).abs().max().item()
    assert difference <= tolerance


def test_predict_gif_uses_first_frame(client: TestClient) -> None:
    first, second = garment(), Image.new("L", (28, 28), 0)
    data = image_bytes(first, "GIF", save_all=True, append_images=[second], duration=50)
    assert torch.equal(seen(predict(client, data)), reference())


@pytest.mark.parametrize("mode", ["RGB", "P", "LA"])
def test_predict_other_modes_become_grayscale(client: TestClient, mode: str) -> None:
    body = predict(client, image_bytes(garment(mode=mode), "PNG"))
    assert (seen(body).int() - reference().int()).abs().max().item() <= 1


def test_predict_bilevel_image(client: TestClient) -> None:
    bilevel = garment().convert("1", dither=Image.Dither.NONE)
    expected = torch.tensor(list(bilevel.convert("L").tobytes()), dtype=torch.uint8).view(28, 28)
    assert torch.equal(seen(predict(client, image_bytes(bilevel, "PNG"))), expected)


def test_predict_sixteen_bit_png_is_scaled_not_clipped(client: TestClient) -> None:
    wide = torch.tensor(list(garment().tobytes()), dtype=torch.int32) * 257
    image = Image.frombytes("I;16", (28, 28), b"".join(int(v).to_bytes(2, "little") for v in wide.tolist()))
    body = predict(client, image_bytes(image, "PNG"))
    assert (seen(body).int() - reference().int()).abs().max().item() <= 1


def test_predict_cmyk_jpeg(client: TestClient) -> None:
    body = predict(client, image_bytes(garment(mode="RGB").convert("CMYK"), "JPEG", quality=95))
    assert (seen(body).int() - reference().int()).abs().max().item() <= 16


def test_predict_rgba_transparent_background_is_composited_and_inverted(client: TestClient) -> None:
    image = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    image.paste((10, 10, 10, 255), (7, 5, 21, 23))  # a dark drawing on a transparent canvas
    body = predict(client, image_bytes(image, "PNG"))
    pixels = seen(body)
    assert body["inverted"] is True
    assert pixels[0].max() == 0 and pixels[14, 14] > 200  # dark border, light object


def test_predict_light_background_photo_is_inverted_and_padded(client: TestClient) -> None:
    body = predict(client, image_bytes(garment((300, 150), light_background=True, mode="RGB"), "JPEG"))
    pixels = seen(body)
    assert body["inverted"] is True
    assert pixels[:6].max() <= 10 and pixels[-6:].max() <= 10  # letterbox padding above and below is dark
    assert pixels[14, 14] > 180


@pytest.mark.parametrize(("invert", "expected"), [("false", False), ("true", True)])
def test_predict_invert_can_be_forced(client: TestClient, invert: str, expected: bool) -> None:
    assert predict(client, image_bytes(garment(), "PNG"), invert=invert)["inverted"] is expected


def test_predict_honours_exif_orientation(client: TestClient) -> None:
    image = Image.new("L", (56, 28), 0)
    image.paste(255, (0, 0, 28, 28))  # left half bright as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the bright half ends up on top
    body = predict(client, image_bytes(image, "JPEG", exif=exif.tobytes(), quality=95), invert="false")
    pixels = seen(body).float()
    assert pixels[:14].mean() > 100 > pixels[14:].mean()


def test_predict_decompression_bomb_is_refused_quickly(client: TestClient) -> None:
    bomb = image_bytes(Image.new("1", (20_000, 20_000)), "PNG")  # 400 megapixels in ~50 kB
    response = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"


def test_predict_empty_file_is_400(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("e.png", b"", "image/png")})
    assert response.status_code == 400
    assert "empty" in response.json()["error"]["message"]


def test_predict_too_many_files_is_413(client: TestClient) -> None:
    files = [("files", (f"{i}.png", image_bytes(garment(), "PNG"), "image/png")) for i in range(9)]
    response = client.post("/predict", files=files)
    assert response.status_code == 413
    assert "limit is 8" in response.json()["error"]["message"]


def test_predict_body_over_limit_is_413_from_content_length(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_predict_chunked_body_over_limit_is_413(client: TestClient) -> None:
    def chunks():  # no Content-Length: the running count must catch it (streaming: see test_server.py)
        for _ in range(64):
            yield b"\0" * (256 * 1024)

    response = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]["message"]


def test_predict_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/predict", content=b'{"a": 1}', headers={"content-type": "application/json"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_predict_bad_query_parameter_is_422_json(client: TestClient) -> None:
    response = client.post("/predict", params={"top_k": 11}, files={"file": ("g.png", image_bytes(garment(), "PNG"))})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_predict_top_k_setting(client: TestClient) -> None:
    body = predict(client, image_bytes(garment(), "PNG"), top_k="5")
    probabilities = [entry["probability"] for entry in body["top_k"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
