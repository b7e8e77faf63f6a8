"""Prometheus metrics of one worker process, and merging the expositions of several workers.

Each worker keeps its own registry (plain in-process values: cheap on the hot path); ``/metrics``
asks the sibling workers for theirs and sums them, so a scrape of any worker sees the whole server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Gauges whose values across workers are not summed but maxed (shared, not per-worker, quantities).
_MAX_ACROSS_WORKERS = {"shipyard_model_loaded"}


class ServerMetrics:
    """The metrics a worker records."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], RequestMetrics] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter("shipyard_requests", "Inference requests by model, protocol and status",
                                ["model", "protocol", "status"], registry=self.registry)
        self.latency = Histogram("shipyard_request_duration_seconds", "Time from decode to encoded answer",
                                 ["model", "protocol"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue = Histogram("shipyard_queue_duration_seconds", "Time waiting for a batch slot or model thread",
                               ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("shipyard_inference_duration_seconds", "Model execution time per request",
                                   ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("shipyard_batch_size", "Rows per model execution", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("shipyard_requests_in_flight", "Requests being served", ["model"],
                               registry=self.registry)
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


@dataclass(frozen=True)
class RequestMetrics:
    ok: Any
    latency: Any
    queue: Any
    inference: Any
    batch_size: Any
    in_flight: Any


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
