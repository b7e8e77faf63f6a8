"""Inference graphs (KServe's InferenceGraph): the spec, GJSON conditions, chaining, bandits, the router.

Pure engine: imports nothing of ``shipyard.control``, ``server`` or ``cli``. The gateway supplies the
``Call`` that reaches services (``control/gateway/graphs.py``); see docs/graphs.md.
"""

from shipyard.graph.bandit import BanditState, UnknownRequestError
from shipyard.graph.chaining import ChainingError
from shipyard.graph.gjson import GjsonError
from shipyard.graph.router import Call, GraphAnswer, GraphRouter, StepError, StepResult
from shipyard.graph.spec import (
    ROUTER_TYPES,
    BanditConfig,
    Graph,
    GraphSpecError,
    Node,
    Step,
    parse_graph,
    spec_errors,
    spec_warnings,
)

__all__ = [
    "ROUTER_TYPES",
    "BanditConfig",
    "BanditState",
    "Call",
    "ChainingError",
    "GjsonError",
    "Graph",
    "GraphAnswer",
    "GraphRouter",
    "GraphSpecError",
    "Node",
    "Step",
    "StepError",
    "StepResult",
    "UnknownRequestError",
    "parse_graph",
    "spec_errors",
    "spec_warnings",
]
