"""KServe's InferenceGraph through `shipyard up`: every router type over real `shipyard serve` replicas
reached through the gateway (V1, V2, gRPC), chaining, conditions, Hard and Soft failures, timeouts,
the Splitter's weights, a Bandit that learns from feedback and keeps its state across a plane
restart, status and conditions, the CLI, and validation errors by path.

One plane for the module with five services (model.py predictors whose answers say which service
ran); graphs are applied per test. The restart test runs last: it replaces the module's plane."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import numpy as np
import pytest

from conftest import write_custom_model
from planeproc import PlaneProcess, isvc, kill_replicas, wait_for
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

#: One predictor for every service: adds ADD to its input; INPUT names the input it needs (else the
#: first), OUTPUT its output; FAIL makes it fail; an input equal to SLOW makes it sleep 4 s (timeouts).
PREDICTOR = """
import os
import time
import numpy as np

ADD = float(os.environ.get("ADD", "0"))
INPUT = os.environ.get("INPUT")
OUTPUT = os.environ.get("OUTPUT", "output-0")
FAIL = os.environ.get("FAIL")
SLOW = float(os.environ.get("SLOW", "nan"))

class Model:
    def predict(self, inputs):
        if FAIL:
            raise RuntimeError(FAIL)
        x = np.asarray(inputs[INPUT] if INPUT else next(iter(inputs.values())), dtype=np.float64)
        if x.size and x.ravel()[0] == SLOW:
            time.sleep(4)
        return {OUTPUT: x + ADD}
