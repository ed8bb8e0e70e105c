"""Five kinds of 28x28 images that are not garments, made offline, to measure the "not a garment" score.

Each kind is made two ways: the ``evaluation`` sets, on which the candidate scores are compared, and
the ``held_aside`` sets, made with other seeds, other fonts, other digit images and other shape, noise
and field parameters, which check that the threshold (fixed on real garments only) generalises.
Every image is returned as ``/predict`` sees it: a light-background image is inverted by the same
border rule the server applies (``models.has_light_background``), so a scan of dark ink on white
paper arrives as light ink on black, as a user's upload would.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models import IMAGE_SIDE, has_light_background

KINDS = ("digits", "text", "shapes", "noise", "flat")
SPLITS = ("evaluation", "held_aside")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))


@dataclass(frozen=True)
class Variant:
    """What differs between the evaluation and the held-aside sets of every kind."""

    seed: int
    part: int  # 0 or 1: which half of a shared pool (digit images, fonts) this split draws from
    digit_sizes: tuple[int, int]
    text_alphabet: str
    shapes: tuple[str, ...]
    noises: tuple[str, ...]
    fields: tuple[str, ...]


VARIANTS = {
    "evaluation": Variant(
        seed=14,
        part=0,
        digit_sizes=(16, 24),
        text_alphabet=string.ascii_letters,
        shapes=("ellipse", "rectangle", "triangle", "line"),
        noises=("uniform", "gaussian"),
        fields=("constant",),
    ),
    "held_aside": Variant(
        seed=1014,
        part=1,
        digit_sizes=(12, 27),
        text_alphabet=string.digits + string.punctuation + "ÄÖÜßéèà",
        shapes=("star", "cross", "arc", "polygon"),
        noises=("salt_and_pepper", "blurred"),
        fields=("noisy", "gradient"),
    ),
}


def make_ood_set(kind: str, split: str, count: int) -> torch.Tensor:
    """``count`` images of ``kind`` as uint8 (count, 28, 28), as the server sees them (auto-invert applied)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    variant = VARIANTS[split]
    rng = np.random.default_rng([variant.seed, KINDS.index(kind)])
    images = MAKERS[kind](rng, variant, count)
    return torch.from_numpy(np.stack([as_served(image) for image in images]))


def make_ood_sets(split: str, count: int) -> dict[str, torch.Tensor]:
    return {kind: make_ood_set(kind, split, count) for kind in KINDS}


def as_served(image: np.ndarray) -> np.ndarray:
    """Invert a light-background image, exactly as /predict's auto-invert does."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    return 255 - pixels if has_light_background(pixels.tobytes(), IMAGE_SIDE) else pixels


def _on_paper(rng: np.random.Generator, canvas: Image.Image) -> np.ndarray:
    """Half the images as light ink on black, half as dark ink on light paper (as a scan or photo)."""
    pixels = np.asarray(canvas, dtype=np.uint8)
    if rng.random() < 0.5:
        paper = int(rng.integers(180, 256))
        return (paper - pixels.astype(np.int16) * paper // 255).astype(np.uint8)
    return pixels


def make_digits(rng: np.random.Generator, variant: Variant, count: int) -> list[np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits, scaled up and placed like a drawn digit."""
    from sklearn.datasets import load_digits  # a train/dev dependency only; serving never imports this module

    pool = load_digits().images[variant.part :: 2]  # the two splits never share a digit image
    images = []
    for index in rng.choice(len(pool), size=count):
        digit = Image.fromarray((pool[index] * (255 / 16)).astype(np.uint8))
        size = int(rng.integers(variant.digit_sizes[0], variant.digit_sizes[1] + 1))
        resample = Image.Resampling.BILINEAR if variant.part == 0 else Image.Resampling.BICUBIC
        canvas = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE))
        top, left = rng.integers(0, IMAGE_SIDE - size + 1, size=2)
        canvas.paste(digit.resize((size, size), resample), (int(left), int(top)))
        images.append(_on_paper(rng, canvas))
    return images


def system_fonts() -> list[Path]:
    """Every TrueType/OpenType font on the system, sorted, so the split between the sets is stable."""
    found = {path for folder in FONT_DIRS if folder.is_dir() for path in folder.rglob("*.[ot]tf")}
    return sorted(found)


def _font_pool(part: int) -> list[Callable[[int], ImageFont.FreeTypeFont | ImageFont.ImageFont]]:
    """Half the system's fonts per split; Pillow's built-in font when the system has fewer than two."""
    fonts = system_fonts()[part::2]
    if not fonts:
        return [lambda size: ImageFont.load_default(size)]
    return [lambda size, path=path: ImageFont.truetype(str(path), size) for path in fonts]


