"""The model store: a plain directory of content-addressed artifacts and one small state file.

Training publishes into it and every serving process follows it, so the rules live here, once:

- a version is a regular file ``<sha256>.safetensors`` whose name is the sha256 of its whole content
  (weights and metadata); a file whose name and digest differ, a symlink, or one over ``MAX_ARTIFACT_BYTES``
  is refused. A version is immutable: its name is its content.
- ``state.json`` says which version serves, the versions that served before (for rollback), shadow and
  canary with their percentages, the last version that passed validation and the refused ones with a short
  reason. It is replaced atomically (models.write_atomically), and every change is a compare-and-swap: read,
  change and write under an fcntl lock on ``.state.lock``, with a generation counter that a caller may demand
  to be unchanged since it read it.
- nothing is half-written: a publish copies to a temporary file in the store and renames it into place.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors

from models.artifact import METADATA_KEY, write_atomically

STATE_FILE = "state.json"
LOCK_FILE = ".state.lock"
SUFFIX = ".safetensors"
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # far above the MLP's artifact with its trust parts: no file of ours
VERSION_ID = re.compile(r"[0-9a-f]{12,64}")  # what a client may name a version by: a prefix of its digest
FILE_NAME = re.compile(r"([0-9a-f]{64})\.safetensors")
HISTORY_LENGTH = 20  # rollbacks remembered
CHUNK = 1 << 20


class StoreError(Exception):
    """The store cannot do what was asked; the message says why (and holds no file path)."""


class VersionNotFound(StoreError):
    pass


class StoreNotWritable(StoreError):
    """This process cannot change the state (a read-only mount, a full disk)."""


class StaleState(StoreError):
    """The state changed between reading it and asking to change it: read again and decide again."""


class RoleConflict(StoreError):
    """The version already has another role (serving, canary or shadow): one role per version."""


class NotInRole(StoreError):
    """The version does not have the role a caller asked to stop."""


@dataclass(frozen=True)
class Traffic:
    """A version that gets a share of live traffic: as a shadow (mirrored) or a canary (answering)."""

    version: str
    percent: float


@dataclass(frozen=True)
class StoreState:
    generation: int = 0
    serving: str | None = None  # the full sha256 of the version that answers
    history: list[str] = field(default_factory=list)  # versions that served before, the most recent last
    last_good: str | None = None  # the last version that passed validation and was activated
    shadow: Traffic | None = None
    canary: Traffic | None = None
    refused: dict[str, str] = field(default_factory=dict)  # version -> a short reason without paths
    updated_at: str = ""
    change: str = ""  # what the last change was, for people reading the file

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> StoreState:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise StoreError("the state file is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in raw.items() if key in known}
        for name in ("shadow", "canary"):
            if values.get(name) is not None:
                values[name] = Traffic(**values[name])
        return cls(**values)


def file_digest(path: Path) -> str:
    """sha256 of a regular file's whole content; StoreError for a symlink, a non-file or a file over the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StoreError("not a readable regular file (missing, or a symlink)") from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StoreError("not a regular file")
        if info.st_size > MAX_ARTIFACT_BYTES:
            raise StoreError(f"larger than the {MAX_ARTIFACT_BYTES // (1024 * 1024)} MiB an artifact may be")
        digest = hashlib.sha256()
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> dict[str, Any]:
    """The artifact's metadata from the safetensors header alone (no tensors read); {} if unreadable."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as reader:
            header = reader.metadata() or {}
        metadata = json.loads(header.get(METADATA_KEY, "{}"))
    except Exception:  # a damaged file: validation says why, a listing just shows nothing
        return {}
    return metadata if isinstance(metadata, dict) else {}


def recorded_accuracy(metadata: dict[str, Any]) -> float | None:
    """What versions compare on: the fixed validation split's accuracy when recorded, else the test accuracy."""
    for name in ("validation_accuracy", "test_accuracy"):
        value = metadata.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, digest: str) -> Path:
        if not FILE_NAME.fullmatch(digest + SUFFIX):
            raise VersionNotFound("a version is the 64 hex digits of its file's sha256")
        return self.root / f"{digest}{SUFFIX}"

    def versions(self) -> list[str]:
        """Full digests of the files that look like versions (regular files named <sha256>.safetensors)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []  # nothing published yet
        except OSError as exc:
            raise StoreError("the model store cannot be read") from exc
        found = [entry.name[: -len(SUFFIX)] for entry in entries if FILE_NAME.fullmatch(entry.name)]
        return sorted(name for name in found if (self.root / f"{name}{SUFFIX}").is_file() and not self._linked(name))

    def _linked(self, digest: str) -> bool:
        return (self.root / f"{digest}{SUFFIX}").is_symlink()

    def resolve(self, version: str) -> str:
        """The full digest of the one version whose digest starts with ``version`` (12 to 64 lower-case hex)."""
        if not VERSION_ID.fullmatch(version):
            raise VersionNotFound("a version is 12 to 64 lower-case hex digits of its sha256")
        matches = [digest for digest in self.versions() if digest.startswith(version)]
        if len(matches) != 1:
            raise VersionNotFound(f"no version {version} in the store" if not matches else f"{version} is ambiguous")
        return matches[0]

    def verify(self, digest: str) -> Path:
        """The version's path once its content hashes to its name; StoreError otherwise."""
        path = self.path_of(digest)
        if file_digest(path) != digest:
            raise StoreError("the file's sha256 differs from its name (half-copied, foreign or tampered)")
        return path

    def publish(self, source: Path) -> str:
        """Copy ``source`` into the store under its digest, atomically; the digest. Idempotent."""
        digest = file_digest(source)
        target = self.path_of(digest)
        if target.is_file() and not target.is_symlink() and file_digest(target) == digest:
            return digest
        with open(source, "rb") as file:
            data = file.read(MAX_ARTIFACT_BYTES + 1)
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError("the artifact changed while it was being published; publish it again")
        write_atomically(target, data)
        target.chmod(0o444)  # a version never changes: its name is its content
        return digest

    def read_state(self) -> StoreState:
        try:
            data = (self.root / STATE_FILE).read_bytes()
        except FileNotFoundError:
            return StoreState()
        except OSError as exc:
            raise StoreError("the state file cannot be read") from exc
        try:
            return StoreState.from_json(data)
        except (ValueError, TypeError) as exc:
            raise StoreError("the state file is not valid") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update_state(
        self, change: Callable[[StoreState], StoreState], expected_generation: int | None = None
    ) -> StoreState:
        """Apply ``change`` to the current state under the lock and write it atomically, one generation on.

        With ``expected_generation``, raise StaleState if another change landed since the caller read it.
        """
        try:
            with self._locked():
                current = self.read_state()
                if expected_generation is not None and current.generation != expected_generation:
                    raise StaleState(f"the state changed (generation {current.generation}, not {expected_generation})")
                new = dataclasses.replace(
                    change(current), generation=current.generation + 1, updated_at=datetime.now(UTC).isoformat()
                )
                write_atomically(self.root / STATE_FILE, new.to_json())
                return new
        except OSError as exc:  # a read-only mount (the Kubernetes pods'), a full disk: said without the path
            raise StoreNotWritable(
                f"the store's state cannot be written from here ({exc.strerror or type(exc).__name__}): change it "
                "where the store is writable (python -m training.publish STORE --promote)"
            ) from None


