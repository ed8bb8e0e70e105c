"""What training and serving share: the architecture, class names, preprocessing and artifact format."""

from models.artifact import (
    Artifact,
    ArtifactError,
    ArtifactMetadata,
    build_metadata,
    load_artifact,
    save_artifact,
    weights_digest,
    write_atomically,
)
from models.device import DEVICE_CHOICES, resolve_device
from models.labels import CLASS_NAMES
from models.mlp import ARCHITECTURE, IMAGE_SIDE, NUM_CLASSES, NeuralNetwork
from models.preprocess import pixels_to_input

__all__ = [
    "ARCHITECTURE",
    "CLASS_NAMES",
    "DEVICE_CHOICES",
    "IMAGE_SIDE",
    "NUM_CLASSES",
    "Artifact",
    "ArtifactError",
    "ArtifactMetadata",
    "NeuralNetwork",
    "build_metadata",
    "load_artifact",
    "pixels_to_input",
    "resolve_device",
    "save_artifact",
    "weights_digest",
    "write_atomically",
]
