"""Image bytes to the 28x28 uint8 pixels the model expects: FashionMNIST's look, from any real photo."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import deflate
import pyspng
import simplejpeg
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from models import IMAGE_SIDE

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
INVERTED = bytes(range(255, -1, -1))  # bytes.translate table: v -> 255 - v
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIMPLE_PNG_COLOUR_TYPES = (0, 2)  # 8-bit grayscale and RGB: what FashionMNIST images and most photos are
PNG_CHANNELS = {0: 1, 2: 3}
JPEG_SOI, JPEG_SOS, JPEG_APP1 = b"\xff\xd8", 0xDA, 0xE1
SIMPLE_JPEG_COLOURSPACES = ("Gray", "YCbCr")  # what cameras and the web send; CMYK and YCCK go through Pillow
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Filtered rows this size or larger are inflated by libdeflate first (below it libspng's own inflate is as quick),
# up to a bound that keeps the extra copies (rows, stored stream, new file: ~3x) small beside the decoded image.
REINFLATE_ROW_BYTES = (64 * 1024, 8 * 1024 * 1024)
# Resampling to 28x28: on 2,000 test garments made into 300x300 photos, Lanczos, bicubic, and JPEG drafts at
# 1/4 or 1/8 scale classify alike (within 0.4 points); bicubic from a 1/8 draft decodes a JPEG ~65 us sooner.
JPEG_DRAFT_SIDE = IMAGE_SIDE
RESAMPLE = Image.Resampling.BICUBIC


class InvertMode(StrEnum):
    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


@dataclass(frozen=True)
class DecodedImage:
    pixels: torch.Tensor  # uint8, 28 x 28, light object on dark background
    format: str
    width: int
    height: int
    inverted: bool


def decode_image(data: bytes, *, invert: InvertMode = InvertMode.AUTO, max_pixels: int = 40_000_000) -> DecodedImage:
    """Decide the format from the bytes, refuse bombs before decoding, and fit the first frame into 28x28."""
    return decode_simple(data, invert, max_pixels) or fit_image(open_image(data, max_pixels), invert)


def decode_simple(data: bytes, invert: InvertMode, max_pixels: int, max_size: int | None = None) -> DecodedImage | None:
    """A simple PNG or JPEG through its one-call C decoder; None for anything else, or over ``max_size`` pixels."""
    for size_of, decode in ((simple_png_size, decode_simple_png), (simple_jpeg_size, decode_simple_jpeg)):
        size = size_of(data)
        if size is not None:
            return decode(data, invert, max_pixels, size) if max_size is None or size[0] * size[1] <= max_size else None
    return None


def simple_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a sound 8-bit grayscale or RGB PNG without EXIF, from its header; None for anything else."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    if depth != 8 or colour_type not in SIMPLE_PNG_COLOUR_TYPES or not _sound_without_exif(data):
        return None
    return width, height


def _sound_without_exif(data: bytes) -> bool:
    """Walk the chunks (a handful: IHDR, a few IDATs, IEND): each whole, its CRC right, none of them EXIF.

    libspng does not check IDAT CRCs and would decode a corrupt file into noise; Pillow refuses it, in words.
    """
    view = memoryview(data)
    for kind, start, end in _png_chunks(data):
        if kind == b"eXIf" or deflate.crc32(view[start + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return False
        if kind == b"IEND":
            return True
    return False  # cut short: no IEND


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each whole chunk, up to IEND; a chunk running past the data ends the walk."""
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            return
        yield kind, position, end
        if kind == b"IEND":
            return
        position = end


def decode_simple_png(
    data: bytes, invert: InvertMode, max_pixels: int, size: tuple[int, int] | None = None
) -> DecodedImage | None:
    """The common PNG through libspng, in one C call: a 28x28 one in ~7 us where Pillow's chunk reader takes ~35.

    Pixels are identical to Pillow's (lossless format, same grayscale conversion after). Anything else, a
    bomb or a PNG libspng refuses included, is None: Pillow's path then decides, and words the error. ``size``:
    simple_png_size's answer, when the caller has it already.
    """
    size = size or simple_png_size(data)
    if size is None or not 0 < size[0] * size[1] <= max_pixels:
        return None
    png = _pre_inflated(data, *size)
    if png is None:
        return None
    try:
        array = pyspng.load(png)
    except RuntimeError:
        return None
    if array.shape == (IMAGE_SIDE, IMAGE_SIDE):  # grayscale at the model's size, as FashionMNIST: no Pillow at all
        pixels, inverted = _fit_bytes(array.tobytes(), IMAGE_SIDE, IMAGE_SIDE, invert)
    else:
        pixels, inverted = _fit(Image.fromarray(array), invert)
    return DecodedImage(pixels=pixels, format="PNG", width=size[0], height=size[1], inverted=inverted)


