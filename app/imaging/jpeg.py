"""The common JPEG (gray or YCbCr, no EXIF) through libjpeg-turbo (simplejpeg) in one C call, luma only.

It decodes at the scale Pillow's draft would pick, so the pixels equal Pillow's path (tested); anything else
(EXIF, CMYK, a JPEG libjpeg-turbo complains about) returns None and Pillow's path decides. bench/decoders.py
measures it against Pillow.
"""

from __future__ import annotations

import simplejpeg
from PIL import Image

from app.imaging.fit import DecodedImage, InvertMode, fit
from models import IMAGE_SIDE

SOI, SOS, APP1 = b"\xff\xd8", 0xDA, 0xE1
SIMPLE_COLOURSPACES = ("Gray", "YCbCr")  # what cameras and the web send; CMYK and YCCK go through Pillow
DRAFT_SIDE = IMAGE_SIDE  # decode at the smallest DCT scale not below the target, as Pillow's draft does


def simple_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a grayscale or YCbCr JPEG without EXIF, from its header; None for anything else."""
    if not data.startswith(SOI) or not _headers_without_exif(data):
        return None
    try:
        height, width, colourspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height) if colourspace in SIMPLE_COLOURSPACES else None


def decode(data: bytes, invert: InvertMode, size: tuple[int, int]) -> DecodedImage | None:
    """Pixels of a JPEG that ``simple_size`` accepted, or None for Pillow's path to decide."""
    width, height = size
    scale = min(width // DRAFT_SIDE, height // DRAFT_SIDE)
    factor = next(factor for factor in (8, 4, 2, 1) if scale >= factor or factor == 1)  # as JpegImageFile.draft
    minimum = {"min_width": -(-width // factor), "min_height": -(-height // factor)}
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="GRAY", **minimum)
    except ValueError:  # corrupt or truncated: strict libjpeg-turbo refuses what Pillow would word
        return None
    gray = Image.frombuffer("L", (array.shape[1], array.shape[0]), array, "raw", "L", 0, 1)
    pixels, inverted = fit(gray, invert)
    return DecodedImage(pixels=pixels, format="JPEG", width=width, height=height, inverted=inverted)


def _headers_without_exif(data: bytes) -> bool:
    """Walk the marker segments up to the scan: well formed, and no APP1 EXIF (its orientation may turn the image)."""
    position = len(SOI)
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == SOS:
            return True
        if marker == APP1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            return False
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return False