def make_text(rng: np.random.Generator, variant: Variant, count: int) -> list[np.ndarray]:
    """One to three characters in the system's fonts, at random sizes and places."""
    fonts = _font_pool(variant.part)
    images = []
    for _ in range(count):
        font = fonts[int(rng.integers(len(fonts)))](int(rng.integers(12, 27)))
        text = "".join(rng.choice(list(variant.text_alphabet), size=int(rng.integers(1, 4))))
        canvas = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE))
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (IMAGE_SIDE - (right - left)) / 2 - left + rng.integers(-3, 4)
        y = (IMAGE_SIDE - (bottom - top)) / 2 - top + rng.integers(-3, 4)
        draw.text((x, y), text, fill=int(rng.integers(160, 256)), font=font)
        images.append(_on_paper(rng, canvas))
    return images


def _shape_points(rng: np.random.Generator, shape: str) -> list[tuple[float, float]]:
    centre = rng.uniform(9, 19, size=2)
    radius = rng.uniform(5, 12)
    corners = {"triangle": 3, "polygon": int(rng.integers(5, 9)), "star": 10, "cross": 12}[shape]
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, corners, endpoint=False)
    radii = np.full(corners, radius)
    if shape == "star":
        radii[1::2] *= 0.45
    if shape == "cross":
        radii[0::3] *= 0.35
    xs, ys = centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _box(rng: np.random.Generator) -> list[float]:
    x0, y0 = rng.uniform(1, 14, size=2)
    return [float(x0), float(y0), float(x0 + rng.uniform(6, 26 - x0)), float(y0 + rng.uniform(6, 26 - y0))]


def make_shapes(rng: np.random.Generator, variant: Variant, count: int) -> list[np.ndarray]:
    """Filled or outlined geometric shapes: the kind of clip art a user may try."""
    images = []
    for _ in range(count):
        shape = str(rng.choice(variant.shapes))
        canvas = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE))
        draw = ImageDraw.Draw(canvas)
        ink, width = int(rng.integers(120, 256)), int(rng.integers(1, 4))
        fill = ink if rng.random() < 0.5 else None
        if shape == "ellipse":
            draw.ellipse(_box(rng), fill=fill, outline=ink, width=width)
        elif shape == "rectangle":
            draw.rectangle(_box(rng), fill=fill, outline=ink, width=width)
        elif shape == "line":
            draw.line(
                [tuple(rng.uniform(0, 28, size=2)) for _ in range(int(rng.integers(2, 5)))], fill=ink, width=width
            )
        elif shape == "arc":
            start = float(rng.uniform(0, 360))
            draw.arc(_box(rng), start, start + float(rng.uniform(90, 300)), fill=ink, width=width + 1)
        else:
            draw.polygon(_shape_points(rng, shape), fill=fill, outline=ink, width=width)
        images.append(_on_paper(rng, canvas))
    return images


def make_noise(rng: np.random.Generator, variant: Variant, count: int) -> list[np.ndarray]:
    """Sensor-like noise: uniform, Gaussian, salt-and-pepper, or blurred into blotches."""
    shape = (IMAGE_SIDE, IMAGE_SIDE)
    images = []
    for _ in range(count):
        noise = str(rng.choice(variant.noises))
        if noise == "uniform":
            low = rng.integers(0, 128)
            pixels = rng.integers(low, rng.integers(low + 64, 256), size=shape)
        elif noise == "gaussian":
            pixels = rng.normal(rng.uniform(40, 215), rng.uniform(20, 80), size=shape)
        elif noise == "salt_and_pepper":
            pixels = np.where(rng.random(shape) < rng.uniform(0.05, 0.5), 255, 0)
        else:
            raw = Image.fromarray(rng.integers(0, 256, size=shape).astype(np.uint8))
            pixels = np.asarray(raw.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.7, 2.0)))), dtype=float)
            pixels = (pixels - pixels.mean()) * rng.uniform(2, 5) + rng.uniform(40, 215)
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def make_flat(rng: np.random.Generator, variant: Variant, count: int) -> list[np.ndarray]:
    """Flat fields: a blank, a wall, a sheet of paper; held aside with a little noise or a gentle gradient."""
    images = []
    grid = np.linspace(-1, 1, IMAGE_SIDE)
    for _ in range(count):
        field = str(rng.choice(variant.fields))
        pixels = np.full((IMAGE_SIDE, IMAGE_SIDE), rng.uniform(0, 255))
        if field == "noisy":
            pixels += rng.normal(0, rng.uniform(1, 6), size=pixels.shape)
        elif field == "gradient":
            direction = rng.normal(size=2)
            pixels += rng.uniform(5, 40) * (direction[0] * grid[None, :] + direction[1] * grid[:, None])
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


MAKERS: dict[str, Callable[[np.random.Generator, Variant, int], list[np.ndarray]]] = {
    "digits": make_digits,
    "text": make_text,
    "shapes": make_shapes,
    "noise": make_noise,
    "flat": make_flat,
}