def _pre_inflated(data: bytes, width: int, height: int) -> bytes | None:
    """The PNG to hand libspng: for a photo, the same one with its rows inflated by libdeflate and stored.

    libspng inflates with a stock zlib: ~0.65 of its ~1.05 ms on a 300x300 RGB photo. libdeflate inflates the
    same stream ~2.4x faster and checks its Adler-32; stored deflate blocks then cost libspng a copy, leaving it
    the unfiltering: ~0.65 ms in all (bench/). Small rows (libspng is as quick), huge ones (the copies would
    add up) and interlaced images come back as they are. None when the rows do not inflate to exactly
    height x (1 + width x channels) bytes: a corrupt file, for Pillow's path to refuse in words.
    """
    row_bytes = height * (1 + width * PNG_CHANNELS[data[25]])
    if not REINFLATE_ROW_BYTES[0] <= row_bytes <= REINFLATE_ROW_BYTES[1] or data[28] != 0:  # 0: not interlaced
        return data
    before_rows, compressed = [], []
    for kind, start, end in _png_chunks(data):  # their CRCs are right: simple_png_size checked
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
    idat = [struct.pack(">I4s", len(stored), b"IDAT"), stored, struct.pack(">I", crc)]
    return b"".join([PNG_SIGNATURE, *before_rows, *idat, PNG_END])


def simple_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a grayscale or YCbCr JPEG without EXIF, from its header; None for anything else."""
    if not data.startswith(JPEG_SOI) or not _jpeg_headers_without_exif(data):
        return None
    try:
        height, width, colourspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height) if colourspace in SIMPLE_JPEG_COLOURSPACES else None


def _jpeg_headers_without_exif(data: bytes) -> bool:
    """Walk the marker segments up to the scan: well formed, and no APP1 EXIF (its orientation may turn the image)."""
    position = len(JPEG_SOI)
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == JPEG_SOS:
            return True
        if marker == JPEG_APP1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            return False
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return False


def decode_simple_jpeg(
    data: bytes, invert: InvertMode, max_pixels: int, size: tuple[int, int] | None = None
) -> DecodedImage | None:
    """The common JPEG through libjpeg-turbo (simplejpeg) in one C call: luma only, at the scale Pillow's draft picks.

    The same pixels as Pillow's path (tested), ~25% sooner: no marker parsing in Python, one decoder set-up.
    Anything else (EXIF, CMYK, a bomb, a JPEG libjpeg-turbo complains about) is None: Pillow's path then decides.
    ``size``: simple_jpeg_size's answer, when the caller has it already.
    """
    size = size or simple_jpeg_size(data)
    if size is None or not 0 < size[0] * size[1] <= max_pixels:
        return None
    width, height = size
    scale = min(width // JPEG_DRAFT_SIDE, height // JPEG_DRAFT_SIDE)
    factor = next(factor for factor in (8, 4, 2, 1) if scale >= factor or factor == 1)  # as JpegImageFile.draft
    minimum = {"min_width": -(-width // factor), "min_height": -(-height // factor)}
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="GRAY", **minimum)
    except ValueError:  # corrupt or truncated: strict libjpeg-turbo refuses what Pillow would word
        return None
    gray = Image.frombuffer("L", (array.shape[1], array.shape[0]), array, "raw", "L", 0, 1)
    pixels, inverted = _fit(gray, invert)
    return DecodedImage(pixels=pixels, format="JPEG", width=width, height=height, inverted=inverted)


def _box_reduced(image: Image.Image) -> Image.Image:
    """Shrink by whole factors to no less than twice the target, as Image.thumbnail does, before anything else.

    On a 300x300 RGB photo, reducing before the grayscale conversion and the final resize costs ~75 us less
    than converting all its pixels first (bench/); the pixels differ by at most 3 levels in 255. Other modes
    (alpha, palette, 16-bit) are converted first, as their averages would not mean the same.
    """
    factor = int(max(image.size) / (2 * IMAGE_SIDE))
    return image.reduce(factor) if factor >= 2 and image.mode in ("L", "RGB") else image


def open_image(data: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """Read the header only (format, declared size) and refuse bombs: cheap, whatever size the image claims."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard, where the app has not turned it off
        raise ImageTooLarge(f"{exc} (this server's limit is {max_pixels:,} pixels)") from None
    except Exception as exc:  # a header Pillow recognised but could not parse
        raise InvalidImage(f"corrupt image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image declares {width}x{height} pixels; the limit is {max_pixels:,} pixels")
    return image