def activated(state: StoreState, digest: str, change: str) -> StoreState:
    """``state`` with ``digest`` serving: the one before goes onto the history, and it is the last good one.

    A version that was the canary or the shadow loses that role: it now answers everything.
    """
    history = list(state.history)
    if state.serving is not None and state.serving != digest:
        history = [*history, state.serving][-HISTORY_LENGTH:]
    refused = {key: value for key, value in state.refused.items() if key != digest}
    serving = dataclasses.replace(state, serving=digest, history=history, last_good=digest, refused=refused)
    return dataclasses.replace(_without_role(serving, digest), change=change)


def rolled_back(state: StoreState) -> StoreState:
    """``state`` with the version that served before serving again; StoreError when there is none."""
    if not state.history:
        raise StoreError("no version served before this one: nothing to roll back to")
    target = state.history[-1]
    back = dataclasses.replace(state, serving=target, history=state.history[:-1], last_good=target)
    return dataclasses.replace(_without_role(back, target), change=f"rollback to {target[:12]}")


def _without_role(state: StoreState, digest: str) -> StoreState:
    canary = None if state.canary is not None and state.canary.version == digest else state.canary
    shadow = None if state.shadow is not None and state.shadow.version == digest else state.shadow
    return dataclasses.replace(state, canary=canary, shadow=shadow)


ROLES = ("canary", "shadow")


def with_traffic(state: StoreState, role: str, digest: str, percent: float) -> StoreState:
    """``state`` with ``digest`` (validated) as the canary or shadow at ``percent``, replacing the one before.

    RoleConflict when it serves or has the other role: a version answers as one thing at a time.
    """
    assert role in ROLES and 0 < percent <= 100, (role, percent)
    if digest == state.serving:
        raise RoleConflict(f"version {digest[:12]} is serving: it cannot also be the {role}")
    other = "shadow" if role == "canary" else "canary"
    holder: Traffic | None = getattr(state, other)
    if holder is not None and holder.version == digest:
        raise RoleConflict(f"version {digest[:12]} is the {other}: stop that first")
    passed = dataclasses.replace(state, refused={key: value for key, value in state.refused.items() if key != digest})
    return _set_role(passed, role, Traffic(digest, float(percent)), f"{role} {digest[:12]} at {percent:g}%")


def without_traffic(state: StoreState, role: str, digest: str) -> StoreState:
    """``state`` with ``digest`` no longer the canary or shadow; NotInRole when it is not."""
    assert role in ROLES, role
    holder: Traffic | None = getattr(state, role)
    if holder is None or holder.version != digest:
        raise NotInRole(f"version {digest[:12]} is not the {role}")
    return _set_role(state, role, None, f"stop {role} {digest[:12]}")


def _set_role(state: StoreState, role: str, traffic: Traffic | None, change: str) -> StoreState:
    if role == "canary":
        return dataclasses.replace(state, canary=traffic, change=change)
    return dataclasses.replace(state, shadow=traffic, change=change)


def refused(state: StoreState, digest: str, reason: str) -> StoreState:
    return dataclasses.replace(state, refused={**state.refused, digest: reason}, change=f"refused {digest[:12]}")
