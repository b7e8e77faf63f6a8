"""OpenTelemetry tracing, on only when configured by the standard ``OTEL_*`` environment.

Configured means ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; a comma-separated
list), or it is unset and ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn it off. OTLP goes over
HTTP/protobuf (the SDK's exporter reads the endpoint, headers, timeout and compression variables
itself); spans leave through a ``BatchSpanProcessor`` (``OTEL_BSP_*``), sampled by
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default: parent-based, always on);
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the process.

When not configured, ``opentelemetry`` is never imported and every function here is a no-op.
Hot paths test the module attribute ``tracing.ACTIVE`` (read it through the module: ``from
shipyard.tracing import ACTIVE`` would copy the value of the moment) before doing anything.

Times given to ``record_span`` are ``time.perf_counter_ns()`` values, what the server measures.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Union

from shipyard import __version__

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

#: True while spans are recorded and exported. Read as ``tracing.ACTIVE``.
ACTIVE: bool = False

#: Request headers: a mapping, or (name, value) pairs as gRPC metadata; names in lower case.
Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]
Attributes = Mapping[str, Union[str, bool, int, float]]

EXPORTERS = ("otlp", "console", "none")
TRACE_HEADERS = ("traceparent", "tracestate")
#: REST paths served without a span unless the request carries a traceparent.
UNTRACED_PATHS = frozenset({"/", "/metrics", "/v2/health/live", "/v2/health/ready", "/healthz"})
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

_provider: "TracerProvider | None" = None
_tracer: "Tracer | None" = None
_propagator: Any = None
#: The ``opentelemetry.trace`` module once configured (no import on each call).
_trace: Any = None
_kinds: dict[str, Any] = {}


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable Shipyard cannot honour; the message names it."""


