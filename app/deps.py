"""Annotated dependencies: settings, the inference service (503 until ready) and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import NotReady, Unauthorized
from app.service import InferenceService


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> InferenceService:
    service: InferenceService | None = request.app.state.service
    if service is None:
        raise NotReady(request.app.state.not_ready_reason, headers={"Retry-After": "5"})
    return service


async def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> None:
    """When a key is configured, demand it as a Bearer token; compare in constant time, never log it."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized(
            "missing or wrong API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
