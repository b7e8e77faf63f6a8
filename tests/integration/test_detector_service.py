"""A detector folder served as a service with real processes: ``shipyard serve FOLDER`` takes CloudEvents,
raises a drift alert on shifted traffic only, scores V2 infer requests, and keeps its window and
counters across a restart; through ``shipyard up``, a predictor's payload logger reaches a detector
applied as an InferenceService (``modelFormat: detector``) by its host name, through the gateway."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from alertsink import AlertSink
from planeproc import PlaneProcess, isvc, kill_replicas, wait_for
from serverproc import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    alerts = AlertSink()
    yield alerts
    alerts.server.shutdown()


def sample(seed: int, n: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x1": rng.normal(0, 1, n) + shift, "x2": rng.normal(5, 2, n),
                         "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])})


def drift_folder(root: Path, **config: Any) -> Path:
    folder = root / "drift-detector"
    folder.mkdir()
    sample(0, 1000).assign(label=0).to_csv(folder / "reference.csv", index=False)
    (folder / "detector.yaml").write_text(yaml.safe_dump({
        "detector": "drift", "reference": "reference.csv", "label_column": "label", "window": 100, "min_rows": 50,
        **config}))
    return folder


def post_event(client: httpx.Client, url: str, kind: str, payload: dict[str, Any], event_id: str) -> httpx.Response:
    headers = {"ce-specversion": "1.0", "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-id": event_id,
               "ce-source": "http://localhost:9081/", "ce-inferenceservicename": "sklearn-iris",
               "ce-namespace": "default", "content-type": "application/json"}
    return client.post(url, content=json.dumps(payload), headers=headers)


def v1(frame: pd.DataFrame) -> dict[str, Any]:
    return {"instances": frame.astype(object).values.tolist()}


def v2(frame: pd.DataFrame) -> dict[str, Any]:
    return {"inputs": [
        {"name": "x1", "shape": [len(frame)], "datatype": "FP64", "data": frame["x1"].tolist()},
        {"name": "x2", "shape": [len(frame)], "datatype": "FP64", "data": frame["x2"].tolist()},
        {"name": "color", "shape": [len(frame)], "datatype": "BYTES", "data": frame["color"].tolist()}]}


def metric(text: str, pattern: str) -> float | None:
    match = re.search(re.escape(pattern) + r" (\S+)", text)
    return float(match.group(1)) if match else None


def overall_drift(answer: dict[str, Any]) -> float | None:
    return next((s["value"] for s in answer["scores"] if s["metric"] == "drift" and s["labels"]["feature"] == "_all"),
                None)


def test_shipyard_serve_a_detector_folder(tmp_path: Path, sink: AlertSink) -> None:
    folder = drift_folder(tmp_path, alert_url=sink.url)
    # the arguments the control plane passes a replica: gRPC, workers and batching do not apply, no error
    server = ServerProcess(folder, "--name", "drift", "--max-batch-size", "8", "--max-latency-ms", "2",
                           env={"SHIPYARD_HOME": str(tmp_path / "home")})
    try:
        url = server.wait_ready()
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{url}/v2/health/live").json() == {"live": True}
            assert client.get(f"{url}/v2/models/drift/ready").json() == {"name": "drift", "ready": True}
            assert [i["name"] for i in client.get(f"{url}/v2/models/drift").json()["inputs"]] == ["x1", "x2", "color"]
            # unshifted traffic as CloudEvents: scores, no alert
            for i in range(4):
                answer = post_event(client, f"{url}/", "request", v1(sample(1 + i, 25)), f"calm-{i}")
                assert answer.status_code == 200, answer.text
                assert answer.json()["alerts"] == []
            assert overall_drift(answer.json()) == 0.0
            time.sleep(0.5)
            assert sink.events == []
            # V2 infer scores a batch on its own: the unshifted one passes, the shifted one drifts
            calm = client.post(f"{url}/v2/models/drift/infer", json=v2(sample(7, 200)))
            assert calm.status_code == 200, calm.text
            outputs = {o["name"]: o["data"] for o in calm.json()["outputs"]}
            assert outputs["is_drift"] == [False] and outputs["feature"] == ["x1", "x2", "color"]
            shifted = client.post(f"{url}/v2/models/drift/infer", json=v2(sample(8, 200, shift=1.5)))
            outputs = {o["name"]: o["data"] for o in shifted.json()["outputs"]}
            assert outputs["is_drift"] == [True] and outputs["drift"] == [True, False, False]
            assert outputs["p_value_corrected"][0] < 0.05
            # shifted traffic as CloudEvents, on a logger URL's path: one alert event
            answer = post_event(client, f"{url}/events/drift", "request", v2(sample(9, 100, shift=1.5)), "shifted-1")
            assert [a["statistic"] for a in answer.json()["alerts"]] == ["drift"]
            wait_for(lambda: sink.events, 10, "the alert event")
            headers, alert = sink.events[0]
            assert headers["ce-type"] == "org.shipyard.monitor.alert" and alert["details"]["features"] == ["x1"]
            metrics = client.get(f"{url}/metrics").text
            assert metric(metrics, 'shipyard_detector_rows_total{detector="drift"}') == 200.0
            assert metric(metrics, 'shipyard_detector_score{detector="drift",feature="_all",statistic="drift"}') == 1.0
        assert len(sink.events) == 1
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "drift detector 'drift' listening on http://" in server.output


def test_a_restart_keeps_the_window_and_counters(tmp_path: Path) -> None:
    folder = drift_folder(tmp_path, state={"path": "state/drift.json", "interval_s": 0.2})
    state = folder / "state" / "drift.json"
    env = {"SHIPYARD_HOME": str(tmp_path / "home")}
    first = ServerProcess(folder, env=env)
    try:
        url = first.wait_ready()
        with httpx.Client(timeout=30) as client:
            for i in range(3):
                assert post_event(client, url, "request", v1(sample(10 + i, 20, shift=2.0)), f"a-{i}").status_code == 200
            assert client.get(f"{url}/metrics").status_code == 200
    finally:
        assert first.stop() == 0, first.output
    saved = json.loads(state.read_text())
    assert saved["receiver"]["rows_seen"] == 60 and len(saved["detector"]["window"]["rows"]) == 60

    second = ServerProcess(folder, env=env)
    try:
        url = second.wait_ready()
        with httpx.Client(timeout=30) as client:
            metrics = client.get(f"{url}/metrics").text
            assert metric(metrics, 'shipyard_detector_rows_total{detector="drift"}') == 60.0
            assert metric(metrics, 'shipyard_detector_alerts_total{detector="drift",statistic="drift"}') == 1.0
            assert metric(metrics, 'shipyard_detector_score{detector="drift",feature="_all",statistic="drift"}') == 1.0
            # 5 rows score at once: the window kept its 60 (a fresh one would wait for min_rows 50)
            answer = post_event(client, url, "request", v1(sample(20, 5, shift=2.0)), "b-0").json()
            assert overall_drift(answer) == 1.0 and answer["alerts"] == []  # the alert in progress does not repeat
            # the periodic save has it without a graceful stop
            wait_for(lambda: json.loads(state.read_text())["receiver"]["rows_seen"] == 65, 10, "the periodic save")
    finally:
        second.stop(signum=9)
    third = ServerProcess(folder, env=env)
    try:
        url = third.wait_ready()
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert metric(metrics, 'shipyard_detector_rows_total{detector="drift"}') == 65.0
    finally:
        assert third.stop() == 0, third.output


def test_a_bad_detector_folder_fails_with_the_key(tmp_path: Path) -> None:
    folder = drift_folder(tmp_path, alpha=3)
    server = ServerProcess(folder)
    assert server.wait_exit(60) == 1
    assert "detector.yaml: alpha = 3" in server.output


def _detector_services_wired() -> bool:
    """Does the control plane take ``modelFormat: detector`` for a predictor, and does its gateway
    deliver a logger URL that names a service by host (``Gateway.loggers.route``)?"""
    from shipyard.control import model_source
    from shipyard.control.gateway import Gateway

    formats = getattr(model_source, "COMPONENT_FORMATS", {}).get("predictor", model_source.MODEL_FORMATS)
    return "detector" in formats and Gateway(lambda: {}).loggers.route is not None


@pytest.mark.skipif(not _detector_services_wired(),
                    reason="needs modelFormat 'detector' (control/model_source.py) and the gateway's logger route "
                    "(control/gateway/server.py sets loggers.route; rest.py forwards ce-* headers)")
def test_logger_to_detector_service_through_the_gateway(tmp_path: Path, artifacts, iris) -> None:
    features, _ = iris
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(artifacts["sk_logreg"], model / "model.joblib")
    detector = tmp_path / "iris-drift"
    detector.mkdir()
    np.save(detector / "reference.npy", features.astype(np.float64))
    (detector / "detector.yaml").write_text(yaml.safe_dump({"detector": "drift", "reference": "reference.npy",
                                                            "window": 60, "min_rows": 30}))
    plane = PlaneProcess(tmp_path / "home").wait_up()
    try:
        plane.apply(isvc("iris", model, model={"protocolVersion": "v2"},
                         logger={"mode": "all", "url": "http://drift.default.example.com/"}),
                    isvc("drift", detector, fmt="detector"))
        plane.wait_ready("drift", timeout=120)
        plane.wait_ready("iris", timeout=120)
        gateway = plane.gateway
        host = {"host": "drift.default.example.com"}

        def infer(rows: np.ndarray) -> None:
            body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                                "data": rows.ravel().tolist()}]}
            answer = httpx.post(f"{gateway}/v2/models/iris/infer", json=body, timeout=30,
                                headers={"x-request-id": str(uuid.uuid4())})
            assert answer.status_code == 200, answer.text

        def detector_metric(pattern: str) -> float | None:
            answer = httpx.get(f"{gateway}/metrics", headers=host, timeout=30)
            return metric(answer.text, pattern) if answer.status_code == 200 else None

        rng = np.random.default_rng(0)
        for _ in range(4):  # unshifted: rows of the training data
            infer(features[rng.choice(len(features), 10)])
        rows = 'shipyard_detector_rows_total{detector="drift"}'
        wait_for(lambda: detector_metric(rows) == 40.0, 60, f"40 rows at the detector\n{plane.output}")
        drift = 'shipyard_detector_score{detector="drift",feature="_all",statistic="drift"}'
        assert detector_metric(drift) == 0.0
        for _ in range(6):  # shifted petals
            infer(features[rng.choice(len(features), 10)] + np.array([0.0, 0.0, 3.0, 1.5]))
        wait_for(lambda: detector_metric(rows) == 100.0, 60, "100 rows at the detector")
        assert detector_metric(drift) == 1.0
        assert detector_metric('shipyard_detector_alerts_total{detector="drift",statistic="drift"}') == 1.0
        # the detector answers the inference protocol through the gateway too
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [50, 4],
                            "data": (features[:50] + 3.0).ravel().tolist()}]}
        scored = httpx.post(f"{gateway}/v2/models/drift/infer", json=body, timeout=30)
        assert scored.status_code == 200, scored.text
        assert {o["name"]: o["data"] for o in scored.json()["outputs"]}["is_drift"] == [True]
    finally:
        plane.stop()
        kill_replicas(str(tmp_path))
