"""The dashboard's serving and API through a real ``shipyard up``: its files (content types, ETag), live
ticks over server-sent events whose service numbers move with traffic, the metric histories, a
TrainJob's report (points, checkpoints, queue position, steps), a graph's per-step counters; then
the token a plane beyond loopback requires (bearer, the cookie ``/?token=`` sets, the cross-site
checks on mutating requests) and the CLI finding it in plane.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from planeproc import PlaneProcess, isvc, kill_replicas, wait_for

pytestmark = pytest.mark.integration

FLUID = "data.fluid.io/v1alpha1"
UI = Path(__file__).resolve().parents[2] / "src" / "shipyard" / "control" / "ui"

TRAIN = """
import os, time
from shipyard import train
flag = os.environ.get("WAIT_FOR")
while flag and not os.path.exists(flag):
    time.sleep(0.1)
for step in range(4):
    print(f"step {step}", flush=True)
    train.report({"loss": 1.0 / (step + 1), "accuracy": step / 4}, step=step, progress=(step + 1) * 25)
    train.save_checkpoint(b"weights", step=step)
print("done", flush=True)
"""


class Events:
    """A ``GET /apis/ui/events`` stream read in a thread: every tick's data, in order."""

    def __init__(self, url: str, **headers: str) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.status: int | None = None
        self.content_type = ""
        self.comments: list[str] = []
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=30), headers=headers)
        self._stop = False
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as response:
                self.status, self.content_type = response.status_code, response.headers.get("content-type", "")
                event = None
                for line in response.iter_lines():
                    if self._stop:
                        return
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "tick":
                        self.ticks.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass

    def wait(self, check: Any, timeout: float, what: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((tick for tick in reversed(self.ticks) if check(tick)), None)

        return wait_for(found, timeout, what)

    def close(self) -> None:
        self._stop = True
        self._client.close()


class Traffic:
    """Requests sent to a service through the gateway from a thread until stopped."""

    def __init__(self, url: str, body: dict[str, Any], threads: int = 3) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(url, body), daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self, url: str, body: dict[str, Any]) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                client.post(url, json=body)
                self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]) -> Path:
    """The iris model copied to a path of this module's own (replicas are found and cleaned up by it)."""
    path = tmp_path_factory.mktemp("ui-model") / "iris.joblib"
    shutil.copy(artifacts["sk_logreg"], path)
    return path


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Iterator[PlaneProcess]:
    previous = os.environ.get("SHIPYARD_CPUS")
    os.environ["SHIPYARD_CPUS"] = "4"  # room for one 3-cpu job at a time
    try:
        started = PlaneProcess(tmp_path_factory.mktemp("ui") / "home").wait_up()
    finally:
        if previous is None:
            os.environ.pop("SHIPYARD_CPUS", None)
        else:
            os.environ["SHIPYARD_CPUS"] = previous
    try:
        started.apply(isvc("iris", model))
        started.wait_ready("iris", timeout=120)
        yield started
    finally:
        started.stop()
        kill_replicas(str(model))


