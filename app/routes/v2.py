"""The Open Inference Protocol (KServe v2) beside our own API, so Triton, KServe and MLServer clients call us unchanged.

The protocol: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ . Its binary
tensor extension (Triton's, and what tritonclient sends by default) carries tensors as raw little-endian
bytes after the JSON header, sized by ``Inference-Header-Content-Length``: a quarter of the bytes of
JSON floats, and the only way to send raw image bytes. Errors on /v2 take the protocol's shape,
``{"error": "message"}``, not the rest of the API's ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import json
import logging
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.deps import SettingsDep, require_api_key
from app.errors import InvalidRequest, NotReady, PayloadTooLarge, ServiceError
from app.imaging import InvertMode
from app.schemas import error_responses
from app.service import InferenceService, Upload
from models import IMAGE_SIDE, NUM_CLASSES

log = logging.getLogger("app.v2")

MODEL_NAME = "fashion-mnist"
PIXELS_INPUT, IMAGE_INPUT = "pixels", "image"
PROBABILITIES_OUTPUT, CLASS_OUTPUT = "probabilities", "class_index"
HEADER_LENGTH = "Inference-Header-Content-Length"
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE


class OipRoute(APIRoute):
    """Answer every error on /v2 in the protocol's shape, ``{"error": "..."}``, keeping its HTTP status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                log.info("rejected %s %s: %s %s", request.method, request.url.path, exc.status_code, exc.message)
                return oip_error(exc.status_code, exc.message, exc.headers)
            except RequestValidationError as exc:
                return oip_error(400, "; ".join(str(e.get("msg", "")) for e in exc.errors()))
            except StarletteHTTPException as exc:
                return oip_error(exc.status_code, str(exc.detail), exc.headers)
            except Exception:  # log the traceback; tell the client only which request id to quote
                request_id = getattr(request.state, "request_id", None)
                log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
                return oip_error(500, f"internal server error (request id {request_id})")

        return handle


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=OipRoute)
KEYED = [Depends(require_api_key)]


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class NotReadyV2(ServiceError):
    """The protocol's health endpoints say "false" with a 4xx status; Triton answers 400, and so do we."""

    status_code = 400
    code = "not_ready"


class OipError(BaseModel):
    """The protocol's error body."""

    error: str


AUTH = {401: "API key required (when FASHION_API_KEY is set)"}
UNKNOWN = {404: "unknown model or version"}
METADATA_ERRORS = error_responses({**AUTH, **UNKNOWN, 503: "model not loaded yet (see Retry-After)"}, OipError)
READY_ERRORS = error_responses({400: "not ready: the reason", **UNKNOWN}, OipError)
INFER_ERRORS = error_responses(
    {
        **AUTH,
        400: "malformed request, tensor shape or data, or a corrupt image",
        **UNKNOWN,
        413: "body over the upload limit, too many images, or an image with too many pixels",
        415: "an image in an unsupported format",
        503: "model not loaded yet, or the queue is full (see Retry-After)",
    },
    OipError,
)


class RequestInput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[float] | list[int]
    typecode: str  # the array module's code for the binary form: "f" float32, "q" int64


def oip_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": message}), status, headers=headers, media_type="application/json")


INFER_EXAMPLE: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON, or with the binary tensor extension a JSON header followed by raw tensor bytes",
        "content": {
            "application/json": {
                "example": {
                    "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [1], "data": ["<base64 PNG>"]}],
                    "outputs": [{"name": PROBABILITIES_OUTPUT}, {"name": CLASS_OUTPUT}],
                }
            }
        },
    }
}


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    return {"name": request.app.title, "version": request.app.version, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    """The process is alive and answering."""
    return {"live": True}


@router.get("/health/ready", responses=READY_ERRORS)
async def server_ready(request: Request) -> dict[str, bool]:
    """The model is loaded; 400 with the reason otherwise, as the protocol's 4xx means false."""
    if request.app.state.service is None:
        raise NotReadyV2(request.app.state.not_ready_reason)
    return {"ready": True}


@router.get("/models/{name}", dependencies=KEYED, responses=METADATA_ERRORS)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    """The model's name, version (the weights' hash), inputs and outputs."""
    return describe_model(loaded_model(request, name, None))


@router.get("/models/{name}/versions/{version}", dependencies=KEYED, responses=METADATA_ERRORS)
async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    """The same, for one version: the only one this server has."""
    return describe_model(loaded_model(request, name, version))


@router.get("/models/{name}/ready", responses=READY_ERRORS)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    """Whether the model can take inference requests; 400 with the reason if not, 404 if unknown."""
    return check_model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=READY_ERRORS)
