"""POST /predict."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.deps import ServiceDep, SettingsDep, require_api_key
from app.imaging import InvertMode
from app.schemas import BatchPredictResponse, PredictResponse, error_responses
from app.uploads import read_uploads

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "one image"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "several images; one result each, in order",
                        },
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS = error_responses(
    {
        400: "corrupt or truncated image, malformed multipart",
        401: "API key required",
        413: "body over the upload limit, too many images, or an image with too many pixels",
        415: "not an image, or an unsupported format or Content-Type",
        422: "no image field, or a bad query parameter",
        503: "model not loaded yet, or the queue is full (see Retry-After)",
    }
)


@router.post(
    "/predict",
    response_model=PredictResponse | BatchPredictResponse,
    responses=ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Classify one image (field 'file' or a raw image body) or several (field 'files')",
)
async def predict(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    invert: Annotated[
        InvertMode, Query(description="make the image light-on-dark: auto decides from the border")
    ] = InvertMode.AUTO,
    top_k: Annotated[int | None, Query(ge=1, le=10, description="length of the top-k list")] = None,
    return_input: Annotated[
        bool, Query(description="include the 28x28 input the model saw, as a PNG data URL")
    ] = False,
) -> Response:
    """Classify FashionMNIST-style images: probabilities of all ten classes, top-k and the argmax."""
    uploads, is_batch = await read_uploads(request, settings.max_images_per_request)
    request.state.images = len(uploads)
    result = await service.classify(uploads, invert=invert, top_k=top_k or settings.top_k, return_input=return_input)
    # Serialised once, by orjson; response_model above still documents the body.
    return Response(result.to_json(service.predictor.version, batch=is_batch), media_type="application/json")