def get(plane: PlaneProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{plane.api}{path}", headers=headers, timeout=30)


# -- files ---------------------------------------------------------------------------------------------
def test_the_dashboard_files_are_served_with_their_content_types_and_etags(plane: PlaneProcess) -> None:
    index = get(plane, "/")
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.content == (UI / "index.html").read_bytes()
    assert index.headers["cache-control"] == "no-cache" and index.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in index.headers["content-security-policy"]
    expected = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    files = [path for path in sorted(UI.rglob("*")) if path.is_file() and path.suffix in expected]
    assert {path.suffix for path in files} >= {".js", ".css"}
    for path in files:
        answer = get(plane, f"/ui/{path.relative_to(UI).as_posix()}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == expected[path.suffix] and answer.content == path.read_bytes()
    again = get(plane, "/", **{"if-none-match": index.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert httpx.head(f"{plane.api}/", timeout=10).status_code == 200
    for missing in ("/ui/nope.js", "/ui/../api.py", "/ui/%2e%2e/api.py", "/ui/.hidden"):
        answer = get(plane, missing)
        assert answer.status_code == 404 and "error" in answer.json(), missing


# -- live numbers --------------------------------------------------------------------------------------
def test_ticks_arrive_every_second_and_the_service_numbers_move_with_traffic(plane: PlaneProcess, model: Path) -> None:
    events = Events(f"{plane.api}/apis/ui/events")
    traffic = None
    try:
        first = events.wait(lambda tick: tick["services"].get("default/iris", {}).get("ready_replicas") == 1, 15,
                            "a tick with the ready service")  # the first one may be up to a second old
        assert events.status == 200 and events.content_type.startswith("text/event-stream")
        assert set(first) == {"time", "changed", "services", "datasets"}
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
        traffic = Traffic(f"{plane.gateway}/v2/models/iris/infer", body)
        busy = events.wait(lambda tick: (tick["services"]["default/iris"]["rps"] > 5
                                         and tick["services"]["default/iris"]["p99_ms"] is not None), 30,
                           f"requests/s moving in the ticks\n{plane.output[-2000:]}")["services"]["default/iris"]
        assert busy["p50_ms"] <= busy["p99_ms"] and busy["error_rate"] == 0.0 and busy["replicas"] == 1
        batched = events.wait(lambda tick: tick["services"]["default/iris"]["batch_size"] is not None, 30,
                              "a batch size scraped from the replica")
        assert batched["services"]["default/iris"]["batch_size"] >= 1.0
        traffic.stop()
        traffic = None
        times = [tick["time"] for tick in events.ticks[-6:]]
        assert all(0.5 < later - earlier < 1.6 for earlier, later in zip(times, times[1:])), times

        labelled = isvc("iris", model)
        labelled["metadata"]["labels"] = {"team": "dashboard"}  # a change that makes no new revision
        plane.apply(labelled)
        events.wait(lambda tick: "InferenceService" in tick["changed"], 15, "InferenceService in changed")
    finally:
        if traffic is not None:
            traffic.stop()
        events.close()

    history = get(plane, "/apis/ui/metrics/inferenceservices/default/iris").json()["points"]
    assert len(history) >= 5 and set(history[-1]) == {"time", "rps", "p50_ms", "p99_ms", "error_rate", "replicas",
                                                      "ready_replicas", "batch_size"}
    assert max(point["rps"] for point in history) > 5 and history == sorted(history, key=lambda p: p["time"])
    assert get(plane, "/apis/ui/metrics/inferenceservices/default/nope").status_code == 404


def test_dataset_history_follows_its_cache(plane: PlaneProcess, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    for index in range(3):
        (folder / f"part-{index}.bin").write_bytes(os.urandom(50_000))
    plane.apply({"apiVersion": FLUID, "kind": "Dataset", "metadata": {"name": "images"},
                 "spec": {"mounts": [{"mountPoint": str(folder), "name": "src"}]}})
    cold = wait_for(lambda: [p for p in get(plane, "/apis/ui/metrics/datasets/default/images").json()["points"]
                             if p["cached_percent"] is not None], 60, "the dataset's first numbers")
    assert cold[-1]["cached_percent"] == 0.0 and cold[-1]["hit_ratio"] is None
    plane.apply({"apiVersion": FLUID, "kind": "DataLoad", "metadata": {"name": "images-warm"},
                 "spec": {"dataset": {"name": "images"}}})
    warm = wait_for(lambda: [p for p in get(plane, "/apis/ui/metrics/datasets/default/images").json()["points"]
                             if p["cached_percent"] == 100.0], 60, "100% cached in the history")
    assert set(warm[-1]) == {"time", "hit_ratio", "cached_percent"}
    assert get(plane, "/apis/ui/metrics/datasets/default/nope").status_code == 404


def trainjob(name: str, script: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": "python"}, "trainer": {
                "command": ["python", str(script)], "numNodes": 1, "resourcesPerNode": {"requests": {"cpu": "3"}},
                "env": [{"name": key, "value": value} for key, value in (env or {}).items()]}}}


def job_state(plane: PlaneProcess, name: str) -> str | None:
    response = get(plane, f"/apis/trainjobs/default/{name}")
    return ((response.json().get("status") or {}).get("shipyard") or {}).get("state") if response.is_success else None


def test_a_trainjob_report_has_points_checkpoints_queue_position_and_steps(plane: PlaneProcess,
                                                                           tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    flag = tmp_path / "go"
    plane.apply(trainjob("first", script, {"WAIT_FOR": str(flag)}))
    wait_for(lambda: job_state(plane, "first") == "Running", 60, f"first Running\n{plane.output[-2000:]}")
    plane.apply(trainjob("second", script))  # 3 of 4 cpus are taken: it waits for the first
    wait_for(lambda: job_state(plane, "second") == "Queued", 30, "second Queued")
    time.sleep(1.5)  # a few admission passes: still queued
    queued = get(plane, "/apis/ui/trainjobs/default/second/report").json()
    assert queued["queuePosition"] == 1 and queued["points"] == [] and queued["checkpoints"] == []
    assert queued["restarts"] == 0
    running = get(plane, "/apis/ui/trainjobs/default/first/report").json()
    assert running["queuePosition"] is None and running["steps"] == ["node-0"]
    flag.write_text("go")
    for name in ("first", "second"):
        wait_for(lambda: job_state(plane, name) == "Complete", 90, f"{name} Complete\n{plane.output[-2000:]}")
    report = get(plane, "/apis/ui/trainjobs/default/first/report").json()
    assert set(report) == {"points", "checkpoints", "restarts", "queuePosition", "steps"}
    assert [point["step"] for point in report["points"]] == [0, 1, 2, 3]
    assert [point["progress"] for point in report["points"]] == [25.0, 50.0, 75.0, 100.0]
    assert report["points"][-1]["metrics"] == {"loss": 0.25, "accuracy": 0.75}
    assert isinstance(report["points"][0]["time"], float)
    assert [checkpoint["step"] for checkpoint in report["checkpoints"]] == [1, 2, 3]  # save_checkpoint keeps 3
    assert all(Path(checkpoint["path"]).is_file() for checkpoint in report["checkpoints"])
    assert report["restarts"] == 0 and report["queuePosition"] is None and report["steps"] == ["node-0"]
    logs = httpx.post(f"{plane.api}/apis/trainjobs/default/first/logs", json={"step": report["steps"][0]}, timeout=10)
    assert "step 3" in logs.json()["text"]
    assert get(plane, "/apis/ui/trainjobs/default/nope/report").status_code == 404


def test_a_graph_counts_requests_and_errors_per_step(plane: PlaneProcess) -> None:
    plane.apply({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "pair"},
                 "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [
                     {"name": "classify", "serviceName": "iris"},
                     {"name": "missing", "serviceName": "nowhere", "dependency": "Soft"}]}}}})
    wait_for(lambda: get(plane, "/apis/ui/graphs/default/pair/stats").json()["steps"], 30, "the graph served")
    for _ in range(3):
        httpx.post(f"{plane.gateway}/v1/models/pair:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    stats = get(plane, "/apis/ui/graphs/default/pair/stats").json()
    assert stats == {"steps": {"root/classify": {"requests": 3, "errors": 0},
                               "root/missing": {"requests": 3, "errors": 3}}}
    assert get(plane, "/apis/ui/graphs/default/nope/stats").status_code == 404


def test_a_loopback_plane_asks_no_token_but_refuses_cross_site_writes(plane: PlaneProcess, model: Path) -> None:
    assert get(plane, "/apis/inferenceservices").status_code == 200
    body = {"documents": [isvc("iris-two", model)], "dry_run": True}
    assert httpx.post(f"{plane.api}/apis/apply", json=body, timeout=10).status_code == 200
    foreign = httpx.post(f"{plane.api}/apis/apply", json=body, headers={"origin": "http://evil.example"}, timeout=10)
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["error"]
    rebound = get(plane, "/apis/inferenceservices", host="evil.example")
    assert rebound.status_code == 403 and "loopback" in rebound.json()["error"]


# -- beyond loopback: the token ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaneProcess]:
    environment = dict(os.environ)
    os.environ.pop("SHIPYARD_TOKEN", None)
    try:
        started = PlaneProcess(tmp_path_factory.mktemp("ui-remote") / "home", "--host", "0.0.0.0").wait_up()
    finally:
        os.environ.clear()
        os.environ.update(environment)
    yield started
    started.stop()


def test_beyond_loopback_the_api_needs_the_token(remote: PlaneProcess, model: Path) -> None:
    token = remote.info["token"]
    assert len(token) >= 24 and (remote.home / "plane.json").stat().st_mode & 0o777 == 0o600
    wait_for(lambda: f"?token={token}" in remote.output, 10, "the token printed once")
    assert remote.output.count(token) == 1
    api = remote.api
    refused = httpx.get(f"{api}/apis/inferenceservices", timeout=10)
    assert refused.status_code == 401 and "token" in refused.json()["error"]
    assert httpx.get(f"{api}/apis/ui/events", timeout=10).status_code == 401
    assert httpx.get(f"{api}/apis/inferenceservices", headers={"authorization": "Bearer wrong"},
                     timeout=10).status_code == 401
    bearer = {"authorization": f"Bearer {token}"}
    assert httpx.get(f"{api}/apis/inferenceservices", headers=bearer, timeout=10).json() == {"items": []}
    for public in ("/", "/healthz", "/ui/app.js"):  # the page loads to show its token form
        assert httpx.get(f"{api}{public}", timeout=10).status_code == 200, public

    with httpx.Client(base_url=api, timeout=10) as browser:
        wrong = browser.get("/?token=guess")
        assert wrong.status_code == 303 and wrong.headers["location"] == "/?invalid_token=1"
        assert "shipyard_token" not in browser.cookies
        login = browser.get(f"/?token={token}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and browser.cookies["shipyard_token"] == token
        assert browser.get("/apis/inferenceservices").status_code == 200
        events = Events(f"{api}/apis/ui/events", cookie=f"shipyard_token={token}")
        try:
            events.wait(lambda tick: True, 15, "ticks with the cookie")
        finally:
            events.close()

        document = {"documents": [isvc("cookie-made", model)], "dry_run": True}
        no_header = browser.post("/apis/apply", json=document)
        assert no_header.status_code == 403 and "X-Shipyard-Request" in no_header.json()["error"]
        csrf = {"x-shipyard-request": "1"}
        foreign = browser.post("/apis/apply", json=document, headers={**csrf, "origin": "http://evil.example"})
        assert foreign.status_code == 403 and "Origin" in foreign.json()["error"]
        host = api.split("://", 1)[1]
        same = browser.post("/apis/apply", json=document, headers={**csrf, "origin": f"http://{host}"})
        assert same.status_code == 200 and same.json()["dry_run"] is True
        assert browser.delete("/apis/inferenceservices/default/nope", headers=csrf).status_code == 404
        assert browser.delete("/apis/inferenceservices/default/nope").status_code == 403

    cli = subprocess.run([sys.executable, "-m", "shipyard", "get", "isvc"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SHIPYARD_HOME": str(remote.home)})
    assert cli.returncode == 0, cli.stderr  # the CLI reads the token from plane.json
    from shipyard.control.client import ControlClient

    with ControlClient(api, token=token) as client:
        assert client.apply({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                             "metadata": {"name": "sdk-made"}, "spec": {"predictor": {"model": {
                                 "modelFormat": {"name": "sklearn"}, "storageUri": str(model)}}}},
                            dry_run=True)[0]["action"] == "created"


def test_a_given_token_is_required_even_on_loopback_and_not_printed(tmp_path: Path) -> None:
    environment = dict(os.environ)
    os.environ["SHIPYARD_TOKEN"] = "given-token-123"
    try:
        plane = PlaneProcess(tmp_path / "home").wait_up()
    finally:
        os.environ.clear()
        os.environ.update(environment)
    try:
        assert plane.info["token"] == "given-token-123"
        assert httpx.get(f"{plane.api}/apis/isvc", timeout=10).status_code == 401
        assert httpx.get(f"{plane.api}/apis/isvc", headers={"authorization": "Bearer given-token-123"},
                         timeout=10).status_code == 200
        wait_for(lambda: "Dashboard:" in plane.output, 10, "the dashboard line")
        assert "given-token-123" not in plane.output
    finally:
        plane.stop()
