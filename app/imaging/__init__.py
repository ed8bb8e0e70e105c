"""Image bytes to the 28x28 uint8 pixels the model expects: FashionMNIST's look, from any real photo.

One entrance, in two steps: ``open_upload`` reads only the header (format, declared size, the bomb check) and
picks the decoder; ``OpenedImage.decode`` does the costly half. The caller chooses where that half runs (the
service decodes small images on the event loop, large ones in a thread) by the declared size. The fast decoders
(libspng for PNG, libjpeg-turbo for JPEG) sit behind it for the common files, Pillow for everything else, and all
of them end in the same fitting, so a file gives the same pixels whichever decoder took it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.imaging import jpeg, png
from app.imaging.fit import DecodedImage, InvertMode, pixels_to_png
from app.imaging.pillow import SUPPORTED_FORMATS, fit_image, open_image

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "InvertMode",
    "OpenedImage",
    "decode_image",
    "open_upload",
    "pixels_to_png",
]

FAST_DECODERS = ((png.simple_size, png.decode), (jpeg.simple_size, jpeg.decode))


@dataclass(frozen=True)
class OpenedImage:
    """An upload whose header has been read and whose declared size is within the limit."""

    width: int
    height: int
    decoder: Callable[[InvertMode], DecodedImage]

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decode(self, invert: InvertMode = InvertMode.AUTO) -> DecodedImage:
        return self.decoder(invert)


def open_upload(data: bytes, max_pixels: int = 40_000_000) -> OpenedImage:
    """Choose the decoder from the bytes and refuse bombs, before a pixel is decoded."""
    for simple_size, fast_decode in FAST_DECODERS:
        size = simple_size(data)
        if size is not None and 0 < size[0] * size[1] <= max_pixels:
            return OpenedImage(*size, _fast_or_pillow(fast_decode, data, size, max_pixels))
    image = open_image(data, max_pixels)
    return OpenedImage(image.width, image.height, lambda invert: fit_image(image, invert))


def decode_image(data: bytes, *, invert: InvertMode = InvertMode.AUTO, max_pixels: int = 40_000_000) -> DecodedImage:
    """Both steps at once."""
    return open_upload(data, max_pixels).decode(invert)


def _fast_or_pillow(
    fast_decode: Callable[[bytes, InvertMode, tuple[int, int]], DecodedImage | None],
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
) -> Callable[[InvertMode], DecodedImage]:
    """The fast decoder; where it declines (a file it finds corrupt), Pillow's, which words the error."""

    def decode(invert: InvertMode) -> DecodedImage:
        return fast_decode(data, invert, size) or fit_image(open_image(data, max_pixels), invert)

    return decode
