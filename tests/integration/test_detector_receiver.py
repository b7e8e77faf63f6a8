"""A real detector receiver process fed CloudEvents over HTTP with KServe's logger headers."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from alertsink import AlertSink
from serverproc import ServerProcess

pytestmark = pytest.mark.integration


class Receiver(ServerProcess):
    """``shipyard monitor serve --port 0 ARGS`` as a real process (serverproc's output pump)."""

    def __init__(self, *args: str) -> None:
        super().__init__("--port", "0", *args, subcommand=("monitor", "serve"), env={"PYTHONUNBUFFERED": "1"})


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    alerts = AlertSink()
    yield alerts
    alerts.server.shutdown()


def sample(seed: int, n: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x1": rng.normal(0, 1, n) + shift,
        "x2": rng.normal(5, 2, n),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
    })


def kserve_headers(kind: str, event_id: str) -> dict[str, str]:
    """The headers KServe's logger agent sends (pkg/logger)."""
    return {
        "ce-specversion": "1.0",
        "ce-type": f"org.kubeflow.serving.inference.{kind}",
        "ce-id": event_id,
        "ce-source": "http://localhost:9081/",
        "ce-time": "2026-01-01T00:00:00Z",
        "ce-inferenceservicename": "sklearn-iris",
        "ce-namespace": "default",
        "ce-component": "predictor",
        "ce-endpoint": "default",
        "content-type": "application/json",
    }


def post(client: httpx.Client, url: str, kind: str, payload: dict, event_id: str | None = None) -> httpx.Response:
    return client.post(url, content=json.dumps(payload), headers=kserve_headers(kind, event_id or str(uuid.uuid4())))


def v1(frame: pd.DataFrame) -> dict:
    return {"instances": frame.astype(object).values.tolist()}


def v2(frame: pd.DataFrame) -> dict:
    return {"inputs": [
        {"name": "x1", "shape": [len(frame)], "datatype": "FP64", "data": frame["x1"].tolist()},
        {"name": "x2", "shape": [len(frame)], "datatype": "FP64", "data": frame["x2"].tolist()},
        {"name": "color", "shape": [len(frame)], "datatype": "BYTES", "data": frame["color"].tolist()},
    ]}


def test_drift_alert_on_shifted_traffic_only(tmp_path: Path, sink: AlertSink) -> None:
    reference = tmp_path / "reference.csv"
    sample(0, 1000).assign(label=0).to_csv(reference, index=False)
    receiver = Receiver("--detector", "drift", "--reference", str(reference), "--label-column", "label",
                        "--window", "100", "--alert-url", sink.url)
    try:
        url = receiver.wait_listening()
        with httpx.Client(timeout=10) as client:
            health = client.get(f"{url}/healthz").json()
            assert health["columns"] == ["x1", "x2", "color"] and health["detector"] == "drift"
            # unshifted traffic, V1 rows in 4 requests of 25, each with its logged response
            unshifted = sample(1, 100)
            for i in range(4):
                event_id = str(uuid.uuid4())
                answer = post(client, url, "request", v1(unshifted.iloc[i * 25:(i + 1) * 25]), event_id)
                assert answer.status_code == 200, answer.text
                assert answer.json()["alerts"] == []
                assert post(client, url, "response", {"predictions": [0] * 25}, event_id).status_code == 200
            drift = [s for s in answer.json()["scores"] if s["metric"] == "drift" and s["labels"]["feature"] == "_all"]
            assert drift[0]["value"] == 0.0
            time.sleep(0.5)
            assert sink.events == []
            # a malformed event: 400 naming the problem, and the server keeps serving
            bad = client.post(url, content=b'{"instances": [[1, 2]]}', headers=kserve_headers("request", "bad-1"))
            assert bad.status_code == 400 and "3 features" in bad.json()["error"]
            bad = client.post(url, content=b"not json", headers=kserve_headers("request", "bad-2"))
            assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
            no_type = {k: v for k, v in kserve_headers("request", "bad-3").items() if k != "ce-type"}
            bad = client.post(url, content=json.dumps(v1(unshifted)), headers=no_type)
            assert bad.status_code == 400 and "ce-type" in bad.json()["error"]
            assert client.get(f"{url}/healthz").status_code == 200
            # shifted traffic as one V2 request: drift on x1, one alert event
            answer = post(client, url, "request", v2(sample(2, 100, shift=1.5)), "shifted-1")
            assert answer.status_code == 200, answer.text
            assert [a["statistic"] for a in answer.json()["alerts"]] == ["drift"]
            events = sink.wait(1)
            assert len(events) == 1
            headers, alert = events[0]
            assert headers["ce-type"] == "org.shipyard.monitor.alert" and headers["ce-specversion"] == "1.0"
            assert headers["ce-source"] == "shipyard/monitor/drift" and headers["ce-id"]
            assert alert["detector"] == "drift" and alert["details"]["features"] == ["x1"]
            assert alert["event_id"] == "shifted-1" and alert["threshold"] == 0.05
            # still drifted: no second alert (edge-triggered)
            assert post(client, url, "request", v1(sample(3, 10, shift=1.5)), "shifted-2").json()["alerts"] == []
            metrics = client.get(f"{url}/metrics").text
            assert 'shipyard_detector_score{detector="drift",feature="_all",statistic="drift"} 1.0' in metrics
            p = re.search(r'shipyard_detector_score\{detector="drift",feature="x1",statistic="p_value_corrected"\} (\S+)',
                          metrics)
            assert p and float(p.group(1)) < 0.05
            assert re.search(r'shipyard_detector_score\{detector="drift",feature="color",statistic="chi2_statistic"\}',
                             metrics)
            assert 'shipyard_detector_alerts_total{detector="drift",statistic="drift"} 1.0' in metrics
            assert 'shipyard_detector_rows_total{detector="drift"} 210.0' in metrics
            assert 'shipyard_detector_events_total{detector="drift",outcome="bad",type="request"} 2.0' in metrics
            assert 'shipyard_detector_events_total{detector="drift",outcome="bad",type="unknown"} 1.0' in metrics
        time.sleep(0.3)
        assert len(sink.events) == 1
    finally:
        code = receiver.stop()
    output = receiver.output
    assert "ALERT detector=drift statistic=drift" in output
    assert code == 0, output


