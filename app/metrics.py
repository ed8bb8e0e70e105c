"""Prometheus metrics that add up across uvicorn workers, and stay in a registry per app in one process.

With ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts (``fashion-serve`` sets it; the image points
it into its one tmpfs) every worker writes its values to memory-mapped files there, and ``/metrics`` merges
all the files, so each scrape gives the totals of every worker that has run, whichever worker answers it.
Without it (tests, a plain ``uvicorn app.main:app``) the values live in this app's own registry.

Multiprocess mode has rules, kept here for every metric added later: build it with :meth:`Metrics.counter`,
:meth:`Metrics.histogram` or :meth:`Metrics.gauge`. Counters and histograms merge by summing; a gauge must
say how workers' values merge (``merge=``, one of prometheus-client's multiprocess modes, ``live*`` ones
forgetting dead workers); Info and Enum cannot merge at all, so "which model" is a gauge with labels.
"""

from __future__ import annotations

import bisect
import collections
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from app.predictor import ModelOutput
    from app.service import Classified

# A `_created` timestamp beside every series doubles what a scraper stores and no dashboard reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MetricT = TypeVar("MetricT", Counter, Histogram, Gauge)
GaugeMerge = Literal[
    "livesum", "livemax", "livemin", "liveall", "livemostrecent", "sum", "max", "min", "all", "mostrecent"
]
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


class QueueSource(Protocol):
    @property
    def queued_images(self) -> int: ...


