"""Request and response bodies, as the OpenAPI schema shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.predictor import ParameterStats


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unsupported_media_type"])
    message: str = Field(examples=["not an image in a supported format (PNG, JPEG, WEBP, BMP, GIF, TIFF)"])
    request_id: str | None = Field(None, examples=["6f1c2e0a9b3d4c5e"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(
    descriptions: dict[int, str], body: type[BaseModel] = ErrorResponse
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for OpenAPI: each error status with its body model and what it means."""
    return {status: {"model": body, "description": text} for status, text in descriptions.items()}


class ClassProbability(BaseModel):
    class_index: int = Field(examples=[9])
    class_name: str = Field(examples=["Ankle boot"])
    probability: float = Field(examples=[0.97])


class Explanation(BaseModel):
    class_index: int = Field(description="the class explained: the predicted one")
    logit_change: float = Field(description="that class's logit on the image minus on a black image")
    attributions: list[list[float]] = Field(
        description="28x28 DeepLIFT (rescale) map over the input the model saw; it sums to logit_change"
    )
    heatmap: str = Field(description="the map as a 28x28 RGBA PNG data URL: red for the class, blue against")


class Prediction(BaseModel):
    filename: str | None = Field(None, examples=["boot.png"])
    class_index: int = Field(examples=[9])
    class_name: str = Field(examples=["Ankle boot"])
    probabilities: dict[str, float] = Field(description="softmax probability of every class, by name; sums to 1")
    top_k: list[ClassProbability]
    inverted: bool = Field(description="whether the image was inverted to light-on-dark before the model saw it")
    input_image: str | None = Field(None, description="with return_input=true: the 28x28 input as a PNG data URL")
    ood_score: float | None = Field(
        None,
        description="how unlike the training garments the image is (higher: less alike); null if the model has no "
        "detector. docs/trust.md says how it is built",
        examples=[-0.4],
    )
    in_distribution: bool | None = Field(
        None,
        description="false: this may not be a garment (ood_score above the threshold that 95% of real garments "
        "pass); null if the model has no detector",
    )
    explanation: Explanation | None = Field(None, description="with explain=true: which pixels made the class")


class PredictResponse(Prediction):
    model_version: str = Field(description="first 12 hex digits of the weights' sha256", examples=["78a65716e56a"])
    inference_ms: float = Field(description="time this request's batch spent in the model", examples=[0.21])


class BatchPredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per uploaded image, in upload order")
    model_version: str
    inference_ms: float


class ParameterInfo(ParameterStats):
    values: list[float] | None = Field(None, description="the first N values (flattened), with ?values=N")


class ModelParamsResponse(BaseModel):
    parameters: list[ParameterInfo]
    total_parameters: int = Field(examples=[669706])
    trainable_parameters: int
    total_bytes: int
    module_tree: str = Field(description="the model as PyTorch prints it")


class ModelInfo(BaseModel):
    path: str
    version: str
    device: str
    loaded_at: str
    load_seconds: float
    calibrated: bool = Field(description="the probabilities are temperature-scaled, as fitted at training")
    ood_detector: bool = Field(description="predictions carry ood_score and in_distribution")
    metadata: dict[str, Any] = Field(description="the artifact's metadata document")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_version: str
    device: str