"""

#: name -> the predictor's environment
SERVICES = {
    "add1": {"ADD": "1"},
    "add10": {"ADD": "10"},
    "add100": {"ADD": "100", "SLOW": "777"},
    "needx": {"ADD": "1000", "INPUT": "x", "OUTPUT": "y"},
    "fail": {"FAIL": "boom"},
}
ROUTE = "x-shipyard-graph-route"
API = "serving.kserve.io/v1alpha1"


class Holder:
    """The module's plane (the restart test swaps it) and the predictor's folder."""

    def __init__(self, plane: PlaneProcess, folder: Path) -> None:
        self.plane = plane
        self.folder = folder


@pytest.fixture(scope="module")
def holder(tmp_path_factory) -> Iterator[Holder]:
    root = tmp_path_factory.mktemp("graph")
    folder = write_custom_model(root / "predictor", PREDICTOR)
    running = Holder(PlaneProcess(root / "home").wait_up(), folder)
    try:
        documents = []
        for name, env in SERVICES.items():
            document = isvc(name, folder, "custom",
                            model={"env": [{"name": key, "value": value} for key, value in env.items()]})
            documents.append(document)
        running.plane.apply(*documents)
        for name in SERVICES:
            running.plane.wait_ready(name, timeout=180)
        yield running
    finally:
        running.plane.stop()
        kill_replicas(str(folder))


@pytest.fixture
def plane(holder: Holder) -> PlaneProcess:
    return holder.plane


def graph(name: str, nodes: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "InferenceGraph", "metadata": {"name": name},
            "spec": {"nodes": nodes, **spec}}


def step(name: str, service: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"name": name, **({"serviceName": service} if service else {}), **fields}


def get_graph(plane: PlaneProcess, name: str) -> dict[str, Any] | None:
    response = httpx.get(f"{plane.api}/apis/inferencegraphs/default/{name}", timeout=10)
    return response.json() if response.status_code == 200 else None


def ready_condition(plane: PlaneProcess, name: str) -> dict[str, Any]:
    conditions = ((get_graph(plane, name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def apply_graph(plane: PlaneProcess, document: dict[str, Any]) -> None:
    """Apply a graph and wait until the gateway serves it (its status is written by then too)."""
    plane.apply(document)
    name = document["metadata"]["name"]
    wait_for(lambda: ready_condition(plane, name).get("status") == "True", 30, f"graph {name} Ready\n{plane.output}")
    wait_for(lambda: httpx.get(f"{plane.gateway}/v2/models/{name}", timeout=10).status_code == 200, 10,
             f"the gateway to serve {name}")


def v1(plane: PlaneProcess, name: str, instances: list[Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{plane.gateway}/v1/models/{name}:predict", json={"instances": instances}, headers=headers,
                      timeout=60)


def v2_body(values: list[float], name: str = "input-0") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": "FP64", "shape": [1, len(values)], "data": values}]}


def v2(plane: PlaneProcess, name: str, values: list[float], **headers: str) -> httpx.Response:
    return httpx.post(f"{plane.gateway}/v2/models/{name}/infer", json=v2_body(values), headers=headers, timeout=60)


# -- Sequence and chaining -----------------------------------------------------------------------------
def test_sequence_chains_v1_predictions_and_v2_outputs(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("chain", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("second", "add10", data="$response")]}}))
    # V1: add1's predictions become add10's instances (KServe needs mapPredictionsToInstances)
    answer = v1(plane, "chain", [[1.0, 2.0]], **{"x-request-id": "seq-1"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [[12.0, 13.0]]}
    assert answer.headers["x-request-id"] == "seq-1"
    assert answer.headers[ROUTE] == "root=first,root=second"
    # V2: add1's outputs become add10's inputs (names kept)
    answer = v2(plane, "chain", [1.0, 2.0])
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [12.0, 13.0]
    assert answer.headers["x-request-id"]  # generated: the key for feedback
    # data: $request (the default) sends the original request to every step: the last answer is add10's
    apply_graph(plane, graph("fanout", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("second", "add10")]}}))
    assert v1(plane, "fanout", [[1.0]]).json() == {"predictions": [[11.0]]}


def test_v2_chaining_maps_outputs_to_inputs_by_name(plane: PlaneProcess) -> None:
    # needx reads only an input named "x": inputMap renames add1's output-0
    apply_graph(plane, graph("mapped", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("second", "needx", data="$response", inputMap={"output-0": "x"})]}}))
    answer = v2(plane, "mapped", [5.0])
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0] == {"name": "y", "datatype": "FP64", "shape": [1, 1], "data": [1006.0]}
    # without the map, needx gets "output-0" and fails: the error names the node, the step and the service
    apply_graph(plane, graph("unmapped", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("second", "needx", data="$response", dependency="Hard")]}}))
    answer = v2(plane, "unmapped", [5.0])
    assert answer.status_code >= 400, answer.text
    assert answer.json()["error"].startswith("node 'root' step 'second' (service 'needx'): answered")
    assert (answer.json()["node"], answer.json()["step"]) == ("root", "second")


def test_sequence_conditions_that_match_and_do_not(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("cond", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"),
        step("second", "add10", data="$response", condition="predictions.#(0>5)"),
        step("third", "add100", data="$response", condition="predictions")]}}))
    # 1 + 1 = 2: "predictions.#(0>5)" does not match add1's answer, so the sequence stops with it
    answer = v1(plane, "cond", [[1.0]])
    assert answer.json() == {"predictions": [[2.0]]} and answer.headers[ROUTE] == "root=first"
    # 9 + 1 = 10 > 5: both conditions match and every step runs
    answer = v1(plane, "cond", [[9.0]])
    assert answer.json() == {"predictions": [[120.0]]}
    assert answer.headers[ROUTE] == "root=first,root=second,root=third"


def test_nested_nodes_and_url_steps(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("nested", {
        "root": {"routerType": "Sequence", "steps": [
            step("pre", "add1"),
            {"name": "choose", "nodeName": "chooser", "data": "$response"},
            step("post", serviceUrl=f"{plane.gateway}/v1/models/add10:predict", data="$response")]},
        "chooser": {"routerType": "Switch", "steps": [
            step("big", "add100", condition="instances.#(0>5)"), step("small", "add1")]},
    }))
    answer = v1(plane, "nested", [[1.0]])  # 1+1 = 2 -> small: +1 -> url: +10
    assert answer.json() == {"predictions": [[13.0]]}, answer.text
    assert answer.headers[ROUTE] == "root=pre,root=choose,chooser=small,root=post"
    answer = v1(plane, "nested", [[9.0]])  # 9+1 = 10 -> big: +100 -> url: +10
    assert answer.json() == {"predictions": [[120.0]]}, answer.text
    assert answer.headers[ROUTE] == "root=pre,root=choose,chooser=big,root=post"


# -- Switch, Ensemble ------------------------------------------------------------------------------------
def test_switch_picks_the_first_matching_step(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("switch", {"root": {"routerType": "Switch", "steps": [
        step("big", "add100", condition="instances.#(intval>10)"),
        step("small", "add1", condition="instances.#(intval<=10)")]}}))
    big = v1(plane, "switch", [{"intval": 12}])
    assert big.json() == {"predictions": [112]} and big.headers[ROUTE] == "root=big", big.text
    small = v1(plane, "switch", [{"intval": 3}])
    assert small.json() == {"predictions": [4]} and small.headers[ROUTE] == "root=small", small.text
    # no step matches: 200 with the request itself (KServe's documentation; its router answers 404)
    none = v1(plane, "switch", [{"other": 3}])
    assert none.status_code == 200 and none.json() == {"instances": [{"other": 3}]}
    assert none.headers[ROUTE] == ""


def test_ensemble_runs_steps_concurrently_keyed_by_name(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("ensemble", {"root": {"routerType": "Ensemble", "steps": [
        step("a", "add1"), step("b", "add10"), step("c", "fail")]}}))
    answer = v1(plane, "ensemble", [[1.0]])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["a"] == {"predictions": [[2.0]]} and body["b"] == {"predictions": [[11.0]]}
    assert "node 'root' step 'c' (service 'fail'): answered 500" in body["c"]["error"]  # a Soft failure
    assert "boom" in body["c"]["error"]
    # the same failing step as Hard decides the status
    apply_graph(plane, graph("ensemble-hard", {"root": {"routerType": "Ensemble", "steps": [
        step("a", "add1"), step("c", "fail", dependency="Hard")]}}))
    answer = v1(plane, "ensemble-hard", [[1.0]])
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"].startswith("node 'root' step 'c' (service 'fail'): answered 500")


# -- failures, retries, timeouts -------------------------------------------------------------------------
def test_hard_failures_abort_and_soft_ones_continue(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("soft", {"root": {"routerType": "Sequence", "steps": [
        step("broken", "fail"), step("after", "add10")]}}))
    answer = v1(plane, "soft", [[1.0]])
    assert answer.status_code == 200 and answer.json() == {"predictions": [[11.0]]}, answer.text
    assert answer.headers[ROUTE] == "root=broken,root=after"
    apply_graph(plane, graph("hard", {"root": {"routerType": "Sequence", "steps": [
        step("broken", "fail", dependency="Hard", retries=2), step("after", "add10")]}}))
    answer = v1(plane, "hard", [[1.0]])
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error.startswith("node 'root' step 'broken' (service 'fail'): answered 500") and "boom" in error
    assert error.endswith("(after 3 attempts)")  # retried twice (a 5xx of an idempotent step)
    assert answer.headers[ROUTE] == "root=broken"
    # a step naming a service that does not exist: 404 from the gateway, named
    url = f"{plane.gateway}/v1/models/nosuch:predict"
    apply_graph(plane, graph("missing", {"root": {"routerType": "Sequence", "steps": [
        step("ghost", serviceUrl=url, dependency="Hard")]}}))
    answer = v1(plane, "missing", [[1.0]])
    assert answer.status_code == 404
    assert answer.json()["error"].startswith(f"node 'root' step 'ghost' (url '{url}'): answered 404: model 'nosuch' "
                                             "is not served")


def test_step_and_graph_timeouts_name_the_step(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("slow-step", {"root": {"routerType": "Sequence", "steps": [
        step("slow", "add100", timeout=0.5, dependency="Hard")]}}))
    answer = v1(plane, "slow-step", [[777]])
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"] == "node 'root' step 'slow' (service 'add100'): timed out after 0.5s"
    apply_graph(plane, graph("slow-graph", {"root": {"routerType": "Sequence", "steps": [
        step("quick", "add1"), step("slow", "add100")]}}, timeout=2))
    answer = v1(plane, "slow-graph", [[777]])
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"] == ("graph 'default/slow-graph' timed out after 2s in node 'root' step 'slow' "
                                      "(service 'add100')")


# -- Splitter --------------------------------------------------------------------------------------------
def test_splitter_follows_the_weights_over_1000_requests(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("split", {"root": {"routerType": "Splitter", "steps": [
        step("small", "add1", weight=20), step("large", "add10", weight=80)]}}))
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=plane.gateway, timeout=60) as client:
        for _ in range(1000):
            answer = client.post("/v1/models/split:predict", json={"instances": [[0.0]]})
            assert answer.status_code == 200, answer.text
            seen[{1.0: "small", 10.0: "large"}[answer.json()["predictions"][0][0]]] += 1
    assert abs(seen["small"] / 1000 - 0.20) <= 0.03 and abs(seen["large"] / 1000 - 0.80) <= 0.03, seen


# -- gRPC and Host routing ---------------------------------------------------------------------------------
def test_grpc_requests_into_a_graph(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("grpc-chain", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("second", "add10", data="$response")]}}))
    apply_graph(plane, graph("grpc-ensemble", {"root": {"routerType": "Ensemble", "steps": [
        step("a", "add1"), step("b", "add100")]}}))

    def request(name: str) -> Any:
        message = pb.ModelInferRequest(model_name=name)
        tensor = message.inputs.add(name="input-0", datatype="FP64", shape=[1, 2])
        tensor.contents.fp64_contents.extend([1.0, 2.0])
        return message

    with grpc.insecure_channel(plane.info["gateway_grpc"]) as channel:
        stub = Stub(channel)
        response, call = stub.ModelInfer.with_call(request("grpc-chain"), timeout=60,
                                                   metadata=[("x-request-id", "grpc-1")])
        assert response.model_name == "grpc-chain"
        assert [o.name for o in response.outputs] == ["output-0"]
        assert np.frombuffer(response.raw_output_contents[0], dtype="<f8").tolist() == [12.0, 13.0]
        metadata = dict(call.initial_metadata())
        assert metadata["x-request-id"] == "grpc-1" and metadata[ROUTE] == "root=first,root=second"
        # an Ensemble's outputs come back named "<step>.<output>"
        response = stub.ModelInfer(request("grpc-ensemble"), timeout=60)
        outputs = {o.name: np.frombuffer(raw, dtype="<f8").tolist()
                   for o, raw in zip(response.outputs, response.raw_output_contents)}
        assert outputs == {"a.output-0": [2.0, 3.0], "b.output-0": [101.0, 102.0]}
        assert stub.ModelReady(pb.ModelReadyRequest(name="grpc-chain"), timeout=10).ready
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(request("no-such-graph"), timeout=60)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_graph_by_host_and_a_service_of_the_same_name_wins(plane: PlaneProcess) -> None:
    apply_graph(plane, graph("hosted", {"root": {"routerType": "Sequence", "steps": [step("only", "add10")]}}))
    answer = httpx.post(f"{plane.gateway}/anything/at/all", json={"instances": [[1.0]]}, timeout=60,
                        headers={"host": "hosted.default.example.com"})
    assert answer.status_code == 200 and answer.json() == {"predictions": [[11.0]]}, answer.text
    answer = httpx.post(f"{plane.gateway}/v2/models/hosted/infer", json=v2_body([1.0]), timeout=60,
                        headers={"host": "hosted.default.example.com"})
    assert answer.json()["outputs"][0]["data"] == [11.0]
    # a graph named like a service: requests go to the service; the graph says why it is not Ready
    plane.apply(graph("add1", {"root": {"routerType": "Sequence", "steps": [step("only", "add100")]}}))
    wait_for(lambda: ready_condition(plane, "add1").get("reason") == "NameTaken", 30, "NameTaken")
    assert v1(plane, "add1", [[1.0]]).json() == {"predictions": [[2.0]]}
    assert "requests to 'add1' go to the service" in ready_condition(plane, "add1")["message"]
    httpx.delete(f"{plane.api}/apis/inferencegraphs/default/add1", timeout=10)


# -- Bandit ----------------------------------------------------------------------------------------------
#: add1 / add10 / add100 as arms paying 1 with these probabilities: add100 is the best.
ARM_OF = {1.0: "low", 10.0: "mid", 100.0: "high"}
PAYOUT = {"low": 0.2, "mid": 0.5, "high": 0.8}
ROUNDS = 300


def bandit_graph(name: str, policy: str = "thompson") -> dict[str, Any]:
    return graph(name, {"root": {"routerType": "Bandit", "bandit": {"policy": policy, "seed": 7}, "steps": [
        step("low", "add1"), step("mid", "add10"), step("high", "add100")]}})


def arms_when(plane: PlaneProcess, name: str, counter: str, total: int) -> dict[str, Any] | None:
    """``status.shipyard.bandits.root`` once its arms' ``counter`` (pulls, rewards) add up to ``total``."""
    status = (get_graph(plane, name) or {}).get("status") or {}
    arms = ((status.get("shipyard") or {}).get("bandits") or {}).get("root") or {}
    return arms if arms and sum(arm[counter] for arm in arms.values()) == total else None


