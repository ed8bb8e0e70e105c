"""Each decoding choice the server makes, timed against the alternative it turned down, on the app's own functions.

    .venv/bin/python bench/decoders.py              # a few minutes; writes "Decoders" in bench/RESULTS.md
    .venv/bin/python bench/decoders.py --no-write   # print only

The images are built from FashionMNIST's test set as bench/run.py's workloads are (bench/workloads.py): a 28x28
grayscale PNG, garment photos at 300x300 and 640x480 as PNG and as JPEG (quality 90), and a 640x480 JPEG with an
EXIF orientation. For each choice, the shipped path and the alternative are called alternately, many times, and
each is given as the median over rounds of CPU time per image (this process, all threads: one core's worth,
as the server pinned to one core spends it). The choices:

* PNG: libspng (pyspng) against Pillow, the whole decode to 28x28 (app.imaging.decode_image against
  app.imaging.pillow's path), and the decode step alone for the 28x28 one;
* PNG rows: inflated by libdeflate and handed to libspng as stored blocks (app.imaging.png._pre_inflated) against
  libspng inflating them itself; and the inflate alone, libdeflate against zlib;
* JPEG: libjpeg-turbo through simplejpeg (app.imaging.jpeg) against Pillow's draft path; and, for a JPEG with EXIF
  (which Pillow's path takes), the draft against a full-size decode;
* fitting (app.imaging.fit): box reduce before the grayscale conversion against after it; bicubic against
  Lanczos for the last resize, and whether the model's answer changes between them over many photos;
* where to decode (app.service): on the event loop against a round trip through asyncio.to_thread, as the
  service makes it (uvloop, a semaphore of 2, 16 requests at once), so INLINE_DECODE_BYTES/PIXELS can be judged
  against the CPU a hop costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import deflate
import numpy as np
import pyspng
import torch
import uvloop
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import results_file  # noqa: E402  (bench/ is a folder of scripts, not a package)
import workloads  # noqa: E402

from app.imaging import decode_image, fit, jpeg, open_upload, png  # noqa: E402
from app.imaging.fit import InvertMode  # noqa: E402
from app.imaging.pillow import fit_image, open_image, upright  # noqa: E402
from app.predictor import PixelBatch  # noqa: E402
from app.service import INLINE_DECODE_BYTES, INLINE_DECODE_PIXELS  # noqa: E402
from models import load_artifact, pixels_to_input  # noqa: E402

MAX_PIXELS = 40_000_000
SECTION = "## Decoders"


@dataclass(frozen=True)
class Kind:
    name: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Row:
    image: str
    step: str
    shipped: str
    shipped_us: float
    alternative: str
    alternative_us: float


def build_kinds() -> dict[str, Kind]:
    pixels = workloads.test_images(4)
    rng = np.random.default_rng(0)
    square, wide = workloads.photo(pixels[1], rng), workloads.photo(pixels[2], rng, (640, 480))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90°, as a phone held upright writes it
    buffer = io.BytesIO()
    wide.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    encoded = {
        "28x28 gray PNG": workloads.encode(Image.fromarray(pixels[0]), "PNG"),
        "300x300 photo PNG": workloads.encode(square, "PNG"),
        "640x480 photo PNG": workloads.encode(wide, "PNG"),
        "300x300 photo JPEG q90": workloads.encode(square, "JPEG"),
        "640x480 photo JPEG q90": workloads.encode(wide, "JPEG"),
        "640x480 JPEG q90 with EXIF": buffer.getvalue(),
    }
    kinds = {}
    for name, data in encoded.items():
        opened = open_upload(data, MAX_PIXELS)
        kinds[name] = Kind(name, data, opened.width, opened.height)
    return kinds


def cpu_us(functions: list[Callable[[], object]], rounds: int, budget_s: float) -> list[float]:
    """Median CPU microseconds per call of each function, called alternately round by round."""
    for function in functions:
        function()  # warm: imports, lazy tables, first allocations
    loops = []
    for function in functions:
        started, count = time.process_time(), 0
        while time.process_time() - started < budget_s / 10 or count == 0:
            function()
            count += 1
        loops.append(max(1, int(count * 10 / rounds)))
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, count, sample in zip(functions, loops, samples, strict=True):
            started = time.process_time()
            for _ in range(count):
                function()
            sample.append((time.process_time() - started) / count * 1e6)
    return [statistics.median(sample) for sample in samples]


def pillow_path(data: bytes) -> object:
    return fit_image(open_image(data, MAX_PIXELS), InvertMode.AUTO)


def idat_stream(data: bytes) -> bytes:
    return b"".join(data[start + 8 : end - 4] for kind, start, end in png._chunks(data) if kind == b"IDAT")


def fit_grayscale_first(image: Image.Image) -> object:
    """app.imaging.fit.fit with the grayscale conversion before the box reduce: the order it turned down."""
    gray = fit.box_reduced(fit.to_grayscale(image))
    if gray.size != (fit.IMAGE_SIDE, fit.IMAGE_SIDE):
        gray = gray.resize(fit.contained_size(gray.size), fit.RESAMPLE, reducing_gap=3.0)
    return fit.fit_bytes(gray.tobytes(), gray.width, gray.height, InvertMode.AUTO)


def patched(function: Callable[[], object], **settings: object) -> Callable[[], object]:
    """Run ``function`` with app.imaging's module constants changed (the code reads them per call): the last
    resize's filter (``RESAMPLE``, app.imaging.fit) or the JPEG decode scale (``DRAFT_SIDE``, app.imaging.jpeg)."""
    modules = {"RESAMPLE": fit, "DRAFT_SIDE": jpeg}

    def call() -> object:
        shipped = {name: getattr(modules[name], name) for name in settings}
        for name, value in settings.items():
            setattr(modules[name], name, value)
        try:
            return function()
        finally:
            for name, value in shipped.items():
                setattr(modules[name], name, value)

    return call


