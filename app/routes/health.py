"""Liveness, readiness and metrics: open to probes even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.schemas import Health, Readiness, error_responses
from app.service import require_service

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive and answering."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=error_responses({503: "not ready, with the reason"}),
)
async def readyz(request: Request) -> Readiness:
    """The model is loaded and warmed up; 503 with the reason otherwise."""
    service = require_service(request.app.state)
    return Readiness(status="ready", model_version=service.predictor.version, device=str(service.predictor.device))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