def play(plane: PlaneProcess, name: str, rounds: int, seed: int) -> list[str]:
    """Ask the graph ``rounds`` times; reward each answer by its arm's payout; the arms chosen, in order."""
    rng = random.Random(seed)
    chosen = []
    with httpx.Client(base_url=plane.gateway, timeout=60) as client:
        for _ in range(rounds):
            answer = client.post(f"/v1/models/{name}:predict", json={"instances": [[0.0]]})
            assert answer.status_code == 200, answer.text
            arm = ARM_OF[answer.json()["predictions"][0][0]]
            assert answer.headers[ROUTE] == f"root={arm}"
            reward = 1.0 if rng.random() < PAYOUT[arm] else 0.0
            credited = client.post(f"/v1/models/{name}:feedback",
                                   json={"request_id": answer.headers["x-request-id"], "reward": reward})
            assert credited.status_code == 200 and credited.json() == {"credited": [{"node": "root", "step": arm}]}
            chosen.append(arm)
    return chosen


def test_bandit_converges_to_the_best_arm_within_300_rounds(plane: PlaneProcess) -> None:
    apply_graph(plane, bandit_graph("bandit"))
    chosen = play(plane, "bandit", ROUNDS, seed=11)
    last = Counter(chosen[-100:])
    assert last["high"] >= 80, Counter(chosen)  # of the last 100 of 300 rounds, at least 80 go to the best arm
    # feedback errors: unknown or already credited ids are 404, bad bodies 400
    url = f"{plane.gateway}/v2/models/bandit/feedback"
    assert httpx.post(url, json={"request_id": "never-seen", "reward": 1}, timeout=10).status_code == 404
    answer = v1(plane, "bandit", [[0.0]])
    request_id = answer.headers["x-request-id"]
    assert httpx.post(url, json={"request_id": request_id, "reward": "lots"}, timeout=10).status_code == 400
    assert httpx.post(url, json={"request_id": request_id, "reward": 1}, timeout=10).status_code == 200
    assert httpx.post(url, json={"request_id": request_id, "reward": 1}, timeout=10).status_code == 404
    assert httpx.post(url, content=b"not json", timeout=10).status_code == 400
    # status.shipyard.bandits: each arm's pulls and mean reward (from the gateway's state)
    arms = wait_for(lambda: arms_when(plane, "bandit", "pulls", ROUNDS + 1), 30, "the bandit's status")
    assert arms["high"]["pulls"] == Counter(chosen)["high"] + (1 if ARM_OF[answer.json()["predictions"][0][0]]
                                                               == "high" else 0)
    assert 0.6 <= arms["high"]["meanReward"] <= 1.0
    # the CLI shows the arms
    described = cli(plane, "describe", "ig", "bandit")
    assert "Bandit arms:" in described and "high" in described and str(arms["high"]["pulls"]) in described
    assert "Bandit" in described and "service add100" in described