def fit_image(image: Image.Image, invert: InvertMode = InvertMode.AUTO) -> DecodedImage:
    """Decode the first frame of an opened image and fit it into 28x28: the costly half, by declared size."""
    width, height = image.size
    try:
        pixels, inverted = _to_model_pixels(image, invert)
    except Exception as exc:  # truncated data, bad chunks, broken EXIF: all the client's bytes
        raise InvalidImage(f"could not decode the {image.format} image: {exc}") from None
    return DecodedImage(pixels=pixels, format=str(image.format), width=width, height=height, inverted=inverted)


def _to_model_pixels(image: Image.Image, invert: InvertMode) -> tuple[torch.Tensor, bool]:
    # Pixel work stays in Pillow and bytes: on a 28x28 image each torch op costs more than the work itself.
    if image.format in ("JPEG", "MPO"):
        # Decode luma only, at the smallest DCT scale not below the target: a 300x300 photo decodes at 38x38,
        # each pixel the mean of an 8x8 block (the DCT scaling antialiases), for ~half the work of full size.
        image.draft("L", (JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE))
    return _fit(upright(image), invert)


def _fit(image: Image.Image, invert: InvertMode) -> tuple[torch.Tensor, bool]:
    """Every decoder ends here (shrink, grayscale, resize, invert, pad), so all of them give the same pixels."""
    return _fit_gray(to_grayscale(_box_reduced(image)), invert)


def _fit_gray(gray: Image.Image, invert: InvertMode) -> tuple[torch.Tensor, bool]:
    if gray.size != (IMAGE_SIDE, IMAGE_SIDE):
        gray = gray.resize(_contained_size(gray.size), RESAMPLE, reducing_gap=3.0)
    return _fit_bytes(gray.tobytes(), gray.width, gray.height, invert)


def _fit_bytes(fitted: bytes, width: int, height: int, invert: InvertMode) -> tuple[torch.Tensor, bool]:
    should_invert = invert == InvertMode.TRUE or (invert == InvertMode.AUTO and has_light_background(fitted, width))
    if should_invert:
        fitted = fitted.translate(INVERTED)
    return pad_to_square(fitted, width, height), should_invert


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as viewers do; unlike ImageOps.exif_transpose, no copy when there is none."""
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


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
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "F", "1"):
        image = image.convert("RGB") if image.mode not in ("F", "1") else image
    return image.convert("L")


def has_light_background(pixels: bytes, width: int) -> bool:
    """FashionMNIST is light-on-dark; a photo on a white table is the opposite. Judge by the border."""
    border = (pixels[:width], pixels[-width:], pixels[::width], pixels[width - 1 :: width])
    return sum(map(sum, border)) > 127 * sum(map(len, border))


def pad_to_square(pixels: bytes, width: int, height: int) -> torch.Tensor:
    """Centre (height, width) 8-bit pixels, both sides at most 28, on a dark 28x28 canvas, as a uint8 tensor."""
    if (width, height) == (IMAGE_SIDE, IMAGE_SIDE):
        canvas = bytearray(pixels)
    else:
        canvas = bytearray(IMAGE_SIDE * IMAGE_SIDE)
        top, left = (IMAGE_SIDE - height) // 2, (IMAGE_SIDE - width) // 2
        for row in range(height):
            start = (top + row) * IMAGE_SIDE + left
            canvas[start : start + width] = pixels[row * width : (row + 1) * width]
    return torch.frombuffer(canvas, dtype=torch.uint8).view(IMAGE_SIDE, IMAGE_SIDE)


def _contained_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = IMAGE_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def pixels_to_png(pixels: torch.Tensor) -> bytes:
    """The 28x28 image the model saw, as PNG bytes (for return_input)."""
    image = Image.frombytes("L", (IMAGE_SIDE, IMAGE_SIDE), pixels.contiguous().numpy().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