def test_outlier_receiver_flags_rows(tmp_path: Path) -> None:
    reference = tmp_path / "reference.npy"
    np.save(reference, np.random.default_rng(0).normal(size=(500, 3)))
    receiver = Receiver("--detector", "outlier", "--method", "mahalanobis", "--reference", str(reference),
                        "--window", "50")
    try:
        url = receiver.wait_listening()
        rows = np.random.default_rng(1).normal(size=(50, 3))
        rows[:10] += 10
        payload = {"inputs": [{"name": "input-0", "shape": [50, 3], "datatype": "FP32", "data": rows.ravel().tolist()}]}
        with httpx.Client(timeout=10) as client:
            body = post(client, url, "request", payload).json()
            assert sum(i["alert"] for i in body["instances"]) >= 10
            assert [a["statistic"] for a in body["alerts"]] == ["outlier_rate"]
            metrics = client.get(f"{url}/metrics").text
            assert 'shipyard_detector_instances_flagged_total{detector="outlier"}' in metrics
            assert re.search(r'shipyard_detector_score\{detector="outlier",feature="_all",statistic="outlier_rate"\} 0\.2',
                             metrics)
    finally:
        receiver.stop()


def test_bad_options_fail_with_a_message(tmp_path: Path) -> None:
    reference = tmp_path / "reference.csv"
    sample(0, 20).to_csv(reference, index=False)
    receiver = Receiver("--detector", "bias", "--reference", str(reference))
    assert receiver.wait_exit(30) == 1
    assert "--protected" in receiver.output


def test_bias_pairs_by_ce_id_and_takes_feedback(tmp_path: Path, sink: AlertSink) -> None:
    reference = tmp_path / "reference.parquet"
    pd.DataFrame({"age": [30.0, 40.0] * 10, "sex": ["f", "m"] * 10, "label": [0, 1] * 10}).to_parquet(reference)
    receiver = Receiver("--detector", "bias", "--reference", str(reference), "--label-column", "label",
                        "--protected", "sex", "--min-rows", "4", "--alert-url", sink.url)
    try:
        url = receiver.wait_listening()
        with httpx.Client(timeout=10) as client:
            # every f predicted positive, half the m: parity difference 0.5
            for i in range(4):
                rows = {"instances": [{"age": 30 + i, "sex": "f"}, {"age": 40 + i, "sex": "m"}]}
                assert post(client, url, "request", rows, f"req-{i}").json()["pending"] is True
                answer = post(client, url, "response", {"predictions": [1, i % 2]}, f"req-{i}").json()
                assert answer["rows"] == 2
            assert [a["statistic"] for a in answer["alerts"]] == ["demographic_parity_difference"]
            events = sink.wait(1)
            assert events[0][1]["details"]["groups"] == {"f": 1.0, "m": 0.5}
            # every row truly positive: true positive rates f 1.0, m 0.5
            feedback = [{"id": f"req-{i}", "label": [1, 1]} for i in range(4)]
            answer = client.post(f"{url}/feedback", json=feedback)
            assert answer.status_code == 200, answer.text
            assert [a["statistic"] for a in answer.json()["alerts"]] == ["equal_opportunity_difference"]
            assert client.post(f"{url}/feedback", json={"id": "unknown", "label": 1}).status_code == 404
            metrics = client.get(f"{url}/metrics").text
            assert 'shipyard_detector_group_score{detector="bias",feature="sex",group="m",statistic="true_positive_rate"} 0.5' \
                in metrics
            assert 'statistic="equal_opportunity_difference"} 0.5' in metrics
        assert len(sink.wait(2)) == 2
    finally:
        receiver.stop()