async def version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    """The same, for one version."""
    return check_model_ready(request, name, version)


@router.post("/models/{name}/infer", dependencies=KEYED, responses=INFER_ERRORS, openapi_extra=INFER_EXAMPLE)
async def infer(request: Request, settings: SettingsDep, name: str) -> Response:
    """Classify FP32 pixels or BYTES encoded images: FP32 probabilities [N,10] and INT64 class index [N]."""
    return await run_inference(request, settings, loaded_model(request, name, None))


@router.post(
    "/models/{name}/versions/{version}/infer", dependencies=KEYED, responses=INFER_ERRORS, openapi_extra=INFER_EXAMPLE
)
async def version_infer(request: Request, settings: SettingsDep, name: str, version: str) -> Response:
    """The same, for one version."""
    return await run_inference(request, settings, loaded_model(request, name, version))


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def unknown_endpoint(request: Request, path: str) -> Response:
    """Unknown /v2 paths (e.g. Triton's model repository extension) answer in the protocol's shape too."""
    allowed = sorted(
        method
        for route in router.routes
        if isinstance(route, APIRoute)
        and route.endpoint is not unknown_endpoint
        and route.path_regex.fullmatch(request.url.path)
        for method in route.methods
    )
    if allowed:
        raise StarletteHTTPException(405, f"{request.method} is not allowed here", {"Allow": ", ".join(allowed)})
    raise StarletteHTTPException(404, f"no such endpoint: {request.method} /v2/{path}")


def loaded_model(request: Request, name: str, version: str | None) -> InferenceService:
    if name != MODEL_NAME:
        raise ModelNotFound(f"unknown model '{name}'; this server serves '{MODEL_NAME}'")
    service: InferenceService | None = request.app.state.service
    if service is None:
        raise NotReady(request.app.state.not_ready_reason, headers={"Retry-After": "5"})
    if version is not None and version != service.predictor.version:
        raise ModelNotFound(f"model '{name}' has no version '{version}'; it serves {service.predictor.version}")
    return service


def describe_model(service: InferenceService) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "versions": [service.predictor.version],
        "platform": "pytorch",
        "inputs": [
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 1, IMAGE_SIDE, IMAGE_SIDE]},
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
            {"name": CLASS_OUTPUT, "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {
            "class_names": service.predictor.class_names,
            "one_input_of": f"{PIXELS_INPUT} (FP32 [N,1,28,28] or [N,784], values in [0,1]) or {IMAGE_INPUT} "
            "(BYTES [N]: encoded images, base64 strings in JSON)",
        },
    }


def check_model_ready(request: Request, name: str, version: str | None) -> dict[str, Any]:
    if name != MODEL_NAME:
        raise ModelNotFound(f"unknown model '{name}'; this server serves '{MODEL_NAME}'")
    if request.app.state.service is None:
        raise NotReadyV2(request.app.state.not_ready_reason)
    loaded_model(request, name, version)
    return {"name": MODEL_NAME, "ready": True}


async def run_inference(request: Request, settings: Settings, service: InferenceService) -> Response:
    body, binary = await read_infer_request(request)
    wanted = requested_outputs(body)
    tensor = single_input(body)
    payload = tensor_bytes(tensor, binary)
    if tensor.datatype == "FP32":
        pixels = pixels_from_fp32(tensor, payload)
        check_count(len(pixels), settings.max_images_per_request)
        request.state.images = len(pixels)
        probabilities = await predict_pixels(service, pixels)
    elif tensor.datatype == "BYTES":
        images = images_from_bytes(tensor, payload)
        check_count(len(images), settings.max_images_per_request)
        request.state.images = len(images)
        probabilities = await classify_images(service, images, invert_mode(body))
    else:
        raise InvalidRequest(
            f"input '{tensor.name}' has datatype {tensor.datatype}; send FP32 pixels in [0,1] "
            "shaped [N,1,28,28] or [N,784], or BYTES encoded images shaped [N]"
        )
    outputs = build_outputs(probabilities)
    return encode_response(body, service.predictor.version, [outputs[name] for name in wanted], binary_default(body))


