"""The artifact: the contract between training and serving.

One safetensors file holds the weights and, in its header, a JSON metadata document. One file
means one atomic rename on save, so a reader never sees new weights with old metadata. The
metadata names the architecture, classes and input specification, so a server rebuilds the
model from the file alone, and carries the sha256 of the weights, so a flipped bit is refused.
Nothing here ever unpickles: safetensors, or ``torch.load(weights_only=True)`` for a
quickstart-style ``.pth`` state dict.

Optional parts (calibration, the "not a garment" detector, reference outputs) are *features*:
the metadata lists the ones the file carries, and a reader refuses a file that names a feature it
does not know rather than serve it without. Their tensors live beside the weights under
``extra.<feature>.`` names with a digest of their own, so the weights digest (the model's state
dict) keeps its meaning and ``load_state_dict(strict=True)`` sees only the model's tensors.
Format 1 files (before features) and ``.pth`` files still load: uncalibrated, with no detector.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from models.labels import CLASS_NAMES
from models.mlp import ARCHITECTURE, IMAGE_SIDE, NUM_CLASSES, NeuralNetwork
from models.trust import Calibration, OODDetector, ReferenceOutputs

FORMAT_VERSION = 2  # 2: the features list and the extra tensors; an older reader refuses it by this number
READABLE_FORMAT_VERSIONS = (1, 2)
SUPPORTED_FEATURES = ("calibration", "ood", "reference_outputs")
EXTRA_PREFIX = "extra."
METADATA_KEY = "fashion_serve"
STATE_DICT_SUFFIXES = (".pth", ".pt")

INPUT_SPEC: dict[str, Any] = {
    "height": IMAGE_SIDE,
    "width": IMAGE_SIDE,
    "channels": 1,
    "color": "grayscale",
    "value_range": [0.0, 1.0],
    "polarity": "light object on dark background",
    "layout": "N x 1 x 28 x 28 (or N x 784)",
}


class ArtifactError(Exception):
    """The artifact at ``path`` cannot be trusted or read; the message says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class ArtifactMetadata:
    weights_sha256: str
    architecture: str = ARCHITECTURE
    format_version: int = FORMAT_VERSION
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    input_spec: dict[str, Any] = field(default_factory=lambda: dict(INPUT_SPEC))
    test_accuracy: float | None = None
    validation_accuracy: float | None = None  # on the fixed validation split; versions compare on this
    validation_split: dict[str, Any] = field(default_factory=dict)  # size, seed, sha256 of the indices
    features: list[str] = field(default_factory=list)  # optional parts a reader must understand
    extras_sha256: str | None = None  # digest of the features' tensors, as weights_sha256 is of the weights
    calibration: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)
    reference_outputs: dict[str, Any] = field(default_factory=dict)
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    dataset_checksums: dict[str, str] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    source_format: str = "safetensors"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class TrustParts:
    """The optional parts an artifact may carry; None where it has not got one."""

    calibration: Calibration | None = None
    ood: OODDetector | None = None
    reference: ReferenceOutputs | None = None

    def features(self) -> list[str]:
        present = (self.calibration, self.ood, self.reference)
        return [name for name, part in zip(SUPPORTED_FEATURES, present, strict=True) if part is not None]

    def to_artifact(self) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
        """({field: metadata}, {prefixed name: tensor}) for the parts present."""
        metadata: dict[str, dict[str, Any]] = {}
        tensors: dict[str, torch.Tensor] = {}
        if self.calibration is not None:
            metadata["calibration"] = self.calibration.to_metadata()
        for name, part in (("ood", self.ood), ("reference_outputs", self.reference)):
            if part is not None:
                metadata[name], own = part.to_artifact()
                tensors |= {
                    f"{EXTRA_PREFIX}{name}.{key}": t.detach().cpu().contiguous().clone() for key, t in own.items()
                }
        return metadata, tensors


@dataclass(frozen=True)
class Artifact:
    model: NeuralNetwork
    metadata: ArtifactMetadata
    path: Path
    parts: TrustParts = field(default_factory=TrustParts)

    @property
    def calibrated(self) -> bool:
        return self.parts.calibration is not None

    @property
    def has_ood_detector(self) -> bool:
        return self.parts.ood is not None


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the weights serialised as a metadata-free safetensors file (canonical, no numpy)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    return hashlib.sha256(safetensors.torch.save(tensors)).hexdigest()


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }


def build_metadata(
    state_dict: Mapping[str, torch.Tensor],
    *,
    parts: TrustParts | None = None,
    test_accuracy: float | None = None,
    validation_accuracy: float | None = None,
    validation_split: Mapping[str, Any] | None = None,
    per_class_accuracy: Mapping[str, float] | None = None,
    training_config: Mapping[str, Any] | None = None,
    dataset_checksums: Mapping[str, str] | None = None,
    extra_versions: Mapping[str, str] | None = None,
) -> ArtifactMetadata:
    """Metadata for ``state_dict`` and ``parts``, with their digests, the library versions and the time filled in."""
    parts = parts or TrustParts()
    part_metadata, extras = parts.to_artifact()
    return ArtifactMetadata(
        weights_sha256=weights_digest(state_dict),
        test_accuracy=test_accuracy,
        validation_accuracy=validation_accuracy,
        validation_split=dict(validation_split or {}),
        features=parts.features(),
        extras_sha256=weights_digest(extras) if extras else None,
        **part_metadata,
        per_class_accuracy=dict(per_class_accuracy or {}),
        training_config=dict(training_config or {}),
        dataset_checksums=dict(dataset_checksums or {}),
        library_versions={**library_versions(), **(extra_versions or {})},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash at any point leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), _new_file_mode())
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _new_file_mode() -> int:
    """0o666 less the umask, as a plain open() gives: mkstemp's 0o600 would hide the file from a server
    (or container user) that is not the user who trained."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_artifact(
    path: Path | str, model: torch.nn.Module, metadata: ArtifactMetadata, parts: TrustParts | None = None
) -> Path:
    """Write the weights, ``parts``' tensors and ``metadata`` (built from the same two) as one file, atomically."""
    path = Path(path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if weights_digest(state) != metadata.weights_sha256:
        raise ValueError("metadata.weights_sha256 does not match the model's weights")
    _, extras = (parts or TrustParts()).to_artifact()
    if (weights_digest(extras) if extras else None) != metadata.extras_sha256:
        raise ValueError("metadata.extras_sha256 does not match the parts' tensors: build the metadata from them")
    header = {METADATA_KEY: json.dumps(metadata.to_dict(), sort_keys=True)}
    write_atomically(path, safetensors.torch.save(state | extras, metadata=header))
    return path


def load_artifact(path: Path | str, device: torch.device | str = "cpu") -> Artifact:
    """Load and verify an artifact (or a quickstart ``.pth`` state dict); raise ArtifactError if untrustworthy."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "no such file; train one with `python -m training --out PATH`")
    if path.suffix in STATE_DICT_SUFFIXES:
        state, metadata = _read_state_dict_file(path)
        extras: dict[str, torch.Tensor] = {}
    else:
        state, metadata = _read_safetensors(path)
        extras = {name: state.pop(name) for name in [name for name in state if name.startswith(EXTRA_PREFIX)]}
    _check_metadata(path, metadata)
    _check_digest(path, "weights", metadata.weights_sha256, state)
    _check_digest(path, "extra tensors", metadata.extras_sha256, extras)
    model = NeuralNetwork()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(path, f"weights do not fit {ARCHITECTURE}: {exc}") from None
    model.to(device).eval()
    return Artifact(model=model, metadata=metadata, path=path, parts=_read_parts(path, metadata, extras))


def _check_digest(path: Path, what: str, expected: str | None, tensors: Mapping[str, torch.Tensor]) -> None:
    actual = weights_digest(tensors) if tensors else None
    if actual != expected:
        raise ArtifactError(
            path,
            f"{what} checksum mismatch: metadata says sha256 {expected}, the {what} hash to {actual}; "
            "the file is corrupt or was tampered with",
        )


def _read_parts(path: Path, metadata: ArtifactMetadata, extras: Mapping[str, torch.Tensor]) -> TrustParts:
    """Build each feature the metadata names from its metadata field and its ``extra.<feature>.`` tensors."""

    def tensors_of(feature: str) -> dict[str, torch.Tensor]:
        prefix = f"{EXTRA_PREFIX}{feature}."
        return {name.removeprefix(prefix): t for name, t in extras.items() if name.startswith(prefix)}

    features = metadata.features
    try:
        return TrustParts(
            calibration=Calibration.from_metadata(metadata.calibration) if "calibration" in features else None,
            ood=OODDetector.from_artifact(metadata.ood, tensors_of("ood")) if "ood" in features else None,
            reference=ReferenceOutputs.from_artifact(metadata.reference_outputs, tensors_of("reference_outputs"))
            if "reference_outputs" in features
            else None,
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(path, f"a feature's data is not valid: {exc}") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ArtifactMetadata]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as reader:
            header = reader.metadata() or {}
            state = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise ArtifactError(path, f"not a readable safetensors file ({exc})") from None
    if METADATA_KEY not in header:
        raise ArtifactError(path, f"no '{METADATA_KEY}' metadata in the safetensors header")
    try:
        metadata = ArtifactMetadata.from_dict(json.loads(header[METADATA_KEY]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(path, f"metadata is not valid: {exc}") from None
    return state, metadata


def _read_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], ArtifactMetadata]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, refused globals, truncation
        raise ArtifactError(path, f"not a loadable weights-only state dict ({exc})") from None
    if not isinstance(loaded, Mapping) or not all(isinstance(t, torch.Tensor) for t in loaded.values()):
        raise ArtifactError(path, "expected a state dict (a mapping of names to tensors)")
    state = {str(name): tensor for name, tensor in loaded.items()}
    metadata = ArtifactMetadata(weights_sha256=weights_digest(state), source_format="pth")
    return state, metadata


def _check_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    if metadata.format_version not in READABLE_FORMAT_VERSIONS:
        raise ArtifactError(
            path,
            f"format version {metadata.format_version} is not supported "
            f"(this build reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}): upgrade fashion-serve to serve it",
        )
    features = metadata.features
    if not isinstance(features, list) or not all(isinstance(name, str) for name in features):
        raise ArtifactError(path, f"features must be a list of strings, not {features!r:.80}")
    unknown = [name for name in features if name not in SUPPORTED_FEATURES]
    if unknown:
        raise ArtifactError(
            path,
            f"the artifact needs features this build does not support: {', '.join(unknown)} "
            f"(supported: {', '.join(SUPPORTED_FEATURES)}); upgrade fashion-serve to serve it",
        )
    if metadata.architecture != ARCHITECTURE:
        raise ArtifactError(path, f"architecture {metadata.architecture!r} is not {ARCHITECTURE!r}")
    names = metadata.class_names
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ArtifactError(path, f"class_names must be a list of strings, not {names!r:.80}")
    if len(names) != NUM_CLASSES:
        raise ArtifactError(path, f"expected {NUM_CLASSES} class names, found {len(names)}")