def decoder_rows(kinds: dict[str, Kind], rounds: int, budget: float) -> list[Row]:
    rows = []
    for kind in kinds.values():
        data, size = kind.data, (kind.width, kind.height)
        if kind.name.endswith("PNG"):
            shipped, pillow = cpu_us([lambda d=data: decode_image(d), lambda d=data: pillow_path(d)], rounds, budget)
            rows.append(Row(kind.name, "decode to 28x28", "libspng (pyspng)", shipped, "Pillow", pillow))
            if size == (28, 28):
                spng, pil = cpu_us([lambda d=data: pyspng.load(d), lambda d=data: _pillow_load(d)], rounds, budget)
                rows.append(Row(kind.name, "decode only", "pyspng.load", spng, "Image.open().load()", pil))
            else:
                rows += inflate_rows(kind, rounds, budget)
        elif jpeg.simple_size(data) is not None:
            shipped, pillow = cpu_us(
                [lambda d=data, s=size: jpeg.decode(d, InvertMode.AUTO, s), lambda d=data: pillow_path(d)],
                rounds,
                budget,
            )
            rows.append(
                Row(kind.name, "decode to 28x28", "libjpeg-turbo (simplejpeg)", shipped, "Pillow draft", pillow)
            )
        else:
            draft, full = cpu_us([lambda d=data: pillow_path(d), lambda d=data: _pillow_full(d)], rounds, budget)
            rows.append(
                Row(kind.name, "decode to 28x28 (EXIF: Pillow)", "draft (DCT scaling)", draft, "full size", full)
            )
    return rows


def inflate_rows(kind: Kind, rounds: int, budget: float) -> list[Row]:
    data = kind.data
    channels = png.CHANNELS[data[25]]
    row_bytes = kind.height * (1 + kind.width * channels)
    stream = idat_stream(data)
    pre, own = cpu_us(
        [lambda: pyspng.load(png._pre_inflated(data, kind.width, kind.height)), lambda: pyspng.load(data)],
        rounds,
        budget,
    )
    fast, stock = cpu_us(
        [lambda: deflate.zlib_decompress(stream, row_bytes), lambda: zlib.decompress(stream)], rounds, budget
    )
    return [
        Row(kind.name, "rows to pixels", "libdeflate, then libspng", pre, "libspng's own inflate", own),
        Row(kind.name, "inflate only", "libdeflate", fast, "zlib", stock),
    ]


