"""An InferenceService's components: the predictor, and the optional transformer and explainer.

Each component is reconciled as the predictor is (revisions, replicas, autoscaling, its own route
table), under a *component key*: the service's name for the predictor, ``<name>:transformer`` and
``<name>:explainer`` for the others (``:`` is not allowed in a Kubernetes name, so a key never
collides with a service). Their revisions are ``<name>-transformer-00001``..., as KServe names a
component's Knative revisions.

The gateway sends ``:predict`` / ``infer`` to the transformer when there is one, and ``:explain`` /
``explain`` to the explainer (else the transformer, else the predictor). A transformer or explainer
replica reaches the predictor through the gateway, with the Host header
``<name>-predictor.<namespace>.<domain>``: its calls follow the predictor's traffic split, wake a
predictor scaled to zero and are logged as the predictor's.
"""

from __future__ import annotations

import copy
from typing import Any

from shipyard.control.resources import Resource

PREDICTOR, TRANSFORMER, EXPLAINER = "predictor", "transformer", "explainer"
COMPONENTS = (PREDICTOR, TRANSFORMER, EXPLAINER)
#: Components that call the predictor.
CALLERS = (TRANSFORMER, EXPLAINER)
SEPARATOR = ":"
#: Annotations that name predictor revisions; a transformer's or explainer's key does not carry them.
PREDICTOR_ONLY_ANNOTATIONS = ("serving.shipyard.io/pinned-revision", "serving.shipyard.io/shadow-revision",
                              "serving.shipyard.io/shadow-percent")


def component_key(isvc: str, component: str) -> str:
    """The key a component is reconciled and routed under."""
    return isvc if component == PREDICTOR else f"{isvc}{SEPARATOR}{component}"


def split_key(key: str) -> tuple[str, str]:
    """(service name, component) of a component key."""
    isvc, _, component = key.partition(SEPARATOR)
    return isvc, component or PREDICTOR


def revision_prefix(key: str) -> str:
    """What a component's revision names start with: ``<name>-<component>``."""
    isvc, component = split_key(key)
    return f"{isvc}-{component}"


def predictor_host(isvc: str, namespace: str, domain: str) -> str:
    """The Host a transformer or explainer sends to reach the predictor through the gateway."""
    return f"{isvc}-{PREDICTOR}.{namespace}.{domain}"


def present(resource: Resource) -> list[str]:
    """The components a service's spec sets, predictor first."""
    spec = resource.spec or {}
    return [component for component in COMPONENTS if component == PREDICTOR or isinstance(spec.get(component), dict)]


def component_resource(resource: Resource, component: str) -> Resource:
    """A stand-in resource for one component, shaped as a service with only a predictor: the controller
    reconciles it with the predictor's code. Its status is the component's part of the service's status."""
    if component == PREDICTOR:
        return resource
    part = copy.copy(resource)
    part.name = component_key(resource.name, component)
    part.spec = {PREDICTOR: (resource.spec or {}).get(component) or {}}
    part.annotations = {key: value for key, value in resource.annotations.items()
                        if key not in PREDICTOR_ONLY_ANNOTATIONS}
    components = (resource.status or {}).get("components") or {}
    part.status = {"components": {PREDICTOR: components.get(component) or {}}} if components.get(component) else {}
    return part


def component_status(service_status: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """From a stand-in's status: (its ``components.predictor`` part, its PredictorReady condition)."""
    part = ((service_status.get("components") or {}).get(PREDICTOR)) or {}
    ready = next((c for c in service_status.get("conditions") or [] if c.get("type") == "PredictorReady"), None)
    return part, ready
