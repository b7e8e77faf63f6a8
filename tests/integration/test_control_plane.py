"""``shipyard up`` as a real process: apply an InferenceService, serve it, survive killed replicas and a
killed control plane, delete without leftovers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from planeproc import UP, PlaneProcess, isvc, kill_replicas, replica_pids, wait_for

pytestmark = pytest.mark.integration

ROW = [6.8, 2.8, 4.8, 1.4]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}


@pytest.fixture
def model_dir(tmp_path: Path, artifacts) -> Path:
    """A KServe-style model folder (model.joblib inside) unique to the test, so pgrep finds only its replicas."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
    yield folder
    kill_replicas(str(folder))


@pytest.fixture
def planes(tmp_path: Path):
    """Factory of ``shipyard up`` processes on one home; all are stopped after the test."""
    started: list[PlaneProcess] = []

    def start(*args: str) -> PlaneProcess:
        plane = PlaneProcess(tmp_path / "home", *args)
        started.append(plane)
        return plane.wait_up()

    yield start
    for plane in started:
        plane.stop()


def _replica(described: dict) -> dict:
    [replica] = described["replicas"]
    return replica


def test_applied_isvc_serves_a_second_plane_refuses_and_a_clean_stop_stops_replicas(planes, model_dir, tmp_path):
    plane = planes()
    result = plane.apply(isvc("sklearn-iris", model_dir, model={"protocolVersion": "v2"}, timeout=30))
    assert result["results"][0]["action"] == "created"
    described = plane.wait_ready("sklearn-iris")

    predictor = described["status"]["components"]["predictor"]
    assert predictor["latestReadyRevision"] == predictor["latestRolledoutRevision"] == "sklearn-iris-predictor-00001"
    assert predictor["traffic"] == [{"revisionName": "sklearn-iris-predictor-00001", "percent": 100,
                                     "latestRevision": True, "tag": "latest"}]
    assert described["status"]["url"] == "http://sklearn-iris.default.example.com"
    replica = _replica(described)
    assert replica["state"] == "ready" and replica_pids(str(model_dir)) == [replica["pid"]]
    log_path = Path(replica["log_path"])
    assert log_path == tmp_path / "home" / "logs" / "default" / "sklearn-iris" / "sklearn-iris-predictor-00001-0.log"
    assert "listening on" in log_path.read_text()

    direct = httpx.post(f"{replica['http_url']}/v2/models/sklearn-iris/infer", json=V2_BODY, timeout=10)
    through = httpx.post(f"{plane.gateway}/v2/models/sklearn-iris/infer", json=V2_BODY, timeout=10)
    assert direct.status_code == through.status_code == 200, through.text
    assert direct.json()["outputs"][0]["data"] == through.json()["outputs"][0]["data"] == [1]
    v1 = httpx.post(f"{plane.gateway}/v1/models/sklearn-iris:predict", json={"instances": [ROW]}, timeout=10)
    assert v1.json() == {"predictions": [1]}

    table = described["routes"]
    assert (table["protocol"], table["timeout_s"]) == ("v2", 30.0) and table["backends"][0]["replicas"] == [
        {"http": replica["http_url"], "grpc": replica["grpc_address"]}]

    second = subprocess.run([*UP, "--api-port", "0", "--http-port", "0", "--grpc-port", "0"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SHIPYARD_HOME": str(tmp_path / "home")})
    assert second.returncode == 1
    assert "a control plane is already running" in second.stderr and str(plane.process.pid) in second.stderr

    assert plane.stop(signal.SIGINT) == 0  # Ctrl+C: the replicas stop with the plane
    assert replica_pids(str(model_dir)) == []
    assert not (tmp_path / "home" / "plane.json").exists()
    assert "stopping the control plane" in plane.output


def test_killed_replica_is_restarted_and_the_status_says_so(planes, model_dir):
    plane = planes()
    plane.apply(isvc("iris", model_dir))
    first = _replica(plane.wait_ready("iris"))
    os.kill(first["pid"], signal.SIGKILL)

    def says_restarting() -> str | None:
        message = (plane.condition("iris", "PredictorReady") or {}).get("message", "")
        return message if "restarting in" in message else None

    message = wait_for(says_restarting, 30, "a status saying the replica restarts")
    assert message.startswith("replica 0 of iris-predictor-00001 was killed by SIGKILL; restarting in 1s")
    described = plane.wait_ready("iris")
    second = _replica(described)
    assert second["pid"] != first["pid"] and second["restarts"] == 1
    assert "killed by SIGKILL" in second["last_exit"]
    reasons = [(e["reason"], e["message"]) for e in described["events"]]
    assert ("ReplicaFailed", "replica 0 of iris-predictor-00001 was killed by SIGKILL; restarting in 1s") in reasons
    assert replica_pids(str(model_dir)) == [second["pid"]]
    assert httpx.post(f"{plane.gateway}/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200


def test_killed_plane_adopts_or_restarts_replicas_and_delete_leaves_nothing(planes, model_dir):
    plane = planes()
    plane.apply(isvc("iris", model_dir))
    replica = _replica(plane.wait_ready("iris"))
    assert plane.stop(signal.SIGKILL) == -signal.SIGKILL
    assert replica_pids(str(model_dir)) == [replica["pid"]]  # the replica outlives its plane

    again = planes()
    described = again.wait_ready("iris")
    assert _replica(described)["pid"] == replica["pid"]  # adopted, not restarted
    assert any(e["reason"] == "ReplicaAdopted" for e in described["events"])
    answer = httpx.post(f"{again.gateway}/v1/models/iris:predict", json={"instances": [ROW]}, timeout=10)
    assert answer.json() == {"predictions": [1]}

    again.stop(signal.SIGKILL)  # killed again, and its replica dies while no plane runs
    os.kill(replica["pid"], signal.SIGKILL)
    third = planes()
    described = third.wait_ready("iris")
    assert _replica(described)["pid"] != replica["pid"]
    lost = [e["message"] for e in described["events"] if e["reason"] == "ReplicaLost"]
    assert lost == [f"replica 0 of iris-predictor-00001 (pid {replica['pid']}) was gone after a control-plane "
                    "restart; starting a new one"]

    assert httpx.delete(f"{third.api}/apis/inferenceservices/default/iris").status_code == 202
    wait_for(lambda: third.describe("iris") is None, 30, "the service to be removed")
    assert replica_pids(str(model_dir)) == []
    assert httpx.post(f"{third.gateway}/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 404


def test_min_replicas_scale_up_and_down_within_one_revision(planes, model_dir):
    plane = planes()
    plane.apply(isvc("iris", model_dir, minReplicas=2))
    plane.wait_ready("iris")

    def both_routed() -> dict | None:
        described = plane.describe("iris")
        return described if len(described["routes"]["backends"][0]["replicas"]) == 2 else None

    described = wait_for(both_routed, 60, "two routed replicas")
    assert sorted(r["index"] for r in described["replicas"]) == [0, 1]
    assert len(replica_pids(str(model_dir))) == 2

    plane.apply(isvc("iris", model_dir, minReplicas=1))
    wait_for(lambda: [r["index"] for r in plane.describe("iris")["replicas"]] == [0], 30, "the second replica to stop")
    described = plane.describe("iris")
    assert len(replica_pids(str(model_dir))) == 1
    assert [r["name"] for r in described["revisions"]] == ["iris-predictor-00001"]  # scaling is not a new revision
    assert len(described["routes"]["backends"][0]["replicas"]) == 1
    assert httpx.post(f"{plane.gateway}/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200


def test_a_model_that_cannot_be_served_is_reported_by_field(planes, tmp_path):
    plane = planes()
    empty = tmp_path / "empty"
    empty.mkdir()
    plane.apply(isvc("broken", empty))

    def failing() -> str | None:
        message = (plane.condition("broken") or {}).get("message", "")
        return message if "storageUri" in message else None

    message = wait_for(failing, 30, "a status naming storageUri")
    assert f"spec.predictor.model.storageUri: {empty} holds no model" in message and "restarting in" in message
    assert replica_pids(str(empty)) == []


def test_detach_returns_once_the_plane_answers(tmp_path, model_dir):
    home = tmp_path / "home"
    started = subprocess.run([*UP, "--detach", "--api-port", "0", "--http-port", "0", "--grpc-port", "0",
                              "--home", str(home)], capture_output=True, text=True, timeout=90)
    info = json.loads((home / "plane.json").read_text()) if (home / "plane.json").exists() else {}
    pid = info.get("pid")
    try:
        assert started.returncode == 0, started.stderr
        assert "running in the background" in started.stdout and info["api_url"] in started.stdout
        assert httpx.get(f"{info['api_url']}/healthz").json()["ok"] is True
        assert (home / "logs" / "plane.log").is_file()
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not (home / "plane.json").exists(), 30, "the detached plane to stop")


def test_up_rejects_bad_flags(tmp_path):
    result = subprocess.run([*UP, "--api-port", "70000"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SHIPYARD_HOME": str(tmp_path)})
    assert result.returncode == 2 and "--api-port must be between 0 and 65535, got 70000" in result.stderr


def test_up_says_which_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*UP, "--api-port", str(port), "--http-port", "0", "--grpc-port", "0"],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "SHIPYARD_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert f"cannot listen for the API on 127.0.0.1:{port}" in result.stderr and "--api-port" in result.stderr
    assert not (tmp_path / "plane.json").exists()
