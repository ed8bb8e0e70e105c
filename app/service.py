"""decode -> batch -> predict -> unbatch -> encode, for one request's images. No HTTP here."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import torch

from app.batching import Batcher
from app.imaging import DecodedImage, InvertMode, decode_image, fit_image, open_image, pixels_to_png
from app.predictor import Predictor
from app.schemas import ClassProbability, Prediction

INLINE_DECODE_BYTES = 32 * 1024  # smaller uploads decode faster than a thread hop; larger ones leave the loop
# A small upload can still declare a big image (a 5 kB PNG of 6000x6000 takes ~0.3 s to decode): the declared
# size decides too, read from the header first, so no upload blocks the loop for more than about a millisecond.
INLINE_DECODE_PIXELS = 128 * 128


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Classified:
    predictions: list[Prediction]
    model_seconds: float


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
        pixels = torch.stack([image.pixels for image in decoded])
        if self.batcher is not None:
            probabilities, seconds = await self.batcher.submit(pixels)
        else:
            loop = asyncio.get_running_loop()
            started = loop.time()
            probabilities = await asyncio.to_thread(self.predictor.predict, pixels)
            seconds = loop.time() - started
        predictions = [
            self._encode(upload, image, row, top_k, return_input)
            for upload, image, row in zip(uploads, decoded, probabilities, strict=True)
        ]
        return Classified(predictions, seconds)

    async def _decode(self, upload: Upload, invert: InvertMode) -> DecodedImage:
        if len(upload.data) > INLINE_DECODE_BYTES:
            async with self._decode_slots:
                return await asyncio.to_thread(
                    decode_image, upload.data, invert=invert, max_pixels=self.max_image_pixels
                )
        image = open_image(upload.data, self.max_image_pixels)
        if image.width * image.height <= INLINE_DECODE_PIXELS:
            return fit_image(image, invert)
        async with self._decode_slots:
            return await asyncio.to_thread(fit_image, image, invert)

    def _encode(
        self, upload: Upload, image: DecodedImage, probabilities: torch.Tensor, top_k: int, return_input: bool
    ) -> Prediction:
        names = self.predictor.class_names
        values = probabilities.tolist()
        ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)
        best = ranked[0]
        return Prediction(
            filename=upload.filename,
            class_index=best,
            class_name=names[best],
            probabilities=dict(zip(names, values, strict=True)),
            top_k=[ClassProbability(class_index=i, class_name=names[i], probability=values[i]) for i in ranked[:top_k]],
            inverted=image.inverted,
            input_image=_png_data_url(image.pixels) if return_input else None,
        )


def _png_data_url(pixels: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(pixels_to_png(pixels)).decode("ascii")
