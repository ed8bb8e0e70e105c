"""The Open Inference Protocol's wire format, both ways: request bytes to images or pixels, a result to bytes.

The protocol: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ . Its binary
tensor extension (Triton's, and what tritonclient sends by default) carries tensors as raw little-endian
bytes after the JSON header, sized by ``Inference-Header-Content-Length``: a quarter of the bytes of
JSON floats, and the only way to send raw image bytes. No HTTP framework here: app/oip/routes.py is the
thin layer that feeds this and the service.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field, ValidationError

from app.errors import InvalidRequest, PayloadTooLarge
from app.imaging import InvertMode
from app.predictor import PixelBatch
from app.service import Classified
from models import IMAGE_SIDE, NUM_CLASSES

MODEL_NAME = "fashion-mnist"
PIXELS_INPUT, IMAGE_INPUT = "pixels", "image"
PROBABILITIES_OUTPUT, CLASS_OUTPUT = "probabilities", "class_index"
OOD_OUTPUT, IN_DISTRIBUTION_OUTPUT = "ood_score", "in_distribution"  # from a model with a detector
OUTPUT_NAMES = (PROBABILITIES_OUTPUT, CLASS_OUTPUT, OOD_OUTPUT, IN_DISTRIBUTION_OUTPUT)
HEADER_LENGTH = "Inference-Header-Content-Length"
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE


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
class InferCall:
    """A checked inference request: its one input tensor and, under the binary extension, that tensor's bytes."""

    request: InferRequest
    tensor: RequestInput
    payload: bytes | None

    @property
    def is_pixels(self) -> bool:
        return self.tensor.datatype == "FP32"

    def invert(self) -> InvertMode:
        value = str(self.request.parameters.get("invert", InvertMode.AUTO.value)).lower()
        try:
            return InvertMode(value)
        except ValueError:
            raise InvalidRequest("parameter 'invert' must be auto, true or false") from None


def parse_infer(body: bytes, header_length: str | None, content_encoding: str, max_images: int) -> InferCall:
    """Split the body into the JSON request and, with the binary extension, the tensor bytes after it; check both."""
    if content_encoding.lower() != "identity":
        raise InvalidRequest("compressed request bodies are not accepted; send it uncompressed")
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} must be a byte count within the body's {len(body)} bytes")
        split = int(header_length)
    try:
        request = InferRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"not a valid inference request: {problems}") from None
    _check_outputs(request)
    tensor = _single_input(request)
    if tensor.datatype not in ("FP32", "BYTES"):
        raise InvalidRequest(
            f"input '{tensor.name}' has datatype {tensor.datatype}; send FP32 pixels in [0,1] "
            "shaped [N,1,28,28] or [N,784], or BYTES encoded images shaped [N]"
        )
    count = tensor.shape[0] if tensor.shape else 0
    if count > max_images:
        raise PayloadTooLarge(f"{count} images in one request; the limit is {max_images}")
    return InferCall(request, tensor, _tensor_bytes(tensor, body[split:]))


def _check_outputs(request: InferRequest) -> None:
    for output in request.outputs or []:
        if output.name not in OUTPUT_NAMES:
            raise InvalidRequest(f"unknown output '{output.name}'; this model has {', '.join(OUTPUT_NAMES)}")
        if "classification" in output.parameters:
            raise InvalidRequest("the classification extension is not supported; read the class_index output")


