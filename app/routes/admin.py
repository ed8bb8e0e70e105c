"""What every change to the model store shares: the admin key, naming a version, validating it, the audit line.

A change needs the admin key (app/auth.py), names a version by 12 to 64 hex digits matched against the store
(never a path), validates it before the state points at it, writes the state by compare-and-swap, and logs
one audit line without the key. app/routes/models.py (activate, rollback) and app/routes/traffic.py (canary,
shadow) are the changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import Request

from app.auth import check_admin_key
from app.errors import Conflict, InvalidParameter, ModelNotFound
from app.lifecycle import ModelFollower
from app.schemas import error_responses
from models.store import VERSION_ID, StaleState, StoreError, StoreState, VersionNotFound, refused
from models.validation import Refused

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


def follower_of(request: Request) -> ModelFollower:
    follower: ModelFollower | None = request.app.state.follower
    if follower is None:
        raise Conflict(NO_STORE)
    return follower


def admin_follower(request: Request) -> ModelFollower:
    """The admin key first, so nothing about the store is told to a caller without it."""
    check_admin_key(request.headers.raw, request.app.state.settings.admin_key)
    return follower_of(request)


async def require_admin(request: Request) -> None:
    """As a route dependency: checked before the body is read or validated."""
    admin_follower(request)


def check_version_id(version: str) -> None:
    """A version is named by 12 to 64 lower-case hex digits, never a path: 422 for anything else."""
    if not VERSION_ID.fullmatch(version):
        raise InvalidParameter("path.version: must be 12 to 64 lower-case hex digits of a version's sha256")


def resolve_version(follower: ModelFollower, version: str) -> str:
    check_version_id(version)
    try:
        return follower.store.resolve(version)
    except VersionNotFound as exc:
        raise ModelNotFound(str(exc)) from None


async def validate_or_refuse(follower: ModelFollower, digest: str) -> None:
    """Refuse (409, with the reason) a version that would not pass; record the refusal in the state."""
    try:
        await follower.validate(digest)
    except Refused as exc:
        reason = exc.reason
        with contextlib.suppress(StoreError):  # a store this server cannot write: the refusal is answered all the same
            await asyncio.to_thread(follower.store.update_state, lambda state: refused(state, digest, reason))
        raise Conflict(f"version {digest[:12]} is refused: {reason}") from None


def store_conflict(exc: StoreError) -> Conflict:
    """The 409 for a change the store did not take: a concurrent change (try again), or a store it cannot write."""
    return Conflict(f"{exc}; try again" if isinstance(exc, StaleState) else str(exc))


def read_state(follower: ModelFollower) -> StoreState:
    try:
        return follower.store.read_state()
    except StoreError as exc:
        raise Conflict(str(exc)) from None


def audit_change(request: Request, what: str, generation: int) -> None:
    """One line per change: what changed, the generation it made, who asked (address and request id), no key."""
    client = request.client.host if request.client else "-"
    request_id = getattr(request.state, "request_id", "-")
    audit.info("model change: %s, generation %d, from %s, request %s", what, generation, client, request_id)


def short(digest: str | None) -> str | None:
    return digest[:12] if digest else None
