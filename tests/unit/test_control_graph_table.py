"""The gateway's graph table in process: what is rebuilt when, Host lookups, bandit state on disk, and
turning a graph's V2 answer into a gRPC response."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shipyard.control.gateway.graphs import GraphTable, answer_outputs, grpc_response, route_text
from shipyard.protocol.errors import InvalidInput


def stored(name: str, spec: dict[str, Any], uid: str = "u1", generation: int = 1, namespace: str = "default",
           deleting: bool = False) -> Any:
    return SimpleNamespace(namespace=namespace, name=name, uid=uid, generation=generation, spec=spec,
                           deleting=deleting)


BANDIT = {"nodes": {"root": {"routerType": "Bandit", "bandit": {"seed": 1}, "steps": [
    {"name": "a", "serviceName": "x"}, {"name": "b", "serviceName": "y"}]}}}
SEQUENCE = {"nodes": {"root": {"routerType": "Sequence", "steps": [{"name": "a", "serviceName": "x"}]}}}


def table(tmp_path: Path) -> GraphTable:
    return GraphTable(lambda: None, tmp_path / "graphs")


def test_a_runtime_is_kept_until_its_generation_changes_and_keeps_its_bandit_state(tmp_path: Path) -> None:
    graphs = table(tmp_path)
    assert graphs.update([stored("g", BANDIT)]) == []
    first = graphs.lookup("default", "g")
    graphs.update([stored("g", BANDIT)])
    assert graphs.lookup("default", "g") is first
    graphs.update([stored("g", BANDIT, generation=2)])
    second = graphs.lookup("default", "g")
    assert second is not first and second.bandits is first.bandits  # a new router, the same learning
    graphs.update([stored("g", BANDIT, generation=2, deleting=True)])
    assert graphs.lookup("default", "g") is None


def test_a_graph_that_does_not_parse_is_reported_once_and_the_old_one_stays(tmp_path: Path) -> None:
    graphs = table(tmp_path)
    graphs.update([stored("g", SEQUENCE)])
    broken = {"nodes": {"first": SEQUENCE["nodes"]["root"]}}
    problems = graphs.update([stored("g", broken, generation=2)])
    assert len(problems) == 1 and "default/g" in problems[0] and "root" in problems[0]
    assert graphs.update([stored("g", broken, generation=2)]) == []
    assert graphs.lookup("default", "g") is not None


def test_names_and_hosts(tmp_path: Path) -> None:
    graphs = table(tmp_path)
    graphs.update([stored("g", SEQUENCE), stored("h", SEQUENCE, namespace="team")])
    assert graphs.find("g").name == "g" and graphs.find("g", "team").namespace == "default"
    assert graphs.find("h", "team").namespace == "team" and graphs.find("h") is None
    assert graphs.by_host("h.team.example.com").name == "h"
    assert graphs.by_host("h.team.example.com:8080").name == "h"
    assert graphs.by_host("g.team.example.com") is None and graphs.by_host("127.0.0.1:8080") is None
    assert route_text([("root", "a"), ("sub", "b")]) == "root=a,sub=b"


def test_bandit_state_is_saved_loaded_and_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        graphs = table(tmp_path)
        graphs.update([stored("g", BANDIT)])
        runtime = graphs.lookup("default", "g")
        arm = runtime.bandits.choose("root", ["a", "b"], "req-1")
        response = graphs.feedback(runtime, {"request_id": "req-1", "reward": 1})
        assert response.status == 200 and b'"step":"' + arm.encode() + b'"' in response.body
        assert graphs.feedback(runtime, {"request_id": "req-1", "reward": 1}).status == 404
        with pytest.raises(InvalidInput):
            graphs.feedback(runtime, {"request_id": "req-2", "reward": True})
        await graphs.close()  # saves what is pending
        assert runtime.state_path == tmp_path / "graphs" / "default" / "g" / "bandit.json"
        assert runtime.state_path.exists()
        again = table(tmp_path)
        again.update([stored("g", BANDIT)])
        assert again.snapshot("default", "g")["root"][arm]["pulls"] == 1
        again.forget("default", "g")
        assert not runtime.state_path.exists() and again.lookup("default", "g") is None

    asyncio.run(scenario())


def test_an_ensembles_answer_becomes_named_outputs_for_grpc() -> None:
    from shipyard.protocol.proto import inference_pb2 as pb

    body = {"a": {"outputs": [{"name": "out", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            "b": {"error": "node 'root' step 'b' (service 'y'): answered 500: boom"}}
    outputs, parameters = answer_outputs(body)
    assert [o["name"] for o in outputs] == ["a.out"] and parameters == {"b.error": body["b"]["error"]}
    response = grpc_response("g", body, pb)
    assert response.model_name == "g" and response.outputs[0].name == "a.out"
    assert np.frombuffer(response.raw_output_contents[0], dtype="<f4").tolist() == [1.0, 2.0]
    with pytest.raises(InvalidInput, match="not a V2 response"):
        answer_outputs({"predictions": [1]})
