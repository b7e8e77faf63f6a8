"""InferenceGraph documents through validate(): KServe's schema (vendored, with Shipyard's router fields),
the graph's rules and the warnings, every problem named by its field path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.control.resources import kind_of
from shipyard.control.validation import ValidationError, extended_schema, schema_of, validate

CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"

# KServe's documentation example ("Inference Graph", a Sequence of two services), as published.
KSERVE_SEQUENCE = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: model-chainer
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - serviceName: xgboost-iris
        name: first
      - serviceName: sklearn-iris
        name: second
        data: $request
"""

# Modelled on KServe's documentation (the dog breed pipeline; a Switch and an Ensemble node; GJSON conditions).
KSERVE_SWITCH = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: dog-breed-pipeline
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - serviceName: cat-dog-classifier
        name: cat_dog_classifier
      - nodeName: breed_classifier
        name: dog_breed_classifier
        data: $request
        condition: "[@this].#(predictions.0==\\"dog\\")"
    breed_classifier:
      routerType: Switch
      steps:
      - serviceName: dog-breed-classifier
        condition: "instances.#(intval>10)"
      - serviceName: sklearn-iris
        condition: "instances.#(strval%*red*)"
    ensemble:
      routerType: Ensemble
      steps:
      - serviceName: sklearn-iris
        name: sklearn
      - serviceName: xgboost-iris
        name: xgboost
        dependency: Hard
"""


def load(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def errors_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as failed:
        validate(document)
    return {error.path: error.message for error in failed.value.errors}


def warnings_of(document: dict[str, Any]) -> dict[str, str]:
    return {warning.path: warning.message for warning in validate(document).warnings}


def graph(nodes: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "g"},
            "spec": {"nodes": nodes, **spec}}


def test_kserves_examples_are_valid() -> None:
    for text in (KSERVE_SEQUENCE, KSERVE_SWITCH):
        validated = validate(load(text))
        assert validated.resource.kind == "InferenceGraph" and validated.warnings == []
    assert kind_of("ig").kind == kind_of("inferencegraphs").kind == "InferenceGraph"


def test_the_vendored_schema_is_kserves_crd() -> None:
    crd_file = CRDS / "serving.kserve.io_inferencegraphs.yaml"
    if not crd_file.exists():
        pytest.skip(f"{CRDS} is absent (a clone without ../shared); the vendored schema cannot be compared")
    crd = yaml.safe_load(crd_file.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    assert schema_of("InferenceGraph") == version["schema"]["openAPIV3Schema"]


def test_shipyards_extensions_are_in_the_extended_schema_only() -> None:
    node = extended_schema("InferenceGraph")["properties"]["spec"]["properties"]["nodes"]["additionalProperties"]
    assert node["properties"]["routerType"]["enum"][-1] == "Bandit"
    assert set(node["properties"]["bandit"]["properties"]) == {"policy", "epsilon", "seed"}
    assert {"inputMap", "timeout", "retries"} <= set(node["properties"]["steps"]["items"]["properties"])
    vendored = schema_of("InferenceGraph")["properties"]["spec"]["properties"]["nodes"]["additionalProperties"]
    assert "Bandit" not in vendored["properties"]["routerType"]["enum"] and "bandit" not in vendored["properties"]


def test_a_bandit_graph_with_shipyards_fields_is_valid() -> None:
    document = graph({"root": {"routerType": "Bandit", "bandit": {"policy": "epsilon-greedy", "epsilon": 0.2,
                                                                  "seed": 3},
                               "steps": [{"name": "a", "serviceName": "iris-a", "timeout": 0.5, "retries": 2},
                                         {"name": "b", "serviceName": "iris-b",
                                          "inputMap": {"output-0": "input-0"}}]}},
                     timeout=30, routerTimeouts={"serviceClient": 5})
    assert validate(document).warnings == []


@pytest.mark.parametrize(("change", "path", "message"), [
    (lambda s: s["nodes"].pop("root"), "spec.nodes", "needs a node named 'root'"),
    (lambda s: s["nodes"]["root"].update(routerType="Roundabout"), "spec.nodes.root.routerType",
     "is not one of ['Sequence', 'Splitter', 'Ensemble', 'Switch', 'Bandit']"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(nodeName="root"), "spec.nodes.root.steps[0]",
     "needs exactly one of nodeName, serviceName or serviceUrl"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(weight="heavy"), "spec.nodes.root.steps[0].weight",
     "'heavy' is not of type 'integer'"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(timeout="5s"), "spec.nodes.root.steps[0].timeout",
     "'5s' is not of type 'number'"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(dependency="Firm"), "spec.nodes.root.steps[0].dependency",
     "'Firm' is not one of ['Soft', 'Hard']"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(condition="instances.#(a>"),
     "spec.nodes.root.steps[0].condition", "GJSON"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(serviceName="Iris.prod"), "spec.nodes.root.steps[0].serviceName",
     "is not an InferenceService name"),
    (lambda s: s["nodes"]["root"]["steps"][0].update(extra=1), "spec.nodes.root.steps[0].extra", "unknown field"),
    (lambda s: s["nodes"]["root"].update(bandit={"policy": "greedy"}), "spec.nodes.root.bandit.policy",
     "'greedy' is not one of ['epsilon-greedy', 'ucb1', 'thompson']"),
    (lambda s: s.pop("nodes"), "spec.nodes", "required field is missing"),
])
def test_each_problem_is_named_by_its_path(change: Any, path: str, message: str) -> None:
    document = load(KSERVE_SEQUENCE)
    change(document["spec"])
    errors = errors_of(document)
    assert path in errors, errors
    assert message in errors[path]


def test_splitter_weights_and_node_references() -> None:
    document = graph({
        "root": {"routerType": "Splitter", "steps": [{"name": "a", "serviceName": "x", "weight": 30},
                                                     {"name": "b", "nodeName": "nowhere", "weight": 30}]},
    })
    errors = errors_of(document)
    assert errors["spec.nodes.root.steps"] == "Splitter weights must sum to 100, got 60"
    assert "spec.nodes.root.steps[1].nodeName" in errors and "nowhere" in errors["spec.nodes.root.steps[1].nodeName"]


def test_a_graph_needs_a_spec() -> None:
    document = load(KSERVE_SEQUENCE)
    del document["spec"]
    assert errors_of(document) == {"spec": "required field is missing (an InferenceGraph needs spec.nodes with a "
                                           "'root' node)"}


def test_fields_without_a_local_meaning_are_warnings_by_path() -> None:
    document = load(KSERVE_SEQUENCE)
    document["spec"].update(minReplicas=1, maxReplicas=3, resources={"requests": {"cpu": "1"}},
                            routerTimeouts={"serverRead": 30, "serverIdle": 60, "serviceClient": 10}, timeout=40)
    warnings = warnings_of(document)
    assert set(warnings) == {"spec.minReplicas", "spec.maxReplicas", "spec.resources", "spec.routerTimeouts.serverRead",
                             "spec.routerTimeouts.serverIdle"}
    assert warnings["spec.minReplicas"].startswith("not honoured: the graph runs inside the gateway")


def test_the_engines_warnings_come_through() -> None:
    document = graph({"root": {"routerType": "Ensemble", "steps": [
        {"name": "a", "serviceName": "x", "weight": 50}, {"name": "b", "serviceName": "y"}]}})
    warnings = warnings_of(copy.deepcopy(document))
    assert "spec.nodes.root.steps[0].weight" in warnings