async def read_infer_request(request: Request) -> tuple[InferRequest, bytes]:
    """Split the body into the JSON request and, with the binary extension, the tensor bytes after it."""
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidRequest("compressed request bodies are not accepted; send it uncompressed")
    body = await request.body()
    declared = request.headers.get(HEADER_LENGTH)
    split = len(body)
    if declared is not None:
        if not declared.isdigit() or int(declared) > len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} must be a byte count within the body's {len(body)} bytes")
        split = int(declared)
    try:
        parsed = InferRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"not a valid inference request: {problems}") from None
    return parsed, body[split:]


def requested_outputs(body: InferRequest) -> list[str]:
    known = (PROBABILITIES_OUTPUT, CLASS_OUTPUT)
    if body.outputs is None:
        return list(known)
    for output in body.outputs:
        if output.name not in known:
            raise InvalidRequest(f"unknown output '{output.name}'; this model has {', '.join(known)}")
        if "classification" in output.parameters:
            raise InvalidRequest("the classification extension is not supported; read the class_index output")
    return [output.name for output in body.outputs]


def single_input(body: InferRequest) -> RequestInput:
    if len(body.inputs) != 1:
        raise InvalidRequest(
            f"expected exactly one input ('{PIXELS_INPUT}' FP32 or '{IMAGE_INPUT}' BYTES), got {len(body.inputs)}"
        )
    tensor = body.inputs[0]
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidRequest(f"input '{tensor.name}' has a negative dimension in shape {tensor.shape}")
    return tensor


def tensor_bytes(tensor: RequestInput, binary: bytes) -> bytes | None:
    """The tensor's raw bytes under the binary extension, or None when its data is in the JSON."""
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidRequest(f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidRequest(f"input '{tensor.name}' declares binary_data_size {size}; {len(binary)} bytes follow")
    if tensor.data is not None:
        raise InvalidRequest(f"input '{tensor.name}' has both JSON data and binary data")
    return binary


def pixels_from_fp32(tensor: RequestInput, payload: bytes | None) -> torch.Tensor:
    """FP32 [N,1,28,28] or [N,784] in [0,1] to the model's uint8 (N,28,28).

    The model was trained on 8-bit images, so values are rounded to the nearest k/255: exact for any
    input made from 8-bit pixels (a FashionMNIST image gives the same probabilities as /predict),
    within 1/510 per pixel otherwise. This keeps one inference path, batched with /predict's traffic.
    """
    shape = tensor.shape
    if shape[1:] not in ([1, IMAGE_SIDE, IMAGE_SIDE], [PIXELS_PER_IMAGE]) or shape[0] < 1:
        raise InvalidRequest(f"input '{tensor.name}' has shape {shape}; FP32 pixels are [N,1,28,28] or [N,784]")
    expected = shape[0] * PIXELS_PER_IMAGE
    if payload is not None:
        if len(payload) != expected * 4:
            raise InvalidRequest(f"shape {shape} needs {expected * 4} bytes of FP32 data, got {len(payload)}")
        values = torch.frombuffer(bytearray(payload), dtype=torch.float32)  # little-endian, as the extension says
    else:
        values = fp32_from_json(tensor, expected)
    if not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 1:
        raise InvalidRequest(f"input '{tensor.name}' must hold pixel values in [0, 1]")
    return values.mul(255).round().to(torch.uint8).view(shape[0], IMAGE_SIDE, IMAGE_SIDE)


def fp32_from_json(tensor: RequestInput, expected: int) -> torch.Tensor:
    if tensor.data is None:
        raise InvalidRequest(f"input '{tensor.name}' has no data (neither JSON 'data' nor binary_data_size)")
    try:
        values = torch.tensor(tensor.data, dtype=torch.float32).flatten()  # flat or nested row-major, both allowed
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InvalidRequest(f"input '{tensor.name}' data must be numbers, flat or nested row-major") from None
    if values.numel() != expected:
        raise InvalidRequest(f"shape {tensor.shape} needs {expected} values, got {values.numel()}")
    return values


def images_from_bytes(tensor: RequestInput, payload: bytes | None) -> list[bytes]:
    """BYTES [N]: length-prefixed raw bytes under the binary extension, base64 strings in JSON."""
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise InvalidRequest(f"input '{tensor.name}' has shape {tensor.shape}; BYTES images are [N]")
    images = split_length_prefixed(payload) if payload is not None else base64_items(tensor)
    if len(images) != tensor.shape[0]:
        raise InvalidRequest(f"shape {tensor.shape} declares {tensor.shape[0]} images; the data holds {len(images)}")
    return images


def split_length_prefixed(payload: bytes) -> list[bytes]:
    """The extension's BYTES layout: each element is a 4-byte little-endian length, then that many bytes."""
    items, position = [], 0
    while position < len(payload):
        if position + 4 > len(payload):
            raise InvalidRequest("BYTES binary data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", payload, position)
        position += 4
        if position + size > len(payload):
            raise InvalidRequest(f"BYTES element {len(items)} claims {size} bytes; fewer remain")
        items.append(payload[position : position + size])
        position += size
    return items


def base64_items(tensor: RequestInput) -> list[bytes]:
    if tensor.data is None:
        raise InvalidRequest(f"input '{tensor.name}' has no data (neither JSON 'data' nor binary_data_size)")
    images = []
    for index, item in enumerate(tensor.data):
        try:
            if not isinstance(item, str):
                raise TypeError
            images.append(base64.b64decode(item, validate=True))
        except (TypeError, binascii.Error):
            raise InvalidRequest(
                f"BYTES element {index} must be a base64 string of the encoded image in JSON "
                "(or send raw bytes with the binary tensor extension)"
            ) from None
    return images


def check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"{count} images in one request; the limit is {limit}")


