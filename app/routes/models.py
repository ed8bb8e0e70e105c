"""GET /models (keyed like /model) and the admin changes: activate a version, roll back to the one before.

The rules every change follows (admin key, version by hex digits, validated, compare-and-swap, audited) are in
app/routes/admin.py; the canary and shadow changes in app/routes/traffic.py, whose routes this router includes.
This worker follows a change at once; the others within their poll interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.deps import require_api_key
from app.errors import Conflict
from app.lifecycle import ModelFollower
from app.routes import traffic
from app.routes.admin import (
    CHANGE_ERRORS,
    admin_follower,
    audit_change,
    follower_of,
    read_state,
    resolve_version,
    short,
    store_conflict,
    validate_or_refuse,
)
from app.schemas import error_responses
from models.store import StoreError, StoreState, activated, read_header
from models.store import recorded_accuracy as accuracy_of
from models.store import rolled_back as rolled_back_state

router = APIRouter(prefix="/models", tags=["models"])


class VersionInfo(BaseModel):
    version: str  # the first 12 hex digits: what answers carry as model_version
    id: str  # the whole sha256 of the artifact file
    state: str  # serving, canary, shadow, available or refused
    reason: str | None = None  # why it is refused; never a path or exception text
    accuracy: float | None = None
    created: str | None = None
    loaded: bool = False  # this worker holds it in memory: a client may pin it (X-Model-Version)


class ModelsResponse(BaseModel):
    serving: str | None  # what this worker serves
    state_serving: str | None  # what the store's state names
    generation: int
    last_good: str | None
    history: list[str]
    note: str | None  # why this worker does not serve what the state names, when it does not
    shadow: traffic.ShadowInfo | None = None
    canary: traffic.CanaryInfo | None = None
    versions: list[VersionInfo]


class ChangeResponse(BaseModel):
    serving: str
    previous: str | None
    generation: int


LIST_ERRORS = error_responses({401: "API key required", 409: "no model store: FASHION_MODEL_PATH serves one file"})


@router.get("", response_model=ModelsResponse, dependencies=[Depends(require_api_key)], responses=LIST_ERRORS)
async def list_models(request: Request) -> ModelsResponse:
    """Every version in the store: accuracy, created, its state (serving, canary, shadow, available, refused: why)."""
    follower = follower_of(request)
    state = await asyncio.to_thread(read_state, follower)
    digests = await asyncio.to_thread(follower.store.versions)
    # A held version whose file is gone from the store: this worker still serves it from memory.
    digests.extend(digest for digest in follower.loaded if digest not in digests)
    versions = await asyncio.to_thread(lambda: [_describe(follower, state, digest) for digest in digests])
    return ModelsResponse(
        serving=short(follower.serving),
        state_serving=short(state.serving),
        generation=state.generation,
        last_good=short(state.last_good),
        history=[digest[:12] for digest in state.history],
        note=follower.note,
        shadow=traffic.shadow_info(follower, state),
        canary=traffic.canary_info(follower, state),
        versions=versions,
    )


@router.post("/{version}/activate", response_model=ChangeResponse, responses=CHANGE_ERRORS)
async def activate(request: Request, version: str) -> ChangeResponse:
    """Validate the version, then make it the serving one (no longer canary or shadow); the one before can be
    rolled back to."""
    follower = admin_follower(request)
    digest = resolve_version(follower, version)
    await validate_or_refuse(follower, digest)
    return await _change(request, follower, "activate", lambda state: activated(state, digest, f"activate {version}"))


@router.post("/rollback", response_model=ChangeResponse, responses=CHANGE_ERRORS)
async def rollback(request: Request) -> ChangeResponse:
    """Serve again the version that served before the current one (validated again first)."""
    follower = admin_follower(request)
    state = await asyncio.to_thread(read_state, follower)
    if not state.history:
        raise Conflict("no version served before this one: nothing to roll back to")
    await validate_or_refuse(follower, state.history[-1])
    return await _change(request, follower, "rollback", rolled_back_state, state.generation)


router.include_router(traffic.router)  # after /rollback and /{version}/activate: /models/{version}/canary, .../shadow


async def _change(
    request: Request,
    follower: ModelFollower,
    action: str,
    change: Callable[[StoreState], StoreState],
    expected_generation: int | None = None,
) -> ChangeResponse:
    before = await asyncio.to_thread(read_state, follower)
    try:
        state = await asyncio.to_thread(follower.store.update_state, change, expected_generation)
    except StoreError as exc:
        raise store_conflict(exc) from None
    assert state.serving is not None
    audit_change(request, f"{action} to {state.serving[:12]} (was {short(before.serving)})", state.generation)
    await follower.sync()  # this worker serves it before answering; the others follow within their poll interval
    return ChangeResponse(serving=state.serving[:12], previous=short(before.serving), generation=state.generation)


HEADERS: dict[str, dict[str, Any]] = {}  # digest -> metadata: a version's content never changes


def _describe(follower: ModelFollower, state: StoreState, digest: str) -> VersionInfo:
    metadata = HEADERS.get(digest)
    if metadata is None:
        metadata = read_header(follower.store.path_of(digest))
        if metadata:
            HEADERS[digest] = metadata
    loaded = digest in follower.loaded  # it passed validation in this worker: whatever refusal is recorded is old
    reason = None if loaded else follower.refused.get(digest) or state.refused.get(digest)
    if not metadata and not loaded:
        reason = reason or "it is not a readable artifact"  # never validated, yet plainly unusable
    created = metadata.get("created_at")
    return VersionInfo(
        version=digest[:12],
        id=digest,
        state=_role(follower, state, digest, reason),
        reason=reason,
        accuracy=accuracy_of(metadata),
        created=created if isinstance(created, str) else None,
        loaded=loaded,
    )


def _role(follower: ModelFollower, state: StoreState, digest: str, reason: str | None) -> str:
    """What this worker serves first; a refused version has no other role here, whatever the state says."""
    if digest == follower.serving:
        return "serving"
    if reason:
        return "refused"
    for name, role in (("canary", state.canary), ("shadow", state.shadow)):
        if role is not None and role.version == digest:
            return name
    return "available"
