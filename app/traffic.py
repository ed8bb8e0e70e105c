"""Canary and shadow: a second loaded version answers a share of requests, or mirrors the serving one's answers.

The canary is picked per request by app/service.py's ``choose_service``; here it is only a service and a share.
The shadow is a hook on the serving version's service (``InferenceService.mirror``): after an answer is computed
it may schedule a run of the same pixels on the shadow version, as a task the request never awaits. It runs only
while no live request is inside the serving model (queued or computing) and the shadow holds at most one batch of
images, so it takes spare capacity only; otherwise it is skipped, and counted. It compares the two versions'
argmax and times its run. Nothing it does raises into a request: its failures are its own, logged and counted
as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from app.errors import ServiceError
from app.metrics import Metrics
from app.service import Classified, InferenceService

log = logging.getLogger("app.traffic")


@dataclass(frozen=True)
class Canary:
    """A loaded version that answers ``percent`` of the requests no client pinned."""

    digest: str
    service: InferenceService
    percent: float
    baseline: int  # service.answered when it became the canary: the answers since are the canary's

    @property
    def answered(self) -> int:
        return self.service.answered - self.baseline


class Shadow:
    """Mirrors ``percent`` of the serving version's answers to another loaded version; this worker's tally."""

    def __init__(
        self,
        digest: str,
        service: InferenceService,
        serving: InferenceService,
        percent: float,
        metrics: Metrics,
        max_images: int,
    ) -> None:
        self.digest = digest
        self.service = service  # the shadow version's own service: its own batcher, never the serving one's
        self.serving = serving
        self.percent = percent
        self.max_images = max_images  # at most one batch of shadow images in flight: it never builds a queue
        self.compared = 0  # images both versions classified
        self.agreed = 0  # of those, how many got the same argmax
        self.skipped = 0  # images not mirrored: live requests were queued, the shadow was busy or failed
        self.runs = 0
        self.seconds = 0.0
        self._running_images = 0
        self._tasks: set[asyncio.Task[None]] = set()
        version = digest[:12]
        self._compared_total = metrics.labelled(metrics.shadow_compared, version)
        self._agreed_total = metrics.labelled(metrics.shadow_agreed, version)
        self._skipped_total = metrics.labelled(metrics.shadow_skipped, version)
        self._seconds = metrics.shadow_seconds

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def latency_ms(self) -> float | None:
        """The mean time of a shadow run, from scheduling to its output (its queue wait included)."""
        return self.seconds / self.runs * 1000 if self.runs else None

    def __call__(self, result: Classified) -> None:
        """The serving service's mirror: schedule the shadow's run of ``result``'s pixels, or count it skipped."""
        try:
            if self.percent < 100 and random.random() * 100 >= self.percent:
                return
            images = len(result.pixels)
            if self._busy(images):
                self._skip(images)
                return
            self._running_images += images
            task = asyncio.get_running_loop().create_task(self._run(result, images), name="shadow")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # the answer is computed and must go out whatever happens here
            log.exception("scheduling a shadow run failed; the answer is unaffected")

    def _busy(self, images: int) -> bool:
        """Live requests inside the serving model (queued, or in a forward pass the batcher already took), or a
        batch's worth of shadow images still running. The queue alone would miss the pass in progress: the
        batcher takes every queued request before the answer that calls this resumes."""
        live = self.serving.in_flight > 0
        return live or (self._running_images > 0 and self._running_images + images > self.max_images)

    def _skip(self, images: int) -> None:
        self.skipped += images
        self._skipped_total.inc(images)

    async def _run(self, result: Classified, images: int) -> None:
        started = time.perf_counter()
        try:
            output, _ = await self.service.run_model(result.pixels, answering=False)
        except ServiceError as exc:  # its queue is full, or its forward pass failed (the batcher logged it)
            log.info("shadow run on %s skipped: %s", self.digest[:12], exc.message)
            self._skip(images)
            return
        except Exception:
            log.exception("shadow run on %s failed", self.digest[:12])
            self._skip(images)
            return
        finally:
            self._running_images -= images
        seconds = time.perf_counter() - started
        agreed = sum(mine == theirs for mine, theirs in zip(output.best(), result.output.best(), strict=True))
        self.compared += images
        self.agreed += agreed
        self.runs += 1
        self.seconds += seconds
        self._compared_total.inc(images)
        self._agreed_total.inc(agreed)
        self._seconds.observe(seconds)

    async def stop(self) -> None:
        """Cancel the runs still going (at shutdown, or when the shadow changes)."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
