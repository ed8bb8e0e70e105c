"""An attribution map as a picture: a 28x28 RGBA PNG to lay over the image the model saw. Pillow only."""

from __future__ import annotations

import io

import torch
from PIL import Image

from models import IMAGE_SIDE

FOR_THE_CLASS = torch.tensor([220, 30, 30], dtype=torch.uint8)  # pixels that raised the class's logit
AGAINST_THE_CLASS = torch.tensor([30, 90, 230], dtype=torch.uint8)  # pixels that lowered it


def attribution_png(attributions: torch.Tensor) -> bytes:
    """Red where a pixel pushed towards the class, blue where against; opacity grows with the share."""
    values = attributions.float().reshape(IMAGE_SIDE, IMAGE_SIDE)
    scale = values.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    alpha = (values.abs() / scale * 255).round().to(torch.uint8)
    colour = torch.where((values >= 0)[..., None], FOR_THE_CLASS, AGAINST_THE_CLASS)
    rgba = torch.cat([colour, alpha[..., None]], dim=-1).contiguous()
    buffer = io.BytesIO()
    # zlib level 1: a 28x28 map barely compresses further at the default level, which costs several times the time.
    Image.frombytes("RGBA", (IMAGE_SIDE, IMAGE_SIDE), rgba.numpy().tobytes()).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()
