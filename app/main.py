"""create_app(settings): lifespan, middleware, routers and error handlers. ``uvicorn app.main:app`` serves it."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from PIL import Image

from app.config import Settings, get_settings
from app.entrance import PATH, PredictEntrance
from app.http_errors import install_error_handlers
from app.lifecycle import ModelFollower, announce, build_service
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.oip import routes as oip
from app.predictor import Predictor
from app.routes import docs, health, model, models, predict, ui
from app.service import MODEL_VERSION_HEADER
from models import ArtifactError, resolve_device
from models.store import ModelStore

log = logging.getLogger("app")
VERSION = "0.1.0"
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm the model before reporting ready; without a model, serve 503s that say why."""
    settings: Settings = app.state.settings
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # open_image checks every declared size against ours before a pixel is decoded, and names it; Pillow's guard
    # would answer first for the worst bombs, in its own words, and print plain-text warnings for smaller ones.
    Image.MAX_IMAGE_PIXELS = None
    follower = None
    if settings.model_store is not None:
        follower = await _follow_store(app, settings)
    else:
        await _load_model_file(app, settings)
    # Torch, the app and the model live as long as the process: keep them out of the collector's full passes,
    # which walk all ~220k of them (~100 ms, measured) every second or two under load: the p99 latency.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if follower is not None:
            await follower.stop()
        elif app.state.service is not None and app.state.service.batcher is not None:
            await app.state.service.batcher.stop()


async def _load_model_file(app: FastAPI, settings: Settings) -> None:
    """FASHION_MODEL_PATH: one file, loaded once; without it, 503s that say why (or no start, if required)."""
    try:
        device = resolve_device(settings.device)
        predictor = await asyncio.to_thread(Predictor.load, settings.model_path, device)
    except (ArtifactError, ValueError) as exc:
        _not_loaded(app, settings, exc)
        return
    app.state.service = build_service(predictor, settings, app.state.metrics)
    announce(predictor, app.state.metrics)
    log.info("model %s ready on %s in %.3f s", predictor.version, device, predictor.load_seconds)


async def _follow_store(app: FastAPI, settings: Settings) -> ModelFollower | None:
    """FASHION_MODEL_STORE (which wins over FASHION_MODEL_PATH): serve what the store's state names, and follow it."""
    assert settings.model_store is not None
    if "model_path" in settings.model_fields_set:
        log.warning("FASHION_MODEL_STORE is set, so FASHION_MODEL_PATH (%s) is ignored", settings.model_path)
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        _not_loaded(app, settings, exc)
        return None
    follower = ModelFollower(app.state, ModelStore(settings.model_store), device)
    app.state.follower = follower
    await follower.start()
    if app.state.service is None and settings.require_model:
        await follower.stop()
        raise RuntimeError(f"cannot start: {app.state.not_ready_reason}")
    return follower


def _not_loaded(app: FastAPI, settings: Settings, exc: Exception) -> None:
    """Stop start-up when a model is required; otherwise serve 503s that give ``exc`` as the reason."""
    if settings.require_model:
        raise RuntimeError(f"cannot start: {exc}") from None
    app.state.not_ready_reason = f"model not loaded: {exc}"
    log.error("model not loaded; serving 503 until restarted: %s", exc)


def create_app(settings: Settings | None = None, *, predict_entrance: bool = True) -> FastAPI:
    """The app. ``predict_entrance=False`` leaves /predict to its route alone: the parity test compares the two."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="fashion-serve",
        version=VERSION,
        summary="A FashionMNIST classifier (the PyTorch quickstart MLP) behind a production HTTP API.",
        lifespan=lifespan,
        docs_url=None,  # app/routes/docs.py serves /docs without a CDN; ReDoc, CDN-only, is off
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks ask the global providers on every request, which costs CPU per request
        # for a tracer nobody configured; /metrics is ours (app/metrics.py).
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.not_ready_reason = "model is loading"
    app.state.follower = None  # app/lifecycle.py's ModelFollower, when serving from a model store
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for router in (predict.router, model.router, models.router, health.router, ui.router, docs.router, oip.router):
        app.include_router(router)
    if predict_entrance:  # innermost: limits, CORS, request ids, logs and metrics still apply
        route = next(r for r in predict.router.routes if isinstance(r, APIRoute) and r.path == PATH)
        app.add_middleware(PredictEntrance, route=route)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", MODEL_VERSION_HEADER],
            expose_headers=["X-Request-ID", MODEL_VERSION_HEADER, "Retry-After"],  # what a page reads of an answer
        )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app


@cache
def _default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> FastAPI:
    """``app.main:app`` builds the app on first use, so importing this module reads no settings."""
    if name == "app":
        return _default_app()
    raise AttributeError(name)