class _NoSpan:
    """What the context managers yield while tracing is off: accepts everything, records nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Attributes) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()


def enabled() -> bool:
    """Are spans being recorded and exported?"""
    return ACTIVE


def wanted(path: str, headers: Mapping[str, str]) -> bool:
    """Does a REST request get a span? Not health checks and scrapes (``UNTRACED_PATHS``) unless the
    caller sends a ``traceparent``: a prober would otherwise make a trace per probe."""
    return path not in UNTRACED_PATHS or "traceparent" in headers


def exporters_from(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for ([] for none); raises TracingConfigError naming the
    variable that is wrong. Imports nothing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        names = ["otlp"] if any(environ.get(name, "").strip() for name in _ENDPOINTS) else []
    else:
        names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: '{unknown[0]}' is not supported; use "
                                 f"{', '.join(EXPORTERS)} (a comma-separated list)")
    if "none" in names:
        return []
    if "otlp" in names:
        for variable in _PROTOCOLS:  # the signal's own variable wins, as the SDK reads them
            protocol = environ.get(variable, "").strip().lower()
            if protocol and protocol != "http/protobuf":
                raise TracingConfigError(f"{variable}: '{protocol}' is not supported; Shipyard exports OTLP over "
                                         "HTTP (http/protobuf, port 4318 by default)")
            if protocol:
                break
    return list(dict.fromkeys(names))


def configure(service_name: str, environ: Mapping[str, str] | None = None,
              exporter: "SpanExporter | None" = None) -> bool:
    """Start tracing when the environment configures it (see the module's doc); True when on.

    ``service_name`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` win). ``environ`` decides whether tracing is on (default
    ``os.environ``; the SDK reads the rest of its settings from ``os.environ``). ``exporter``
    replaces the environment's exporters (tests).
    Raises TracingConfigError for a variable it cannot honour, or when opentelemetry-sdk is missing.
    """
    global ACTIVE, _provider, _tracer, _propagator, _trace
    environ = os.environ if environ is None else environ
    names = exporters_from(environ) if exporter is None else ["given"]
    if not names:
        return False
    shutdown()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise TracingConfigError(
            f"tracing is configured ({_configured_by(environ)}) but OpenTelemetry is not installed ({exc}); "
            "install it with: pip install 'shipyard[tracing]' (opentelemetry-sdk and "
            "opentelemetry-exporter-otlp-proto-http), or unset the OTEL_* variables") from None
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for span_exporter in [exporter] if exporter is not None else [_exporter(name) for name in names]:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    _provider = provider
    _tracer = provider.get_tracer("shipyard", __version__)
    _propagator = TraceContextTextMapPropagator()
    _trace = trace
    _kinds.update(server=trace.SpanKind.SERVER, client=trace.SpanKind.CLIENT, internal=trace.SpanKind.INTERNAL)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # so spans of user code (model.py) join ours
    ACTIVE = True
    return True


def _configured_by(environ: Mapping[str, str]) -> str:
    for name in ("OTEL_TRACES_EXPORTER", *_ENDPOINTS):
        if environ.get(name, "").strip():
            return f"{name}={environ[name].strip()}"
    return "OTEL_*"


def _exporter(name: str) -> "SpanExporter":
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: otlp needs opentelemetry-exporter-otlp-proto-http ({exc}); install it with "
            "pip install 'shipyard[tracing]'") from None
    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: from OTEL_EXPORTER_OTLP_*


def flush(timeout_s: float = 5.0) -> bool:
    """Export the spans ended so far; False when that did not finish within ``timeout_s``."""
    if _provider is None:
        return True
    return bool(_provider.force_flush(int(timeout_s * 1000)))


def shutdown() -> None:
    """Stop recording, export what is queued and stop the exporters (a server's graceful stop)."""
    global ACTIVE, _provider, _tracer
    ACTIVE = False
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _carrier(headers: Headers | None) -> dict[str, str]:
    """traceparent / tracestate out of a header mapping or metadata pairs."""
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        return {name: headers[name] for name in TRACE_HEADERS if name in headers}
    return {name: value for name, value in headers if name in TRACE_HEADERS}


@contextmanager
def server_span(name: str, headers: Headers | None = None, attributes: Attributes | None = None,
                kind: str = "server", record_errors: bool = True) -> Iterator["Span | _NoSpan"]:
    """A span around serving one request, its parent the W3C ``traceparent`` (and ``tracestate``)
    of ``headers`` when they carry a valid one, current inside the block. An exception leaving the
    block is recorded on it and marks it failed (unless ``record_errors`` is False: the caller
    decides). Yields a no-op span while tracing is off."""
    if not ACTIVE or _tracer is None:
        yield NO_SPAN
        return
    carrier = _carrier(headers)
    parent = _propagator.extract(carrier) if carrier else None
    with _tracer.start_as_current_span(name, context=parent, kind=_kinds[kind], attributes=attributes,
                                       record_exception=record_errors,
                                       set_status_on_exception=record_errors) as span:
        yield span


@contextmanager
def child_span(name: str, attributes: Attributes | None = None, kind: str = "internal") -> Iterator["Span | _NoSpan"]:
    """A child of the current span around a step (``kind`` internal) or a call to another service
    (``kind`` client: inject inside the block). Yields a no-op span while tracing is off."""
    if not ACTIVE or _tracer is None:
        yield NO_SPAN
        return
    with _tracer.start_as_current_span(name, kind=_kinds[kind], attributes=attributes) as span:
        yield span


def inject_into(headers: dict[str, str]) -> None:
    """Set ``traceparent`` (and ``tracestate``) of the current span in ``headers``, replacing any
    there; leaves them alone while tracing is off or when no span is current."""
    if not ACTIVE or _propagator is None:
        return
    if not _trace.get_current_span().get_span_context().is_valid:
        return
    for name in TRACE_HEADERS:
        headers.pop(name, None)
    _propagator.inject(headers)


def current_span() -> "Span | _NoSpan":
    """The span current in this context (a no-op one while tracing is off or none is current)."""
    if not ACTIVE:
        return NO_SPAN
    return _trace.get_current_span()


def annotate(attributes: Attributes) -> None:
    """Add attributes to the current span (nothing while tracing is off)."""
    if ACTIVE:
        current_span().set_attributes(attributes)


def set_error(span: "Span | _NoSpan", description: str) -> None:
    """Mark ``span`` failed, with why."""
    if isinstance(span, _NoSpan) or not span.is_recording():
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))


def record_span(name: str, start_ns: int, end_ns: int, parent: "Span | None" = None,
                attributes: Attributes | None = None) -> None:
    """Record a span measured after the fact: ``start_ns`` and ``end_ns`` are
    ``time.perf_counter_ns()`` values; its parent is ``parent``, else the current span (queue wait and
    predict of a request that ran in a batch task of its own)."""
    if not ACTIVE or _tracer is None:
        return
    offset = time.time_ns() - time.perf_counter_ns()
    context = _trace.set_span_in_context(parent) if parent is not None else None
    span = _tracer.start_span(name, context=context, kind=_kinds["internal"], attributes=attributes,
                              start_time=start_ns + offset)
    span.end(end_time=max(end_ns, start_ns) + offset)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, None when there is none (log lines)."""
    if not ACTIVE:
        return None
    context = _trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