def test_status_conditions_cli_and_deletion(plane: PlaneProcess) -> None:
    plane.apply(graph("broken-ref", {"root": {"routerType": "Sequence", "steps": [
        step("first", "add1"), step("later", "nosuch")]}}))
    wait_for(lambda: ready_condition(plane, "broken-ref").get("status") == "False", 30, "Ready False")
    condition = ready_condition(plane, "broken-ref")
    assert condition["reason"] == "ServiceNotFound"
    assert condition["message"] == ("node 'root' step 'later': InferenceService 'nosuch' not found in namespace "
                                    "'default'")
    stored = get_graph(plane, "broken-ref")
    assert stored["status"]["url"] == "http://broken-ref.default.example.com"
    assert stored["status"]["observedGeneration"] == 1
    listing = cli(plane, "get", "inferencegraphs")
    assert listing.splitlines()[0].split() == ["NAME", "URL", "READY", "AGE"]
    assert any(line.split()[:3] == ["broken-ref", "http://broken-ref.default.example.com", "False"]
               for line in listing.splitlines())
    # deleting a bandit graph removes its state file
    apply_graph(plane, bandit_graph("doomed"))
    answer = v1(plane, "doomed", [[0.0]])
    httpx.post(f"{plane.gateway}/v1/models/doomed:feedback", timeout=10,
               json={"request_id": answer.headers["x-request-id"], "reward": 1})
    state = plane.home / "graphs" / "default" / "doomed" / "bandit.json"
    wait_for(state.exists, 10, "the bandit state to be saved")
    assert httpx.delete(f"{plane.api}/apis/inferencegraphs/default/doomed", timeout=10).status_code == 202
    wait_for(lambda: get_graph(plane, "doomed") is None, 30, "the graph to go")
    assert not state.parent.exists()
    assert v1(plane, "doomed", [[0.0]]).status_code == 404


