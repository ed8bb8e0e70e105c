"""What training and serving share: the architecture, class names, preprocessing, artifact format and scoring."""

from models.artifact import (
    SUPPORTED_FEATURES,
    Artifact,
    ArtifactError,
    ArtifactMetadata,
    TrustParts,
    build_metadata,
    load_artifact,
    save_artifact,
    weights_digest,
    write_atomically,
)
from models.device import DEVICE_CHOICES, resolve_device
from models.explain import Explanation, explain
from models.labels import CLASS_NAMES
from models.mlp import ARCHITECTURE, IMAGE_SIDE, NUM_CLASSES, NeuralNetwork
from models.preprocess import has_light_background, pixels_to_input
from models.trust import (
    Calibration,
    OODComponent,
    OODDetector,
    ReferenceMismatchError,
    ReferenceOutputs,
    Scorer,
    Scores,
    check_reference_outputs,
)

__all__ = [
    "ARCHITECTURE",
    "CLASS_NAMES",
    "DEVICE_CHOICES",
    "IMAGE_SIDE",
    "NUM_CLASSES",
    "SUPPORTED_FEATURES",
    "Artifact",
    "ArtifactError",
    "ArtifactMetadata",
    "Calibration",
    "Explanation",
    "NeuralNetwork",
    "OODComponent",
    "OODDetector",
    "ReferenceMismatchError",
    "ReferenceOutputs",
    "Scorer",
    "Scores",
    "TrustParts",
    "build_metadata",
    "check_reference_outputs",
    "explain",
    "has_light_background",
    "load_artifact",
    "pixels_to_input",
    "resolve_device",
    "save_artifact",
    "weights_digest",
    "write_atomically",
]
