"""shipyard.tracing and shipyard.logformat: off and free unless configured (opentelemetry is not
even imported), the OTEL_* settings read and refused by name, W3C traceparent taken from headers
or gRPC metadata and injected into calls, spans recorded after the fact, JSON log lines."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Iterator

import pytest

from shipyard import logformat, tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SHIPYARD_LOG_FORMAT"))}


def test_unconfigured_serving_never_imports_opentelemetry(artifacts):
    """A REST request (with a traceparent), a gRPC request and the gateway's proxy path run in a
    fresh interpreter with no OTEL_* variables: nothing is traced and opentelemetry stays unimported."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        import grpc
        from shipyard import tracing, logformat
        from shipyard.package.source import model_source
        from shipyard.server.dataplane import DataPlane
        from shipyard.server.grpc_service import start_grpc_server
        from shipyard.server.rest import Request, RestApp
        from shipyard.server.runner import ServeOptions, build_repository
        from shipyard.control.gateway import Gateway
        from shipyard.protocol.proto import inference_pb2 as pb
        from shipyard.protocol.proto.service import Stub

        assert tracing.configure("shipyard-server") is False and not tracing.enabled()
        headers = {{"traceparent": "{TRACEPARENT}"}}
        tracing.inject_into(headers)
        assert headers == {{"traceparent": "{TRACEPARENT}"}}
        with tracing.server_span("x", headers) as span:
            assert span is tracing.NO_SPAN and tracing.current_ids() is None

        async def main():
            source, _ = model_source({str(artifacts["sk_logreg"])!r}, "iris")
            repository = build_repository([source], ServeOptions())
            await repository.load_all()
            dataplane = DataPlane(repository)
            app = RestApp(dataplane)
            body = b'{{"inputs": [{{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}}]}}'
            response = await app(Request("POST", "/v2/models/iris/infer",
                                         {{"traceparent": "{TRACEPARENT}", "x-request-id": "r1"}}, body))
            assert response.status == 200, response.body
            assert ("x-request-id", "r1") in response.headers
            server, port = await start_grpc_server(dataplane, "127.0.0.1", 0, 1 << 20)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{{port}}") as channel:
                request = pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="input-0", datatype="FP64", shape=[1, 4],
                    contents=pb.InferTensorContents(fp64_contents=[1, 2, 3, 4]))])
                await Stub(channel).ModelInfer(request, metadata=(("traceparent", "{TRACEPARENT}"),))
            await server.stop(0)
            gateway = Gateway(lambda: {{}}, "127.0.0.1", 0, 0)
            await gateway.start()
            await gateway.stop(0)

        asyncio.run(main())
        loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
        print("LOADED", loaded, tracing.ACTIVE, logformat.ACTIVE)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env=_clean_env())
    assert done.returncode == 0, done.stderr
    assert "LOADED [] False False" in done.stdout, done.stdout


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP, console ,otlp"}, ["otlp", "console"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp"]),  # the traces variable wins
])
def test_which_exporters_the_environment_asks_for(environ, expected):
    assert tracing.exporters_from(environ) == expected