def test_validation_errors_by_path_at_apply(plane: PlaneProcess) -> None:
    bad = graph("bad", {
        "first": {"routerType": "Splitter", "steps": [step("a", "add1", weight=30), step("b", "add10", weight=30)]},
        "second": {"routerType": "Sequence", "steps": [{"name": "x", "serviceName": "add1", "nodeName": "first"}]},
        "third": {"routerType": "Roundabout", "steps": []},
        "fourth": {"routerType": "Switch", "steps": [step("c", "add1", condition="instances.#(a>")]},
    })
    answer = httpx.post(f"{plane.api}/apis/apply", json={"documents": [bad]}, timeout=30)
    assert answer.status_code == 400, answer.text
    errors = {error["path"]: error["message"] for error in answer.json()["errors"]}
    assert errors["spec.nodes"] == "needs a node named 'root' (the graph's entry)"
    assert errors["spec.nodes.first.steps"] == "Splitter weights must sum to 100, got 60"
    assert errors["spec.nodes.second.steps[0]"].startswith("needs exactly one of nodeName, serviceName or serviceUrl")
    assert "Bandit" in errors["spec.nodes.third.routerType"]  # Shipyard's extension of the enum
    assert "GJSON" in errors["spec.nodes.fourth.steps[0].condition"]
    assert get_graph(plane, "bad") is None  # nothing applied
    # fields with no meaning here are warnings, by path
    applied = plane.apply(graph("warned", {"root": {"routerType": "Sequence", "steps": [step("a", "add1")]}},
                                minReplicas=2, routerTimeouts={"serverRead": 30, "serviceClient": 5}))
    warnings = applied["results"][0]["warnings"]
    assert any(w.startswith("spec.minReplicas: not honoured") for w in warnings), warnings
    assert any(w.startswith("spec.routerTimeouts.serverRead: not honoured") for w in warnings), warnings
    assert not any("serviceClient" in w.split(":")[0] for w in warnings)


