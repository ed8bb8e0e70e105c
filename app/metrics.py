"""Prometheus metrics, in a registry per app so several apps (tests) never collide."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

# A `_created` timestamp beside every series doubles what a scraper stores and no dashboard reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fashion_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fashion_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fashion_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.model_seconds = Histogram(
            "fashion_model_seconds", "time per forward pass", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "fashion_queue_wait_seconds",
            "time a request's images waited for the model",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("fashion_queue_images", "images waiting for the model", registry=self.registry)
        self.images = Counter("fashion_images", "images classified", registry=self.registry)
        self.model_info = Info("fashion_model", "the model being served", registry=self.registry)

    def observe_batch(self, size: int, seconds: float, waits: Iterable[float] = ()) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)
        self.images.inc(size)
        for wait in waits:
            self.queue_wait.observe(wait)
