"""Rollouts through ``shipyard up`` with real replicas and real traffic: a canary split measured over
1,000 requests, tags, promote and rollback under continuous load without a lost request, and the
automatic rollback of a failing canary."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from planeproc import PlaneProcess, isvc, kill_replicas, wait_for

pytestmark = pytest.mark.integration

PREDICT = {"instances": [[6.8, 2.8, 4.8, 1.4]]}
V1, V2 = "iris-predictor-00001", "iris-predictor-00002"


class Load:
    """Requests in a loop from a background thread until stopped; every answer's status and revision kept."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json=self.body)
                    self.answers.append((response.status_code, response.headers.get("x-shipyard-revision")))
                except httpx.HTTPError as exc:
                    self.answers.append((0, type(exc).__name__))

    def settle_on(self, revision: str, count: int = 20) -> None:
        """Wait until the last ``count`` answers all came from ``revision``."""
        wait_for(lambda: len(self.answers) >= count and {r for _, r in self.answers[-count:]} == {revision}, 30,
                 f"the gateway to send everything to {revision}")

    def stop(self) -> list[tuple[int, str | None]]:
        self._stop.set()
        self._thread.join(60)
        return self.answers


def _traffic(plane: PlaneProcess, name: str = "iris") -> dict[str, int]:
    described = plane.describe(name) or {}
    entries = ((described.get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic", [])
    return {entry["revisionName"]: entry["percent"] for entry in entries}


def _replica_revisions(plane: PlaneProcess, name: str = "iris") -> set[str]:
    return {replica["revision"] for replica in (plane.describe(name) or {}).get("replicas", [])}


@pytest.fixture
def plane(tmp_path: Path):
    started = PlaneProcess(tmp_path / "home").wait_up()
    yield started
    started.stop()
    kill_replicas(str(tmp_path))


def test_canary_split_tags_promote_and_rollback_lose_no_request(plane, tmp_path, artifacts):
    first, second = tmp_path / "v1", tmp_path / "v2"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
    url = f"{plane.gateway}/v1/models/iris:predict"
    plane.apply(isvc("iris", first))
    plane.wait_ready("iris")

    load = Load(url, PREDICT)  # a new revision as a 20% canary
    plane.apply(isvc("iris", second, canaryTrafficPercent=20))
    wait_for(lambda: _traffic(plane) == {V2: 20, V1: 80}, 60, "the 20% canary")
    answers = load.stop()
    assert {status for status, _ in answers} == {200}, Counter(answers)

    served = Counter()
    with httpx.Client(timeout=10) as client:
        for _ in range(1000):
            response = client.post(url, json=PREDICT)
            assert response.status_code == 200
            served[response.headers["x-shipyard-revision"]] += 1
    assert served.keys() == {V1, V2} and 170 <= served[V2] <= 230, served
    latest = httpx.post(url, json=PREDICT, headers={"x-shipyard-revision": "latest"})
    previous = httpx.post(url, json=PREDICT, headers={"x-shipyard-revision": "prev"})
    by_host = httpx.post(f"{plane.gateway}/v1/models/iris:predict", json=PREDICT,
                         headers={"Host": "latest-iris.default.example.com"})
    assert (latest.headers["x-shipyard-revision"], previous.headers["x-shipyard-revision"],
            by_host.headers["x-shipyard-revision"]) == (V2, V1, V2)

    load = Load(url, PREDICT)  # promote: all traffic to the canary, the old revision drained and stopped
    assert plane.rollout("iris", "promote").status_code == 200
    wait_for(lambda: _traffic(plane) == {V2: 100} and _replica_revisions(plane) == {V2}, 60, "the promotion")
    load.settle_on(V2)
    answers = load.stop()
    assert {status for status, _ in answers} == {200}, Counter(answers)
    predictor = plane.describe("iris")["status"]["components"]["predictor"]
    assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == (V2, V1)
    assert "canaryTrafficPercent" not in plane.describe("iris")["spec"]["predictor"]

    load = Load(url, PREDICT)  # roll back: the old revision starts again and takes all traffic once ready
    rolled_back = plane.rollout("iris", "rollback")
    assert rolled_back.status_code == 200 and rolled_back.json()["pinned"] == V1
    wait_for(lambda: _traffic(plane) == {V1: 100, V2: 0}, 60, "the rollback")
    load.settle_on(V1)
    answers = load.stop()
    assert {status for status, _ in answers} == {200}, Counter(answers)
    assert answers[0][1] == V2  # the load ran across the switch
    described = plane.describe("iris")
    assert described["metadata"]["annotations"]["serving.shipyard.io/pinned-revision"] == V1
    assert described["status"]["components"]["predictor"]["latestRolledoutRevision"] == V1
    shifts = [e["message"] for e in described["events"] if e["reason"] == "TrafficShifted"]
    assert shifts[-1] == f"traffic: {V1} 100% (prev), {V2} 0% (latest)"

    missing = plane.rollout("iris", "pin", "7")
    assert missing.status_code == 404 and f"has no revision '7'; it has: {V1}, {V2}" in missing.json()["error"]


def test_failing_canary_is_rolled_back_automatically(plane, tmp_path, artifacts):
    from conftest import CUSTOM_MODELS, write_custom_model

    good = write_custom_model(tmp_path / "good", CUSTOM_MODELS["asyncecho"])
    bad = write_custom_model(tmp_path / "bad", CUSTOM_MODELS["broken"])
    annotations = {"serving.shipyard.io/rollback-max-error-rate": "0.2",
                   "serving.shipyard.io/rollback-min-requests": "20"}
    plane.apply(isvc("echo", good, fmt="custom", annotations=annotations))
    plane.wait_ready("echo")
    plane.apply(isvc("echo", bad, fmt="custom", annotations=annotations, canaryTrafficPercent=50))
    wait_for(lambda: _traffic(plane, "echo") == {"echo-predictor-00002": 50, "echo-predictor-00001": 50}, 60,
             "the 50% canary")

    body = {"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    url = f"{plane.gateway}/v2/models/echo/infer"
    statuses = Counter(httpx.post(url, json=body, timeout=10).status_code for _ in range(60))
    assert statuses[500] >= 20, statuses  # the canary fails its share
    wait_for(lambda: _traffic(plane, "echo") == {"echo-predictor-00001": 100, "echo-predictor-00002": 0}, 30,
             "the automatic rollback")
    events = [e for e in plane.describe("echo")["events"] if e["reason"] == "CanaryRolledBack"]
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert events[0]["message"].startswith("canary echo-predictor-00002 rolled back to echo-predictor-00001: error rate")
    wait_for(lambda: httpx.post(url, json=body, timeout=10).status_code == 200, 10, "answers from the good revision")
    assert {httpx.post(url, json=body, timeout=10).status_code for _ in range(20)} == {200}


def test_blue_green_deploys_dark_with_a_shadow_then_promotes(plane, tmp_path, artifacts):
    blue, green = tmp_path / "blue", tmp_path / "green"
    for folder in (blue, green):
        folder.mkdir()
        shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
    url = f"{plane.gateway}/v1/models/iris:predict"
    plane.apply(isvc("iris", blue))
    plane.wait_ready("iris")
    plane.apply(isvc("iris", green, canaryTrafficPercent=0,
                     annotations={"serving.shipyard.io/shadow-revision": "latest"}))
    wait_for(lambda: _traffic(plane) == {V2: 0, V1: 100}, 60, "the dark deploy")

    routes = plane.describe("iris")["routes"]
    [green_replica] = [r for r in plane.describe("iris")["replicas"] if r["revision"] == V2]
    assert routes["shadow"] == {"revision": V2, "percent": 100, "replicas": [
        {"http": green_replica["http_url"], "grpc": green_replica["grpc_address"]}]}
    wait_for(lambda: {httpx.post(url, json=PREDICT).headers["x-shipyard-revision"] for _ in range(10)} == {V1}, 10,
             "live traffic on blue only")
    tested = httpx.post(url, json=PREDICT, headers={"x-shipyard-revision": "latest"})
    assert tested.status_code == 200 and tested.headers["x-shipyard-revision"] == V2

    def compared() -> dict | None:  # live requests were mirrored to green and its answers compared
        shadow = plane.describe("iris")["status"].get("shadow") or {}
        return shadow if shadow.get("mirrored", 0) >= 10 else None

    shadow = wait_for(compared, 30, "the shadow report in the status")  # 10 s was short on 2 busy cores
    assert shadow["revision"] == V2 and shadow["matched"] == shadow["mirrored"] and shadow["mismatched"] == 0

    load = Load(url, PREDICT)
    assert plane.rollout("iris", "promote").status_code == 200
    wait_for(lambda: _traffic(plane) == {V2: 100} and _replica_revisions(plane) == {V2}, 60, "the promotion")
    load.settle_on(V2)
    answers = load.stop()
    assert {status for status, _ in answers} == {200}, Counter(answers)
    assert plane.describe("iris")["routes"]["shadow"] is None  # nothing left to mirror to