def fitting_rows(kinds: dict[str, Kind], rounds: int, budget: float) -> list[Row]:
    rows = []
    for name in ("300x300 photo PNG", "640x480 photo PNG"):
        image = Image.fromarray(pyspng.load(kinds[name].data))
        shipped, other = cpu_us(
            [lambda i=image: fit.fit(i, InvertMode.AUTO), lambda i=image: fit_grayscale_first(i)], rounds, budget
        )
        rows.append(
            Row(name, "fit to 28x28", "box reduce, then grayscale", shipped, "grayscale, then box reduce", other)
        )
    for name in ("300x300 photo JPEG q90", "640x480 photo JPEG q90", "640x480 photo PNG"):
        data = kinds[name].data
        decode = lambda d=data: decode_image(d)  # noqa: E731
        resamples = (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
        bicubic, lanczos = cpu_us([patched(decode, RESAMPLE=r) for r in resamples], rounds, budget)
        rows.append(Row(name, "decode to 28x28", "bicubic last resize", bicubic, "Lanczos", lanczos))
    for name in ("300x300 photo JPEG q90", "640x480 photo JPEG q90"):
        decode = lambda d=kinds[name].data: decode_image(d)  # noqa: E731
        side = fit.IMAGE_SIDE
        wide = patched(decode, DRAFT_SIDE=2 * side, RESAMPLE=Image.Resampling.LANCZOS)
        shipped, wider = cpu_us([decode, wide], rounds, budget)
        rows.append(
            Row(name, "decode to 28x28", f"DCT scale ≥ {side}px, bicubic", shipped, f"≥ {2 * side}px, Lanczos", wider)
        )
    return rows


def _pillow_load(data: bytes) -> object:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pillow_full(data: bytes) -> object:
    """Pillow's path without the draft: every pixel of the JPEG decoded at full size, then fitted."""
    return fit.fit(upright(open_image(data, MAX_PIXELS)), InvertMode.AUTO)


@dataclass(frozen=True)
class Hop:
    image: str
    encoded_bytes: int
    app_decodes: str  # where app.service puts it
    inline_us: float
    hop_us: float


def hop_rows(kinds: dict[str, Kind], rounds: int, budget: float, concurrency: int = 16) -> list[Hop]:
    """CPU per image decoded on the event loop against through asyncio.to_thread, as app.service does either."""
    loop = uvloop.new_event_loop()
    slots = asyncio.Semaphore(2)  # app.service's decode_concurrency default

    async def in_thread(data: bytes) -> object:
        async with slots:
            return await asyncio.to_thread(decode_image, data, invert=InvertMode.AUTO, max_pixels=MAX_PIXELS)

    async def on_loop(data: bytes) -> object:
        return decode_image(data, invert=InvertMode.AUTO, max_pixels=MAX_PIXELS)

    def burst(decode: Callable[[bytes], object], data: bytes) -> Callable[[], object]:
        async def many() -> None:
            await asyncio.gather(*(decode(data) for _ in range(concurrency)))

        return lambda: loop.run_until_complete(many())

    rows = []
    try:
        # A hop with nothing to decode: what the round trip alone costs.
        nothing, hop = cpu_us([burst(_noop_inline, b""), burst(_noop_hop, b"")], rounds, budget)
        rows.append(Hop("(nothing: the hop alone)", 0, "-", nothing / concurrency, hop / concurrency))
        for kind in kinds.values():
            inline, hopped = cpu_us([burst(on_loop, kind.data), burst(in_thread, kind.data)], rounds, budget)
            small = len(kind.data) <= INLINE_DECODE_BYTES and kind.width * kind.height <= INLINE_DECODE_PIXELS
            where = "on the loop" if small else "in a thread"
            rows.append(Hop(kind.name, len(kind.data), where, inline / concurrency, hopped / concurrency))
    finally:
        loop.close()
    return rows


async def _noop_inline(_: bytes) -> None:
    return None


async def _noop_hop(_: bytes) -> None:
    await asyncio.to_thread(lambda: None)


def labels(count: int) -> np.ndarray:
    path = workloads.FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read(8 + count)
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def agreement(model_path: Path, count: int) -> list[str]:
    """Whether the last resize's filter changes the model's answer: bicubic (shipped) against Lanczos, on photos
    of test garments at bench/workloads.py's mixed sizes, half JPEG and half PNG."""
    model = load_artifact(model_path).model
    images, truth = workloads.test_images(count), labels(count)
    rng = np.random.default_rng(1)
    answers: dict[Image.Resampling, list[int]] = {}
    encoded = []
    for i, pixels in enumerate(images):
        picture = workloads.photo(pixels, rng, workloads.MIXED_SIZES[i % len(workloads.MIXED_SIZES)])
        encoded.append(workloads.encode(picture, "JPEG" if i % 2 == 0 else "PNG"))
    for resample in (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS):
        decode = patched(lambda: [decode_image(data).pixels for data in encoded], RESAMPLE=resample)
        with torch.no_grad():
            logits = model(pixels_to_input(PixelBatch.of(decode()).tensor()))  # type: ignore[arg-type]
        answers[resample] = logits.argmax(1).tolist()
    bicubic, lanczos = answers[Image.Resampling.BICUBIC], answers[Image.Resampling.LANCZOS]
    same = sum(a == b for a, b in zip(bicubic, lanczos, strict=True))
    right = [sum(a == t for a, t in zip(answer, truth, strict=True)) for answer in (bicubic, lanczos)]
    return [
        f"- Bicubic against Lanczos for the last resize, on {count:,} photos of test garments (sizes as the `mixed` "
        f"workload, half JPEG q90, half PNG): the same class for **{same:,} of {count:,}**; right for "
        f"{right[0]:,} (bicubic) and {right[1]:,} (Lanczos).",
    ]


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| image | step | shipped | µs | alternative | µs | shipped takes |",
        "|---|---|---|--:|---|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.image} | {row.step} | {row.shipped} | {row.shipped_us:,.1f} | {row.alternative} | "
            f"{row.alternative_us:,.1f} | {row.shipped_us / row.alternative_us:.2f}× |"
        )
    return lines


