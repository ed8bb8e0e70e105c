"""Every other image through Pillow: any supported format and mode, EXIF orientation, bombs refused from the header."""

from __future__ import annotations

import io

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.fit import DecodedImage, InvertMode, fit
from models import IMAGE_SIDE

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
DRAFT_SIDE = IMAGE_SIDE


def open_image(data: bytes, max_pixels: int) -> Image.Image:
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
        if image.format in ("JPEG", "MPO"):
            # Luma only, at the smallest DCT scale not below the target: each pixel the mean of a block (the DCT
            # scaling antialiases), for a fraction of the work of a full-size decode.
            image.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
        pixels, inverted = fit(upright(image), invert)
    except Exception as exc:  # truncated data, bad chunks, broken EXIF: all the client's bytes
        raise InvalidImage(f"could not decode the {image.format} image: {exc}") from None
    return DecodedImage(pixels=pixels, format=str(image.format), width=width, height=height, inverted=inverted)


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as viewers do; unlike ImageOps.exif_transpose, no copy when there is none."""
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)
