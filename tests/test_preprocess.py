"""models.pixels_to_input against the quickstart's ToTensor path, bit for bit, on real test images."""

from __future__ import annotations

import pytest
import torch

from models import pixels_to_input
from tests.conftest import DEBIAN_DATA


@pytest.fixture(scope="module")
def real_test_set() -> tuple[torch.Tensor, object]:
    """The test split twice: as our loader's uint8 tensor and as the tutorial's FashionMNIST(ToTensor()) dataset."""
    if not DEBIAN_DATA.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    from training.data import load_fashion_mnist

    data = load_fashion_mnist(DEBIAN_DATA)
    return data.test_images, FashionMNIST(str(data.root), train=False, download=False, transform=ToTensor())


def test_pixels_to_input_matches_tutorial_to_tensor_bit_for_bit(real_test_set: tuple[torch.Tensor, object]) -> None:
    images, tutorial = real_test_set
    count = 2000  # a fifth of the test set keeps this under a second
    ours = pixels_to_input(images[:count])
    theirs = torch.stack([tutorial[i][0] for i in range(count)])  # type: ignore[index]
    assert ours.dtype == theirs.dtype == torch.float32
    assert ours.shape == theirs.shape == (count, 1, 28, 28)
    assert torch.equal(ours, theirs)
    assert ours.view(torch.int32).equal(theirs.view(torch.int32))  # the same bits, not merely equal floats


def test_pixels_to_input_covers_every_pixel_value_like_to_tensor() -> None:
    from PIL import Image
    from torchvision.transforms import ToTensor

    pixels = torch.arange(256, dtype=torch.uint8).repeat(4)[:784].reshape(28, 28)
    theirs = ToTensor()(Image.fromarray(pixels.numpy()))
    assert pixels_to_input(pixels).squeeze(0).view(torch.int32).equal(theirs.view(torch.int32))


@pytest.mark.parametrize("shape", [(28, 28), (3, 28, 28), (3, 1, 28, 28)])
def test_pixels_to_input_accepts_documented_shapes(shape: tuple[int, ...]) -> None:
    x = pixels_to_input(torch.full(shape, 255, dtype=torch.uint8))
    assert x.shape == (1 if len(shape) == 2 else 3, 1, 28, 28)
    assert x.dtype == torch.float32
    assert torch.all(x == 1.0)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (torch.zeros(28, 28), "must be uint8"),
        (torch.zeros(27, 28, dtype=torch.uint8), "must end in 28x28"),
        (torch.zeros(2, 2, 1, 28, 28, dtype=torch.uint8), "must end in 28x28"),
    ],
)
def test_pixels_to_input_refuses_wrong_input(pixels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pixels_to_input(pixels)
