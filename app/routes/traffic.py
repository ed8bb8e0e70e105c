"""The canary and shadow changes: PUT and DELETE /models/{version}/canary and /models/{version}/shadow.

Each follows app/routes/admin.py's rules (admin key first, version by hex digits, validated, compare-and-swap,
one audit line). A version has one role at a time: the serving one cannot also be canary or shadow (409), and
activating the canary's or the shadow's version ends that role (models/store.py). What the roles do with live
traffic is app/traffic.py's; GET /models reports them with this worker's tallies (``shadow_info``, ``canary_info``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from app.errors import Conflict, ModelNotFound
from app.lifecycle import ModelFollower
from app.routes.admin import (
    CHANGE_ERRORS,
    audit_change,
    check_version_id,
    follower_of,
    read_state,
    require_admin,
    resolve_version,
    short,
    store_conflict,
    validate_or_refuse,
)
from models.store import (
    NotInRole,
    RoleConflict,
    StoreError,
    StoreState,
    Traffic,
    with_traffic,
    without_traffic,
)

router = APIRouter(dependencies=[Depends(require_admin)])  # included by app/routes/models.py under /models
ERRORS = CHANGE_ERRORS | {
    404: {**CHANGE_ERRORS[404], "description": "no such version in the store, or (DELETE) it does not have that role"},
    409: {**CHANGE_ERRORS[409], "description": "the version is refused, serving, or has the other role"},
    422: {**CHANGE_ERRORS[422], "description": "the version is not 12 to 64 hex digits, or percent is not in (0, 100]"},
}


class TrafficRequest(BaseModel):
    percent: float = Field(
        gt=0,
        le=100,
        description="canary: the share of unpinned requests it answers; shadow: the share of answers it mirrors",
    )


class TrafficChange(BaseModel):
    role: str  # canary or shadow
    version: str
    percent: float | None  # null once stopped
    serving: str | None
    generation: int


class ShadowInfo(BaseModel):
    version: str
    percent: float
    compared: int  # images both versions classified, in this worker
    agreement: float | None  # the share of those on which the shadow's argmax equals the serving version's
    skipped: int  # images not mirrored because live requests were queued (or the shadow was busy)
    latency_ms: float | None  # a shadow run's mean time, queue wait included


class CanaryInfo(BaseModel):
    version: str
    percent: float
    answered: int  # requests this worker's canary answered since it became the canary


# The body is read by hand, after the admin key (the router's dependency): FastAPI would parse a declared body,
# and refuse malformed JSON, before any dependency ran. Documented for OpenAPI here instead.
BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": TrafficRequest.model_json_schema()}}}
}


@router.put("/{version}/canary", response_model=TrafficChange, responses=ERRORS, openapi_extra=BODY)
async def start_canary(request: Request, version: str) -> TrafficChange:
    """Validate the version, then let it answer ``percent`` of the /predict and /v2 requests no client pinned."""
    return await _start(request, "canary", version, await _percent(request))


@router.delete("/{version}/canary", response_model=TrafficChange, responses=ERRORS)
async def stop_canary(request: Request, version: str) -> TrafficChange:
    """The serving version answers everything again."""
    return await _stop(request, "canary", version)


@router.put("/{version}/shadow", response_model=TrafficChange, responses=ERRORS, openapi_extra=BODY)
async def start_shadow(request: Request, version: str) -> TrafficChange:
    """Validate the version, then run it beside the serving one on ``percent`` of its answers, off the response
    path; its agreement and latency show in GET /models and /metrics."""
    return await _start(request, "shadow", version, await _percent(request))


async def _percent(request: Request) -> float:
    """The body's percent; the same 422 as any other body's validation error."""
    try:
        return TrafficRequest.model_validate_json(await request.body()).percent
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None


@router.delete("/{version}/shadow", response_model=TrafficChange, responses=ERRORS)
async def stop_shadow(request: Request, version: str) -> TrafficChange:
    """Stop mirroring answers to this version."""
    return await _stop(request, "shadow", version)


async def _start(request: Request, role: str, version: str, percent: float) -> TrafficChange:
    follower = follower_of(request)
    digest = resolve_version(follower, version)
    await validate_or_refuse(follower, digest)
    state = await _write(follower, lambda state: with_traffic(state, role, digest, percent))
    audit_change(request, f"{role} {digest[:12]} at {percent:g}% (serving {short(state.serving)})", state.generation)
    await follower.sync()  # this worker follows before answering; the others within their poll interval
    return TrafficChange(
        role=role, version=digest[:12], percent=percent, serving=short(state.serving), generation=state.generation
    )


async def _stop(request: Request, role: str, version: str) -> TrafficChange:
    """The version is matched against the role in the state, not the store: its file may be gone."""
    follower = follower_of(request)
    check_version_id(version)
    current: Traffic | None = getattr(await asyncio.to_thread(read_state, follower), role)
    if current is None or not current.version.startswith(version):
        raise ModelNotFound(f"version {version} is not the {role}")
    digest = current.version
    state = await _write(follower, lambda state: without_traffic(state, role, digest))
    audit_change(request, f"stop {role} {digest[:12]} (serving {short(state.serving)})", state.generation)
    await follower.sync()
    return TrafficChange(
        role=role, version=digest[:12], percent=None, serving=short(state.serving), generation=state.generation
    )


async def _write(follower: ModelFollower, change: Callable[[StoreState], StoreState]) -> StoreState:
    try:
        return await asyncio.to_thread(follower.store.update_state, change)
    except RoleConflict as exc:
        raise Conflict(str(exc)) from None
    except NotInRole as exc:  # another change took the role away since this request read the state
        raise ModelNotFound(str(exc)) from None
    except StoreError as exc:
        raise store_conflict(exc) from None


def shadow_info(follower: ModelFollower, state: StoreState) -> ShadowInfo | None:
    """The state's shadow with this worker's tally (zeros while this worker does not run it)."""
    if state.shadow is None:
        return None
    shadow = follower.shadow if follower.shadow is not None and follower.shadow.digest == state.shadow.version else None
    return ShadowInfo(
        version=state.shadow.version[:12],
        percent=state.shadow.percent,
        compared=shadow.compared if shadow else 0,
        agreement=shadow.agreement if shadow else None,
        skipped=shadow.skipped if shadow else 0,
        latency_ms=shadow.latency_ms if shadow else None,
    )


def canary_info(follower: ModelFollower, state: StoreState) -> CanaryInfo | None:
    """The state's canary with the answers this worker's canary gave."""
    if state.canary is None:
        return None
    canary = follower.canary if follower.canary is not None and follower.canary.digest == state.canary.version else None
    return CanaryInfo(
        version=state.canary.version[:12], percent=state.canary.percent, answered=canary.answered if canary else 0
    )
