"""Tracing and JSON logs with real processes: ``shipyard serve`` and ``shipyard up`` export their
spans over OTLP/HTTP to a real receiver in this test (tests/otlp_receiver.py), configured only by
the standard OTEL_* environment. A request carrying a W3C traceparent gets a server span that is
its child, with ``queue`` and ``predict`` children (REST and gRPC); through the gateway the
replica's server span is a child of the gateway's. With ``--log-format json`` every output line
is a JSON object and a request's log lines carry its x-request-id (and trace ids)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest

from otlp_receiver import OtlpReceiver, Span, by_name, children, new_traceparent
from planeproc import PlaneProcess, isvc, kill_replicas, wait_for
from serverproc import ServerProcess
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

ROW = [6.8, 2.8, 4.8, 1.4]
V2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"
SERVER, GATEWAY = "traced-server", "shipyard-gateway"


def grpc_request(model: str, rows: int = 1) -> Any:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[rows, 4], contents=pb.InferTensorContents(fp64_contents=ROW * rows))])


def request_spans(spans: list[Span], server: Span) -> tuple[Span, Span]:
    """The ``queue`` and ``predict`` children of ``server`` (asserting there is one of each)."""
    kids = children(spans, server)
    queue, predict = by_name(kids, "queue"), by_name(kids, "predict")
    assert len(queue) == 1 and len(predict) == 1, [(s.name, s.parent_id) for s in spans]
    return queue[0], predict[0]


def has(*names: str, service: str | None = None):
    """A ``done`` predicate for ``wait_for_trace``: every name present (in ``service``)."""
    return lambda spans: all(by_name(spans, name, service) for name in names)


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def server(receiver, artifacts, tmp_path_factory) -> Iterator[ServerProcess]:
    """``shipyard serve`` of iris (scikit-learn) and a model that fails, traced, with JSON logs."""
    process = ServerProcess(artifacts["sk_logreg"], artifacts["broken"], "--name", "iris", "--name", "broken",
                            "--log-format", "json", env=receiver.env(SERVER))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_rest_request_spans_are_children_of_the_callers_traceparent(server, receiver):
    traceparent, trace_id, caller = new_traceparent()
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=V2, timeout=30,
                        headers={"traceparent": traceparent, "x-request-id": "rest-1"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "rest-1"
    spans = receiver.wait_for_trace(trace_id, has("POST /v2/models/iris/infer", "queue", "predict"))
    [root] = by_name(spans, "POST /v2/models/iris/infer")
    assert (root.parent_id, root.kind, root.service) == (caller, "server", SERVER)
    assert root.attributes["shipyard.model"] == "iris"
    assert root.attributes["shipyard.protocol"] == "v2-rest"
    assert root.attributes["http.response.status_code"] == 200
    assert root.resource["service.version"]
    queue, predict = request_spans(spans, root)
    assert predict.attributes["shipyard.batch_size"] >= 1 and predict.attributes["shipyard.rows"] == 1
    assert queue.attributes["shipyard.batch_size"] == predict.attributes["shipyard.batch_size"]
    assert predict.end_ns >= predict.start_ns and queue.end_ns >= queue.start_ns


def test_v1_predict_is_traced_too(server, receiver):
    traceparent, trace_id, caller = new_traceparent()
    answer = httpx.post(f"{server.url}/v1/models/iris:predict", json={"instances": [ROW, ROW]},
                        headers={"traceparent": traceparent}, timeout=30)
    assert answer.status_code == 200, answer.text
    spans = receiver.wait_for_trace(trace_id, has("POST /v1/models/iris:predict", "predict"))
    [root] = by_name(spans, "POST /v1/models/iris:predict")
    assert root.parent_id == caller and root.attributes["shipyard.protocol"] == "v1-rest"
    _, predict = request_spans(spans, root)
    assert predict.attributes["shipyard.rows"] == 2


def test_grpc_request_spans_are_children_of_the_metadata_traceparent(server, receiver):
    traceparent, trace_id, caller = new_traceparent()
    with grpc.insecure_channel(server.grpc_address) as channel:
        Stub(channel).ModelInfer(grpc_request("iris"), metadata=(("traceparent", traceparent),), timeout=30)
    spans = receiver.wait_for_trace(trace_id, has(GRPC_INFER, "queue", "predict"))
    [root] = by_name(spans, GRPC_INFER)
    assert (root.parent_id, root.kind, root.status) == (caller, "server", "unset")
    assert root.attributes["rpc.system"] == "grpc" and root.attributes["rpc.method"] == "ModelInfer"
    assert root.attributes["rpc.grpc.status_code"] == 0
    assert root.attributes["shipyard.model"] == "iris" and root.attributes["shipyard.protocol"] == "grpc"
    request_spans(spans, root)


def test_grpc_failures_set_the_status_code_and_only_server_failures_mark_the_span(server, receiver):
    results = {}
    with grpc.insecure_channel(server.grpc_address) as channel:
        for model in ("nosuchmodel", "broken"):
            traceparent, trace_id, _ = new_traceparent()
            with pytest.raises(grpc.RpcError) as failed:
                Stub(channel).ModelInfer(grpc_request(model), metadata=(("traceparent", traceparent),), timeout=30)
            results[model] = (failed.value.code(), trace_id)
    assert results["nosuchmodel"][0] is grpc.StatusCode.NOT_FOUND
    assert results["broken"][0] is grpc.StatusCode.INTERNAL
    [missing] = receiver.wait_for_trace(results["nosuchmodel"][1], has(GRPC_INFER))
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status == "unset"  # the caller's mistake, not the server's
    [broken] = receiver.wait_for_trace(results["broken"][1], has(GRPC_INFER))
    assert broken.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert broken.status == "error"


def test_concurrent_requests_each_get_their_own_queue_and_predict_spans(server, receiver):
    calls = [new_traceparent() for _ in range(12)]

    def post(traceparent: str) -> int:
        return httpx.post(f"{server.url}/v2/models/iris/infer", json=V2, headers={"traceparent": traceparent},
                          timeout=30).status_code

    with ThreadPoolExecutor(len(calls)) as pool:
        assert set(pool.map(post, [traceparent for traceparent, _, _ in calls])) == {200}
    for _, trace_id, caller in calls:
        spans = receiver.wait_for_trace(trace_id, has("POST /v2/models/iris/infer", "queue", "predict"))
        [root] = by_name(spans, "POST /v2/models/iris/infer")
        assert root.parent_id == caller
        _, predict = request_spans(spans, root)
        assert predict.attributes["shipyard.batch_size"] >= predict.attributes["shipyard.rows"] == 1


def test_an_unsampled_caller_gets_no_spans(server, receiver):
    unsampled, quiet_trace, _ = new_traceparent(sampled=False)
    sampled, loud_trace, _ = new_traceparent()
    for traceparent in (unsampled, sampled):
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=V2, headers={"traceparent": traceparent},
                          timeout=30).status_code == 200
    receiver.wait_for_trace(loud_trace, has("POST /v2/models/iris/infer", "queue", "predict"))
    assert receiver.trace(quiet_trace) == []
    assert not [s.name for s in receiver.snapshot() if "/health/" in s.name]  # readiness probes make no traces


def test_json_logs_carry_the_request_id_and_trace_ids(server, receiver):
    traceparent, trace_id, _ = new_traceparent()
    failed = httpx.post(f"{server.url}/v2/models/broken/infer", json=V2, timeout=30,
                        headers={"traceparent": traceparent, "x-request-id": "req-json-7"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "req-json-7"
    fresh = httpx.post(f"{server.url}/v2/models/iris/infer", json=V2, timeout=30)
    generated = fresh.headers["x-request-id"]
    assert str(uuid.UUID(generated)) == generated  # a new id when the client sent none

    def logged() -> list[dict[str, Any]]:
        return [entry for entry in _json_lines(server.output) if entry.get("request_id") == "req-json-7"]

    [entry] = wait_for(logged, 30, "the failed request's log line")
    assert entry["level"] == "WARNING" and entry["logger"] == "shipyard.server"
    assert "divided by zero" in entry["message"]
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"
    [span] = receiver.wait_for_trace(trace_id, has("POST /v2/models/broken/infer"))
    assert (entry["trace_id"], entry["span_id"]) == (trace_id, span.span_id)
    assert span.status == "error" and span.attributes["http.response.status_code"] == 500
    entries = _json_lines(server.output)  # every line, announcements included
    assert any("listening on http://" in e["message"] for e in entries)
    assert {"time", "level", "logger", "message", "pid"} <= set(entries[0])


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--log-format", "xml"], {}, "--log-format"),
    ([], {"SHIPYARD_LOG_FORMAT": "yaml"}, "SHIPYARD_LOG_FORMAT"),
    ([], {"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_bad_settings_are_refused_naming_them(artifacts, args, env, named):
    for command in (["serve", str(artifacts["sk_logreg"]), "--http-port", "0", "--no-grpc"], ["up", "--home",
                                                                                             "/nonexistent/x"]):
        done = subprocess.run([sys.executable, "-m", "shipyard", *command, *args], capture_output=True, text=True,
                              timeout=60, env={**_clean_env(), **env})
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert named in done.stderr, done.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SHIPYARD_LOG_FORMAT"))}


# -- across processes: shipyard up's gateway -> a replica ---------------------------------------------
@pytest.fixture(scope="module")
def plane(receiver, artifacts, tmp_path_factory) -> Iterator[PlaneProcess]:
    """``shipyard up --log-format json`` traced into ``receiver`` (the gateway as shipyard-gateway,
    replicas as ``{isvc}-{component}``: they inherit the rest of the environment), serving ``iris``. Apply more
    services with ``plane.apply`` (the transformer test adds its own)."""
    root = tmp_path_factory.mktemp("tracing-plane")
    model = root / "iris"
    model.mkdir()
    shutil.copy(artifacts["sk_logreg"], model / "model.joblib")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in receiver.env().items():  # PlaneProcess passes its own environment on
            patch.setenv(key, value)
        patch.delenv("OTEL_SERVICE_NAME", raising=False)
        process = PlaneProcess(root / "home", "--log-format", "json")
    try:
        process.wait_up()
        process.apply(isvc("iris", model, model={"protocolVersion": "v2"}))
        process.wait_ready("iris", timeout=120)
        yield process
    finally:
        process.stop()
        kill_replicas(str(root))


def chain(spans: list[Span], caller: str, gateway_name: str, replica_name: str,
          replica_service: str = "iris-predictor") -> tuple[Span, Span]:
    """The gateway's server span (child of the caller) and the replica's (child of the gateway's;
    a replica is named ``{isvc}-{component}``)."""
    [gateway] = [s for s in by_name(spans, gateway_name, GATEWAY) if s.kind == "server"]
    assert gateway.parent_id == caller
    found = [s for s in by_name(spans, replica_name, replica_service) if s.parent_id == gateway.span_id]
    assert len(found) == 1, [(s.service, s.name, s.span_id, s.parent_id) for s in spans]
    assert found[0].kind == "server"
    return gateway, found[0]


def test_a_trace_crosses_the_gateway_into_the_replica_over_rest(plane, receiver):
    traceparent, trace_id, caller = new_traceparent()
    answer = httpx.post(f"{plane.gateway}/v2/models/iris/infer", json=V2, timeout=60,
                        headers={"traceparent": traceparent, "x-request-id": "through-1"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "through-1"
    name = "POST /v2/models/iris/infer"
    spans = receiver.wait_for_trace(trace_id, lambda s: len(by_name(s, name)) >= 2 and has("queue", "predict")(s))
    gateway, replica = chain(spans, caller, name, name)
    assert gateway.attributes["shipyard.service"] == "default/iris"
    assert gateway.attributes["shipyard.revision"].startswith("iris-predictor-")
    assert gateway.attributes["shipyard.replica"].startswith("http://127.0.0.1:")
    assert gateway.attributes["http.response.status_code"] == 200
    assert replica.attributes["shipyard.model"] == "iris"
    request_spans(spans, replica)


def test_a_trace_crosses_the_gateway_into_the_replica_over_grpc(plane, receiver):
    traceparent, trace_id, caller = new_traceparent()
    with grpc.insecure_channel(plane.info["gateway_grpc"]) as channel:
        Stub(channel).ModelInfer(grpc_request("iris"), metadata=(("traceparent", traceparent),), timeout=60)
    spans = receiver.wait_for_trace(trace_id, lambda s: len(by_name(s, GRPC_INFER)) >= 2 and has("predict")(s))
    gateway, replica = chain(spans, caller, GRPC_INFER, GRPC_INFER)
    assert gateway.attributes["shipyard.service"] == "default/iris"
    assert ":" in gateway.attributes["shipyard.replica"]
    assert gateway.attributes["rpc.grpc.status_code"] == replica.attributes["rpc.grpc.status_code"] == 0
    request_spans(spans, replica)


def test_the_plane_and_its_replicas_log_json_lines(plane):
    answer = httpx.post(f"{plane.gateway}/v2/models/nosuchmodel/infer", json=V2, timeout=30)
    assert answer.status_code == 404
    assert str(uuid.UUID(answer.headers["x-request-id"]))  # the gateway's own answer has an id too
    plane_lines = _json_lines(plane.output)
    assert any("running" in entry["message"] for entry in plane_lines)
    logs = sorted((plane.home / "logs" / "default" / "iris").glob("*.log"))
    assert logs, "no replica log"
    replica_lines = _json_lines(Path(logs[0]).read_text())
    assert any("listening on http://" in entry["message"] for entry in replica_lines)
