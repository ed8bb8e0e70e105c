"""The model behind the API: pixels in, probabilities out. Knows nothing of HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from app.schemas import ParameterStats
from models import IMAGE_SIDE, ArtifactMetadata, NeuralNetwork, load_artifact, pixels_to_input


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What one forward pass gives for N images; the batcher splits it back into each request's rows."""

    probabilities: torch.Tensor  # float32 (N, 10) softmax, on the CPU

    def __len__(self) -> int:
        return len(self.probabilities)

    def split(self, sizes: list[int]) -> list[ModelOutput]:
        return [ModelOutput(part) for part in torch.split(self.probabilities, sizes)]


class Predictor:
    """A loaded, warmed-up model on its device, with what /model and /model/params report."""

    def __init__(self, model: NeuralNetwork, metadata: ArtifactMetadata, path: Path, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.path = path
        self.device = device
        self.class_names: list[str] = list(metadata.class_names)
        self.version = metadata.weights_sha256[:12]
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.load_seconds = 0.0
        self.parameters = summarize_parameters(self.model)

    @classmethod
    def load(cls, path: Path, device: torch.device) -> Predictor:
        started = time.perf_counter()
        artifact = load_artifact(path, device)
        predictor = cls(artifact.model, artifact.metadata, path, device)
        predictor.warm_up()
        predictor.load_seconds = time.perf_counter() - started
        return predictor

    @torch.inference_mode()
    def predict(self, pixels: torch.Tensor) -> ModelOutput:
        """uint8 (N, 28, 28) -> float32 (N, 10) softmax probabilities on the CPU."""
        inputs = pixels_to_input(pixels).to(self.device, non_blocking=True)
        return ModelOutput(torch.softmax(self.model(inputs), dim=1).cpu())

    def warm_up(self) -> None:
        """Run once so the first real request pays no lazy initialisation (allocator, kernels, cuDNN)."""
        self.predict(torch.zeros(1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8))

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
