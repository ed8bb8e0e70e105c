"""The fast paths for photos (PNG rows inflated by libdeflate then unfiltered by libspng; JPEG through
libjpeg-turbo in one call) must see exactly what Pillow's path sees, and leave everything else to it."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pyspng
import pytest
from PIL import Image, PngImagePlugin

from app.errors import ImageTooLarge, InvalidImage
from app.imaging import DecodedImage, InvertMode, decode_image, open_upload, png
from app.imaging import jpeg as fast_jpeg
from app.imaging.pillow import fit_image, open_image
from tests.conftest import garment, image_bytes

ROTATED = Image.Exif()
ROTATED[0x0112] = 6  # orientation: rotate 90 degrees


def noise_photo(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Incompressible pixels: several IDAT chunks, rows well above the size where libdeflate takes over."""
    bands = [Image.effect_noise(size, 60) for _ in Image.new(mode, (1, 1)).getbands()]
    return Image.merge(mode, bands)


def first_idat(data: bytes | bytearray) -> int:
    """Where the first IDAT chunk starts (its length field)."""
    return bytes(data).index(b"IDAT") - 4


def with_fixed_crc(data: bytearray, offset: int) -> bytes:
    length = struct.unpack_from(">I", data, offset)[0]
    crc = zlib.crc32(bytes(data[offset + 4 : offset + 8 + length]))
    data[offset + 8 + length : offset + 12 + length] = struct.pack(">I", crc)
    return bytes(data)


def decode_simple_png(data: bytes, invert: InvertMode) -> DecodedImage | None:
    """The PNG fast decoder alone, as the entrance would call it; None where it leaves the file to Pillow."""
    size = png.simple_size(data)
    return None if size is None else png.decode(data, invert, size)


def decode_simple_jpeg(data: bytes, invert: InvertMode) -> DecodedImage | None:
    size = fast_jpeg.simple_size(data)
    return None if size is None else fast_jpeg.decode(data, invert, size)


def assert_sees_what_pillow_sees(fast: DecodedImage | None, data: bytes, invert: InvertMode) -> None:
    reference = fit_image(open_image(data, 10**8), invert)
    assert fast is not None
    assert fast.pixels == reference.pixels
    assert (fast.format, fast.width, fast.height, fast.inverted) == (
        reference.format,
        reference.width,
        reference.height,
        reference.inverted,
    )


GAMMA = PngImagePlugin.PngInfo()
GAMMA.add_text("Comment", "a text chunk before the rows")

PHOTOS = {
    "rgb-300": image_bytes(noise_photo((300, 300)), "PNG"),
    "rgb-tall-90x700": image_bytes(noise_photo((90, 700)), "PNG"),
    "gray-400x300": image_bytes(noise_photo((400, 300), "L"), "PNG"),
    "rgb-light-garment": image_bytes(garment((320, 240), mode="RGB", light_background=True), "PNG", compress_level=0),
    "rgb-with-text-chunk": image_bytes(noise_photo((300, 300)), "PNG", pnginfo=GAMMA),
    "rgb-transparent-colour": image_bytes(noise_photo((300, 300)), "PNG", transparency=(0, 0, 0)),
}


@pytest.mark.parametrize("data", PHOTOS.values(), ids=PHOTOS.keys())
def test_stored_rows_decode_to_the_same_array_as_libspng_alone(data: bytes) -> None:
    width, height = struct.unpack_from(">II", data, 16)
    rewritten = png._pre_inflated(data, width, height)
    assert rewritten is not None and rewritten != data, "these rows are large enough for libdeflate"
    assert np.array_equal(pyspng.load(rewritten), pyspng.load(data))


SMALL_PNGS = {
    "gray-28": image_bytes(garment(), "PNG"),
    "gray-50x31": image_bytes(garment((50, 31)), "PNG"),
    "rgb-300x200-garment": image_bytes(garment((300, 200), mode="RGB", light_background=True), "PNG"),
    "noise-28": image_bytes(Image.effect_noise((28, 28), 60), "PNG"),
}


@pytest.mark.parametrize("data", [*SMALL_PNGS.values(), *PHOTOS.values()], ids=[*SMALL_PNGS, *PHOTOS])
@pytest.mark.parametrize("invert", list(InvertMode))
def test_png_fast_path_sees_exactly_what_pillow_sees(data: bytes, invert: InvertMode) -> None:
    assert_sees_what_pillow_sees(decode_simple_png(data, invert), data, invert)