@pytest.mark.parametrize(("environ", "named"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER: 'jaeger'"),
    ({"OTEL_TRACES_EXPORTER": "otlp,zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json'"),
])
def test_settings_shipyard_cannot_honour_are_refused_by_name(environ, named):
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.exporters_from(environ)
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.configure("svc", environ)
    assert not tracing.ACTIVE


@pytest.fixture
def exported() -> Iterator[list]:
    """Tracing on in this process into an in-memory exporter; ``exported`` fills on flush."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    spans: list = []
    assert tracing.configure("unit-test", {}, exporter=exporter)
    original = tracing.flush

    def flush() -> list:
        original()
        spans[:] = exporter.get_finished_spans()
        return spans

    yield flush  # type: ignore[misc]
    tracing.shutdown()
    assert not tracing.ACTIVE


def _hex(span_id: int, width: int = 16) -> str:
    return format(span_id, f"0{width}x")


@pytest.mark.parametrize("headers", [
    {"traceparent": TRACEPARENT, "tracestate": "vendor=1", "other": "x"},
    (("user-agent", "grpc"), ("traceparent", TRACEPARENT), ("tracestate", "vendor=1")),  # gRPC metadata
])
def test_a_server_span_continues_the_incoming_trace_and_is_injected_into_calls(exported, headers):
    with tracing.server_span("serve", headers, {"a": 1}) as span:
        context = span.get_span_context()
        assert _hex(context.trace_id, 32) == TRACE_ID
        assert tracing.current_ids() == (TRACE_ID, _hex(context.span_id))
        outgoing = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "content-type": "x"}
        tracing.inject_into(outgoing)
    assert outgoing == {"content-type": "x", "traceparent": f"00-{TRACE_ID}-{_hex(context.span_id)}-01",
                        "tracestate": "vendor=1"}
    [finished] = exported()
    assert _hex(finished.parent.span_id) == PARENT_ID and finished.parent.is_remote
    assert finished.kind.name == "SERVER" and finished.attributes["a"] == 1
    assert finished.resource.attributes["service.name"] == "unit-test"


@pytest.mark.parametrize("traceparent", ["00-zz-00f067aa0ba902b7-01", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                                         "garbage"])
def test_an_invalid_traceparent_starts_a_new_trace(exported, traceparent):
    with tracing.server_span("serve", {"traceparent": traceparent}):
        pass
    [finished] = exported()
    assert finished.parent is None and _hex(finished.context.trace_id, 32) != TRACE_ID


def test_probes_get_no_span_unless_they_carry_a_traceparent():
    assert not tracing.wanted("/v2/health/ready", {})
    assert not tracing.wanted("/metrics", {"accept": "text/plain"})
    assert tracing.wanted("/v2/health/ready", {"traceparent": TRACEPARENT})
    assert tracing.wanted("/v2/models/iris/infer", {})


def test_outside_a_span_nothing_is_injected(exported):
    headers = {"traceparent": TRACEPARENT}
    tracing.inject_into(headers)
    assert headers == {"traceparent": TRACEPARENT} and tracing.current_ids() is None


def test_spans_recorded_after_the_fact_are_children_with_their_measured_times(exported):
    with tracing.server_span("serve", {"traceparent": TRACEPARENT}) as server:
        start = time.perf_counter_ns()
        tracing.record_span("queue", start, start + 2_000_000, attributes={"shipyard.batch_size": 3})
    tracing.record_span("predict", start, start + 5_000_000, parent=server)
    spans = {span.name: span for span in exported()}
    server_id = spans["serve"].context.span_id
    assert spans["queue"].parent.span_id == spans["predict"].parent.span_id == server_id
    assert spans["queue"].end_time - spans["queue"].start_time == 2_000_000
    assert spans["predict"].end_time - spans["predict"].start_time == 5_000_000
    assert spans["queue"].attributes["shipyard.batch_size"] == 3
    assert abs(spans["queue"].start_time - time.time_ns()) < 60 * 10**9  # wall-clock time, not perf_counter


def test_an_exception_marks_the_server_span_failed(exported):
    with pytest.raises(ZeroDivisionError):
        with tracing.server_span("serve"):
            raise ZeroDivisionError("no")
    [finished] = exported()
    assert finished.status.status_code.name == "ERROR" and finished.events[0].name == "exception"


def test_the_rest_app_traces_a_request_with_queue_and_predict_children(exported, artifacts):
    from shipyard.package.source import model_source
    from shipyard.server.dataplane import DataPlane
    from shipyard.server.rest import Request, RestApp
    from shipyard.server.runner import ServeOptions, build_repository

    async def call() -> None:
        source, _ = model_source(artifacts["sk_logreg"], "iris")
        repository = build_repository([source], ServeOptions())
        await repository.load_all()
        body = b'{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [1,2,3,4,1,2,3,4]}]}'
        response = await RestApp(DataPlane(repository))(
            Request("POST", "/v2/models/iris/infer", {"traceparent": TRACEPARENT}, body))
        assert response.status == 200, response.body
        repository.unload_all()

    asyncio.run(call())
    spans = {span.name: span for span in exported()}
    server = spans["POST /v2/models/iris/infer"]
    assert _hex(server.parent.span_id) == PARENT_ID
    assert server.attributes["shipyard.model"] == "iris" and server.attributes["http.response.status_code"] == 200
    for name in ("queue", "predict"):
        assert spans[name].parent.span_id == server.context.span_id
    assert spans["predict"].attributes["shipyard.rows"] == 2


# -- logformat --------------------------------------------------------------------------------------
def test_the_log_format_comes_from_the_option_then_the_environment():
    assert logformat.resolve(None, {}) == "text"
    assert logformat.resolve(None, {"SHIPYARD_LOG_FORMAT": "JSON"}) == "json"
    assert logformat.resolve("text", {"SHIPYARD_LOG_FORMAT": "json"}) == "text"
    with pytest.raises(ValueError, match="--log-format must be text or json, got 'xml'"):
        logformat.resolve("xml", {})
    with pytest.raises(ValueError, match="SHIPYARD_LOG_FORMAT must be text or json, got 'yaml'"):
        logformat.resolve(None, {"SHIPYARD_LOG_FORMAT": "yaml"})


def test_a_request_id_is_bound_and_generated_when_absent():
    def bind() -> None:  # in a context of its own, as each request's task has
        headers = {"x-request-id": "given"}
        assert logformat.bind_request(headers) == "given" == logformat.REQUEST_ID.get()
        empty: dict[str, str] = {}
        generated = logformat.bind_request(empty)
        assert empty == {"x-request-id": generated} and str(uuid.UUID(generated)) == generated

    contextvars.copy_context().run(bind)
    assert logformat.REQUEST_ID.get() is None


def _format(record: logging.LogRecord) -> dict:
    return json.loads(logformat.JsonFormatter().format(record))


def test_json_lines_have_the_fields_request_and_trace_ids(exported):
    logger = logging.getLogger("shipyard.test")
    record = logger.makeRecord("shipyard.test", logging.WARNING, __file__, 1, "answer %s", (42,), None,
                               extra={"model": "iris"})
    record.created = 0.25
    token = logformat.REQUEST_ID.set("req-9")
    try:
        with tracing.server_span("serve", {"traceparent": TRACEPARENT}) as span:
            entry = _format(record)
    finally:
        logformat.REQUEST_ID.reset(token)
    assert entry["time"] == "1970-01-01T00:00:00.250Z"
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "shipyard.test", "answer 42")
    assert entry["request_id"] == "req-9" and entry["pid"] == os.getpid() and entry["model"] == "iris"
    assert (entry["trace_id"], entry["span_id"]) == (TRACE_ID, _hex(span.get_span_context().span_id))
    outside = _format(record)
    assert "request_id" not in outside and "trace_id" not in outside


def test_json_lines_carry_tracebacks_as_text_on_one_line():
    try:
        raise KeyError("missing")
    except KeyError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logformat.JsonFormatter().format(record)
    assert "\n" not in line
    assert "KeyError: 'missing'" in json.loads(line)["exc_info"]


def test_setup_replaces_the_root_handlers_and_emit_prints_json():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        logformat.setup(logging.INFO, "json", stream)
        assert logformat.ACTIVE and root.handlers[0].stream is stream  # type: ignore[attr-defined]
        logging.getLogger("shipyard.x").info("hello %s", "there")
        logformat.emit("Ready.", stream=stream)
    finally:
        logformat.setup(logging.WARNING, "text", io.StringIO())
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["hello there", "Ready."]
    assert not logformat.ACTIVE
