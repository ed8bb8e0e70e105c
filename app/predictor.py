"""The model behind the API: pixels in, probabilities out. Knows nothing of HTTP."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from models import (
    IMAGE_SIDE,
    Artifact,
    ArtifactError,
    ArtifactMetadata,
    Explanation,
    NeuralNetwork,
    Scorer,
    TrustParts,
    explain,
    load_artifact,
)
from models.validation import Refused, check_reproduces

INTENSITY_SCALE = 255 * IMAGE_SIDE * IMAGE_SIDE  # an image's pixel sum to its mean in 0..1
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE


@dataclass(frozen=True, slots=True)
class PixelBatch:
    """N images of 28x28 8-bit pixels, light-on-dark, in one bytes object: what the loop hands the model's thread.

    Bytes, not a tensor, because of the GIL: torch drops and retakes it around every call, and on the event loop,
    beside a model thread busy in torch, each retake waits its turn. So nothing on the loop makes a tensor per
    request; the model's thread makes one per forward pass (``tensor``).
    """

    data: bytes
    count: int

    def __post_init__(self) -> None:
        if self.count < 0 or len(self.data) != self.count * IMAGE_BYTES:
            raise ValueError(f"{len(self.data)} bytes are not {self.count} images of {IMAGE_SIDE}x{IMAGE_SIDE}")

    @classmethod
    def of(cls, images: Sequence[bytes]) -> PixelBatch:
        """Images of 784 bytes each, in order."""
        return cls(b"".join(images), len(images))

    @classmethod
    def from_tensor(cls, pixels: torch.Tensor) -> PixelBatch:
        """uint8 (N, 28, 28) pixels, as a protocol that sends tensors has them."""
        if pixels.dtype != torch.uint8 or pixels.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"pixels must be uint8 (N, {IMAGE_SIDE}, {IMAGE_SIDE}), got {pixels.dtype} {pixels.shape}")
        return cls(pixels.contiguous().numpy().tobytes(), len(pixels))

    @classmethod
    def concat(cls, batches: Sequence[PixelBatch]) -> PixelBatch:
        if len(batches) == 1:
            return batches[0]
        return cls(b"".join(batch.data for batch in batches), sum(batch.count for batch in batches))

    def __len__(self) -> int:
        return self.count

    def image(self, index: int) -> bytes:
        """The ``index``-th image's 784 bytes."""
        if not 0 <= index < self.count:
            raise IndexError(f"image {index} of a batch of {self.count}")
        return self.data[index * IMAGE_BYTES : (index + 1) * IMAGE_BYTES]

    def tensor(self) -> torch.Tensor:
        """uint8 (N, 28, 28), a copy of its own (torch wants a writable buffer)."""
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(self.count, IMAGE_SIDE, IMAGE_SIDE)


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What one forward pass says of N images, as Python values; the batcher splits it into each request's rows.

    The tensors become lists once per batch, on the model's thread: each request then slices lists, and nothing on
    the event loop calls into torch per request (a call there costs more than what the request does with it).
    """

    probabilities: list[list[float]]  # (N, 10) softmax, calibrated when the artifact is
    mean_intensity: list[float]  # each image's mean pixel (0 to 1) as the model saw it: the drift gauges' input
    ood_score: list[float] | None = None  # higher is less like the training data
    in_distribution: list[bool] | None = None  # ood_score within the artifact's threshold

    def __len__(self) -> int:
        return len(self.probabilities)

    def best(self) -> list[int]:
        """Each image's predicted class index: the first of equal maxima, as torch's argmax."""
        return [row.index(max(row)) for row in self.probabilities]

    @classmethod
    def concat(cls, parts: list[ModelOutput]) -> ModelOutput:
        """The rows of ``parts``, in order (of one model: all have OOD scores, or none has)."""
        with_ood = bool(parts) and parts[0].ood_score is not None
        return cls(
            [row for part in parts for row in part.probabilities],
            [value for part in parts for value in part.mean_intensity],
            [value for part in parts for value in part.ood_score or ()] if with_ood else None,
            [value for part in parts for value in part.in_distribution or ()] if with_ood else None,
        )

    def split(self, sizes: list[int]) -> list[ModelOutput]:
        parts = []
        start = 0
        for size in sizes:
            end = start + size
            parts.append(
                ModelOutput(
                    self.probabilities[start:end],
                    self.mean_intensity[start:end],
                    self.ood_score[start:end] if self.ood_score is not None else None,
                    self.in_distribution[start:end] if self.in_distribution is not None else None,
                )
            )
            start = end
        return parts


class ParameterStats(BaseModel):
    """One parameter's shape and statistics, computed once at load (they are fixed once the weights are)."""

    name: str = Field(examples=["linear_relu_stack.0.weight"])
    shape: list[int] = Field(examples=[[512, 784]])
    dtype: str = Field(examples=["float32"])
    numel: int
    requires_grad: bool
    mean: float
    std: float
    min: float
    max: float