def hop_table(rows: list[Hop]) -> list[str]:
    lines = [
        "| image | bytes | app.service decodes it | on the loop µs | through a thread µs | the hop adds µs |",
        "|---|--:|---|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.image} | {row.encoded_bytes:,} | {row.app_decodes} | {row.inline_us:,.1f} | {row.hop_us:,.1f} | "
            f"{row.hop_us - row.inline_us:,.1f} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each figure is the median (default 7)")
    parser.add_argument("--budget", type=float, default=0.5, help="CPU seconds per measurement, all rounds")
    parser.add_argument("--core", type=int, default=0, help="pin to this core, as bench/run.py pins the server")
    parser.add_argument("--agreement-images", type=int, default=1000, help="photos for bicubic against Lanczos")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section, write nothing")
    args = parser.parse_args(argv)
    if args.agreement_images and not args.model.exists():
        parser.error(f"{args.model} not found: train one with `make model` (or pass --agreement-images 0)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    started, load_before = time.monotonic(), os.getloadavg()
    kinds = build_kinds()
    rows = decoder_rows(kinds, args.rounds, args.budget) + fitting_rows(kinds, args.rounds, args.budget)
    hops = hop_rows(kinds, args.rounds, args.budget)
    agreed = agreement(args.model, args.agreement_images) if args.agreement_images else []
    load = ", ".join(f"{x:.2f}" for x in load_before)
    command = " ".join(["bench/decoders.py", *(argv if argv is not None else sys.argv[1:])])
    section = [
        f"Written by `.venv/bin/python {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{time.monotonic() - started:.0f} s, pinned to core {args.core}, load average {load} before it. CPU time "
        f"per image (this process, all threads), median of {args.rounds} rounds, the two sides called alternately; "
        "`shipped takes`: the shipped path's time over the alternative's.",
        "",
        *table(rows),
        "",
        f"Where to decode (`app/service.py`: on the event loop up to {INLINE_DECODE_BYTES // 1024} KiB and "
        f"{INLINE_DECODE_PIXELS:,} declared pixels, else in a thread): CPU per image when 16 requests decode at once "
        "on uvloop, through `asyncio.to_thread` behind a semaphore of 2 as the service does, or on the loop.",
        "",
        *hop_table(hops),
        "",
        *agreed,
    ]
    print("\n".join(section))
    if not args.no_write:
        results_file.update(args.out, {SECTION: section})
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
