"""A typed inference graph from an InferenceGraph ``spec`` (serving.kserve.io/v1alpha1).

``spec_errors`` lists every problem by field path (``spec.nodes.root.steps[1].weight``);
``parse_graph`` builds the frozen ``Graph`` or raises the first problem as ``GraphSpecError``.
Shipyard's extensions: routerType ``Bandit`` with a node field ``bandit`` (policy, epsilon, seed),
and step fields ``inputMap`` (V2 output name -> next input name), ``timeout`` (seconds) and
``retries``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shipyard.graph import gjson

__all__ = [
    "ROUTER_TYPES",
    "BANDIT_POLICIES",
    "BanditConfig",
    "Step",
    "Node",
    "Graph",
    "GraphSpecError",
    "spec_errors",
    "spec_warnings",
    "parse_graph",
]

ROUTER_TYPES = ("Sequence", "Switch", "Ensemble", "Splitter", "Bandit")
BANDIT_POLICIES = ("epsilon-greedy", "ucb1", "thompson")
DATA_VALUES = ("$request", "$response")
DEPENDENCIES = ("Soft", "Hard")
TARGET_FIELDS = ("nodeName", "serviceName", "serviceUrl")

_STEP_FIELDS = {
    "name",
    "nodeName",
    "serviceName",
    "serviceUrl",
    "data",
    "condition",
    "weight",
    "dependency",
    "mapPredictionsToInstances",
    "inputMap",
    "timeout",
    "retries",
}
_BANDIT_FIELDS = {"policy", "epsilon", "seed"}


@dataclass(frozen=True)
class BanditConfig:
    """How a Bandit node picks among its steps."""

    policy: str = "thompson"
    epsilon: float = 0.1
    seed: int | None = None


@dataclass(frozen=True)
class Step:
    """One step of a node: a call to a service, a URL, or another node."""

    name: str
    node_name: str | None = None
    service_name: str | None = None
    service_url: str | None = None
    data: str = "$request"
    condition: str | None = None
    weight: int | None = None
    dependency: str = "Soft"
    map_predictions_to_instances: bool = True
    input_map: dict[str, str] | None = None
    timeout_s: float | None = None
    retries: int = 0

    @property
    def target(self) -> str:
        """``service 'iris'``, ``url 'http://...'`` or ``node 'sub'``: for messages."""
        if self.node_name is not None:
            return f"node {self.node_name!r}"
        if self.service_name is not None:
            return f"service {self.service_name!r}"
        return f"url {self.service_url!r}"


@dataclass(frozen=True)
class Node:
    """A router node."""

    name: str
    router_type: str
    steps: tuple[Step, ...]
    bandit: BanditConfig | None = None


@dataclass(frozen=True)
class Graph:
    """A whole graph: its nodes (``root`` is the entry) and timeouts in seconds."""

    namespace: str
    name: str
    nodes: dict[str, Node]
    timeout_s: float | None = None
    step_timeout_s: float | None = None

    @property
    def root(self) -> Node:
        return self.nodes["root"]

    def service_names(self) -> list[str]:
        """Every serviceName the graph calls, in order of first appearance."""
        seen: dict[str, None] = {}
        for node in self.nodes.values():
            for step in node.steps:
                if step.service_name is not None:
                    seen.setdefault(step.service_name, None)
        return list(seen)


class GraphSpecError(ValueError):
    """An invalid graph spec; ``path`` names the field, ``errors`` holds every problem found."""

    def __init__(self, path: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
        self.errors = errors if errors is not None else [(path, message)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_seconds(value: Any, path: str, errors: list[tuple[str, str]]) -> None:
    if not _is_number(value):
        errors.append((path, f"must be a number of seconds, got {value!r}"))
    elif value <= 0:
        errors.append((path, f"must be > 0, got {value!r}"))


def spec_errors(spec: Any) -> list[tuple[str, str]]:
    """Every problem in ``spec`` as (field path, message); empty when the graph is valid."""
    errors: list[tuple[str, str]] = []
    if not isinstance(spec, dict):
        return [("spec", "must be an object")]
    nodes = spec.get("nodes")
    if nodes is None:
        return [("spec.nodes", "is required (an object of nodes with a node named 'root')")]
    if not isinstance(nodes, dict):
        return [("spec.nodes", "must be an object of nodes")]
    if "root" not in nodes:
        errors.append(("spec.nodes", "needs a node named 'root' (the graph's entry)"))
    if "timeout" in spec and spec["timeout"] is not None:
        _positive_seconds(spec["timeout"], "spec.timeout", errors)
    timeouts = spec.get("routerTimeouts")
    if timeouts is not None:
        if not isinstance(timeouts, dict):
            errors.append(("spec.routerTimeouts", "must be an object"))
        elif timeouts.get("serviceClient") is not None:
            _positive_seconds(timeouts["serviceClient"], "spec.routerTimeouts.serviceClient", errors)

    for node_name, node in nodes.items():
        _node_errors(str(node_name), node, nodes, errors)
    errors.extend(_cycle_errors(nodes))
    return errors


def _node_errors(node_name: str, node: Any, nodes: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    where = f"spec.nodes.{node_name}"
    if not isinstance(node, dict):
        errors.append((where, "must be an object with routerType and steps"))
        return
    router_type = node.get("routerType")
    if router_type is None:
        errors.append((f"{where}.routerType", f"is required (one of {', '.join(ROUTER_TYPES)})"))
    elif router_type not in ROUTER_TYPES:
        errors.append((f"{where}.routerType", f"must be one of {', '.join(ROUTER_TYPES)}, got {router_type!r}"))

    bandit = node.get("bandit")
    if bandit is not None:
        if router_type != "Bandit":
            errors.append((f"{where}.bandit", f"applies to routerType Bandit only (this node is {router_type})"))
        _bandit_errors(bandit, f"{where}.bandit", errors)

    steps = node.get("steps")
    if steps is None or (isinstance(steps, list) and not steps):
        errors.append((f"{where}.steps", "needs at least one step"))
        return
    if not isinstance(steps, list):
        errors.append((f"{where}.steps", "must be a list of steps"))
        return
    if router_type == "Bandit" and len(steps) < 2:
        errors.append((f"{where}.steps", f"a Bandit node needs at least 2 steps (arms), got {len(steps)}"))

    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        step_where = f"{where}.steps[{index}]"
        if not isinstance(step, dict):
            errors.append((step_where, "must be an object"))
            continue
        name = step.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            errors.append((f"{step_where}.name", f"must be a non-empty string, got {name!r}"))
            name = None
        key = name if name is not None else str(index)
        if key in seen:
            first = seen[key]
            what = f"step name {key!r}" if name is not None else f"unnamed step {index}'s index name {key!r}"
            errors.append((f"{step_where}.name", f"{what} is already used by steps[{first}]; step names must be unique within a node"))
        else:
            seen[key] = index
        _step_errors(step, step_where, router_type, nodes, errors)

    if router_type == "Splitter":
        weights = [step.get("weight") for step in steps if isinstance(step, dict)]
        if all(_is_int(weight) for weight in weights) and weights and sum(weights) != 100:
            errors.append((f"{where}.steps", f"Splitter weights must sum to 100, got {sum(weights)}"))


def _bandit_errors(bandit: Any, where: str, errors: list[tuple[str, str]]) -> None:
    if not isinstance(bandit, dict):
        errors.append((where, "must be an object (policy, epsilon, seed)"))
        return
    for key in bandit:
        if key not in _BANDIT_FIELDS:
            errors.append((f"{where}.{key}", f"unknown field (known: {', '.join(sorted(_BANDIT_FIELDS))})"))
    policy = bandit.get("policy")
    if policy is not None and policy not in BANDIT_POLICIES:
        errors.append((f"{where}.policy", f"must be one of {', '.join(BANDIT_POLICIES)}, got {policy!r}"))
    epsilon = bandit.get("epsilon")
    if epsilon is not None and (not _is_number(epsilon) or not 0 <= epsilon <= 1):
        errors.append((f"{where}.epsilon", f"must be a number between 0 and 1, got {epsilon!r}"))
    seed = bandit.get("seed")
    if seed is not None and not _is_int(seed):
        errors.append((f"{where}.seed", f"must be an integer, got {seed!r}"))


def _step_errors(
    step: dict[str, Any], where: str, router_type: Any, nodes: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    targets = [field for field in TARGET_FIELDS if step.get(field) is not None]
    if len(targets) != 1:
        found = f"found {', '.join(targets)}" if targets else "found none"
        errors.append((where, f"needs exactly one of nodeName, serviceName or serviceUrl ({found})"))
    for field in targets:
        if not isinstance(step[field], str) or not step[field]:
            errors.append((f"{where}.{field}", f"must be a non-empty string, got {step[field]!r}"))
    node_name = step.get("nodeName")
    if isinstance(node_name, str) and node_name and node_name not in nodes:
        errors.append((f"{where}.nodeName", f"names no node of this graph: {node_name!r}"))
    url = step.get("serviceUrl")
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            errors.append((f"{where}.serviceUrl", f"must be an http:// or https:// URL, got {url!r}"))

    data = step.get("data")
    if data is not None and data not in DATA_VALUES:
        errors.append((f"{where}.data", f"must be $request or $response, got {data!r}"))
    dependency = step.get("dependency")
    if dependency is not None and dependency not in DEPENDENCIES:
        errors.append((f"{where}.dependency", f"must be Soft or Hard, got {dependency!r}"))
    condition = step.get("condition")
    if condition is not None:
        if not isinstance(condition, str):
            errors.append((f"{where}.condition", f"must be a GJSON query string, got {condition!r}"))
        elif condition:
            try:
                gjson.parse(condition)
            except gjson.GjsonError as exc:
                errors.append((f"{where}.condition", f"is not a supported GJSON query: {exc}"))
    weight = step.get("weight")
    if weight is not None and (not _is_int(weight) or weight < 0):
        errors.append((f"{where}.weight", f"must be a whole number >= 0, got {weight!r}"))
    elif weight is None and router_type == "Splitter":
        errors.append((f"{where}.weight", "is required on a Splitter node's steps"))
    mapping = step.get("mapPredictionsToInstances")
    if mapping is not None and not isinstance(mapping, bool):
        errors.append((f"{where}.mapPredictionsToInstances", f"must be true or false, got {mapping!r}"))
    input_map = step.get("inputMap")
    if input_map is not None:
        if not isinstance(input_map, dict):
            errors.append((f"{where}.inputMap", "must be an object mapping output names to input names"))
        else:
            for output, target in input_map.items():
                if not isinstance(target, str) or not target:
                    errors.append((f"{where}.inputMap.{output}", f"must be an input name, got {target!r}"))
            targets_named = [target for target in input_map.values() if isinstance(target, str)]
            duplicated = sorted({target for target in targets_named if targets_named.count(target) > 1})
            if duplicated:
                errors.append((f"{where}.inputMap", f"maps several outputs to the same input: {', '.join(duplicated)}"))
    if step.get("timeout") is not None:
        _positive_seconds(step["timeout"], f"{where}.timeout", errors)
    retries = step.get("retries")
    if retries is not None and (not _is_int(retries) or retries < 0):
        errors.append((f"{where}.retries", f"must be a whole number >= 0, got {retries!r}"))


def _cycle_errors(nodes: dict[str, Any]) -> list[tuple[str, str]]:
    """A nodeName edge that closes a cycle, once per cycle."""
    edges: dict[str, list[tuple[int, str]]] = {}
    for name, node in nodes.items():
        steps = node.get("steps") if isinstance(node, dict) else None
        if not isinstance(steps, list):
            continue
        edges[name] = [
            (index, step["nodeName"])
            for index, step in enumerate(steps)
            if isinstance(step, dict) and isinstance(step.get("nodeName"), str) and step["nodeName"] in nodes
        ]
    errors: list[tuple[str, str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for index, target in edges.get(name, []):
            if state.get(target) == 1:
                cycle = trail[trail.index(target) :] + [name, target] if target in trail else [name, target]
                errors.append(
                    (f"spec.nodes.{name}.steps[{index}].nodeName", f"makes a cycle: {' -> '.join(cycle)}")
                )
            elif state.get(target) is None:
                visit(target, trail + [name])
        state[name] = 2

    ordered = (["root"] if "root" in edges else []) + [name for name in edges if name != "root"]
    for name in ordered:
        if state.get(name) is None:
            visit(name, [])
    return errors


def spec_warnings(spec: Any) -> list[tuple[str, str]]:
    """Fields that are valid but have no effect where they are (by path)."""
    warnings: list[tuple[str, str]] = []
    nodes = spec.get("nodes") if isinstance(spec, dict) else None
    if not isinstance(nodes, dict):
        return warnings
    for node_name, node in nodes.items():
        if not isinstance(node, dict) or not isinstance(node.get("steps"), list):
            continue
        router_type = node.get("routerType")
        for index, step in enumerate(node["steps"]):
            if not isinstance(step, dict):
                continue
            where = f"spec.nodes.{node_name}.steps[{index}]"
            for key in step:
                if key not in _STEP_FIELDS:
                    warnings.append((f"{where}.{key}", "is not a step field; ignored"))
            if step.get("condition") and router_type in ("Ensemble", "Splitter", "Bandit"):
                warnings.append((f"{where}.condition", f"has no effect on a {router_type} node (only Sequence and Switch check conditions)"))
            if step.get("weight") is not None and router_type != "Splitter":
                warnings.append((f"{where}.weight", f"has no effect on a {router_type} node (only Splitter uses weights)"))
            if step.get("data") == "$response" and router_type != "Sequence":
                warnings.append((f"{where}.data", f"has no effect on a {router_type} node (every step gets the node's input)"))
            if step.get("dependency") is not None and router_type in ("Switch", "Splitter", "Bandit"):
                warnings.append((f"{where}.dependency", f"has no effect on a {router_type} node (its one chosen step's answer is the node's answer)"))
            if step.get("nodeName") is not None and step.get("retries"):
                warnings.append((f"{where}.retries", "has no effect on a nodeName step (retries apply to service calls)"))
    return warnings


def parse_graph(namespace: str, name: str, spec: dict[str, Any]) -> Graph:
    """The typed graph; raises ``GraphSpecError`` (the first problem, all in ``.errors``)."""
    errors = spec_errors(spec)
    if errors:
        path, message = errors[0]
        raise GraphSpecError(path, message, errors)
    nodes: dict[str, Node] = {}
    for node_name, raw in spec["nodes"].items():
        steps = tuple(_step(index, step) for index, step in enumerate(raw["steps"]))
        bandit = None
        if raw["routerType"] == "Bandit":
            options = raw.get("bandit") or {}
            bandit = BanditConfig(
                policy=options.get("policy") or "thompson",
                epsilon=float(options["epsilon"]) if options.get("epsilon") is not None else 0.1,
                seed=options.get("seed"),
            )
        nodes[node_name] = Node(node_name, raw["routerType"], steps, bandit)
    timeouts = spec.get("routerTimeouts") or {}
    return Graph(
        namespace=namespace,
        name=name,
        nodes=nodes,
        timeout_s=float(spec["timeout"]) if spec.get("timeout") is not None else None,
        step_timeout_s=float(timeouts["serviceClient"]) if timeouts.get("serviceClient") is not None else None,
    )


def _step(index: int, raw: dict[str, Any]) -> Step:
    return Step(
        name=raw.get("name") or str(index),
        node_name=raw.get("nodeName"),
        service_name=raw.get("serviceName"),
        service_url=raw.get("serviceUrl"),
        data=raw.get("data") or "$request",
        condition=raw.get("condition") or None,
        weight=raw.get("weight"),
        dependency=raw.get("dependency") or "Soft",
        map_predictions_to_instances=raw.get("mapPredictionsToInstances") is not False,
        input_map=dict(raw["inputMap"]) if raw.get("inputMap") is not None else None,
        timeout_s=float(raw["timeout"]) if raw.get("timeout") is not None else None,
        retries=int(raw.get("retries") or 0),
    )
