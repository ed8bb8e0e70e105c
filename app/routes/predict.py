"""POST /predict: the route, documented for OpenAPI; the work is app/rest.py's answer_predict."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.imaging import InvertMode
from app.rest import answer_predict
from app.schemas import BatchPredictResponse, PredictResponse, error_responses
from app.service import MODEL_VERSION_HEADER

router = APIRouter(tags=["predict"])


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {**schema, "description": description},
        "description": description,
    }


# Documented here, parsed by app/rest.py's parse_options: one parser for every way a request comes in.
QUERY_PARAMETERS = [
    _query(
        "invert",
        "make the image light-on-dark: auto decides from the border",
        {"type": "string", "enum": [mode.value for mode in InvertMode], "title": "Invert", "default": "auto"},
    ),
    _query("top_k", "length of the top-k list", {"type": "integer", "maximum": 10, "minimum": 1, "title": "Top K"}),
    _query(
        "return_input",
        "include the 28x28 input the model saw, as a PNG data URL",
        {"type": "boolean", "default": False, "title": "Return Input"},
    ),
    _query(
        "explain",
        "include, per image, a DeepLIFT map of which pixels made the predicted class (28x28 and a PNG)",
        {"type": "boolean", "default": False, "title": "Explain"},
    ),
]
UPLOAD_BODY: dict[str, Any] = {
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
    openapi_extra={"requestBody": UPLOAD_BODY, "parameters": QUERY_PARAMETERS},
    summary="Classify one image (field 'file' or a raw image body) or several (field 'files')",
)
async def predict(request: Request) -> Response:
    """Classify FashionMNIST-style images: probabilities of all ten classes, top-k and the argmax."""
    body = await request.body()
    answer = await answer_predict(request.app.state, request.headers.raw, request.scope["query_string"], body)
    request.state.images = answer.images
    headers = {MODEL_VERSION_HEADER: answer.model_version}
    return Response(answer.payload, media_type="application/json", headers=headers)
