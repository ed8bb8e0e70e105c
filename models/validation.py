"""Validate a stored version before anything points at it: the publisher and every activation call this.

The checks, in order: the file's digest is its name, it loads as an artifact of our architecture (weights
digest, metadata, strict state dict), its recorded accuracy is at least the minimum, it reproduces the outputs
recorded at training time (when the artifact carries them), and a warm-up forward pass gives finite
probabilities. A refusal carries a short reason for clients (no paths, no exception text) and a detail for
the log.
"""

from __future__ import annotations

import math

import torch

from models.artifact import Artifact, ArtifactError, load_artifact
from models.mlp import IMAGE_SIDE, NUM_CLASSES
from models.preprocess import pixels_to_input
from models.store import ModelStore, StoreError, recorded_accuracy
from models.trust import ReferenceMismatchError, Scorer, check_reference_outputs

DEFAULT_MIN_ACCURACY = 0.90


class Refused(Exception):
    """The version must not serve. ``reason`` is safe to show anyone; ``detail`` goes to the log."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


def validate_version(
    store: ModelStore, digest: str, min_accuracy: float = DEFAULT_MIN_ACCURACY, device: torch.device | str = "cpu"
) -> Artifact:
    """The version's loaded, checked artifact; Refused with the reason otherwise."""
    try:
        path = store.verify(digest)
    except StoreError as exc:
        raise Refused(str(exc)) from None
    try:
        artifact = load_artifact(path, device)
    except ArtifactError as exc:
        raise Refused(_artifact_reason(exc.reason), exc.reason) from None
    check_accuracy(artifact, min_accuracy)
    check_reproduces(artifact)
    warm_up(artifact.model)
    return artifact


def _artifact_reason(detail: str) -> str:
    if "checksum" in detail:
        return "its weights do not match the digest in its metadata"
    if "architecture" in detail or "do not fit" in detail or "class names" in detail:
        return "it is not an artifact of the architecture this server runs"
    if "format version" in detail or "features" in detail:
        return "it needs an artifact format this server does not read"
    return "it is not a readable artifact"


def check_accuracy(artifact: Artifact, min_accuracy: float) -> float:
    accuracy = recorded_accuracy(artifact.metadata.to_dict())
    if accuracy is None:
        raise Refused("it records no accuracy to check")
    if not math.isfinite(accuracy) or accuracy < min_accuracy:
        raise Refused(f"its recorded accuracy {accuracy:.4f} is below the minimum {min_accuracy:.4f}")
    return accuracy


def check_reproduces(artifact: Artifact) -> None:
    """When the artifact stores reference inputs and outputs, the loaded model must reproduce them here.

    An artifact without them passes (format 1 files and the quickstart's have none).
    """
    reference = artifact.parts.reference
    if reference is None:
        return
    scorer = Scorer(artifact.model, artifact.parts.calibration, artifact.parts.ood)
    try:
        check_reference_outputs(scorer, reference)
    except ReferenceMismatchError as exc:
        raise Refused("it does not reproduce the outputs recorded at training time", str(exc)) from None


@torch.inference_mode()
def warm_up(model: torch.nn.Module) -> None:
    """One forward pass: finite probabilities for each class, or the version is refused."""
    device = next(model.parameters()).device
    pixels = torch.zeros(1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)
    try:
        logits = model(pixels_to_input(pixels).to(device))
    except RuntimeError as exc:
        raise Refused("its warm-up forward pass failed", str(exc)) from None
    if tuple(logits.shape) != (1, NUM_CLASSES) or not bool(torch.isfinite(logits).all()):
        raise Refused("its warm-up forward pass gave no finite probabilities")
