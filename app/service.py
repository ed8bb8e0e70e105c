"""decode -> batch -> predict -> unbatch, for one request's images; each protocol encodes the result. No HTTP here."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.auth import HeaderPairs
from app.batching import Batcher
from app.errors import InvalidParameter, ModelNotFound, NotReady
from app.imaging import DecodedImage, InvertMode, decode_image, open_upload
from app.predictor import ModelOutput, PixelBatch, Predictor
from models import Explanation
from models.store import VERSION_ID

# What decodes on the event loop, and what in a thread: a hop to a thread and back costs more CPU than decoding a
# small image, and buys nothing on one core; but a big image must not stall every other request. The declared
# size is read from the header first, so a small upload declaring a big image still leaves the loop.
# bench/decoders.py measures both sides of this line.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 320 * 320


@dataclass(frozen=True)
class Classified:
    """One request's images as the model saw them, and what it said of each, in upload order."""

    output: ModelOutput
    pixels: PixelBatch
    inverted: list[bool]
    model_seconds: float
    model_version: str
    class_names: list[str]
    explanation: Explanation | None = None


class InferenceService:
    def __init__(
        self,
        predictor: Predictor,
        batcher: Batcher | None,
        max_image_pixels: int,
        decode_concurrency: int = 2,
        on_classified: Callable[[Classified], None] | None = None,
        on_forward: Callable[[ModelOutput, float, list[float], ModelOutput], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.on_classified = on_classified  # per request: what only the request knows (inverted images)
        self.on_forward = on_forward  # per forward pass without a batcher (the batcher reports its own)
        self.batcher = batcher
        self.max_image_pixels = max_image_pixels
        # Each off-loop decode holds a whole decoded image (up to ~15 bytes a declared pixel): bound how many.
        self._decode_slots = asyncio.Semaphore(decode_concurrency)
        self.in_flight = 0  # runs inside run_model: a retired service stops its batcher once none is (lifecycle)
        self.answered = 0  # requests this version answered (a canary's share is told from it)
        # The shadow's hook (app/traffic.py), set on the serving version's service only: called with each answer,
        # it schedules the shadow's run and returns at once. None when no shadow is set.
        self.mirror: Callable[[Classified], None] | None = None
        # Explanations run in a thread of their own, one batch at a time, beside the batcher: a client asking for
        # them waits for this slot, never the others, whose requests go on through the batcher meanwhile.
        self._explain_slot = asyncio.Semaphore(1)

    async def classify(self, images: list[bytes], invert: InvertMode, *, explain: bool = False) -> Classified:
        """Encoded images (any supported format) through the model, in order; with ``explain``, DeepLIFT maps too."""
        decoded = [await self._decode(data, invert) for data in images]
        pixels = PixelBatch.of([image.pixels for image in decoded])
        result = await self._classify(pixels, [image.inverted for image in decoded])
        if not explain:
            return result
        async with self._explain_slot:
            explanation = await asyncio.to_thread(self.predictor.explain, pixels)
        return dataclasses.replace(result, explanation=explanation)

    async def classify_pixels(self, pixels: PixelBatch) -> Classified:
        """Pixels already fitted and light-on-dark, through the model."""
        return await self._classify(pixels, [False] * len(pixels))

    async def _classify(self, pixels: PixelBatch, inverted: list[bool]) -> Classified:
        output, seconds = await self.run_model(pixels)
        result = Classified(output, pixels, inverted, seconds, self.predictor.version, self.predictor.class_names)
        self.answered += 1
        if self.on_classified is not None:
            self.on_classified(result)
        if self.mirror is not None:
            self.mirror(result)
        return result

    async def run_model(self, pixels: PixelBatch, *, answering: bool = True) -> tuple[ModelOutput, float]:
        """Through the batcher when there is one, so every protocol shares one queue and its back-pressure.

        No mirror here, and a run that is not ``answering`` (a shadow's) counts as the model's work only, not in
        the drift gauges.
        """
        self.in_flight += 1
        try:
            return await self._forward(pixels, answering)
        finally:
            self.in_flight -= 1

    async def _forward(self, pixels: PixelBatch, answering: bool) -> tuple[ModelOutput, float]:
        if self.batcher is not None:
            return await self.batcher.submit(pixels, answering=answering)
        started = time.perf_counter()  # not loop.time(): uvloop's clock has millisecond steps
        output = await asyncio.to_thread(self.predictor.predict, pixels)
        seconds = time.perf_counter() - started
        if self.on_forward is not None:
            self.on_forward(output, seconds, [], output if answering else ModelOutput.concat([]))
        return output, seconds

    async def _decode(self, data: bytes, invert: InvertMode) -> DecodedImage:
        if len(data) > INLINE_DECODE_BYTES:  # even its header check reads every byte (PNG CRCs): all of it off the loop
            async with self._decode_slots:
                return await asyncio.to_thread(decode_image, data, invert=invert, max_pixels=self.max_image_pixels)
        opened = open_upload(data, self.max_image_pixels)  # the header only: decoder, declared size, bombs
        if opened.pixels <= INLINE_DECODE_PIXELS:
            return opened.decode(invert)
        async with self._decode_slots:  # a small file declaring a big image: decoded once, off the loop
            return await asyncio.to_thread(opened.decode, invert)


def require_service(state: Any) -> InferenceService:
    """The app's service once the model is loaded; NotReady, with the reason, before (or without) one."""
    service: InferenceService | None = state.service
    if service is None:
        raise NotReady(state.not_ready_reason, retry_after_s=5)
    return service


MODEL_VERSION_HEADER = "X-Model-Version"  # a client pins a loaded version with it; every answer names its own
MODEL_VERSION_HEADER_RAW = MODEL_VERSION_HEADER.lower().encode()  # as ASGI header lists carry it


def choose_service(state: Any, headers: HeaderPairs) -> InferenceService:
    """The version that answers this request: the pinned one, else the canary at its share, else the serving one.

    Called on every request: one pass over the headers and one random draw only while a canary is set.
    """
    serving = require_service(state)
    pin = None
    for name, value in headers:
        if name == MODEL_VERSION_HEADER_RAW:
            if pin is not None:
                raise InvalidParameter("header.x-model-version: send it once")
            pin = value
    if pin is not None:
        return pinned_service(state, pin)
    follower = state.follower  # app/lifecycle.py's ModelFollower, or None when one file serves
    canary = follower.canary if follower is not None else None
    if canary is not None and random.random() * 100 < canary.percent:
        service: InferenceService = canary.service
        return service
    return serving


def pinned_service(state: Any, pin: bytes) -> InferenceService:
    """The loaded version a client named in X-Model-Version (12 to 64 hex digits of its id); 404 when not loaded."""
    version = pin.decode("latin-1").strip()
    if not VERSION_ID.fullmatch(version):
        raise InvalidParameter("header.x-model-version: must be 12 to 64 lower-case hex digits of a loaded version")
    service = find_loaded(state, version)
    if service is None:
        names = ", ".join(sorted(digest[:12] for digest in loaded_services(state)))
        raise ModelNotFound(f"version {version} is not loaded here (loaded: {names})")
    return service


def loaded_services(state: Any) -> dict[str, InferenceService]:
    """Every version this worker holds, by id: a store version's whole digest, or the one file's version."""
    follower = state.follower  # app/lifecycle.py's ModelFollower: serving, canary and shadow
    if follower is not None:
        loaded: dict[str, InferenceService] = follower.loaded
        return loaded
    service: InferenceService | None = state.service
    return {service.predictor.version: service} if service is not None else {}


def find_loaded(state: Any, version: str) -> InferenceService | None:
    """The one loaded version whose id starts with ``version``, or None."""
    matches = [service for digest, service in loaded_services(state).items() if digest.startswith(version)]
    return matches[0] if len(matches) == 1 else None
