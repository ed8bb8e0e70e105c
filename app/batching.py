"""Dynamic batching: concurrent requests share one forward pass, and a lone request waits for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.errors import ModelFailed, Overloaded

log = logging.getLogger("app.batching")


@dataclass
class _Job:
    pixels: torch.Tensor  # (k, 28, 28) from one request
    future: asyncio.Future[tuple[torch.Tensor, float]] = field(repr=False)


class Batcher:
    """Gathers queued jobs into batches of at most ``max_batch_size`` images and runs them off the loop.

    Adaptive: the worker takes whatever is queued when the model is free, so under load batches grow
    by themselves, and with an empty queue a request goes straight to the model. ``max_wait_s`` adds
    an optional pause to let a batch fill.
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._queued_images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, pixels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Probabilities for ``pixels`` (k, 28, 28) and the seconds their batch spent in the model.

        Raises Overloaded when the queue is full, rather than letting memory grow without bound.
        """
        if self._queued_images + len(pixels) > self._max_queue:
            raise Overloaded("the model queue is full; retry shortly", headers={"Retry-After": "1"})
        job = _Job(pixels, asyncio.get_running_loop().create_future())
        self._queued_images += len(pixels)
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            self._queued_images -= sum(len(job.pixels) for job in jobs)
            live = [job for job in jobs if not job.future.done()]  # a client that left is not computed
            if not live:
                continue
            pixels = torch.cat([job.pixels for job in live])
            started = loop.time()
            try:
                probabilities = await loop.run_in_executor(self._executor, self._predict, pixels)
            except Exception:  # the model failed: fail this batch, keep serving the next
                log.exception("model failed on a batch of %d images", len(pixels))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(ModelFailed("the model failed on this request's batch; retry it"))
                continue
            seconds = loop.time() - started
            if self._on_batch is not None:
                self._on_batch(len(pixels), seconds)
            assert len(probabilities) == len(pixels), "a batch must yield one output per input"
            for job, part in zip(live, probabilities.split([len(j.pixels) for j in live]), strict=True):
                if not job.future.done():
                    job.future.set_result((part, seconds))

    async def _next_batch(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].pixels)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while size < self._max_batch_size:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            jobs.append(job)
            size += len(job.pixels)
        return jobs
