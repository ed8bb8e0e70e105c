"""decode -> batch -> predict -> unbatch -> encode, for one request's images. No HTTP here."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson
import torch

from app.batching import Batcher
from app.imaging import (
    DecodedImage,
    InvertMode,
    decode_image,
    decode_simple,
    fit_image,
    open_image,
    pixels_to_png,
)
from app.predictor import Predictor

# What decodes on the loop, and what in a thread. Measured (bench/, one core): a hop to a thread and back costs
# ~250 us of CPU a photo on a busy loop (the GIL changes hands), ~15% of the work for a 300x300 one, and buys
# nothing on one core; but a big image must not stall every other request. So: on the loop up to 320x320
# declared pixels (a 300x300 RGB PNG ~0.8 ms, a JPEG ~0.2 ms), in a thread beyond. The declared size is read
# from the header first, so a small upload declaring a big image (a 5 kB PNG of 6000x6000) still leaves the loop.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 320 * 320


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class Prediction:
    """One image's answer; ``as_dict`` is exactly the ``Prediction`` schema in app/schemas.py."""

    filename: str | None
    class_index: int
    class_name: str
    probabilities: dict[str, float]
    top_k: list[dict[str, Any]]
    inverted: bool
    input_image: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "class_index": self.class_index,
            "class_name": self.class_name,
            "probabilities": self.probabilities,
            "top_k": self.top_k,
            "inverted": self.inverted,
            "input_image": self.input_image,
        }


@dataclass(frozen=True)
class Classified:
    predictions: list[Prediction]
    model_seconds: float

    def to_json(self, model_version: str, *, batch: bool) -> bytes:
        """The PredictResponse (one image) or BatchPredictResponse body, serialised by orjson.

        The values are ours, already typed, so validating them again through pydantic would only cost time
        (~20 us a request, measured); tests check the bodies against the schemas instead.
        """
        tail = {"model_version": model_version, "inference_ms": round(self.model_seconds * 1000, 3)}
        if batch:
            return orjson.dumps({"predictions": [p.as_dict() for p in self.predictions], **tail})
        return orjson.dumps({**self.predictions[0].as_dict(), **tail})


class InferenceService:
    def __init__(
        self, predictor: Predictor, batcher: Batcher | None, max_image_pixels: int, decode_concurrency: int = 2
    ) -> None:
        self.predictor = predictor
        self.batcher = batcher
        self.max_image_pixels = max_image_pixels
        # Each off-loop decode holds a whole decoded image (up to ~15 bytes a declared pixel): bound how many.
        self._decode_slots = asyncio.Semaphore(decode_concurrency)

    async def classify(
        self, uploads: list[Upload], *, invert: InvertMode, top_k: int, return_input: bool
    ) -> Classified:
        decoded = [await self._decode(upload, invert) for upload in uploads]
        pixels = decoded[0].pixels[None] if len(decoded) == 1 else torch.stack([image.pixels for image in decoded])
        probabilities, seconds = await self.predict(pixels)
        rows: list[list[float]] = probabilities.tolist()  # one call, instead of a tensor op per image
        predictions = [
            self._encode(upload, image, row, top_k, return_input)
            for upload, image, row in zip(uploads, decoded, rows, strict=True)
        ]
        return Classified(predictions, seconds)

    async def predict(self, pixels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Probabilities for uint8 (N, 28, 28) pixels, through the batcher when there is one, and model seconds."""
        if self.batcher is not None:
            return await self.batcher.submit(pixels)
        started = time.perf_counter()  # not loop.time(): uvloop's clock has millisecond steps
        probabilities = await asyncio.to_thread(self.predictor.predict, pixels)
        return probabilities, time.perf_counter() - started

    async def _decode(self, upload: Upload, invert: InvertMode) -> DecodedImage:
        data, limit = upload.data, self.max_image_pixels
        if len(data) <= INLINE_DECODE_BYTES:
            decoded = decode_simple(data, invert, limit, max_size=INLINE_DECODE_PIXELS)
            if decoded is not None:
                return decoded
            image = open_image(data, limit)  # the header only: format, declared size, the bomb check
            if image.width * image.height <= INLINE_DECODE_PIXELS:
                return fit_image(image, invert)
        async with self._decode_slots:
            return await asyncio.to_thread(decode_image, data, invert=invert, max_pixels=limit)

    def _encode(
        self, upload: Upload, image: DecodedImage, values: list[float], top_k: int, return_input: bool
    ) -> Prediction:
        names = self.predictor.class_names
        ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)
        best = ranked[0]
        return Prediction(
            filename=upload.filename,
            class_index=best,
            class_name=names[best],
            probabilities=dict(zip(names, values, strict=True)),
            top_k=[{"class_index": i, "class_name": names[i], "probability": values[i]} for i in ranked[:top_k]],
            inverted=image.inverted,
            input_image=_png_data_url(image.pixels) if return_input else None,
        )


def _png_data_url(pixels: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(pixels_to_png(pixels)).decode("ascii")