def cli(plane: PlaneProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SHIPYARD_HOME": str(plane.home)})
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- last: the plane restarts ------------------------------------------------------------------------------
def test_bandit_state_survives_a_plane_restart(holder: Holder) -> None:
    plane = holder.plane
    apply_graph(plane, bandit_graph("durable", policy="ucb1"))
    play(plane, "durable", 60, seed=5)
    pending = v1(plane, "durable", [[0.0]]).headers["x-request-id"]  # answered before the restart, rewarded after

    before = wait_for(lambda: arms_when(plane, "durable", "pulls", 61), 30, "the bandit's status")
    assert plane.stop() == 0
    state = json.loads((plane.home / "graphs" / "default" / "durable" / "bandit.json").read_text())
    assert state  # saved when the gateway stopped
    holder.plane = plane = PlaneProcess(plane.home).wait_up()
    for name in SERVICES:
        plane.wait_ready(name, timeout=180)
    wait_for(lambda: httpx.get(f"{plane.gateway}/v2/models/durable", timeout=10).status_code == 200, 30,
             "the graph to be served again")
    credited = httpx.post(f"{plane.gateway}/v1/models/durable:feedback", json={"request_id": pending, "reward": 1},
                          timeout=10)
    assert credited.status_code == 200, credited.text
    after = wait_for(lambda: arms_when(plane, "durable", "rewards", 61), 30, "the restored bandit's status")
    pulls = {arm: stats["pulls"] for arm, stats in before.items()}
    assert {arm: stats["pulls"] for arm, stats in after.items()} == pulls
    assert sum(stats["rewards"] for stats in before.values()) == 60
