"""The one path from uint8 pixels to model input, shared by training and serving for parity."""

import torch

from models.mlp import IMAGE_SIDE


def pixels_to_input(pixels: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28) to float32 N x 1 x 28 x 28 in [0, 1].

    Dividing by 255 (not multiplying by 1/255) matches torchvision's ToTensor bit for bit,
    so a model trained through the quickstart's pipeline sees identical inputs here.
    """
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE) or pixels.dim() not in (2, 3, 4):
        raise ValueError(f"pixels must end in {IMAGE_SIDE}x{IMAGE_SIDE}, got shape {tuple(pixels.shape)}")
    return pixels.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE).to(torch.float32).div(255)


def has_light_background(pixels: bytes, width: int) -> bool:
    """FashionMNIST is light-on-dark; a photo on a white table is the opposite. Judge by the border.

    ``pixels`` are 8-bit grayscale rows of ``width``; true when the border's mean is above 127,
    in which case the server inverts the image before the model sees it.
    """
    border = (pixels[:width], pixels[-width:], pixels[::width], pixels[width - 1 :: width])
    return sum(map(sum, border)) > 127 * sum(map(len, border))