def invert_mode(body: InferRequest) -> InvertMode:
    value = str(body.parameters.get("invert", InvertMode.AUTO.value)).lower()
    try:
        return InvertMode(value)
    except ValueError:
        raise InvalidRequest("parameter 'invert' must be auto, true or false") from None


async def predict_pixels(service: InferenceService, pixels: torch.Tensor) -> torch.Tensor:
    """Through the same batcher as /predict, so both protocols share one queue and its back-pressure."""
    if service.batcher is not None:
        probabilities, _seconds = await service.batcher.submit(pixels)
        return probabilities
    return await asyncio.to_thread(service.predictor.predict, pixels)


async def classify_images(service: InferenceService, images: list[bytes], invert: InvertMode) -> torch.Tensor:
    """/predict's own decode and inference, so an encoded image gets exactly /predict's probabilities."""
    uploads = [Upload(filename=None, data=image) for image in images]
    result = await service.classify(uploads, invert=invert, top_k=1, return_input=False)
    names = service.predictor.class_names
    rows = [[prediction.probabilities[name] for name in names] for prediction in result.predictions]
    return torch.tensor(rows, dtype=torch.float32)


def build_outputs(probabilities: torch.Tensor) -> dict[str, OutputTensor]:
    count = len(probabilities)
    return {
        PROBABILITIES_OUTPUT: OutputTensor(
            PROBABILITIES_OUTPUT, "FP32", [count, NUM_CLASSES], probabilities.flatten().tolist(), "f"
        ),
        CLASS_OUTPUT: OutputTensor(CLASS_OUTPUT, "INT64", [count], probabilities.argmax(dim=1).tolist(), "q"),
    }


def binary_default(body: InferRequest) -> bool:
    return bool(body.parameters.get("binary_data_output", False))


def encode_response(body: InferRequest, version: str, outputs: list[OutputTensor], binary_default: bool) -> Response:
    """JSON outputs, or for outputs asked for as binary_data a JSON header followed by their raw bytes."""
    wanted_binary = {o.name: bool(o.parameters.get("binary_data", binary_default)) for o in body.outputs or []}
    described, chunks = [], []
    for output in outputs:
        tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if wanted_binary.get(output.name, binary_default):
            raw = array.array(output.typecode, output.values).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = output.values
        described.append(tensor)
    document: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": version, "outputs": described}
    if body.id is not None:
        document["id"] = body.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
