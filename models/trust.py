"""Answers that can be taken at face value: calibrated probabilities and a "not a garment" score.

The artifact may carry three optional parts, each named in its metadata's ``features`` list:

- ``calibration``: one temperature, fitted on the validation split by NLL. Dividing the logits by a
  positive number never changes their order, so every predicted class stays what it was.
- ``ood``: an out-of-distribution detector. Each component turns an image into a raw score (higher:
  less like the training data); each raw score is put on a common scale by the median it had on real
  validation garments and its distance to a chosen quantile of them (the fitting's choice, recorded
  in the detector's details), and the image's ``ood_score`` is the largest of them.
  ``in_distribution`` is ``ood_score <= threshold``, the threshold fixed on validation so that 95%
  of real garments pass. One large component is enough to flag an image:
  each component sees a different way of not being a garment.
- ``reference_outputs``: a few stored inputs and what this scoring gave on them at training time
  (see ``check_reference_outputs``).

``Scorer`` applies the first two to a batch in one forward pass, reusing the hidden activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from models.mlp import IMAGE_SIDE, NUM_CLASSES, NeuralNetwork
from models.preprocess import pixels_to_input

HIDDEN_WIDTH = 512
PIXELS = IMAGE_SIDE * IMAGE_SIDE


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling: probabilities = softmax(logits / temperature)."""

    temperature: float
    fitted_on: str = "validation"
    details: dict[str, Any] = field(default_factory=dict)  # figures recorded at fitting time, for people

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, float | int) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibration temperature must be a finite number above 0, got {self.temperature!r}")

    def to_metadata(self) -> dict[str, Any]:
        return {"method": "temperature", "temperature": self.temperature, "fitted_on": self.fitted_on} | self.details

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("method") != "temperature":
            raise ValueError(f"calibration method {data.get('method')!r} is not supported (this build: 'temperature')")
        details = {k: v for k, v in data.items() if k not in ("method", "temperature", "fitted_on")}
        return cls(float(data.get("temperature", "nan")), str(data.get("fitted_on", "")), details)


def _nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """1 - the cosine similarity to the nearest of ``centroids`` (unit rows): far from every cluster is high."""
    return 1 - (F.normalize(features, dim=1) @ centroids.T).amax(1)


