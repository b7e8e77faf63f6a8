"""InferenceGraph specs: the typed graph and every rule by field path (shipyard.graph.spec)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shipyard.graph.spec import (
    ROUTER_TYPES,
    BanditConfig,
    GraphSpecError,
    Step,
    parse_graph,
    spec_errors,
    spec_warnings,
)

FULL: dict[str, Any] = {
    "timeout": 30,
    "routerTimeouts": {"serviceClient": 5, "serverRead": 60},
    "nodes": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"name": "pre", "serviceName": "transform", "timeout": 1.5, "retries": 2},
                {
                    "name": "classify",
                    "serviceName": "iris",
                    "data": "$response",
                    "condition": "predictions.0",
                    "dependency": "Hard",
                    "inputMap": {"output-0": "input-0"},
                },
                {"name": "pick", "nodeName": "choose", "data": "$response"},
                {"serviceUrl": "http://localhost:9000/v1/models/x:predict", "mapPredictionsToInstances": False},
            ],
        },
        "choose": {
            "routerType": "Bandit",
            "bandit": {"policy": "ucb1", "epsilon": 0.2, "seed": 7},
            "steps": [{"name": "a", "serviceName": "model-a"}, {"name": "b", "nodeName": "split"}],
        },
        "split": {
            "routerType": "Splitter",
            "steps": [{"serviceName": "x", "weight": 20}, {"serviceName": "y", "weight": 80}],
        },
    },
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """A copy of FULL with one value set (dotted path; integers index lists)."""
    spec = copy.deepcopy(FULL)
    parts = path.split(".")
    target: Any = spec
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return spec


DELETE = object()


def test_full_spec_parses_into_typed_graph() -> None:
    assert spec_errors(FULL) == []
    graph = parse_graph("team", "pipeline", FULL)
    assert (graph.namespace, graph.name) == ("team", "pipeline")
    assert graph.timeout_s == 30.0 and graph.step_timeout_s == 5.0
    assert set(graph.nodes) == {"root", "choose", "split"}
    root = graph.root
    assert root.router_type == "Sequence" and root.bandit is None
    pre, classify, pick, url = root.steps
    assert pre == Step(name="pre", service_name="transform", timeout_s=1.5, retries=2)
    assert classify.data == "$response" and classify.condition == "predictions.0"
    assert classify.dependency == "Hard" and classify.input_map == {"output-0": "input-0"}
    assert classify.map_predictions_to_instances is True  # Shipyard's default
    assert pick.node_name == "choose" and pick.target == "node 'choose'"
    assert url.name == "3"  # unnamed: its index
    assert url.service_url.startswith("http://") and url.map_predictions_to_instances is False
    assert url.target.startswith("url 'http://")
    assert graph.nodes["choose"].bandit == BanditConfig(policy="ucb1", epsilon=0.2, seed=7)
    assert [step.weight for step in graph.nodes["split"].steps] == [20, 80]
    assert graph.service_names() == ["transform", "iris", "model-a", "x", "y"]


def test_defaults() -> None:
    spec = {"nodes": {"root": {"routerType": "Bandit", "steps": [{"serviceName": "a"}, {"serviceName": "b"}]}}}
    graph = parse_graph("default", "g", spec)
    assert graph.timeout_s is None and graph.step_timeout_s is None
    assert graph.root.bandit == BanditConfig(policy="thompson", epsilon=0.1, seed=None)
    step = graph.root.steps[0]
    assert (step.data, step.dependency, step.retries, step.timeout_s, step.condition) == (
        "$request",
        "Soft",
        0,
        None,
        None,
    )
    assert ROUTER_TYPES == ("Sequence", "Switch", "Ensemble", "Splitter", "Bandit")


@pytest.mark.parametrize(
    ("path", "value", "error_path", "fragment"),
    [
        ("nodes.root", DELETE, "spec.nodes", "named 'root'"),
        ("nodes.root.routerType", "Parallel", "spec.nodes.root.routerType", "must be one of"),
        ("nodes.root.routerType", DELETE, "spec.nodes.root.routerType", "is required"),
        ("nodes.root.steps", [], "spec.nodes.root.steps", "at least one step"),
        ("nodes.root.steps.0.nodeName", "split", "spec.nodes.root.steps[0]", "exactly one of"),
        ("nodes.root.steps.0.serviceName", DELETE, "spec.nodes.root.steps[0]", "found none"),
        ("nodes.root.steps.2.nodeName", "nowhere", "spec.nodes.root.steps[2].nodeName", "names no node"),
        ("nodes.root.steps.1.name", "pre", "spec.nodes.root.steps[1].name", "unique"),
        ("nodes.root.steps.1.name", "3", "spec.nodes.root.steps[3].name", "unnamed step 3"),
        ("nodes.split.steps.1.weight", 70, "spec.nodes.split.steps", "sum to 100, got 90"),
        ("nodes.split.steps.1.weight", DELETE, "spec.nodes.split.steps[1].weight", "is required"),
        ("nodes.split.steps.1.weight", -5, "spec.nodes.split.steps[1].weight", ">= 0"),
        ("nodes.split.steps.1.weight", 80.5, "spec.nodes.split.steps[1].weight", "whole number"),
        ("nodes.choose.steps", [{"serviceName": "a"}], "spec.nodes.choose.steps", "at least 2 steps"),
        ("nodes.root.steps.1.data", "$previous", "spec.nodes.root.steps[1].data", "$request or $response"),
        ("nodes.root.steps.1.condition", "instances.#(intval>10", "spec.nodes.root.steps[1].condition", "position 21"),
        ("nodes.root.steps.1.condition", 5, "spec.nodes.root.steps[1].condition", "GJSON query string"),
        ("nodes.root.steps.3.serviceUrl", "ftp://host/x", "spec.nodes.root.steps[3].serviceUrl", "http://"),
        ("nodes.root.steps.3.serviceUrl", "iris", "spec.nodes.root.steps[3].serviceUrl", "http://"),
        ("nodes.root.steps.1.dependency", "Strong", "spec.nodes.root.steps[1].dependency", "Soft or Hard"),
        ("nodes.root.bandit", {"policy": "ucb1"}, "spec.nodes.root.bandit", "routerType Bandit only"),
        ("nodes.choose.bandit.policy", "softmax", "spec.nodes.choose.bandit.policy", "must be one of"),
        ("nodes.choose.bandit.epsilon", 1.5, "spec.nodes.choose.bandit.epsilon", "between 0 and 1"),
        ("nodes.choose.bandit.epsilon", -0.1, "spec.nodes.choose.bandit.epsilon", "between 0 and 1"),
        ("nodes.choose.bandit.seed", "x", "spec.nodes.choose.bandit.seed", "integer"),
        ("nodes.choose.bandit.temperature", 1, "spec.nodes.choose.bandit.temperature", "unknown field"),
        ("nodes.root.steps.0.retries", -1, "spec.nodes.root.steps[0].retries", ">= 0"),
        ("nodes.root.steps.0.retries", 1.5, "spec.nodes.root.steps[0].retries", "whole number"),
        ("nodes.root.steps.0.timeout", 0, "spec.nodes.root.steps[0].timeout", "> 0"),
        ("nodes.root.steps.0.timeout", "5s", "spec.nodes.root.steps[0].timeout", "number of seconds"),
        ("timeout", -1, "spec.timeout", "> 0"),
        ("routerTimeouts.serviceClient", 0, "spec.routerTimeouts.serviceClient", "> 0"),
        ("nodes.root.steps.1.inputMap", ["a"], "spec.nodes.root.steps[1].inputMap", "object"),
        ("nodes.root.steps.1.inputMap", {"a": "x", "b": "x"}, "spec.nodes.root.steps[1].inputMap", "same input"),
        ("nodes.root.steps.1.mapPredictionsToInstances", "yes", "spec.nodes.root.steps[1].mapPredictionsToInstances", "true or false"),
    ],
)
def test_rules_by_path(path: str, value: Any, error_path: str, fragment: str) -> None:
    errors = spec_errors(spec_with(path, value))
    matching = [message for where, message in errors if where == error_path]
    assert matching, errors
    assert any(fragment in message for message in matching), errors
    with pytest.raises(GraphSpecError) as caught:
        parse_graph("default", "g", spec_with(path, value))
    assert caught.value.errors == errors
    assert (caught.value.path, caught.value.message) == errors[0]
    assert isinstance(caught.value, ValueError)


def test_not_an_object() -> None:
    assert spec_errors([]) == [("spec", "must be an object")]
    assert spec_errors({}) == [("spec.nodes", "is required (an object of nodes with a node named 'root')")]
    assert spec_errors({"nodes": []}) == [("spec.nodes", "must be an object of nodes")]
    assert spec_errors({"nodes": {"root": "Sequence"}}) == [("spec.nodes.root", "must be an object with routerType and steps")]


def test_cycles_through_node_name() -> None:
    spec = {
        "nodes": {
            "root": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
            "a": {"routerType": "Sequence", "steps": [{"nodeName": "b"}]},
            "b": {"routerType": "Switch", "steps": [{"serviceName": "s", "condition": "x"}, {"nodeName": "a"}]},
            "self": {"routerType": "Sequence", "steps": [{"nodeName": "self"}]},
        }
    }
    errors = spec_errors(spec)
    assert ("spec.nodes.b.steps[1].nodeName", "makes a cycle: a -> b -> a") in errors
    assert ("spec.nodes.self.steps[0].nodeName", "makes a cycle: self -> self") in errors
    assert len(errors) == 2
    # A node reached twice without a cycle is fine.
    diamond = {
        "nodes": {
            "root": {"routerType": "Ensemble", "steps": [{"nodeName": "a"}, {"nodeName": "b"}]},
            "a": {"routerType": "Sequence", "steps": [{"nodeName": "b"}]},
            "b": {"routerType": "Sequence", "steps": [{"serviceName": "s"}]},
        }
    }
    assert spec_errors(diamond) == []


def test_every_error_is_reported() -> None:
    spec = {
        "nodes": {
            "root": {
                "routerType": "Splitter",
                "steps": [{"serviceName": "a", "weight": 50, "dependency": "x"}, {"weight": 40}],
            }
        }
    }
    paths = [path for path, _ in spec_errors(spec)]
    assert paths == [
        "spec.nodes.root.steps[0].dependency",
        "spec.nodes.root.steps[1]",
        "spec.nodes.root.steps",
    ]


def test_empty_condition_is_no_condition() -> None:
    spec = {"nodes": {"root": {"routerType": "Switch", "steps": [{"serviceName": "a", "condition": ""}]}}}
    assert parse_graph("d", "g", spec).root.steps[0].condition is None


def test_warnings_for_fields_without_effect() -> None:
    spec = {
        "nodes": {
            "root": {
                "routerType": "Ensemble",
                "steps": [
                    {"serviceName": "a", "condition": "x", "weight": 10, "data": "$response"},
                    {"nodeName": "sub", "retries": 2, "servicename": "typo"},
                ],
            },
            "sub": {"routerType": "Switch", "steps": [{"serviceName": "b", "dependency": "Hard"}]},
        }
    }
    assert spec_errors(spec) == []
    warned = [path for path, _ in spec_warnings(spec)]
    assert warned == [
        "spec.nodes.root.steps[0].condition",
        "spec.nodes.root.steps[0].weight",
        "spec.nodes.root.steps[0].data",
        "spec.nodes.root.steps[1].servicename",
        "spec.nodes.root.steps[1].retries",
        "spec.nodes.sub.steps[0].dependency",
    ]
    assert spec_warnings(FULL) == []
