"""Payload logging through ``shipyard up`` with real processes: an InferenceService whose
``spec.predictor.logger`` points at a real CloudEvents receiver (a threaded http.server here) gets
each request and response as a binary-mode CloudEvent with KServe's headers; a receiver that goes
down while traffic goes on (inference unaffected) gets every event exactly once and in order when
it comes back on the same port; a JSONL sink; responses that failed, logged or not by annotation."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from planeproc import PlaneProcess, isvc, kill_replicas, wait_for
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

PREDICT = {"instances": [[6.8, 2.8, 4.8, 1.4]]}
REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"


class Receiver:
    """A CloudEvents receiver: records (headers, body) of every POST; ``stop`` and ``start`` again on
    the same port."""

    def __init__(self, port: int = 0) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.port = port
        self.server: http.server.ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()
        self.start()

    def start(self) -> None:
        events, connections = self.events, self.connections

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                connections.add(self.request)
                super().setup()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None
        for connection in list(self.connections):  # kept-alive connections go down too
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connections.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, artifacts):
    root = tmp_path_factory.mktemp("payload")
    model = root / "model"
    model.mkdir()
    shutil.copy(artifacts["sk_logreg"], model / "model.joblib")
    receiver = Receiver()
    jsonl = root / "sink" / "events.jsonl"
    plane = PlaneProcess(root / "home").wait_up()
    try:
        plane.apply(isvc("iris", model, model={"protocolVersion": "v2"},
                         logger={"mode": "all", "url": receiver.url}),
                    isvc("quiet", model, annotations={"serving.shipyard.io/logger-errors": "false"},
                         logger={"mode": "response", "url": f"file://{jsonl}"}))
        plane.wait_ready("iris")
        plane.wait_ready("quiet")
        yield plane, receiver, jsonl
    finally:
        plane.stop()
        kill_replicas(str(root))
        if receiver.server is not None:
            receiver.stop()


def _events_for(receiver: Receiver, ids: set[str]) -> list[tuple[dict[str, str], bytes]]:
    return [(h, b) for h, b in receiver.events if h.get("ce-id") in ids]


def test_requests_and_responses_arrive_as_cloudevents(setup):
    plane, receiver, _ = setup
    gateway = plane.gateway
    body = json.dumps(PREDICT).encode()
    v1 = httpx.post(f"{gateway}/v1/models/iris:predict", content=body,
                    headers={"content-type": "application/json", "x-request-id": "req-v1"}, timeout=30)
    assert v1.status_code == 200
    v2_body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [6.8, 2.8, 4.8, 1.4]}]}
    v2 = httpx.post(f"{gateway}/v2/models/iris/infer", json=v2_body, timeout=30)
    assert v2.status_code == 200
    bad = httpx.post(f"{gateway}/v1/models/iris:predict", content=b"{not json",
                     headers={"content-type": "application/json", "x-request-id": "req-bad"}, timeout=30)
    assert 400 <= bad.status_code < 600
    request = pb.ModelInferRequest(model_name="iris", id="g1", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[1, 4], contents=pb.InferTensorContents(fp64_contents=[6.8, 2.8, 4.8, 1.4]))])
    with grpc.insecure_channel(plane.info["gateway_grpc"]) as channel:
        answer = Stub(channel).ModelInfer(request, metadata=(("x-request-id", "req-grpc"),), timeout=30)

    wait_for(lambda: len(receiver.events) >= 8, 20, "8 events")
    by_type: dict[str, dict[str, tuple[dict[str, str], bytes]]] = {REQUEST: {}, RESPONSE: {}}
    for headers, payload in receiver.events:
        by_type[headers["ce-type"]][headers["ce-id"]] = (headers, payload)
    assert set(by_type[REQUEST]) == set(by_type[RESPONSE])  # every request's response shares its ce-id
    assert {"req-v1", "req-bad", "req-grpc"} <= set(by_type[REQUEST])

    headers, payload = by_type[REQUEST]["req-v1"]
    assert payload == body and headers["content-type"] == "application/json"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"] == "shipyard://default/iris/predictor"
    assert headers["ce-inferenceservicename"] == "iris" and headers["ce-namespace"] == "default"
    assert headers["ce-component"] == "predictor" and headers["ce-endpoint"] == "iris-predictor-00001"
    assert headers["ce-time"].endswith("Z")
    headers, payload = by_type[RESPONSE]["req-v1"]
    assert payload == v1.content and headers["ce-statuscode"] == "200"
    assert headers["content-type"].startswith("application/json")

    (v2_id,) = set(by_type[REQUEST]) - {"req-v1", "req-bad", "req-grpc"}  # a new UUID
    assert len(v2_id) == 36 and json.loads(by_type[RESPONSE][v2_id][1]) == v2.json()

    assert by_type[RESPONSE]["req-bad"][0]["ce-statuscode"] == str(bad.status_code)  # failures logged too

    headers, payload = by_type[REQUEST]["req-grpc"]
    assert headers["content-type"] == "application/grpc+proto" and payload == request.SerializeToString()
    headers, payload = by_type[RESPONSE]["req-grpc"]
    assert pb.ModelInferResponse.FromString(payload) == answer and headers["ce-statuscode"] == "0"


def test_a_receiver_that_was_down_gets_every_event_once_in_order(setup):
    plane, receiver, _ = setup
    url = f"{plane.gateway}/v1/models/iris:predict"
    receiver.stop()
    ids = [f"outage-{i}" for i in range(25)]
    with httpx.Client(timeout=30) as client:
        for request_id in ids:  # inference goes on while the sink is down
            response = client.post(url, json=PREDICT, headers={"x-request-id": request_id})
            assert response.status_code == 200

    def backlog() -> dict[str, float]:
        metrics = httpx.get(f"{plane.gateway}/metrics", timeout=10).text
        values = {}
        for line in metrics.splitlines():
            if line.startswith("shipyard_payload_logger_") and 'isvc="iris"' in line:
                values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return values

    seen = wait_for(lambda: (v := backlog()).get("shipyard_payload_logger_failed_attempts_total", 0) >= 1 and v, 20,
                    "a failed delivery")
    assert seen["shipyard_payload_logger_backlog_events"] >= 1
    time.sleep(0.5)
    receiver.start()  # back on the same port
    wait_for(lambda: len(_events_for(receiver, set(ids))) >= 2 * len(ids), 30, "every event after the outage")
    time.sleep(0.5)  # nothing more may come
    got = [(h["ce-id"], h["ce-type"]) for h, _ in _events_for(receiver, set(ids))]
    assert got == [(i, t) for i in ids for t in (REQUEST, RESPONSE)]  # once each, in order
    final = backlog()
    assert final["shipyard_payload_logger_backlog_events"] == 0
    assert final["shipyard_payload_logger_dropped_total"] == 0


def test_jsonl_sink_responses_only_and_failures_left_out(setup):
    plane, _, jsonl = setup
    ok = httpx.post(f"{plane.gateway}/v1/models/quiet:predict", json=PREDICT, headers={"x-request-id": "q-ok"},
                    timeout=30)
    assert ok.status_code == 200
    bad = httpx.post(f"{plane.gateway}/v1/models/quiet:predict", content=b"{not json",
                     headers={"x-request-id": "q-bad", "content-type": "application/json"}, timeout=30)
    assert bad.status_code >= 400
    ok2 = httpx.post(f"{plane.gateway}/v1/models/quiet:predict", json=PREDICT, headers={"x-request-id": "q-ok2"},
                     timeout=30)
    assert ok2.status_code == 200

    def lines() -> list[dict]:
        try:
            text = Path(jsonl).read_text()
            return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]  # whole lines
        except FileNotFoundError:
            return []

    wait_for(lambda: len(lines()) >= 2, 20, "two JSONL lines")
    time.sleep(0.3)
    got = lines()
    assert [(e["id"], e["type"]) for e in got] == [("q-ok", RESPONSE), ("q-ok2", RESPONSE)]
    assert got[0]["data"] == ok.json() and got[0]["statuscode"] == "200"
    assert got[0]["inferenceservicename"] == "quiet" and got[0]["specversion"] == "1.0"
