"""Dynamic batching: concurrent requests share one forward pass, and a lone request waits for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.errors import ModelFailed, Overloaded
from app.predictor import ModelOutput, PixelBatch

log = logging.getLogger("app.batching")


@dataclass(slots=True)
class _Job:
    pixels: PixelBatch  # k images from one request
    future: asyncio.Future[tuple[ModelOutput, float]] = field(repr=False)
    queued_at: float  # loop time at submit, for the queue-wait metric
    answering: bool  # False for a shadow's run: it loads the model but answers nobody (the metrics tell them apart)


class Batcher:
    """Gathers queued jobs into batches of at most ``max_batch_size`` images and runs them off the loop.

    Adaptive: the worker takes whatever is queued when the model is free, so under load batches grow
    by themselves, and with an empty queue a request goes straight to the model. ``max_wait_s`` adds
    an optional pause to let a batch fill. A request is never split, so one request of more images than
    ``max_batch_size`` is a batch of its own. The model runs on one thread of its own, never on the loop.
    """

    def __init__(
        self,
        predict: Callable[[PixelBatch], ModelOutput],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[ModelOutput, float, list[float], ModelOutput], None] | None = None,
    ) -> None:
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._queued_images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarts = 0

    @property
    def queued_images(self) -> int:
        """Images submitted and not yet taken into a forward pass."""
        return self._queued_images

    @property
    def restarts(self) -> int:
        """How often the worker died of a bug and was started again."""
        return self._restarts

    def start(self) -> None:
        self._stopping = False
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        self._worker.add_done_callback(self._restart_if_died)

    async def stop(self) -> None:
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    def _restart_if_died(self, worker: asyncio.Task[None]) -> None:
        """A bug in the loop below must not leave requests queued forever: fail what is queued, start again."""
        if self._stopping or worker.cancelled() or worker.exception() is None:
            return
        log.error("the batcher's worker died; restarting it", exc_info=worker.exception())
        self._restarts += 1
        while self._pending:
            job = self._pending.popleft()
            self._queued_images -= len(job.pixels)
            if not job.future.done():
                job.future.set_exception(ModelFailed("the model queue failed on this request; retry it"))
        self.start()

    async def submit(self, pixels: PixelBatch, *, answering: bool = True) -> tuple[ModelOutput, float]:
        """The model's output for ``pixels`` (k images) and the seconds their batch spent in the model.

        Raises Overloaded when the queue is full, rather than letting memory grow without bound. A job whose
        caller is cancelled while it waits is dropped from its batch.
        """
        if self._queued_images + len(pixels) > self._max_queue:
            raise Overloaded("the model queue is full; retry shortly", retry_after_s=1)
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), time.perf_counter(), answering)
        self._queued_images += len(pixels)
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = [job for job in await self._next_batch() if not job.future.done()]  # a client that left
            if live:
                await self._forward(loop, live)

    async def _forward(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        pixels = PixelBatch.concat([job.pixels for job in jobs])
        started = time.perf_counter()  # not loop.time(): uvloop's clock has millisecond steps
        try:
            output = await loop.run_in_executor(self._executor, self._predict, pixels)
        except Exception:  # the model failed: fail this batch, keep serving the next
            log.exception("model failed on a batch of %d images", len(pixels))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ModelFailed("the model failed on this request's batch; retry it"))
            return
        seconds = time.perf_counter() - started
        assert len(output) == len(pixels), "a batch must yield one output per input"
        parts = [output] if len(jobs) == 1 else output.split([len(job.pixels) for job in jobs])
        if self._on_batch is not None:
            answering = [part for job, part in zip(jobs, parts, strict=True) if job.answering]
            answered = output if len(answering) == len(jobs) else ModelOutput.concat(answering)
            self._on_batch(output, seconds, [started - job.queued_at for job in jobs], answered)
        for job, part in zip(jobs, parts, strict=True):
            if not job.future.done():
                job.future.set_result((part, seconds))

    async def _next_batch(self) -> list[_Job]:
        """Wait for a first job, optionally for the batch to fill, then take jobs up to max_batch_size images."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        if self._max_wait_s > 0:
            deadline = asyncio.get_running_loop().time() + self._max_wait_s
            while self._queued_images < self._max_batch_size:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        jobs = [self._pending.popleft()]
        size = len(jobs[0].pixels)
        while self._pending and size + len(self._pending[0].pixels) <= self._max_batch_size:
            jobs.append(self._pending.popleft())
            size += len(jobs[-1].pixels)
        self._queued_images -= size
        return jobs
