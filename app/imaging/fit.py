"""Where every decoder ends: shrink, grayscale, resize into 28x28, invert to light-on-dark, pad. Pillow and bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

from models import IMAGE_SIDE, has_light_background  # the rule training's evaluation sets apply too

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
INVERTED = bytes(range(255, -1, -1))  # bytes.translate table: v -> 255 - v
# Bicubic from a box-reduced image classifies garment photos as Lanczos does, for less work (bench/decoders.py).
RESAMPLE = Image.Resampling.BICUBIC


class InvertMode(StrEnum):
    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


@dataclass(frozen=True)
class DecodedImage:
    pixels: bytes  # 28 x 28 8-bit gray, row by row, light object on dark background (no tensor: see PixelBatch)
    format: str
    width: int
    height: int
    inverted: bool


def fit(image: Image.Image, invert: InvertMode) -> tuple[bytes, bool]:
    """Every decoder ends here (shrink, grayscale, resize, invert, pad), so all of them give the same pixels."""
    gray = to_grayscale(box_reduced(image))
    if gray.size != (IMAGE_SIDE, IMAGE_SIDE):
        gray = gray.resize(contained_size(gray.size), RESAMPLE, reducing_gap=3.0)
    return fit_bytes(gray.tobytes(), gray.width, gray.height, invert)


def fit_bytes(fitted: bytes, width: int, height: int, invert: InvertMode) -> tuple[bytes, bool]:
    """Gray pixels already at most 28x28: invert if asked (or if the border is light), then centre them."""
    should_invert = invert == InvertMode.TRUE or (invert == InvertMode.AUTO and has_light_background(fitted, width))
    if should_invert:
        fitted = fitted.translate(INVERTED)
    return pad_to_square(fitted, width, height), should_invert


def box_reduced(image: Image.Image) -> Image.Image:
    """Shrink by whole factors to no less than twice the target, as Image.thumbnail does, before anything else.

    Reducing before the grayscale conversion and the final resize saves converting every pixel of a photo; the
    pixels differ by at most 3 levels in 255. Other modes (alpha, palette, 16-bit) are converted first, as their
    averages would not mean the same.
    """
    factor = int(max(image.size) / (2 * IMAGE_SIDE))
    return image.reduce(factor) if factor >= 2 and image.mode in ("L", "RGB") else image


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit grayscale; transparency is composited over white, as viewers show it."""
    if image.mode == "L":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255; scale them down instead.
        return image.convert("I").point(lambda value: value / 257).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    return image.convert("L")


def pad_to_square(pixels: bytes, width: int, height: int) -> bytes:
    """Centre (height, width) 8-bit pixels, both sides at most 28, on a dark 28x28 canvas."""
    if (width, height) == (IMAGE_SIDE, IMAGE_SIDE):
        return bytes(pixels)
    canvas = bytearray(IMAGE_SIDE * IMAGE_SIDE)
    top, left = (IMAGE_SIDE - height) // 2, (IMAGE_SIDE - width) // 2
    for row in range(height):
        start = (top + row) * IMAGE_SIDE + left
        canvas[start : start + width] = pixels[row * width : (row + 1) * width]
    return bytes(canvas)


def contained_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = IMAGE_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def pixels_to_png(pixels: bytes) -> bytes:
    """The 28x28 image the model saw, as PNG bytes (for return_input)."""
    image = Image.frombytes("L", (IMAGE_SIDE, IMAGE_SIDE), pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
