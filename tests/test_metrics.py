"""The rules that let every metric merge across workers (tests/test_workers.py checks the merging itself)."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Enum, Gauge, Histogram, Info, Summary

from app.metrics import Metrics, observe_all
from app.predictor import ModelOutput
from models import CLASS_NAMES


def test_every_metric_can_merge_across_workers() -> None:
    metrics = Metrics()
    collectors = list(metrics.registry._collector_to_names)  # the registry keeps no public list
    assert len(collectors) >= 8
    for collector in collectors:
        assert not isinstance(collector, Info | Enum), "Info and Enum cannot merge: use a gauge with labels"
        assert isinstance(collector, Counter | Histogram | Gauge | Summary), type(collector)
        if isinstance(collector, Summary):  # a sum and a count only: quantiles could not merge
            assert not hasattr(collector, "_quantiles") or not collector._quantiles
        if isinstance(collector, Gauge):
            name = collector._name
            assert name in metrics.merge_modes, f"{name}: build gauges with Metrics.gauge(..., merge=...)"
            assert collector._multiprocess_mode == metrics.merge_modes[name]


def test_model_info_gauge_moves_to_the_new_labels() -> None:
    metrics = Metrics()
    metrics.model_info.info({"version": "aaa", "device": "cpu"})
    metrics.model_info.info({"version": "bbb", "device": "cpu"})
    text = metrics.render().decode()
    assert 'fashion_model_info{device="cpu",version="aaa"} 0.0' in text
    assert 'fashion_model_info{device="cpu",version="bbb"} 1.0' in text


def test_queue_depth_is_read_after_every_batch() -> None:
    class Queue:
        queued_images = 7

    metrics = Metrics()
    metrics.watch_queue(Queue())
    output = ModelOutput([[0.1] * 10] * 4, [0.5] * 4)
    metrics.observe_forward(CLASS_NAMES, "0123456789ab", output, 0.001, [0.0005] * 4, output)
    assert metrics.queue_depth._value.get() == 7
    assert "fashion_queue_images 7.0" in metrics.render().decode()


@pytest.mark.parametrize("kind", ["histogram", "summary"])
def test_observe_all_writes_what_observe_would(kind: str) -> None:
    """Bulk observation writes prometheus-client's own value objects: the exposition must be observe()'s, exactly."""
    values = [0.0, 0.2, 0.2000001, 0.5, 0.99, 0.995, 1.0, 7.0, 0.3, 0.3]  # edges, ties, beyond the last bucket
    one_by_one, bulk = Metrics(), Metrics()
    for value in values:
        (one_by_one.confidence if kind == "histogram" else one_by_one.input_intensity).observe(value)
    observe_all(bulk.confidence if kind == "histogram" else bulk.input_intensity, values)
    name = "fashion_prediction_confidence" if kind == "histogram" else "fashion_input_intensity"
    expected = [line for line in one_by_one.render().decode().splitlines() if line.startswith(name)]
    assert len(expected) == (2 + 11 if kind == "histogram" else 2)  # sum, count and the histogram's 11 buckets
    assert [line for line in bulk.render().decode().splitlines() if line.startswith(name)] == expected
