"""An attribution map as a picture: a 28x28 RGBA PNG to lay over the image the model saw. Pillow only."""

from __future__ import annotations

import io

import torch
from PIL import Image

from models import IMAGE_SIDE

FOR_THE_CLASS = (220, 30, 30)  # pixels that raised the class's logit
AGAINST_THE_CLASS = (30, 90, 230)  # pixels that lowered it


def attribution_png(attributions: torch.Tensor) -> bytes:
    """Red where a pixel pushed towards the class, blue where against; opacity grows with the share."""
    values = attributions.float().flatten()
    scale = float(values.abs().max()) or 1.0
    alpha = (values.abs() / scale * 255).round().to(torch.uint8).tolist()
    rgba = bytearray()
    for value, opacity in zip(values.tolist(), alpha, strict=True):
        rgba += bytes((*(FOR_THE_CLASS if value >= 0 else AGAINST_THE_CLASS), opacity))
    buffer = io.BytesIO()
    Image.frombytes("RGBA", (IMAGE_SIDE, IMAGE_SIDE), bytes(rgba)).save(buffer, format="PNG")
    return buffer.getvalue()
