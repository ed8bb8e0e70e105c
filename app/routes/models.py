"""GET /models (keyed like /model) and the admin changes: activate a version, roll back to the one before.

A change needs the admin key (app/auth.py), names a version by 12 to 64 hex digits matched against the store
(never a path), validates it before the state points at it, writes the state by compare-and-swap, and logs
one audit line without the key. This worker follows at once; the others within their poll interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.auth import check_admin_key
from app.deps import require_api_key
from app.errors import Conflict, InvalidParameter, ModelNotFound
from app.lifecycle import ModelFollower
from app.schemas import error_responses
from models.store import VERSION_ID, StoreError, StoreState, VersionNotFound, activated, read_header, refused
from models.store import recorded_accuracy as accuracy_of
from models.store import rolled_back as rolled_back_state
from models.validation import Refused, validate_version

router = APIRouter(prefix="/models", tags=["models"])
audit = logging.getLogger("app.audit")
NO_STORE = "this server serves one file (FASHION_MODEL_PATH), not a model store (FASHION_MODEL_STORE)"
CHANGE_ERRORS = error_responses(
    {
        401: "admin key required",
        403: "model changes are off (no FASHION_ADMIN_KEY)",
        404: "no such version in the store",
        409: "the version is refused, nothing to roll back to, or no model store (FASHION_MODEL_PATH serves)",
        422: "the version is not 12 to 64 hex digits",
    }
)


class VersionInfo(BaseModel):
    version: str  # the first 12 hex digits: what answers carry as model_version
    id: str  # the whole sha256 of the artifact file
    state: str  # serving, available or refused
    reason: str | None = None  # why it is refused; never a path or exception text
    accuracy: float | None = None
    created: str | None = None


class ModelsResponse(BaseModel):
    serving: str | None  # what this worker serves
    state_serving: str | None  # what the store's state names
    generation: int
    last_good: str | None
    history: list[str]
    note: str | None  # why this worker does not serve what the state names, when it does not
    versions: list[VersionInfo]


class ChangeResponse(BaseModel):
    serving: str
    previous: str | None
    generation: int


LIST_ERRORS = error_responses({401: "API key required", 409: "no model store: FASHION_MODEL_PATH serves one file"})


@router.get("", response_model=ModelsResponse, dependencies=[Depends(require_api_key)], responses=LIST_ERRORS)
async def list_models(request: Request) -> ModelsResponse:
    """Every version in the store: accuracy, created, and whether it serves, is available or refused (why)."""
    follower = _follower(request)
    state = await asyncio.to_thread(_read_state, follower)
    digests = await asyncio.to_thread(follower.store.versions)
    if follower.serving is not None and follower.serving not in digests:
        digests.append(follower.serving)  # its file is gone from the store; this worker still serves it from memory
    versions = await asyncio.to_thread(lambda: [_describe(follower, state, digest) for digest in digests])
    return ModelsResponse(
        serving=_short(follower.serving),
        state_serving=_short(state.serving),
        generation=state.generation,
        last_good=_short(state.last_good),
        history=[digest[:12] for digest in state.history],
        note=follower.note,
        versions=versions,
    )


@router.post("/{version}/activate", response_model=ChangeResponse, responses=CHANGE_ERRORS)
async def activate(request: Request, version: str) -> ChangeResponse:
    """Validate the version, then make it the serving one; the one before can be rolled back to."""
    follower = _admin(request)
    digest = _resolve(follower, version)
    await _validate(follower, digest)
    return await _change(request, follower, "activate", lambda state: activated(state, digest, f"activate {version}"))


@router.post("/rollback", response_model=ChangeResponse, responses=CHANGE_ERRORS)
async def rollback(request: Request) -> ChangeResponse:
    """Serve again the version that served before the current one (validated again first)."""
    follower = _admin(request)
    state = await asyncio.to_thread(_read_state, follower)
    if not state.history:
        raise Conflict("no version served before this one: nothing to roll back to")
    await _validate(follower, state.history[-1])
    return await _change(request, follower, "rollback", rolled_back_state, state.generation)


def _follower(request: Request) -> ModelFollower:
    follower: ModelFollower | None = request.app.state.follower
    if follower is None:
        raise Conflict(NO_STORE)
    return follower


def _admin(request: Request) -> ModelFollower:
    """The admin key first, so nothing about the store is told to a caller without it."""
    check_admin_key(request.headers.raw, request.app.state.settings.admin_key)
    return _follower(request)


def _resolve(follower: ModelFollower, version: str) -> str:
    if not VERSION_ID.fullmatch(version):
        raise InvalidParameter("path.version: must be 12 to 64 lower-case hex digits of a version's sha256")
    try:
        return follower.store.resolve(version)
    except VersionNotFound as exc:
        raise ModelNotFound(str(exc)) from None


async def _validate(follower: ModelFollower, digest: str) -> None:
    """Refuse (409, with the reason) a version that would not pass; record the refusal in the state."""
    settings = follower.settings
    try:
        await asyncio.to_thread(validate_version, follower.store, digest, settings.min_accuracy, follower.device)
    except Refused as exc:
        reason = exc.reason
        await asyncio.to_thread(follower.store.update_state, lambda state: refused(state, digest, reason))
        raise Conflict(f"version {digest[:12]} is refused: {reason}") from None


async def _change(
    request: Request,
    follower: ModelFollower,
    action: str,
    change: Callable[[StoreState], StoreState],
    expected_generation: int | None = None,
) -> ChangeResponse:
    before = await asyncio.to_thread(_read_state, follower)
    try:
        state = await asyncio.to_thread(follower.store.update_state, change, expected_generation)
    except StoreError as exc:
        raise Conflict(f"{exc}; try again") from None
    assert state.serving is not None
    client = request.client.host if request.client else "-"
    audit.info(
        "model change: %s to %s (was %s), generation %d, from %s, request %s",
        action,
        state.serving[:12],
        _short(before.serving),
        state.generation,
        client,
        getattr(request.state, "request_id", "-"),
    )
    await follower.sync()  # this worker serves it before answering; the others follow within their poll interval
    return ChangeResponse(serving=state.serving[:12], previous=_short(before.serving), generation=state.generation)


def _read_state(follower: ModelFollower) -> StoreState:
    try:
        return follower.store.read_state()
    except StoreError as exc:
        raise Conflict(str(exc)) from None


HEADERS: dict[str, dict[str, Any]] = {}  # digest -> metadata: a version's content never changes


def _describe(follower: ModelFollower, state: StoreState, digest: str) -> VersionInfo:
    metadata = HEADERS.get(digest)
    if metadata is None:
        metadata = read_header(follower.store.path_of(digest))
        if metadata:
            HEADERS[digest] = metadata
    reason = follower.refused.get(digest) or state.refused.get(digest)
    if not metadata and digest != follower.serving:
        reason = reason or "it is not a readable artifact"  # never validated, yet plainly unusable
    status = "serving" if digest == follower.serving else "refused" if reason else "available"
    created = metadata.get("created_at")
    return VersionInfo(
        version=digest[:12],
        id=digest,
        state=status,
        reason=reason if status == "refused" else None,
        accuracy=accuracy_of(metadata),
        created=created if isinstance(created, str) else None,
    )


def _short(digest: str | None) -> str | None:
    return digest[:12] if digest else None
