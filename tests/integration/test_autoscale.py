"""Autoscaling through ``shipyard up`` with real replicas and a real load generator (threads firing REST and
gRPC requests at the gateway), time compressed with the annotations (tick 200 ms, stable window 4 s,
scale-to-zero grace 1 s): a burst at zero is held, not failed, and scales beyond one replica; sustained
concurrency scales to ceil(in flight / target); idle scales back to one and then to zero; the
activator's queue and timeout answer 503 + Retry-After; a canary split works with both revisions at
zero; a replica that does not fit the (declared) GPUs stays pending and starts once one frees up.

One plane for the module, on a declared inventory: 8 cpus, GPU 0 with 16Gi and GPU 1 with 8Gi.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import grpc
import httpx
import pytest

from planeproc import PlaneProcess, isvc, kill_replicas
from shipyard import processes
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

ROW = [6.8, 2.8, 4.8, 1.4]
V1_BODY = {"instances": [ROW]}
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
FAST = {
    "serving.shipyard.io/autoscale-tick": "200ms",
    "autoscaling.knative.dev/window": "4s",
    "autoscaling.knative.dev/scale-to-zero-grace-period": "1s",
    "autoscaling.knative.dev/target-utilization-percentage": "100",
}
AT_ZERO = {**FAST, "autoscaling.knative.dev/initial-scale": "0"}
INVENTORY = {"SHIPYARD_CPUS": "8", "SHIPYARD_MEMORY": str(64 * 2**30), "SHIPYARD_GPUS": "0,1",
             "SHIPYARD_GPU_MEMORY": "16Gi,8Gi"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, artifacts) -> dict[str, Path]:
    """Model folders unique to this module (so leftover replicas are found by path): sklearn iris ones,
    the custom ``slow`` model (sleeps ``parameters.seconds`` per request) and ``slowload`` (4 s to load)."""
    root = tmp_path_factory.mktemp("autoscale-models")
    folders = {}
    for name in ("iris", "iris-v2", "iris-gpu"):
        folders[name] = root / name
        folders[name].mkdir()
        shutil.copy(artifacts["sk_logreg"], folders[name] / "model.joblib")
    folders["slow"] = Path(shutil.copytree(artifacts["slow"], root / "slow"))
    folders["slowload"] = Path(shutil.copytree(artifacts["slowload"], root / "slowload"))  # load() sleeps 4 s
    yield folders
    kill_replicas(str(root))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, models) -> PlaneProcess:
    saved = {name: os.environ.get(name) for name in INVENTORY}
    os.environ.update(INVENTORY)  # the plane process inherits the declared inventory
    try:
        started = PlaneProcess(tmp_path_factory.mktemp("autoscale") / "home")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield started.wait_up()
    started.stop()


# -- helpers ---------------------------------------------------------------------------------------
def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """``check()`` until it returns something truthy (a gentler poll than planeproc.wait_for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scaling(plane: PlaneProcess, name: str, revision: str | None = None) -> dict[str, Any]:
    """``status.shipyard.autoscaling`` of a service (of one revision: its entry, {} when absent)."""
    status = (plane.describe(name) or {}).get("status") or {}
    report = (status.get("shipyard") or {}).get("autoscaling") or {}
    return report.get(revision or f"{name}-predictor-00001", {}) if revision != "*" else report


def events(plane: PlaneProcess, name: str, *reasons: str) -> list[str]:
    return [e["message"] for e in (plane.describe(name) or {}).get("events", []) if e["reason"] in reasons]


def replica_env(pid: int) -> str | None:
    return processes.env_tag(pid, "CUDA_VISIBLE_DEVICES")


class Load:
    """Closed-loop clients in threads until stopped: REST (V1 or V2) and gRPC ModelInfer, each answer's
    status kept (HTTP status; gRPC 200 for OK, else the code's name)."""

    def __init__(self, plane: PlaneProcess, name: str, rest: int = 0, grpc_clients: int = 0,
                 body: dict[str, Any] | None = None, pause_s: float = 0.0) -> None:
        self.url = f"{plane.gateway}/v2/models/{name}/infer" if body is not None else \
            f"{plane.gateway}/v1/models/{name}:predict"
        self.body = body if body is not None else V1_BODY
        self.grpc_address = plane.info["gateway_grpc"]
        self.name, self.pause_s = name, pause_s
        self.answers: list[Any] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rest, daemon=True) for _ in range(rest)]
        self._threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_clients)]
        for thread in self._threads:
            thread.start()

    def _rest(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    self.answers.append(client.post(self.url, json=self.body).status_code)
                except httpx.HTTPError as exc:
                    self.answers.append(type(exc).__name__)
                self._stop.wait(self.pause_s)

    def _grpc(self) -> None:
        request = pb.ModelInferRequest(model_name=self.name, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP64", shape=[1, 4], contents=pb.InferTensorContents(fp64_contents=ROW))])
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = Stub(channel)
            while not self._stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=60)
                    self.answers.append(200)
                except grpc.RpcError as error:
                    self.answers.append(error.code().name)
                self._stop.wait(self.pause_s)

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        return Counter(self.answers)


# -- tests -----------------------------------------------------------------------------------------
def test_a_burst_at_zero_is_held_not_failed_and_scales_beyond_one_replica(plane, models):
    plane.apply(isvc("burst", models["iris"], model={"protocolVersion": "v2"}, annotations=AT_ZERO,
                     minReplicas=0, maxReplicas=3, scaleTarget=1))
    described = plane.wait_ready("burst", 30)  # initial-scale 0: ready at zero, its traffic waits at the activator
    assert described["replicas"] == [] and scaling(plane, "burst")["desired"] == 0
    assert described["routes"]["backends"][0]["activate"] is True

    def beyond_one() -> dict | None:  # the cold start shows from the pass after the held requests went
        entry = scaling(plane, "burst")
        return entry if entry.get("actual", 0) >= 2 and entry.get("coldStartSeconds") else None

    load = Load(plane, "burst", rest=8, grpc_clients=2, pause_s=0.02)
    try:
        most = poll(beyond_one, 60, "a second ready replica under the burst")
    finally:
        answers = load.stop()
    # nothing dropped or failed by the cold start: every one of the 10 clients got answers, all 200
    # (how many depends on the machine's speed: a busy 2-core CI box answered only the 10 held ones)
    assert set(answers) == {200} and answers[200] >= 10, answers
    assert most["desired"] >= 2 and most["coldStartSeconds"]["count"] >= 1
    ups = events(plane, "burst", "ScaledUp")
    assert ups and ups[0].startswith("burst-predictor-00001: 0 -> ") and "concurrency" in ups[0]
    metrics = httpx.get(f"{plane.gateway}/metrics").text
    assert 'shipyard_gateway_cold_start_seconds{revision="default/burst-predictor-00001",quantile="0.5"}' in metrics
    assert 'shipyard_revision_desired_replicas{revision="default/burst-predictor-00001"' in metrics


def test_sustained_concurrency_scales_to_the_expected_count_then_idle_goes_to_one_and_to_zero(plane, models):
    plane.apply(isvc("steady", models["slow"], fmt="custom", annotations=FAST, minReplicas=0, maxReplicas=5,
                     scaleTarget=2))
    plane.wait_ready("steady", 60)
    body = {**V2_BODY, "parameters": {"seconds": 0.2}}  # each request takes 200 ms at the replica
    body["inputs"] = [{"name": "input-0", "shape": [1], "datatype": "FP32", "data": [1.0]}]
    load = Load(plane, "steady", rest=6, body=body)  # 6 in flight, target 2 per replica: 3 replicas
    try:
        reached = poll(lambda: (lambda s: s if s.get("actual") == 3 else None)(scaling(plane, "steady")), 4 + 30,
                       "3 ready replicas under 6 requests in flight")
        assert reached["desired"] == 3
        time.sleep(2.0)  # sustained: stays at 3, no more
        assert scaling(plane, "steady")["desired"] == 3
    finally:
        answers = load.stop()
    assert set(answers) == {200}, answers
    ups = events(plane, "steady", "ScaledUp")
    assert ups and all(int(message.split(" -> ")[1].split()[0]) <= 3 for message in ups), ups

    stopped = time.monotonic()  # idle: back to one replica once the window forgets the load, then to zero
    poll(lambda: not plane.describe("steady")["replicas"], 4 + 1 + 4 + 20, "the service to scale to zero")
    idle_s = time.monotonic() - stopped
    downs = events(plane, "steady", "ScaledDown")
    assert any(" -> 1 replicas" in message for message in downs), downs
    assert downs[-1].startswith("steady-predictor-00001: 1 -> 0 replicas") and "scale to zero" in downs[-1], downs
    assert idle_s >= 4 + 1 - 0.5  # not before the stable window plus the grace period
    assert (plane.condition("steady") or {}).get("status") == "True"  # at zero and still Ready

    again = httpx.post(f"{plane.gateway}/v2/models/steady/infer", json=body, timeout=60)  # a cold start
    assert again.status_code == 200, again.text
    cold = poll(lambda: scaling(plane, "steady").get("coldStartSeconds"), 10, "the cold start in the status")
    assert cold["count"] >= 1 and 0 < cold["last"] < 60 and 0 < cold["p50"] < 60


def test_the_activator_queue_and_timeout_answer_503_with_retry_after(plane, models):
    annotations = {**AT_ZERO, "serving.shipyard.io/activator-queue": "2",
                   "serving.shipyard.io/activator-timeout": "1s"}
    plane.apply(isvc("impatient", models["slowload"], fmt="custom", annotations=annotations, minReplicas=0,
                     maxReplicas=1))
    plane.wait_ready("impatient", 30)
    url = f"{plane.gateway}/v2/models/impatient/infer"
    body = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    answers: list[httpx.Response] = []

    def one() -> None:
        answers.append(httpx.post(url, json=body, timeout=30))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [503] * 5  # its replica takes 4 s to load: longer than 1 s
    assert all(a.headers["retry-after"] == "1" and a.headers["content-type"].startswith("application/json")
               for a in answers)
    errors = Counter("activator-queue" if "activator-queue" in a.json()["error"] else
                     "activator-timeout" if "activator-timeout" in a.json()["error"] else a.json()["error"]
                     for a in answers)
    assert errors == {"activator-queue": 3, "activator-timeout": 2}, errors
    # the held requests still woke the revision: it serves once its replica is ready
    poll(lambda: scaling(plane, "impatient").get("actual") == 1, 60, "the replica started by the held requests")
    assert httpx.post(url, json=body, timeout=30).status_code == 200
    metrics = httpx.get(f"{plane.gateway}/metrics").text
    assert 'revision="default/impatient-predictor-00001",reason="queue_full"} 3' in metrics
    assert 'revision="default/impatient-predictor-00001",reason="timeout"} 2' in metrics


def test_a_canary_split_works_with_both_revisions_at_zero(plane, models):
    plane.apply(isvc("split", models["iris"], annotations=AT_ZERO, minReplicas=0))
    plane.wait_ready("split", 30)
    plane.apply(isvc("split", models["iris-v2"], annotations=AT_ZERO, minReplicas=0, canaryTrafficPercent=50))
    first, second = "split-predictor-00001", "split-predictor-00002"

    def traffic() -> dict[str, int]:
        predictor = plane.describe("split")["status"]["components"]["predictor"]
        return {entry["revisionName"]: entry["percent"] for entry in predictor.get("traffic", [])}

    poll(lambda: traffic() == {second: 50, first: 50}, 30, "the 50% canary with no replica at all")
    assert plane.describe("split")["replicas"] == []
    served = Counter()
    with httpx.Client(timeout=60) as client:
        for _ in range(20):
            answer = client.post(f"{plane.gateway}/v1/models/split:predict", json=V1_BODY)
            assert answer.status_code == 200, answer.text
            served[answer.headers["x-shipyard-revision"]] += 1
    assert served == {first: 10, second: 10}  # the split is exact, cold starts or not
    assert {r["revision"] for r in plane.describe("split")["replicas"]} == {first, second}

    assert plane.rollout("split", "promote").status_code == 200
    def promoted() -> bool:
        return traffic() == {second: 100} and {r["revision"] for r in plane.describe("split")["replicas"]} <= {second}

    poll(promoted, 60, "the promotion to drain the old revision")
    assert httpx.post(f"{plane.gateway}/v1/models/split:predict", json=V1_BODY, timeout=60).status_code == 200


def test_a_replica_that_does_not_fit_the_gpus_stays_pending_and_starts_when_one_frees_up(plane, models):
    whole = isvc("hog", models["iris"], minReplicas=1, annotations=FAST)
    whole["spec"]["predictor"]["model"]["resources"] = {"requests": {"cpu": "1", "nvidia.com/gpu": "1"},
                                                        "limits": {"nvidia.com/gpu": "1"}}
    shared = isvc("shared", models["iris-gpu"], minReplicas=2, maxReplicas=2,
                  annotations={**FAST, "serving.shipyard.io/gpu-memory": "8Gi"})
    shared["spec"]["predictor"]["model"]["resources"] = {"requests": {"cpu": "1"}}
    plane.apply(whole)
    hog = plane.wait_ready("hog", 60)["replicas"][0]
    assert replica_env(hog["pid"]) == "0"  # the lowest idle GPU, whole
    plane.apply(shared)

    def pending() -> dict | None:
        entry = scaling(plane, "shared")
        return entry if entry.get("pending") == 1 and entry.get("actual") == 1 else None

    entry = poll(pending, 60, "one shared replica running and one pending")
    assert entry["pendingReason"].startswith("Pending: Insufficient GPU memory (needs 8.00GiB on 1 GPU(s); 0 GPU(s) "
                                             "have that much free")
    [running] = [r for r in plane.describe("shared")["replicas"] if r["pid"]]
    assert replica_env(running["pid"]) == "1"  # GPU 1 has 8Gi: exactly one shared replica
    unschedulable = events(plane, "shared", "Unschedulable")
    assert unschedulable and "waits for resources: it needs cpu 1, 8.00GiB on 1 shared GPU(s)" in unschedulable[0]
    ready = next(c for c in plane.describe("shared")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"  # the revision serves with the replica it has

    assert httpx.delete(f"{plane.api}/apis/inferenceservices/default/hog").status_code == 202
    poll(lambda: scaling(plane, "shared").get("actual") == 2, 60, "the pending replica to start on the freed GPU")
    pids = {r["index"]: r["pid"] for r in plane.describe("shared")["replicas"]}
    assert replica_env(pids[0]) == "1" and replica_env(pids[1]) == "0"
    started = events(plane, "shared", "ReplicaStarted")
    assert any("CUDA_VISIBLE_DEVICES=0) after waiting for resources" in message for message in started), started
    assert "pending" not in scaling(plane, "shared")


def test_cpu_usage_of_the_replicas_scales_hpa_style(plane, models):
    cpu = isvc("busy", models["iris"], minReplicas=1, maxReplicas=2, scaleMetric="cpu", scaleTarget=10,
               annotations=FAST)
    cpu["spec"]["predictor"]["model"]["resources"] = {"requests": {"cpu": "1"}}
    plane.apply(cpu)
    plane.wait_ready("busy", 60)
    time.sleep(1.0)  # five ticks idle: a replica's start (imports, model load) is not counted as load
    idle = scaling(plane, "busy")
    assert idle["metric"] == "cpu" and idle["desired"] == 1 and idle["value"] < 10, idle
    load = Load(plane, "busy", rest=4)  # a replica answering as fast as it can uses far more than 10% of a core
    try:
        scaled = poll(lambda: (lambda s: s if s.get("actual") == 2 else None)(scaling(plane, "busy")), 40,
                      "a second replica for the cpu load")
    finally:
        answers = load.stop()
    assert set(answers) == {200}, answers
    assert scaled["desired"] == 2 and scaled["targetUnit"] == "% of the cpu request"
    ups = events(plane, "busy", "ScaledUp")
    assert ups and ups[0].startswith("busy-predictor-00001: 1 -> 2 replicas: cpu ") and "% per replica" in ups[0]