@pytest.mark.parametrize(
    "data",
    [
        image_bytes(garment(mode="P"), "PNG"),  # palette
        image_bytes(garment(mode="LA"), "PNG"),  # alpha: composited over white by Pillow's path
        image_bytes(Image.new("I;16", (28, 28), 4000), "PNG"),  # 16-bit
        image_bytes(garment(), "PNG", exif=ROTATED),  # turned by its EXIF orientation
        image_bytes(garment(), "PNG")[:60],  # truncated: Pillow words the error
        image_bytes(garment(), "JPEG"),
    ],
    ids=["palette", "alpha", "16-bit", "exif", "truncated", "jpeg"],
)
def test_png_fast_path_leaves_everything_else_to_pillow(data: bytes) -> None:
    assert decode_simple_png(data, InvertMode.AUTO) is None


def test_png_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="100x100"):
        open_upload(image_bytes(garment((100, 100)), "PNG"), max_pixels=9_999)


def test_small_pngs_keep_libspngs_own_inflate() -> None:
    for data, side in ((image_bytes(garment(), "PNG"), 28), (image_bytes(noise_photo((100, 100)), "PNG"), 100)):
        assert png._pre_inflated(data, side, side) is data  # up to 30 KB of rows


def test_a_wrong_idat_crc_is_refused_as_pillow_refuses_it() -> None:
    data = bytearray(PHOTOS["rgb-300"])
    offset = first_idat(data)
    data[offset + 8 + 100] ^= 0xFF  # a byte of the compressed rows; the chunk's CRC now disagrees
    assert png.simple_size(bytes(data)) is None  # libspng would not notice: Pillow's path decides
    with pytest.raises(InvalidImage):
        decode_image(bytes(data))


def test_rows_that_do_not_inflate_are_refused() -> None:
    data = bytearray(PHOTOS["rgb-300"])
    offset = first_idat(data)
    data[offset + 8 + 100] ^= 0xFF
    corrupt = with_fixed_crc(data, offset)  # CRC right, deflate stream or its checksum wrong
    assert png._pre_inflated(corrupt, 300, 300) is None
    with pytest.raises(InvalidImage):
        decode_image(corrupt)


def test_rows_short_of_the_declared_height_are_left_to_pillow() -> None:
    data = bytearray(PHOTOS["rgb-300"])
    data[20:24] = struct.pack(">I", 301)  # IHDR height one row more than the rows hold
    taller = with_fixed_crc(data, 8)
    assert png._pre_inflated(taller, 300, 301) is None
    assert decode_simple_png(taller, InvertMode.AUTO) is None
    reference = fit_image(open_image(taller, 10**8), InvertMode.AUTO)  # Pillow pads the missing row
    assert decode_image(taller).pixels == reference.pixels


def jpeg(image: Image.Image, **save_args: object) -> bytes:
    return image_bytes(image, "JPEG", **save_args)


JPEGS = {
    "rgb-300": jpeg(noise_photo((300, 300)), quality=90),
    "rgb-300x200-progressive": jpeg(noise_photo((300, 200)), quality=50, progressive=True),
    "rgb-1000x700-444": jpeg(noise_photo((1000, 700)), subsampling=0),
    "gray-57": jpeg(noise_photo((57, 57), "L")),
    "gray-28": jpeg(garment()),
    "tiny-20x100": jpeg(garment((20, 100), mode="RGB")),
    "light-garment": jpeg(garment((320, 240), mode="RGB", light_background=True)),
}


@pytest.mark.parametrize("data", JPEGS.values(), ids=JPEGS.keys())
@pytest.mark.parametrize("invert", list(InvertMode))
def test_jpeg_fast_path_sees_exactly_what_pillow_sees(data: bytes, invert: InvertMode) -> None:
    assert_sees_what_pillow_sees(decode_simple_jpeg(data, invert), data, invert)


@pytest.mark.parametrize(
    "data",
    [
        jpeg(garment((40, 30), mode="RGB"), exif=ROTATED),  # EXIF may turn it: Pillow's path reads it
        jpeg(garment((40, 30), mode="RGB").convert("CMYK")),
        jpeg(garment((40, 30), mode="RGB"))[:300],  # truncated: Pillow words the error
        b"\xff\xd8\xff\xe0 not really a JPEG",
        image_bytes(garment(), "PNG"),
    ],
    ids=["exif", "cmyk", "truncated", "garbage-after-soi", "png"],
)
def test_jpeg_fast_path_leaves_everything_else_to_pillow(data: bytes) -> None:
    assert decode_simple_jpeg(data, InvertMode.AUTO) is None


def test_jpeg_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="300x300"):
        open_upload(JPEGS["rgb-300"], max_pixels=89_999)


def test_truncated_jpeg_is_refused_in_words() -> None:
    with pytest.raises(InvalidImage, match="JPEG"):
        decode_image(JPEGS["rgb-300"][: len(JPEGS["rgb-300"]) // 2])
