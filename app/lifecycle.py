"""Follow the model store: load the versions its state names beside those serving, then swap; never stop serving.

Each worker process polls the state file (``FASHION_MODEL_POLL_S``; inotify does not see network volumes). When
the state changes it validates and loads the named version into a service of its own (its own Predictor and
Batcher, so no batch ever mixes versions), then replaces ``app.state.service`` in one assignment. A request
keeps the service it fetched when it started; the old service's batcher stops once its last queued request
is answered, and the model is freed when the last reference to it goes. A version that cannot be loaded is
never served: the worker keeps (or falls back to) the last good version, stays ready, and says so in /models
and the log. Nothing here stops the process: one bad file must not stop a worker from starting.

The state's canary and shadow are loaded the same way, each into a service of its own (app/traffic.py says what
they do with traffic); a version no role names any more is retired like a swapped-out one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from typing import Any

import torch

from app.batching import Batcher
from app.config import Settings
from app.metrics import Metrics
from app.predictor import Predictor
from app.service import InferenceService
from app.traffic import Canary, Shadow
from models import Artifact
from models.store import ModelStore, StoreError, StoreState, Traffic
from models.validation import Refused, validate_version

log = logging.getLogger("app.lifecycle")


def build_service(predictor: Predictor, settings: Settings, metrics: Metrics) -> InferenceService:
    """A service around ``predictor`` with its own batcher (started) when batching is on, reporting to ``metrics``."""
    batcher = None
    observe_forward = functools.partial(metrics.observe_forward, predictor.class_names, predictor.version)
    if settings.batching:
        batcher = Batcher(
            predictor.predict,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=observe_forward,
        )
        batcher.start()
        metrics.watch_queue(batcher)
    return InferenceService(
        predictor,
        batcher,
        settings.max_image_pixels,
        decode_concurrency=settings.decode_concurrency,
        on_classified=metrics.observe_request,
        on_forward=None if batcher is not None else observe_forward,
    )


def announce(predictor: Predictor, metrics: Metrics) -> None:
    """The metrics that describe the model serving: its version and device, its training images' intensity."""
    metrics.model_info.info({"version": predictor.version, "device": str(predictor.device)})
    if predictor.training_mean_intensity is not None:
        metrics.training_intensity.set(predictor.training_mean_intensity)


async def retire(service: InferenceService) -> None:
    """Stop ``service``'s batcher once no request is inside it; a late request then runs on its model directly."""
    while service.in_flight:
        await asyncio.sleep(0.005)
    batcher, service.batcher = service.batcher, None  # no await between the check and this: no request slips in
    if batcher is not None:
        await batcher.stop()


