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
from PIL import Image

from app.batching import Batcher
from app.config import Settings, get_settings
from app.entrance import PATH, PredictEntrance
from app.http_errors import install_error_handlers
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.oip import routes as oip
from app.predictor import Predictor
from app.routes import docs, health, model, predict, ui
from app.service import InferenceService
from models import ArtifactError, resolve_device

log = logging.getLogger("app")
VERSION = "0.1.0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm the model before reporting ready; without a model, serve 503s that say why."""
    settings: Settings = app.state.settings
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # open_image checks every declared size against ours before a pixel is decoded, and names it; Pillow's guard
    # would answer first for the worst bombs, in its own words, and print plain-text warnings for smaller ones.
    Image.MAX_IMAGE_PIXELS = None
    batcher = None
    try:
        device = resolve_device(settings.device)
        predictor = await asyncio.to_thread(Predictor.load, settings.model_path, device)
    except (ArtifactError, ValueError) as exc:
        if settings.require_model:
            raise RuntimeError(f"cannot start: {exc}") from None
        app.state.not_ready_reason = f"model not loaded: {exc}"
        log.error("model not loaded; serving 503 until restarted: %s", exc)
    else:
        if settings.batching:
            batcher = Batcher(
                predictor.predict,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_wait_ms / 1000,
                max_queue=settings.max_queue,
                on_batch=app.state.metrics.observe_batch,
            )
            batcher.start()
            app.state.metrics.watch_queue(batcher)
        metrics = app.state.metrics
        app.state.service = InferenceService(
            predictor,
            batcher,
            settings.max_image_pixels,
            decode_concurrency=settings.decode_concurrency,
            on_classified=metrics.observe_predictions,
        )
        metrics.model_info.info({"version": predictor.version, "device": str(device)})
        if predictor.training_mean_intensity is not None:
            metrics.training_intensity.set(predictor.training_mean_intensity)
        log.info("model %s ready on %s in %.3f s", predictor.version, device, predictor.load_seconds)
    # Torch, the app and the model live as long as the process: keep them out of the collector's full passes,
    # which walk all ~220k of them (~100 ms, measured) every second or two under load: the p99 latency.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if batcher is not None:
            await batcher.stop()


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
    )
    app.state.settings = settings
    app.state.service = None
    app.state.not_ready_reason = "model is loading"
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for router in (predict.router, model.router, health.router, ui.router, docs.router, oip.router):
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
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
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
