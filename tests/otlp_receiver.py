"""A real OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` bodies (protobuf
``ExportTraceServiceRequest``, gzip or not) decoded with opentelemetry-proto's generated classes
into flat ``Span`` records.

    with OtlpReceiver() as receiver:
        env = receiver.env("my-service")          # for the process under test
        ...
        spans = receiver.wait_for_trace(trace_id, lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

#: OTLP span kinds by number.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
#: OTLP status codes by number.
STATUSES = {0: "unset", 1: "ok", 2: "error"}


@dataclass
class Span:
    """One exported span, ids in hex (``parent_id`` "" for a root)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def decode_spans(body: bytes) -> list[Span]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(Span(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                    name=span.name, kind=KINDS.get(span.kind, str(span.kind)), service=str(resource.get("service.name")),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    status=STATUSES.get(span.status.code, str(span.status.code)),
                    attributes={kv.key: _value(kv.value) for kv in span.attributes}, resource=resource,
                ))
    return spans


class OtlpReceiver:
    """A threaded HTTP server on a free port of 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 200
                try:
                    if self.path.rstrip("/") != "/v1/traces":
                        raise ValueError(f"unexpected path {self.path}")
                    encoding = (self.headers.get("content-encoding") or "").lower()
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    spans = decode_spans(body)
                except Exception as exc:  # recorded: the test says what went wrong
                    receiver.errors.append(f"{type(exc).__name__}: {exc}")
                    status, spans = 400, []
                with receiver._lock:
                    receiver.requests += 1
                    receiver.spans.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, service_name: str | None = None, delay_ms: int = 100) -> dict[str, str]:
        """Environment variables that send a process's spans here, exported every ``delay_ms``."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
               "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
        if service_name is not None:
            env["OTEL_SERVICE_NAME"] = service_name
        return env

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.snapshot() if span.trace_id == trace_id]

    def wait_for_trace(self, trace_id: str, done: Callable[[list[Span]], bool], timeout: float = 30) -> list[Span]:
        """The spans of ``trace_id`` once ``done(spans)`` is true; AssertionError listing what arrived."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id} incomplete after {timeout}s: "
                                     f"{[(s.service, s.name, s.kind) for s in spans]}; errors: {self.errors}")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "OtlpReceiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def new_traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(traceparent header, trace id, parent span id) of a made-up caller."""
    import secrets

    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def by_name(spans: list[Span], name: str, service: str | None = None) -> list[Span]:
    return [s for s in spans if s.name == name and (service is None or s.service == service)]


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id]