class InfoGauge:
    """An Info that merges across workers: the gauge is 1 for the current label values, 0 for earlier ones."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._current: dict[str, str] | None = None

    def info(self, values: dict[str, str]) -> None:
        if self._current is not None and self._current != values:
            self.gauge.labels(**self._current).set(0)
        self.gauge.labels(**values).set(1)
        self._current = dict(values)


class Metrics:
    """The service's metrics; attributes are the prometheus-client objects the code updates."""

    def __init__(self) -> None:
        self.directory = _multiprocess_directory()
        self.registry = CollectorRegistry(auto_describe=True)
        self.merge_modes: dict[str, GaugeMerge] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # each labelled() child, by metric and values
        self._queue: QueueSource | None = None
        self.requests = self.counter(
            "fashion_requests", "HTTP requests by route and status", ["route", "method", "status"]
        )
        self.latency = self.histogram("fashion_request_seconds", "HTTP request latency", LATENCY_BUCKETS, ["route"])
        self.batch_size = self.histogram("fashion_batch_size", "images per forward pass", BATCH_BUCKETS)
        self.model_seconds = self.histogram("fashion_model_seconds", "time per forward pass", LATENCY_BUCKETS)
        self.queue_wait = self.histogram(
            "fashion_queue_wait_seconds", "time a request's images waited for the model", LATENCY_BUCKETS
        )
        self.queue_depth = self.gauge(
            "fashion_queue_images", "images waiting for the model, in all live workers", merge="livesum"
        )
        self.images = self.counter("fashion_images", "images classified")
        self._drift_metrics()
        self._traffic_metrics()
        self.model_info = InfoGauge(
            self.gauge(
                "fashion_model_info",
                "the model being served: live workers serving each version",
                ["version", "device"],
                merge="livesum",
            )
        )

    def _drift_metrics(self) -> None:
        """What the traffic looks like, beside what the model was trained on: a dashboard sees inputs drift."""
        self.predicted_class = self.counter("fashion_predicted_class", "images classified, by class", ["class_name"])
        self.confidence = self.histogram(
            "fashion_prediction_confidence", "the predicted class's probability", CONFIDENCE_BUCKETS
        )
        self.out_of_distribution = self.counter(
            "fashion_out_of_distribution", "images flagged as maybe not a garment (in_distribution false)"
        )
        self.inverted = self.counter("fashion_inverted", "images inverted to light-on-dark before the model saw them")
        self.input_intensity = self.summary(
            "fashion_input_intensity", "each image's mean pixel intensity (0 to 1) as the model saw it: sum and count"
        )
        self.training_intensity = self.gauge(
            "fashion_training_input_intensity",
            "the mean pixel intensity of the training images (0 to 1), to compare the traffic's mean with",
            merge="livemax",
        )

    def _traffic_metrics(self) -> None:
        """Which version answered, and how a shadow version compares with the serving one (app/traffic.py)."""
        self.predictions_by_version = self.counter(
            "fashion_predictions_by_version", "images classified, by the version that answered", ["version"]
        )
        self.shadow_compared = self.counter(
            "fashion_shadow_compared", "images the shadow version classified beside the serving one", ["version"]
        )
        self.shadow_agreed = self.counter(
            "fashion_shadow_agreed", "images on which the shadow's argmax equals the serving version's", ["version"]
        )
        self.shadow_skipped = self.counter(
            "fashion_shadow_skipped",
            "images not mirrored: live requests were queued or the shadow was busy",
            ["version"],
        )
        self.shadow_seconds = self.histogram(
            "fashion_shadow_seconds", "time of a shadow run, its queue wait included", LATENCY_BUCKETS
        )

    def observe_request(self, result: Classified) -> None:
        """What only the request knows of its images: how many were inverted to light-on-dark."""
        if any(result.inverted):
            self.inverted.inc(sum(result.inverted))

    def labelled(self, metric: MetricT, *values: str) -> MetricT:
        """``metric.labels(*values)``, remembered: prometheus-client takes a lock and builds a key on every call."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def summary(self, name: str, documentation: str) -> Summary:
        """A sum and a count (no quantiles: those cannot merge across workers)."""
        return Summary(name, documentation, registry=self.registry)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = (), *, merge: GaugeMerge) -> Gauge:
        """A gauge, with how the workers' values add up: ``livesum`` for amounts, ``livemax`` for levels, ..."""
        self.merge_modes[name] = merge
        return Gauge(name, documentation, labels, registry=self.registry, multiprocess_mode=merge)

    def watch_queue(self, queue: QueueSource) -> None:
        """Read this worker's queued images from ``queue`` after every batch and at every scrape."""
        self._queue = queue

    def observe_forward(
        self,
        class_names: Sequence[str],
        version: str,
        output: ModelOutput,
        seconds: float,
        waits: list[float],
        answered: ModelOutput,
    ) -> None:
        """One forward pass: its size and time, its requests' queue waits, and what it answered (the drift gauges).

        ``answered`` is the part of ``output`` that answered requests: a shadow's runs (app/traffic.py) load the
        model, so they count in the pass's size and time, but they answered nobody. Once per pass, not per request
        or image: in multiprocess mode every write is an mmap update under a lock, so a pass's images are counted
        together (``observe_all``), one write per class and bucket.
        """
        self.batch_size.observe(len(output))
        self.model_seconds.observe(seconds)
        observe_all(self.queue_wait, waits)
        self._update_queue_depth()
        if not len(answered):
            return
        self.images.inc(len(answered))
        self.labelled(self.predictions_by_version, version).inc(len(answered))
        best = answered.best()
        for index, count in collections.Counter(best).items():
            self.labelled(self.predicted_class, class_names[index]).inc(count)
        observe_all(self.confidence, [row[index] for row, index in zip(answered.probabilities, best, strict=True)])
        observe_all(self.input_intensity, answered.mean_intensity)
        if answered.in_distribution is not None and not all(answered.in_distribution):
            self.out_of_distribution.inc(answered.in_distribution.count(False))

    def render(self) -> bytes:
        """The exposition text: this registry, or every worker's files merged (dead workers' live gauges dropped)."""
        self._update_queue_depth()
        if self.directory is None:
            return generate_latest(self.registry)
        forget_dead_workers(self.directory)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.directory))  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(merged)

    def _update_queue_depth(self) -> None:
        # Set where it changes, in each worker, rather than only in the worker a scrape reaches: the merged
        # value would otherwise add up other workers' figures from their own last scrape.
        if self._queue is not None:
            self.queue_depth.set(self._queue.queued_images)


def observe_all(metric: Histogram | Summary, values: Sequence[float]) -> None:
    """``metric.observe(value)`` for every value, in one write to the sum and one per bucket (or count) touched.

    prometheus-client has no bulk observe; this updates the same value objects its ``observe`` does
    (tests/test_metrics.py checks the exposition is the one observe() would give).
    """
    if not values:
        return
    metric._sum.inc(sum(values))
    if isinstance(metric, Summary):
        metric._count.inc(len(values))
        return
    bounds = metric._upper_bounds
    counts = collections.Counter(bisect.bisect_left(bounds, value) for value in values if value == value)  # not NaN
    for bucket, count in counts.items():
        metric._buckets[bucket].inc(count)


def _multiprocess_directory() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def forget_dead_workers(directory: Path) -> None:
    """Drop the ``live*`` gauges of workers that have exited (uvicorn replaces a dead worker without telling us).

    Their counters and histograms stay: what they counted happened.
    """
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(directory))  # type: ignore[no-untyped-call]  # unannotated upstream


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:  # no such process, or another user's that took its id: our worker is gone
        return False
    return True
