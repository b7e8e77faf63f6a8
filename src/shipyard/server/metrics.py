"""Prometheus metrics of one worker process, and merging the expositions of several workers.

Each worker keeps its own registry; ``/metrics`` asks the sibling workers for theirs and sums them,
so a scrape of any worker sees the whole server. The per-request metrics are plain Python numbers
updated on the event loop (no locks, no per-observation label or bucket objects) and rendered in
Prometheus's own format only when scraped; the rarely set model gauges are prometheus_client's.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Callable, Generic, Iterable, Iterator, TypeVar

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Gauges whose values across workers are not summed but maxed (shared, not per-worker, quantities).
_MAX_ACROSS_WORKERS = {"shipyard_model_loaded"}


class CounterValue:
    """One labelled counter: a number that only goes up."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeValue:
    """One labelled gauge: a number that goes up and down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class HistogramValue:
    """One labelled histogram: a count per bucket (not cumulative until rendered) and a sum."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.sum += value


Child = TypeVar("Child", CounterValue, GaugeValue, HistogramValue)


class Family(Generic[Child]):
    """A metric's children by label values, with prometheus_client's ``labels(...)`` to get one."""

    def __init__(self, name: str, documentation: str, kind: str, labelnames: tuple[str, ...],
                 make: Callable[[], Child]) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], Child] = {}
        self._make = make

    def labels(self, *values: str) -> Child:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self.children[values] = self._make()
        return child

    def collect(self) -> Metric:
        """The family as prometheus_client renders its own Counter, Gauge or Histogram."""
        metric = Metric(self.name, self.documentation, self.kind)
        created = getattr(prometheus_client.metrics, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values))
            if isinstance(child, CounterValue):
                metric.add_sample(self.name + "_total", labels, child.value)
                if created:
                    metric.add_sample(self.name + "_created", labels, child.created)
            elif isinstance(child, GaugeValue):
                metric.add_sample(self.name, labels, child.value)
            else:
                total = 0.0
                for bound, count in zip((*child.bounds, float("inf")), child.counts):
                    total += count
                    metric.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)}, total)
                metric.add_sample(self.name + "_count", labels, total)
                metric.add_sample(self.name + "_sum", labels, child.sum)
                if created:
                    metric.add_sample(self.name + "_created", labels, child.created)
        return metric


class _Families(Collector):
    """Renders plain-number families at scrape time."""

    def __init__(self, families: list[Family]) -> None:  # type: ignore[type-arg]
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()


def _histogram(name: str, documentation: str, labelnames: tuple[str, ...],
               bounds: tuple[float, ...]) -> Family[HistogramValue]:
    return Family(name, documentation, "histogram", labelnames, lambda: HistogramValue(tuple(map(float, bounds))))


class ServerMetrics:
    """The metrics a worker records."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], RequestMetrics] = {}
        self.registry = CollectorRegistry()
        self.requests: Family[CounterValue] = Family(
            "shipyard_requests", "Inference requests by model, protocol and status", "counter",
            ("model", "protocol", "status"), CounterValue)
        self.latency = _histogram("shipyard_request_duration_seconds", "Time from decode to encoded answer",
                                  ("model", "protocol"), _LATENCY_BUCKETS)
        self.queue = _histogram("shipyard_queue_duration_seconds", "Time waiting for a batch slot or model thread",
                                ("model",), _LATENCY_BUCKETS)
        self.inference = _histogram("shipyard_inference_duration_seconds", "Model execution time per request",
                                    ("model",), _LATENCY_BUCKETS)
        self.batch_size = _histogram("shipyard_batch_size", "Rows per model execution", ("model",), _BATCH_BUCKETS)
        self.in_flight: Family[GaugeValue] = Family("shipyard_requests_in_flight", "Requests being served", "gauge",
                                                    ("model",), GaugeValue)
        self.registry.register(_Families([self.requests, self.latency, self.queue, self.inference, self.batch_size,
                                          self.in_flight]))
        self.loaded = Gauge("shipyard_model_loaded", "1 when the model is loaded and ready", ["model", "version"],
                            registry=self.registry)
        self.memory = Gauge("shipyard_model_memory_bytes", "Resident memory the model added when it loaded",
                            ["model"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def for_request(self, model: str, protocol: str) -> "RequestMetrics":
        """The labelled children one request touches (cached: label lookups cost on the hot path)."""
        key = (model, protocol)
        cached = self._children.get(key)
        if cached is None:
            cached = self._children[key] = RequestMetrics(
                ok=self.requests.labels(model, protocol, "200"),
                latency=self.latency.labels(model, protocol),
                queue=self.queue.labels(model),
                inference=self.inference.labels(model),
                batch_size=self.batch_size.labels(model),
                in_flight=self.in_flight.labels(model),
            )
        return cached


class RequestMetrics:
    """The children one request of a model over a protocol updates."""

    __slots__ = ("ok", "latency", "queue", "inference", "batch_size", "in_flight")

    def __init__(self, ok: CounterValue, latency: HistogramValue, queue: HistogramValue, inference: HistogramValue,
                 batch_size: HistogramValue, in_flight: GaugeValue) -> None:
        self.ok = ok
        self.latency = latency
        self.queue = queue
        self.inference = inference
        self.batch_size = batch_size
        self.in_flight = in_flight


def merge_expositions(texts: Iterable[str]) -> bytes:
    """Sum the samples of several workers' expositions (max for per-server gauges)."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            _, kind, samples = families.setdefault(family.name, (family.documentation, family.type, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name in _MAX_ACROSS_WORKERS:
                    samples[key] = max(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, (documentation, kind, samples) in families.items():
        lines.append(f"# HELP {name} {documentation}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            rendered = ",".join(f'{key}="{_escape(value_)}"' for key, value_ in labels)
            lines.append(f"{sample_name}{{{rendered}}} {value!r}" if rendered else f"{sample_name} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
