"""Shipyard's rules for KServe's InferenceGraph (``serving.kserve.io/v1alpha1``).

KServe's vendored schema (``schemas/inferencegraph.v1alpha1.json.gz``) is checked by validation.py,
extended here with Shipyard's router fields (``extend_schema``): routerType ``Bandit`` with a node's
``bandit`` (policy, epsilon, seed), and a step's ``inputMap`` (V2 output name -> next input name),
``timeout`` (seconds) and ``retries``. The graph's own rules (a ``root`` node, one target per step,
splitter weights summing to 100, no cycles, conditions that parse...) are the engine's
(``shipyard.graph.spec.spec_errors``), so apply refuses exactly what the gateway could not run.
Warnings name the fields that have no meaning here: the graph runs inside the gateway, not as a
router deployment of its own. Every problem is ``(field path, message)``.
"""

from __future__ import annotations

import re
from typing import Any

Problem = tuple[str, str]

#: ``spec.<field>`` KServe uses for the router's pods; the gateway runs the graph, so none applies.
POD_FIELDS = ("resources", "affinity", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "tolerations",
              "nodeSelector", "nodeName", "serviceAccountName")
#: ``spec.routerTimeouts.<field>`` for the router's HTTP server (the gateway has its own).
SERVER_TIMEOUTS = ("serverRead", "serverWrite", "serverIdle")
BANDIT_POLICIES = ("epsilon-greedy", "ucb1", "thompson")
#: An InferenceService name (a DNS-1035 label), as validation.ISVC_NAME.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def extend_schema(schema: dict[str, Any]) -> None:
    """Add Shipyard's router fields to KServe's InferenceGraph schema (in place)."""
    node = schema["properties"]["spec"]["properties"]["nodes"]["additionalProperties"]
    router_type = node["properties"]["routerType"]
    if "Bandit" not in router_type["enum"]:
        router_type["enum"] = [*router_type["enum"], "Bandit"]
    node["properties"]["bandit"] = {
        "description": "Shipyard: a Bandit node's policy (thompson by default), epsilon for epsilon-greedy, "
                       "and a seed for reproducible choices.",
        "type": "object",
        "properties": {
            "policy": {"type": "string", "enum": list(BANDIT_POLICIES)},
            "epsilon": {"type": "number"},
            "seed": {"type": "integer", "format": "int64"},
        },
    }
    step = node["properties"]["steps"]["items"]["properties"]
    step["inputMap"] = {"description": "Shipyard: V2 output name -> the next step's input name.",
                        "type": "object", "additionalProperties": {"type": "string"}}
    step["timeout"] = {"description": "Shipyard: seconds this step may take.", "type": "number"}
    step["retries"] = {"description": "Shipyard: retries of this (idempotent) step on a transport error or 5xx.",
                       "type": "integer", "format": "int32"}


def errors(document: dict[str, Any]) -> list[Problem]:
    """Every problem of an InferenceGraph document the schema does not catch, by field path."""
    spec = document.get("spec")
    if spec is None:
        return [("spec", "required field is missing (an InferenceGraph needs spec.nodes with a 'root' node)")]
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), dict):
        return []  # the schema said so
    problems: list[Problem] = []
    for node_name, node in spec["nodes"].items():
        steps = node.get("steps") if isinstance(node, dict) else None
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            service = step.get("serviceName") if isinstance(step, dict) else None
            if isinstance(service, str) and service and not _SERVICE_NAME.match(service):
                problems.append((f"spec.nodes.{node_name}.steps[{index}].serviceName",
                                 f"{service!r} is not an InferenceService name (a service of this graph's "
                                 "namespace: lower case letters, digits and '-'); use serviceUrl for anything else"))
    from shipyard.graph.spec import spec_errors

    try:
        problems += spec_errors(spec)
    except (TypeError, AttributeError, KeyError, ValueError):  # a shape the schema reports by path
        pass
    return list(dict.fromkeys(problems))


def warnings(document: dict[str, Any]) -> list[Problem]:
    """Fields accepted but without a meaning here (the gateway runs the graph), by path."""
    spec = document.get("spec")
    if not isinstance(spec, dict):
        return []
    found: list[Problem] = []
    for key in POD_FIELDS:
        if key in spec:
            found.append((f"spec.{key}", "not honoured: the graph runs inside the gateway, not as a router "
                          "deployment of its own"))
    timeouts = spec.get("routerTimeouts")
    if isinstance(timeouts, dict):
        for key in SERVER_TIMEOUTS:
            if key in timeouts:
                found.append((f"spec.routerTimeouts.{key}", "not honoured: requests reach the graph through the "
                              "gateway's HTTP server (spec.timeout and routerTimeouts.serviceClient are)"))
    from shipyard.graph.spec import spec_warnings

    try:
        found += spec_warnings(spec)
    except (TypeError, AttributeError, KeyError, ValueError):  # an invalid shape was reported as an error
        pass
    return found
