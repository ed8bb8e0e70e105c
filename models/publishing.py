"""Publish an artifact into a model store: copy it in, validate it, and promote it only if it is no worse.

The trainer's ``--publish STORE`` calls ``publish``; so can any tool. Serving processes follow the state file
and pick the promoted version up by themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.store import ModelStore, StoreState, activated, read_header, recorded_accuracy, refused
from models.validation import DEFAULT_MIN_ACCURACY, Refused, validate_version

DEFAULT_TOLERANCE_POINTS = 0.3  # accuracy points a new version may lose against the serving one and still replace it


@dataclass(frozen=True)
class Published:
    digest: str
    promoted: bool
    reason: str  # why it was, or was not, promoted
    state: StoreState


def publish(
    store: ModelStore,
    source: Path,
    *,
    min_accuracy: float = DEFAULT_MIN_ACCURACY,
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
    promote: bool | None = None,
) -> Published:
    """Copy ``source`` in and validate it; promote it when asked (``promote=True``), never (``False``), or when
    its accuracy is within ``tolerance_points`` of the serving version's (``None``). A refused version is
    recorded as refused, with its reason, and never promoted."""
    digest = store.publish(source)
    try:
        artifact = validate_version(store, digest, min_accuracy)
    except Refused as exc:
        reason = exc.reason
        state = store.update_state(lambda current: refused(current, digest, reason))
        return Published(digest, False, f"refused: {reason}", state)
    state = store.read_state()
    accuracy = recorded_accuracy(artifact.metadata.to_dict())
    assert accuracy is not None  # validate_version refuses a version without one
    should, reason = promotion_decision(store, state, digest, accuracy, tolerance_points, promote)
    if not should:
        return Published(digest, False, reason, state)
    change = f"publish {digest[:12]}: {reason}"
    state = store.update_state(lambda current: activated(current, digest, change), expected_generation=state.generation)
    return Published(digest, True, reason, state)


def promotion_decision(
    store: ModelStore, state: StoreState, digest: str, accuracy: float, tolerance_points: float, promote: bool | None
) -> tuple[bool, str]:
    """Whether to promote, and why, in words the trainer prints."""
    if promote is not None:
        return promote, "promotion asked for explicitly" if promote else "kept as a candidate, as asked"
    if state.serving is None:
        return True, "no version serves yet"
    if state.serving == digest:
        return False, "it already serves"
    serving = recorded_accuracy(read_header(store.path_of(state.serving)))
    if serving is None:
        return True, "the serving version records no accuracy"
    loss = 100 * (serving - accuracy)
    if loss > tolerance_points:
        return False, (
            f"kept as a candidate: its accuracy {100 * accuracy:.2f}% is {loss:.2f} points below the serving "
            f"version's {100 * serving:.2f}% (tolerance {tolerance_points:g} points; promote it explicitly if meant)"
        )
    return True, f"its accuracy {100 * accuracy:.2f}% is within {tolerance_points:g} points of {100 * serving:.2f}%"