def hidden_centroids_score(
    pixels: torch.Tensor, hidden: torch.Tensor, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Direction of the last hidden layer against k-means centroids of the training garments' directions."""
    return _nearest_centroid(hidden, tensors["centroids"])


def pixel_centroids_score(
    pixels: torch.Tensor, hidden: torch.Tensor, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The same in pixel space: a shape no training garment resembles, whatever the model makes of it."""
    return _nearest_centroid(pixels, tensors["centroids"])


def low_contrast_score(pixels: torch.Tensor, hidden: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Minus the spread of the pixel values: a blank or a flat field has almost none, a garment a lot.

    The sample standard deviation (torch's ``std``), as the norm of the centred pixels: equal to float rounding,
    for a fraction of ``std``'s cost on a batch.
    """
    centred = pixels - pixels.mean(1, keepdim=True)
    spread: torch.Tensor = torch.linalg.vector_norm(centred, dim=1) / math.sqrt(pixels.shape[1] - 1)
    return -spread


def pixel_deviation_score(
    pixels: torch.Tensor, hidden: torch.Tensor, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Squared deviation of each pixel from its training mean, weighted by how little it varies there: ink where
    garments never have any (noise, a filled frame) counts most. A per-pixel Gaussian, so it costs 784 products."""
    return (pixels - tensors["mean"]).square() @ tensors["inverse_variance"]


ScoreFunction = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
COMPONENT_KINDS: dict[str, tuple[ScoreFunction, dict[str, tuple[int | None, ...]]]] = {
    # kind: (function, the tensors it needs and their shapes, None where any length goes)
    "hidden_centroids": (hidden_centroids_score, {"centroids": (None, HIDDEN_WIDTH)}),
    "pixel_centroids": (pixel_centroids_score, {"centroids": (None, PIXELS)}),
    "low_contrast": (low_contrast_score, {}),
    "pixel_deviation": (pixel_deviation_score, {"mean": (PIXELS,), "inverse_variance": (PIXELS,)}),
}


@dataclass(frozen=True)
class OODComponent:
    """One raw score and the scale that puts it beside the others: (raw - center) / spread."""

    kind: str
    center: float
    spread: float
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"ood component {self.kind!r} is not supported (this build: {', '.join(COMPONENT_KINDS)})")
        if not (math.isfinite(self.center) and math.isfinite(self.spread) and self.spread > 0):
            raise ValueError(f"ood component {self.kind!r} needs a finite center and a spread above 0")
        for name, shape in COMPONENT_KINDS[self.kind][1].items():
            tensor = self.tensors.get(name)
            if tensor is None or tensor.dim() != len(shape) or tensor.dtype != torch.float32:
                raise ValueError(f"ood component {self.kind!r} needs a float32 tensor {name!r} of rank {len(shape)}")
            if any(want is not None and got != want for got, want in zip(tensor.shape, shape, strict=True)):
                raise ValueError(f"ood component {self.kind!r}: {name!r} has shape {tuple(tensor.shape)}")

    def __call__(self, pixels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        raw = COMPONENT_KINDS[self.kind][0](pixels, hidden, self.tensors)
        return (raw - self.center) / self.spread

    def to(self, device: torch.device | str) -> OODComponent:
        moved = {name: tensor.to(device) for name, tensor in self.tensors.items()}
        return OODComponent(self.kind, self.center, self.spread, moved)


@dataclass(frozen=True)
class OODDetector:
    """The largest of the components' scaled scores; above ``threshold`` means "may not be a garment"."""

    components: tuple[OODComponent, ...]
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)  # figures recorded at fitting time, for people

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError("an ood detector needs at least one component")
        if not math.isfinite(self.threshold):
            raise ValueError(f"ood threshold must be finite, got {self.threshold!r}")

    def __call__(self, pixels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``pixels`` flat (N, 784) in [0, 1], ``hidden`` the last hidden layer (N, 512) -> (N,) scores."""
        return torch.stack([component(pixels, hidden) for component in self.components]).amax(0)

    def to(self, device: torch.device | str) -> OODDetector:
        return OODDetector(tuple(c.to(device) for c in self.components), self.threshold, self.details)

    def to_artifact(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(metadata, tensors): tensors named ``<component index>.<name>``."""
        metadata = {
            "method": "max of scaled components",
            "threshold": self.threshold,
            "components": [{"kind": c.kind, "center": c.center, "spread": c.spread} for c in self.components],
        } | self.details
        tensors = {f"{i}.{name}": t for i, c in enumerate(self.components) for name, t in c.tensors.items()}
        return metadata, tensors

    @classmethod
    def from_artifact(cls, data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> OODDetector:
        described = data.get("components")
        if not isinstance(described, list):
            raise ValueError("ood metadata has no list of components")
        components = []
        for i, item in enumerate(described):
            if not isinstance(item, Mapping):
                raise ValueError(f"ood component {i} is not an object")
            own = {key.split(".", 1)[1]: t for key, t in tensors.items() if key.split(".", 1)[0] == str(i)}
            components.append(OODComponent(str(item.get("kind")), float(item["center"]), float(item["spread"]), own))
        details = {k: v for k, v in data.items() if k not in ("method", "threshold", "components")}
        return cls(tuple(components), float(data.get("threshold", "nan")), details)


@dataclass(frozen=True)
class Scores:
    """What the model says about a batch, all on the CPU."""

    probabilities: torch.Tensor  # float32 (N, 10): calibrated when the artifact has a calibration
    ood_score: torch.Tensor | None  # float32 (N,): higher is less like the training data; None without a detector
    in_distribution: torch.Tensor | None  # bool (N,): ood_score <= the stored threshold; None without a detector


class Scorer:
    """Calibrated probabilities and the "not a garment" score for uint8 (N, 28, 28) pixels, in one forward pass."""

    def __init__(
        self, model: NeuralNetwork, calibration: Calibration | None = None, ood: OODDetector | None = None
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.calibration = calibration
        self.temperature = calibration.temperature if calibration is not None else 1.0
        self.ood = ood.to(self.device) if ood is not None else None

    @torch.inference_mode()
    def logits_and_hidden(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's forward pass, keeping the last hidden layer: (logits, hidden), both (N, ...)."""
        stack = self.model.linear_relu_stack
        hidden = stack[3](stack[2](stack[1](stack[0](inputs))))
        return stack[4](hidden), hidden

    @torch.inference_mode()
    def score(self, pixels: torch.Tensor) -> Scores:
        flat = pixels_to_input(pixels).to(self.device, non_blocking=True).flatten(1)
        if self.ood is None:  # the model's own forward: nothing else to keep from it
            return Scores(torch.softmax(self.model(flat) / self.temperature, dim=1).cpu(), None, None)
        logits, hidden = self.logits_and_hidden(flat)
        probabilities = torch.softmax(logits / self.temperature, dim=1).cpu()
        ood_score = self.ood(flat, hidden).cpu()
        return Scores(probabilities, ood_score, ood_score <= self.ood.threshold)


@dataclass(frozen=True)
class ReferenceOutputs:
    """A few inputs and what the scoring gave on them at training time, to catch a training/serving mismatch."""

    pixels: torch.Tensor  # uint8 (K, 28, 28)
    probabilities: torch.Tensor  # float32 (K, 10)
    ood_scores: torch.Tensor | None  # float32 (K,), when the artifact has a detector

    def __post_init__(self) -> None:
        count = len(self.pixels)
        if self.pixels.dtype != torch.uint8 or tuple(self.pixels.shape) != (count, IMAGE_SIDE, IMAGE_SIDE) or not count:
            raise ValueError(f"reference pixels must be uint8 (K, 28, 28), got {tuple(self.pixels.shape)}")
        if self.probabilities.dtype != torch.float32 or tuple(self.probabilities.shape) != (count, NUM_CLASSES):
            raise ValueError(f"reference probabilities must be float32 ({count}, {NUM_CLASSES})")
        if self.ood_scores is not None and (self.ood_scores.dtype != torch.float32 or len(self.ood_scores) != count):
            raise ValueError(f"reference ood scores must be float32 ({count},)")

    @classmethod
    def record(cls, scorer: Scorer, pixels: torch.Tensor) -> ReferenceOutputs:
        scores = scorer.score(pixels)
        return cls(pixels.clone(), scores.probabilities, scores.ood_score)

    def to_artifact(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"pixels": self.pixels, "probabilities": self.probabilities}
        if self.ood_scores is not None:
            tensors["ood_scores"] = self.ood_scores
        return {"count": len(self.pixels), "tolerance": dict(REFERENCE_TOLERANCE)}, tensors

    @classmethod
    def from_artifact(cls, data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> ReferenceOutputs:
        if "pixels" not in tensors or "probabilities" not in tensors:
            raise ValueError("reference outputs need the tensors 'pixels' and 'probabilities'")
        return cls(tensors["pixels"], tensors["probabilities"], tensors.get("ood_scores"))


# Float32 rounding alone, between CPU thread counts, BLAS kernels, devices and float64, moves these by
# a few 1e-6 (bench/trust.py measures it); any real mismatch (pixels not divided by 255, an inverted
# image, a missing temperature, other weights) moves them by far more than 1e-2. The bounds sit between.
REFERENCE_TOLERANCE = {"probabilities_abs": 1e-4, "ood_score_abs": 1e-3, "ood_score_rel": 1e-4}


class ReferenceMismatchError(Exception):
    """The loaded model, on this machine, does not reproduce the outputs recorded at training time."""


def check_reference_outputs(scorer: Scorer, reference: ReferenceOutputs) -> float:
    """Score the stored inputs and compare; return the largest probability difference, raise if out of bounds."""
    scores = scorer.score(reference.pixels)
    worst = float((scores.probabilities - reference.probabilities).abs().max())
    if worst > REFERENCE_TOLERANCE["probabilities_abs"] or not math.isfinite(worst):
        raise ReferenceMismatchError(
            f"probabilities differ from those recorded at training time by up to {worst:.3g} "
            f"(tolerance {REFERENCE_TOLERANCE['probabilities_abs']:g}): serving does not compute what training did"
        )
    if reference.ood_scores is not None:
        if scores.ood_score is None:
            raise ReferenceMismatchError("the artifact recorded ood scores but this scorer has no detector")
        bound = REFERENCE_TOLERANCE["ood_score_abs"] + REFERENCE_TOLERANCE["ood_score_rel"] * reference.ood_scores.abs()
        off = (scores.ood_score - reference.ood_scores).abs()
        if not bool((off <= bound).all()):
            raise ReferenceMismatchError(
                f"ood scores differ from those recorded at training time by up to {float(off.max()):.3g}"
            )
    return worst
