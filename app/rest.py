"""/predict as one function from request parts to response bytes: the key, the query, the uploads, the answer.

The FastAPI route and the early entrance (app/entrance.py) both call ``answer_predict`` with what they have
of the request, so one upload gets one answer, whichever way it came in. No HTTP framework here.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson

from app.auth import HeaderPairs, check_api_key
from app.config import Settings
from app.errors import InvalidParameter
from app.heatmap import attribution_png
from app.imaging import InvertMode, pixels_to_png
from app.service import Classified, choose_service
from app.uploads import Upload, read_uploads

TRUE_WORDS = ("true", "1", "yes", "on", "t", "y")
FALSE_WORDS = ("false", "0", "no", "off", "f", "n")
INVERT_MODES = frozenset(mode.value for mode in InvertMode)


@dataclass(frozen=True)
class PredictOptions:
    invert: InvertMode
    top_k: int
    return_input: bool
    explain: bool


class PredictAnswer(NamedTuple):
    payload: bytes  # the JSON body
    images: int  # how many images it classified
    model_version: str  # the version that computed it (the body's model_version)


async def answer_predict(state: Any, headers: HeaderPairs, query_string: bytes, body: bytes) -> PredictAnswer:
    """The JSON body of a /predict answer, how many images and which version; domain errors for the rest.

    ``state`` is the app's state (settings, service). The key is checked before readiness is told.
    """
    headers = list(headers)
    settings: Settings = state.settings
    check_api_key(headers, settings.api_key)
    service = choose_service(state, headers)
    options = parse_options(query_string, settings.top_k)
    content_type = next((value for name, value in headers if name == b"content-type"), b"")
    uploads, batch = read_uploads(content_type, body, settings.max_images_per_request)
    result = await service.classify([upload.data for upload in uploads], options.invert, explain=options.explain)
    return PredictAnswer(encode(result, uploads, options, batch=batch), len(uploads), result.model_version)


def parse_options(query_string: bytes, default_top_k: int) -> PredictOptions:
    """invert, top_k, return_input and explain from the query string (the last of a repeated one); others ignored."""
    if not query_string:  # most requests: the defaults, made once
        return _default_options(default_top_k)
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    invert = query.get("invert", InvertMode.AUTO.value)
    if invert not in INVERT_MODES:
        raise InvalidParameter(f"query.invert: must be one of auto, true, false, not {invert!r:.40}")
    top_k = query.get("top_k", str(default_top_k))
    if not (top_k.isascii() and top_k.isdigit() and 1 <= int(top_k) <= 10):
        raise InvalidParameter(f"query.top_k: must be a whole number from 1 to 10, not {top_k!r:.40}")
    return PredictOptions(
        InvertMode(invert),
        int(top_k),
        _boolean("return_input", query.get("return_input", "false")),
        _boolean("explain", query.get("explain", "false")),
    )


@cache
def _default_options(default_top_k: int) -> PredictOptions:
    return PredictOptions(InvertMode.AUTO, default_top_k, return_input=False, explain=False)


def _boolean(name: str, value: str) -> bool:
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise InvalidParameter(f"query.{name}: must be true or false, not {value!r:.40}")


def encode(result: Classified, uploads: list[Upload], options: PredictOptions, *, batch: bool) -> bytes:
    """The PredictResponse (one image) or BatchPredictResponse body, serialised by orjson.

    The values are ours, already typed, so validating them again through pydantic would only cost time; tests
    check the bodies against the schemas instead.
    """
    rows = result.output.probabilities
    ood = _scores(result)
    predictions = [
        _prediction(result, index, upload.filename, row, options) | ood[index]
        for index, (upload, row) in enumerate(zip(uploads, rows, strict=True))
    ]
    tail = {"model_version": result.model_version, "inference_ms": round(result.model_seconds * 1000, 3)}
    if batch:
        return orjson.dumps({"predictions": predictions, **tail}, option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps({**predictions[0], **tail}, option=orjson.OPT_SERIALIZE_NUMPY)


def _prediction(
    result: Classified, index: int, filename: str | None, values: list[float], options: PredictOptions
) -> dict[str, Any]:
    names = result.class_names
    ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)
    best = ranked[0]
    input_image = None
    if options.return_input:
        input_image = _png_data_url(pixels_to_png(result.pixels.image(index)))
    return {
        "filename": filename,
        "class_index": best,
        "class_name": names[best],
        "probabilities": dict(zip(names, values, strict=True)),
        "top_k": [
            {"class_index": i, "class_name": names[i], "probability": values[i]} for i in ranked[: options.top_k]
        ],
        "inverted": result.inverted[index],
        "input_image": input_image,
    }


def _scores(result: Classified) -> list[dict[str, Any]]:
    """Per image: ``ood_score`` and ``in_distribution`` (null without a detector), ``explanation`` when asked."""
    output, count = result.output, len(result.output)
    ood_scores = output.ood_score if output.ood_score is not None else [None] * count
    flags = output.in_distribution if output.in_distribution is not None else [None] * count
    explanations = _explanations(result) if result.explanation is not None else [None] * count
    return [
        {"ood_score": score, "in_distribution": flag, "explanation": explanation}
        for score, flag, explanation in zip(ood_scores, flags, explanations, strict=True)
    ]


def _explanations(result: Classified) -> list[dict[str, Any]]:
    explanation = result.explanation
    assert explanation is not None
    maps = explanation.attributions.numpy()  # float32 arrays: orjson writes them straight, each value short
    return [
        {
            "class_index": int(explanation.target[i]),
            "logit_change": float(explanation.logit_change[i]),
            "attributions": maps[i],
            "heatmap": _png_data_url(attribution_png(explanation.attributions[i])),
        }
        for i in range(len(maps))
    ]


def _png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
