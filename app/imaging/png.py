"""The common PNG (8-bit gray or RGB, no EXIF) through libspng in one C call, its rows inflated by libdeflate.

Pixels are identical to Pillow's (a lossless format, the same fitting after); anything else, or anything
libspng refuses, returns None and Pillow's path decides, and words the error. bench/decoders.py measures
each choice here against Pillow.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import deflate
import pyspng
from PIL import Image

from app.imaging.fit import DecodedImage, InvertMode, fit, fit_bytes
from models import IMAGE_SIDE

SIGNATURE = b"\x89PNG\r\n\x1a\n"
END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
SIMPLE_COLOUR_TYPES = (0, 2)  # 8-bit grayscale and RGB: what FashionMNIST images and most photos are
CHANNELS = {0: 1, 2: 3}
# Filtered rows this size or larger are inflated by libdeflate first (below it libspng's own inflate is as quick),
# up to a bound that keeps the extra copies (rows, stored stream, new file: ~3x) small beside the decoded image.
REINFLATE_ROW_BYTES = (64 * 1024, 8 * 1024 * 1024)


def simple_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a sound 8-bit grayscale or RGB PNG without EXIF, from its header; None for anything else."""
    if len(data) < 33 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    if depth != 8 or colour_type not in SIMPLE_COLOUR_TYPES or not _sound_without_exif(data):
        return None
    return width, height


def decode(data: bytes, invert: InvertMode, size: tuple[int, int]) -> DecodedImage | None:
    """Pixels of a PNG that ``simple_size`` accepted, or None for Pillow's path to decide."""
    png = _pre_inflated(data, *size)
    if png is None:
        return None
    try:
        array = pyspng.load(png)
    except RuntimeError:
        return None
    if array.shape == (IMAGE_SIDE, IMAGE_SIDE):  # grayscale at the model's size, as FashionMNIST: no Pillow at all
        pixels, inverted = fit_bytes(array.tobytes(), IMAGE_SIDE, IMAGE_SIDE, invert)
    else:
        pixels, inverted = fit(Image.fromarray(array), invert)
    return DecodedImage(pixels=pixels, format="PNG", width=size[0], height=size[1], inverted=inverted)


def _sound_without_exif(data: bytes) -> bool:
    """Walk the chunks (a handful: IHDR, a few IDATs, IEND): each whole, its CRC right, none of them EXIF.

    libspng does not check IDAT CRCs and would decode a corrupt file into noise; Pillow refuses it, in words.
    """
    view = memoryview(data)
    for kind, start, end in _chunks(data):
        if kind == b"eXIf" or deflate.crc32(view[start + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return False
        if kind == b"IEND":
            return True
    return False  # cut short: no IEND


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each whole chunk, up to IEND; a chunk running past the data ends the walk."""
    position = len(SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            return
        yield kind, position, end
        if kind == b"IEND":
            return
        position = end


def _pre_inflated(data: bytes, width: int, height: int) -> bytes | None:
    """The PNG to hand libspng: for a photo, the same one with its rows inflated by libdeflate and stored.

    libspng inflates with a stock zlib, most of its time on a photo; libdeflate inflates the same stream
    faster and checks its Adler-32; stored deflate blocks then cost libspng a copy, leaving it the unfiltering.
    Small rows (libspng is as quick), huge ones (the copies would add up) and interlaced images come back as
    they are. None when the rows do not inflate to exactly height x (1 + width x channels) bytes: a corrupt
    file, for Pillow's path to refuse in words.
    """
    row_bytes = height * (1 + width * CHANNELS[data[25]])
    if not REINFLATE_ROW_BYTES[0] <= row_bytes <= REINFLATE_ROW_BYTES[1] or data[28] != 0:  # 0: not interlaced
        return data
    before_rows, compressed = [], []
    for kind, start, end in _chunks(data):  # their CRCs are right: simple_size checked
        if kind == b"IDAT":
            compressed.append(data[start + 8 : end - 4])
        elif kind != b"IEND" and not compressed:  # IHDR and what precedes the rows (tRNS, gAMA, ...); after: text
            before_rows.append(data[start:end])
    try:
        rows = deflate.zlib_decompress(b"".join(compressed), row_bytes)
    except deflate.DeflateError:
        return None
    if len(rows) != row_bytes:
        return None
    stored = deflate.zlib_compress(rows, 0)
    crc = deflate.crc32(stored, deflate.crc32(b"IDAT"))
    idat: list[bytes | bytearray] = [struct.pack(">I4s", len(stored), b"IDAT"), stored, struct.pack(">I", crc)]
    return b"".join([SIGNATURE, *before_rows, *idat, END])