class ModelFollower:
    """This process's side of the store: the versions it holds (serving, canary, shadow), which it refused, and why."""

    def __init__(self, app_state: Any, store: ModelStore, device: torch.device) -> None:
        self.app_state = app_state
        self.settings: Settings = app_state.settings
        self.store = store
        self.device = device
        self.serving: str | None = None  # the full digest of the version this worker serves
        self.loaded: dict[str, InferenceService] = {}  # every version held, by full digest: each can be pinned
        self.canary: Canary | None = None  # read per request by app/service.py's choose_service
        self.shadow: Shadow | None = None
        self.refused: dict[str, str] = {}  # versions this worker could not load, and why (tried again when named)
        self.note: str | None = None  # why this worker does not serve what the state names, when it does not
        self.generation = -1
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._validated: dict[str, Artifact] = {}  # checked by an admin change, for this process's next load

    async def start(self) -> None:
        await self.sync()
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="model-store-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.shadow is not None:
            await self.shadow.stop()
        for task in list(self._retiring):
            await task
        for service in self.loaded.values():
            if service.batcher is not None:
                await service.batcher.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            try:
                await self.sync()
            except Exception:  # a bug here must not end the polling: log it, keep serving, try again
                log.exception("following the model store failed; still serving %s", _short(self.serving))

    async def sync(self) -> None:
        """Read the state; when it changed, serve what it names (or the best fallback), then its canary and shadow."""
        async with self._lock:
            try:
                state = await asyncio.to_thread(self.store.read_state)
            except StoreError as exc:
                self._tell(f"the store's state cannot be read ({exc}); still serving {_short(self.serving)}")
                return
            if state.generation == self.generation:
                return
            self.generation = state.generation
            await self._follow(state)
            await self._follow_traffic(state)
            self._release_unnamed()
            self._validated.clear()

    async def _follow(self, state: StoreState) -> None:
        for digest in _candidates(state):
            if digest == self.serving:
                break
            service = await self._service_for(digest)
            if service is not None:
                self._swap(digest, service)
                break
        if state.serving is None:
            self._tell("the store names no serving version yet: publish one (python -m training --publish STORE)")
        elif self.serving == state.serving:
            self.note = None
        else:
            reason = self.refused.get(state.serving, "it could not be loaded")
            self._tell(
                f"the state names {_short(state.serving)}, which this worker refused ({reason}); "
                f"serving {_short(self.serving)}, the last good version"
            )

    async def _follow_traffic(self, state: StoreState) -> None:
        """Load the canary and the shadow the state names; keep a role's tally while its version stays the same."""
        canary = await self._role_service(state.canary)
        if canary is None or state.canary is None:
            self.canary = None
        elif self.canary is not None and self.canary.service is canary:
            self.canary = dataclasses.replace(self.canary, percent=state.canary.percent)
        else:
            self.canary = Canary(state.canary.version, canary, state.canary.percent, canary.answered)
        shadow = await self._role_service(state.shadow)
        serving: InferenceService | None = self.app_state.service
        if shadow is None or state.shadow is None or serving is None:
            await self._set_shadow(None)
        elif self.shadow is not None and self.shadow.service is shadow and self.shadow.serving is serving:
            self.shadow.percent = state.shadow.percent
        else:
            digest, percent = state.shadow.version, state.shadow.percent
            metrics = self.app_state.metrics
            await self._set_shadow(Shadow(digest, shadow, serving, percent, metrics, self.settings.max_batch_size))

    async def _role_service(self, traffic: Traffic | None) -> InferenceService | None:
        if traffic is None or traffic.version == self.serving:
            return None
        return await self._service_for(traffic.version)

    async def _set_shadow(self, shadow: Shadow | None) -> None:
        old, self.shadow = self.shadow, shadow
        for service in self.loaded.values():
            service.mirror = shadow if shadow is not None and service is shadow.serving else None
        if old is not None and old is not shadow:
            await old.stop()

    async def _service_for(self, digest: str) -> InferenceService | None:
        """The version's service: the one this worker holds, or a new one once it validates and loads."""
        service = self.loaded.get(digest)
        if service is None:
            service = await self._load(digest)
            if service is not None:
                self.loaded[digest] = service
        return service

    async def validate(self, digest: str) -> Artifact:
        """Run the version's checks (Refused if it fails them) and keep what passed for this worker's next load.

        An admin change validates before it writes the state and this worker follows at once: it then loads what
        was just checked, in memory, rather than reading and checking the same immutable file a second time.
        """
        artifact = await asyncio.to_thread(
            validate_version, self.store, digest, self.settings.min_accuracy, self.device
        )
        self._validated[digest] = artifact
        return artifact

    async def _load(self, digest: str) -> InferenceService | None:
        started = time.perf_counter()
        try:
            artifact = self._validated.pop(digest, None) or await self.validate(digest)
        except Refused as exc:
            self.refused[digest] = exc.reason
            log.error("version %s refused: %s", _short(digest), exc.detail)
            return None
        self.refused.pop(digest, None)
        # A store version is named by its whole file's digest, not its weights' alone.
        predictor = await asyncio.to_thread(Predictor.from_artifact, artifact, self.device, started, digest[:12])
        return build_service(predictor, self.settings, self.app_state.metrics)

    def _swap(self, digest: str, service: InferenceService) -> None:
        old: InferenceService | None = self.app_state.service
        self.app_state.service = service  # one assignment: each request sees the old service or the new
        self.serving = digest
        announce(service.predictor, self.app_state.metrics)
        log.info("serving version %s (was %s)", _short(digest), _short(old.predictor.version if old else None))

    def _release_unnamed(self) -> None:
        """Retire every held version that is neither serving, the canary nor the shadow (once its requests end)."""
        named = {self.serving}
        named.update(role.digest for role in (self.canary, self.shadow) if role is not None)
        for digest in [digest for digest in self.loaded if digest not in named]:
            service = self.loaded.pop(digest)
            service.mirror = None
            task = asyncio.get_running_loop().create_task(retire(service), name="retire-model")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.info("released version %s", _short(digest))

    def _tell(self, note: str) -> None:
        if note != self.note:
            log.warning("%s", note)
        self.note = note
        if self.app_state.service is None:
            self.app_state.not_ready_reason = f"no model version loaded: {note}"


def _candidates(state: StoreState) -> list[str]:
    """What to serve, best first: what the state names, the last good version, then those that served before."""
    order = [state.serving, state.last_good, *reversed(state.history)]
    seen: list[str] = []
    for digest in order:
        if digest is not None and digest not in seen:
            seen.append(digest)
    return seen


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "nothing"
