"""/v2: the Open Inference Protocol (KServe v2) as thin routes over the same service call as /predict.

Every version this worker holds (serving, canary, shadow) answers under /v2/models/{name}/versions/{version} and
is listed by POST /v2/repository/index; there is no load or unload: model bytes never arrive by request.

Triton, KServe and MLServer clients call us unchanged. Errors here take the protocol's shape,
``{"error": "message"}``: app/http_errors.py chooses it by the /v2 prefix.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from app.deps import require_api_key
from app.errors import ModelNotFound, NotReady
from app.http_errors import OIP_PREFIX
from app.oip import codec
from app.schemas import error_responses
from app.service import (
    MODEL_VERSION_HEADER,
    InferenceService,
    choose_service,
    find_loaded,
    loaded_services,
    require_service,
)
from models.store import VERSION_ID

router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol (v2)"])
KEYED = [Depends(require_api_key)]


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
INFER_EXAMPLE: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON, or with the binary tensor extension a JSON header followed by raw tensor bytes",
        "content": {
            "application/json": {
                "example": {
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64 PNG>"]}],
                    "outputs": [{"name": "probabilities"}, {"name": "class_index"}],
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
    _check_ready(request, None, None)
    return {"ready": True}


@router.get("/models/{name}", dependencies=KEYED, responses=METADATA_ERRORS)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    """The model's name, versions (the serving one first, then every other loaded one), inputs and outputs."""
    return _describe(request, _service(request, name, None))


@router.get("/models/{name}/versions/{version}", dependencies=KEYED, responses=METADATA_ERRORS)
async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    """The same, for one loaded version: serving, canary or shadow."""
    return _describe(request, _service(request, name, version))


@router.post("/repository/index", dependencies=KEYED, responses=error_responses(AUTH, OipError))
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every loaded version, all ready (Triton's repository index; nothing loads or unloads over HTTP)."""
    services = loaded_services(request.app.state).values()
    return [
        {"name": codec.MODEL_NAME, "version": service.predictor.version, "state": "READY", "reason": ""}
        for service in services
    ]


@router.get("/models/{name}/ready", responses=READY_ERRORS)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    """Whether the model can take inference requests; 400 with the reason if not, 404 if unknown."""
    _check_ready(request, name, None)
    return {"name": codec.MODEL_NAME, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", responses=READY_ERRORS)
async def version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    """The same, for one version."""
    _check_ready(request, name, version)
    return {"name": codec.MODEL_NAME, "ready": True}


@router.post("/models/{name}/infer", dependencies=KEYED, responses=INFER_ERRORS, openapi_extra=INFER_EXAMPLE)
async def infer(request: Request, name: str) -> Response:
    """Classify FP32 pixels or BYTES encoded images: FP32 probabilities [N,10] and INT64 class index [N].

    The version that answers is chosen as for /predict: one pinned with X-Model-Version, the canary at its share,
    else the serving one; the answer names it."""
    _check_name(name)
    return await _infer(request, choose_service(request.app.state, request.headers.raw))


@router.post(
    "/models/{name}/versions/{version}/infer", dependencies=KEYED, responses=INFER_ERRORS, openapi_extra=INFER_EXAMPLE
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    """The same, on one loaded version: serving, canary or shadow."""
    return await _infer(request, _service(request, name, version))


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def unknown_endpoint(request: Request, path: str) -> Response:
    """Unknown /v2 paths (e.g. Triton's model repository extension) answer in the protocol's shape too."""
    allowed = sorted(
        method
        for route in router.routes
        if isinstance(route, APIRoute)
        and route.endpoint is not unknown_endpoint
        and route.path_regex.fullmatch(request.url.path)
        for method in route.methods or ()
    )
    if allowed:
        raise HTTPException(405, f"{request.method} is not allowed here", {"Allow": ", ".join(allowed)})
    raise HTTPException(404, f"no such endpoint: {request.method} /v2/{path}")


async def _infer(request: Request, service: InferenceService) -> Response:
    settings = request.app.state.settings
    body = await request.body()
    headers = request.headers
    call = codec.parse_infer(
        body,
        headers.get(codec.HEADER_LENGTH),
        headers.get("content-encoding", "identity"),
        settings.max_images_per_request,
    )
    if call.is_pixels:
        result = await service.classify_pixels(codec.pixels(call))
    else:
        result = await service.classify(codec.images(call), call.invert())
    request.state.images = len(result.pixels)
    content, extra_headers, media_type = codec.encode_result(call, result)
    extra_headers = {**extra_headers, MODEL_VERSION_HEADER: result.model_version}
    return Response(content, media_type=media_type, headers=extra_headers)


def _service(request: Request, name: str | None, version: str | None) -> InferenceService:
    """The serving version, or the loaded ``version`` (12 to 64 hex digits of its id), or the protocol's 404;
    NotReady before a version loads."""
    if name is not None:
        _check_name(name)
    serving = require_service(request.app.state)
    if version is None:
        return serving
    service = find_loaded(request.app.state, version) if VERSION_ID.fullmatch(version) else None
    if service is None:
        loaded = ", ".join(sorted(s.predictor.version for s in loaded_services(request.app.state).values()))
        raise ModelNotFound(f"model '{name}' has no loaded version '{version}'; loaded: {loaded}")
    return service


def _check_name(name: str) -> None:
    if name != codec.MODEL_NAME:
        raise ModelNotFound(f"unknown model '{name}'; this server serves '{codec.MODEL_NAME}'")


def _describe(request: Request, service: InferenceService) -> dict[str, Any]:
    others = [s.predictor.version for s in loaded_services(request.app.state).values() if s is not service]
    predictor = service.predictor
    return codec.describe_model([predictor.version, *sorted(others)], predictor.class_names, predictor.has_ood_detector)


def _check_ready(request: Request, name: str | None, version: str | None) -> None:
    """The protocol's health answers "false" with a 4xx: 400 with the reason while not ready (as Triton does)."""
    try:
        _service(request, name, version)
    except NotReady as exc:
        raise HTTPException(400, exc.message) from None
