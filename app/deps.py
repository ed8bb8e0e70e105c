"""Annotated dependencies: settings, the inference service (503 until ready) and the API-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import check_api_key
from app.config import Settings
from app.service import InferenceService, require_service


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> InferenceService:
    return require_service(request.app.state)


async def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> None:
    """When a key is configured, demand it (app/auth.py: the one check, for every route and protocol)."""
    check_api_key(request.headers.raw, settings.api_key)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