def _single_input(request: InferRequest) -> RequestInput:
    if len(request.inputs) != 1:
        raise InvalidRequest(
            f"expected exactly one input ('{PIXELS_INPUT}' FP32 or '{IMAGE_INPUT}' BYTES), got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidRequest(f"input '{tensor.name}' has a negative dimension in shape {tensor.shape}")
    return tensor


def _tensor_bytes(tensor: RequestInput, binary: bytes) -> bytes | None:
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


def pixels(call: InferCall) -> PixelBatch:
    """FP32 [N,1,28,28] or [N,784] in [0,1] to the model's uint8 (N,28,28).

    The model was trained on 8-bit images, so values are rounded to the nearest k/255: exact for any
    input made from 8-bit pixels (a FashionMNIST image gives the same probabilities as /predict),
    within 1/510 per pixel otherwise. This keeps one inference path, batched with /predict's traffic.
    """
    tensor, shape = call.tensor, call.tensor.shape
    if shape[1:] not in ([1, IMAGE_SIDE, IMAGE_SIDE], [PIXELS_PER_IMAGE]) or shape[0] < 1:
        raise InvalidRequest(f"input '{tensor.name}' has shape {shape}; FP32 pixels are [N,1,28,28] or [N,784]")
    expected = shape[0] * PIXELS_PER_IMAGE
    if call.payload is not None:
        if len(call.payload) != expected * 4:
            raise InvalidRequest(f"shape {shape} needs {expected * 4} bytes of FP32 data, got {len(call.payload)}")
        values = torch.frombuffer(bytearray(call.payload), dtype=torch.float32)  # little-endian, as the extension says
    else:
        values = _fp32_from_json(tensor, expected)
    if not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 1:
        raise InvalidRequest(f"input '{tensor.name}' must hold pixel values in [0, 1]")
    return PixelBatch.from_tensor(values.mul(255).round().to(torch.uint8).view(shape[0], IMAGE_SIDE, IMAGE_SIDE))


def _fp32_from_json(tensor: RequestInput, expected: int) -> torch.Tensor:
    if tensor.data is None:
        raise InvalidRequest(f"input '{tensor.name}' has no data (neither JSON 'data' nor binary_data_size)")
    try:
        values = torch.tensor(tensor.data, dtype=torch.float32).flatten()  # flat or nested row-major, both allowed
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InvalidRequest(f"input '{tensor.name}' data must be numbers, flat or nested row-major") from None
    if values.numel() != expected:
        raise InvalidRequest(f"shape {tensor.shape} needs {expected} values, got {values.numel()}")
    return values


def images(call: InferCall) -> list[bytes]:
    """BYTES [N]: length-prefixed raw bytes under the binary extension, base64 strings in JSON."""
    tensor = call.tensor
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise InvalidRequest(f"input '{tensor.name}' has shape {tensor.shape}; BYTES images are [N]")
    items = _split_length_prefixed(call.payload) if call.payload is not None else _base64_items(tensor)
    if len(items) != tensor.shape[0]:
        raise InvalidRequest(f"shape {tensor.shape} declares {tensor.shape[0]} images; the data holds {len(items)}")
    return items


def _split_length_prefixed(payload: bytes) -> list[bytes]:
    """The extension's BYTES layout: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    position = 0
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


def _base64_items(tensor: RequestInput) -> list[bytes]:
    if tensor.data is None:
        raise InvalidRequest(f"input '{tensor.name}' has no data (neither JSON 'data' nor binary_data_size)")
    decoded = []
    for index, item in enumerate(tensor.data):
        try:
            if not isinstance(item, str):
                raise TypeError
            decoded.append(base64.b64decode(item, validate=True))
        except (TypeError, binascii.Error):
            raise InvalidRequest(
                f"BYTES element {index} must be a base64 string of the encoded image in JSON "
                "(or send raw bytes with the binary tensor extension)"
            ) from None
    return decoded


def encode_result(call: InferCall, result: Classified) -> tuple[bytes, dict[str, str], str]:
    """The response body, its extra headers and media type: JSON outputs, or a JSON header then raw tensor bytes."""
    tensors = _output_tensors(result)
    binary_default = bool(call.request.parameters.get("binary_data_output", False))
    asked = {o.name: bool(o.parameters.get("binary_data", binary_default)) for o in call.request.outputs or []}
    names = [o.name for o in call.request.outputs] if call.request.outputs is not None else list(tensors)
    missing = [name for name in names if name not in tensors]
    if missing:
        raise InvalidRequest(f"this model has no out-of-distribution detector, so no output {', '.join(missing)}")
    described, chunks = [], []
    for name in names:
        datatype, shape, values, typecode = tensors[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if asked.get(name, binary_default):
            raw = array.array(typecode, values).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values
        described.append(tensor)
    document: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": result.model_version, "outputs": described}
    if call.request.id is not None:
        document["id"] = call.request.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {}, "application/json"
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


def _output_tensors(result: Classified) -> dict[str, tuple[str, list[int], list[Any], str]]:
    """Each output: datatype, shape, values, and the array module's typecode for the binary form."""
    output = result.output
    count = len(output)
    tensors: dict[str, tuple[str, list[int], list[Any], str]] = {
        PROBABILITIES_OUTPUT: ("FP32", [count, NUM_CLASSES], [p for row in output.probabilities for p in row], "f"),
        CLASS_OUTPUT: ("INT64", [count], output.best(), "q"),
    }
    if output.ood_score is not None and output.in_distribution is not None:
        tensors[OOD_OUTPUT] = ("FP32", [count], output.ood_score, "f")
        tensors[IN_DISTRIBUTION_OUTPUT] = ("BOOL", [count], output.in_distribution, "B")  # a byte each
    return tensors


def describe_model(versions: list[str], class_names: list[str], has_ood_detector: bool) -> dict[str, Any]:
    """The protocol's model metadata: ``versions`` lists the described version first, then the others loaded."""
    return {
        "name": MODEL_NAME,
        "versions": versions,
        "platform": "pytorch",
        "inputs": [
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 1, IMAGE_SIDE, IMAGE_SIDE]},
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
            {"name": CLASS_OUTPUT, "datatype": "INT64", "shape": [-1]},
            *(
                [
                    {"name": OOD_OUTPUT, "datatype": "FP32", "shape": [-1]},
                    {"name": IN_DISTRIBUTION_OUTPUT, "datatype": "BOOL", "shape": [-1]},
                ]
                if has_ood_detector
                else []
            ),
        ],
        "parameters": {
            "class_names": class_names,
            "one_input_of": f"{PIXELS_INPUT} (FP32 [N,1,28,28] or [N,784], values in [0,1]) or {IMAGE_INPUT} "
            "(BYTES [N]: encoded images, base64 strings in JSON)",
        },
    }
