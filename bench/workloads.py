"""The two benchmark workloads, built at run time from FashionMNIST's test set so nothing binary is committed.

* ``small``: the 28x28 test images as PNG, as a FashionMNIST client would send them.
* ``photos``: the same garments as ~300x300 "photos": upscaled, tinted, on a textured light background
  (paper or a table top: noise and a lighting gradient), half JPEG and half PNG.
* ``mixed``: the same kind of photos at the sizes clients really send (300x300, 512x512, 640x480 and
  480x640), half JPEG (quality 85, 90 or 95) and half PNG; the larger ones are decoded off the event loop.

Each image becomes a complete multipart/form-data body (field ``file``) in its own file, which the wrk
Lua script loads once and cycles through.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BOUNDARY = "fashionbenchboundary7d1f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
PHOTO_SIDE = 300
MIXED_SIZES = ((300, 300), (512, 512), (640, 480), (480, 640))  # (width, height): phone shots, scans, thumbnails
MIXED_QUALITIES = (85, 90, 95)
NAMES = ("small", "photos", "mixed")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    manifest: Path  # one body file per line, for bench/upload.lua
    mean_image_bytes: int


def test_images(count: int, data_dir: Path = FASHION_DIR) -> np.ndarray:
    """The first ``count`` test images, uint8 (count, 28, 28), read straight from the IDX file."""
    path = data_dir / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        raise SystemExit(f"{path} not found: `apt-get install dataset-fashion-mnist` provides it")
    with gzip.open(path, "rb") as f:
        raw = f.read(16 + count * 28 * 28)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 28, 28)


def photo(
    pixels: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (PHOTO_SIDE, PHOTO_SIDE)
) -> Image.Image:
    """A garment photographed on a light, textured surface, ``size`` (width, height): what a phone camera would send."""
    width, height = size
    margin = min(size) // 15
    garment_side = min(size) - 2 * margin
    garment = Image.fromarray(pixels).resize((garment_side, garment_side), Image.Resampling.BICUBIC)
    top, left = (height - garment_side) // 2, (width - garment_side) // 2
    mask = np.zeros((height, width), np.float32)
    mask[top : top + garment_side, left : left + garment_side] = np.asarray(garment, np.float32) / 255
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 225 + 20 * (xx / width * 0.6 + yy / height * 0.4)  # a lighting gradient across the table
    noise = Image.fromarray((128 + rng.normal(0, 10, (height, width))).clip(0, 255).astype(np.uint8))
    grain = np.asarray(noise.filter(ImageFilter.GaussianBlur(1.0)), np.float32) - 128  # paper / wood grain
    background = np.stack([light + grain, light + grain - 4, light + grain - 10], axis=-1)
    tint = rng.uniform(30, 170, size=3).astype(np.float32)
    cloth = tint + rng.normal(0, 6, (height, width, 1)).astype(np.float32)  # weave texture
    rgb = background * (1 - mask[..., None]) + cloth * mask[..., None]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def multipart(filename: str, media_type: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _write(name: str, description: str, files: list[tuple[str, str, bytes]], out: Path) -> Workload:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (filename, media_type, data) in enumerate(files):
        path = folder / f"{i:03d}.body"
        path.write_bytes(multipart(filename, media_type, data))
        paths.append(path)
    manifest = folder / "manifest.txt"
    manifest.write_text("".join(f"{p}\n" for p in paths))
    mean = sum(len(data) for _, _, data in files) // len(files)
    return Workload(name, description, manifest, mean)


def build(out: Path, count: int = 32, seed: int = 0) -> dict[str, Workload]:
    images = test_images(count)
    rng = np.random.default_rng(seed)
    small = [(f"{i}.png", "image/png", encode(Image.fromarray(p), "PNG")) for i, p in enumerate(images)]
    photos = []
    for i, pixels in enumerate(images):
        fmt, ext, media_type = ("JPEG", "jpg", "image/jpeg") if i % 2 == 0 else ("PNG", "png", "image/png")
        photos.append((f"{i}.{ext}", media_type, encode(photo(pixels, rng), fmt)))
    return {
        "small": _write("small", "28x28 grayscale PNG", small, out),
        "photos": _write("photos", f"{PHOTO_SIDE}x{PHOTO_SIDE} RGB photos, half JPEG (q90), half PNG", photos, out),
        "mixed": _write("mixed", mixed_description(), mixed(images, np.random.default_rng(seed + 1)), out),
    }


def mixed(images: np.ndarray, rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """Each size in turn, each size both as JPEG (a quality in turn) and as PNG: the sizes clients really send."""
    files = []
    for i, pixels in enumerate(images):
        image = photo(pixels, rng, MIXED_SIZES[i % len(MIXED_SIZES)])
        if (i // len(MIXED_SIZES)) % 2 == 0:
            files.append((f"{i}.jpg", "image/jpeg", encode(image, "JPEG", MIXED_QUALITIES[i % len(MIXED_QUALITIES)])))
        else:
            files.append((f"{i}.png", "image/png", encode(image, "PNG")))
    return files


def mixed_description() -> str:
    sizes = ", ".join(f"{w}x{h}" for w, h in MIXED_SIZES)
    qualities = "/".join(map(str, MIXED_QUALITIES))
    return f"RGB photos at {sizes} in turn, half JPEG (q{qualities}), half PNG"