class Predictor:
    """A loaded, warmed-up model on its device, with what /model and /model/params report."""

    def __init__(
        self,
        model: NeuralNetwork,
        metadata: ArtifactMetadata,
        path: Path,
        device: torch.device,
        parts: TrustParts | None = None,
        version: str | None = None,
    ) -> None:
        self.parts = parts or TrustParts()
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.path = path
        self.device = device
        self.class_names: list[str] = list(metadata.class_names)
        self.version = version or metadata.weights_sha256[:12]
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.load_seconds = 0.0
        self.parameters = summarize_parameters(self.model)

    @property
    def model(self) -> NeuralNetwork:
        return self.scorer.model

    @model.setter
    def model(self, model: NeuralNetwork) -> None:
        """The scorer follows the model: its calibration and detector stay those of the artifact."""
        self.scorer = Scorer(model, self.parts.calibration, self.parts.ood)

    @classmethod
    def load(cls, path: Path, device: torch.device) -> Predictor:
        """Load, verify, and check the model reproduces what training recorded, on this machine, before serving."""
        started = time.perf_counter()
        artifact = load_artifact(path, device)
        try:
            check_reproduces(artifact)
        except Refused as exc:
            raise ArtifactError(path, exc.detail) from None
        return cls.from_artifact(artifact, device, started)

    @classmethod
    def from_artifact(
        cls, artifact: Artifact, device: torch.device, started: float, version: str | None = None
    ) -> Predictor:
        """A checked artifact, warmed up; ``version`` overrides the weights' digest (a store names its files)."""
        predictor = cls(artifact.model, artifact.metadata, artifact.path, device, artifact.parts, version)
        predictor.warm_up()
        predictor.load_seconds = time.perf_counter() - started
        return predictor

    @property
    def has_ood_detector(self) -> bool:
        return self.parts.ood is not None

    @property
    def training_mean_intensity(self) -> float | None:
        """The training images' mean pixel (0 to 1), which the detector's input statistics recorded, if it has them."""
        for component in self.parts.ood.components if self.parts.ood is not None else ():
            if "mean" in component.tensors:
                return float(component.tensors["mean"].mean())
        return None

    def predict(self, batch: PixelBatch) -> ModelOutput:
        """Pixels -> probabilities (calibrated when the artifact is) and, with a detector, OOD scores. Off the loop."""
        pixels = batch.tensor()
        scores = self.scorer.score(pixels)
        pixel_sums = pixels.view(len(pixels), -1).sum(dim=1, dtype=torch.int64)
        return ModelOutput(
            scores.probabilities.tolist(),
            [total / INTENSITY_SCALE for total in pixel_sums.tolist()],
            scores.ood_score.tolist() if scores.ood_score is not None else None,
            scores.in_distribution.tolist() if scores.in_distribution is not None else None,
        )

    def explain(self, batch: PixelBatch) -> Explanation:
        """DeepLIFT maps for the predicted classes (calibration never changes which class that is). Off the loop."""
        return explain(self.model, batch.tensor())

    def warm_up(self) -> None:
        """Run once so the first real request pays no lazy initialisation (allocator, kernels, cuDNN)."""
        self.predict(PixelBatch(bytes(IMAGE_BYTES), 1))

    def parameter_values(self, name: str, count: int) -> list[float]:
        return self.model.get_parameter(name).detach().flatten()[:count].cpu().tolist()

    def module_tree(self) -> str:
        return str(self.model)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "version": self.version,
            "device": str(self.device),
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 4),
            "calibrated": self.parts.calibration is not None,
            "ood_detector": self.parts.ood is not None,
            "metadata": self.metadata.to_dict(),
        }


def summarize_parameters(model: torch.nn.Module) -> list[ParameterStats]:
    """Statistics are fixed once the weights are, so compute them once at load, not per request."""
    summaries = []
    for name, parameter in model.named_parameters():
        values = parameter.detach().float()
        summaries.append(
            ParameterStats(
                name=name,
                shape=list(parameter.shape),
                dtype=str(parameter.dtype).removeprefix("torch."),
                numel=parameter.numel(),
                requires_grad=parameter.requires_grad,
                mean=values.mean().item(),
                std=values.std().item(),
                min=values.min().item(),
                max=values.max().item(),
            )
        )
    return summaries
