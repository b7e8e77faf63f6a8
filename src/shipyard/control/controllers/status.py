"""An InferenceService's ``status`` as KServe writes it: url, conditions and ``components.predictor``.

Conditions: ``PredictorReady`` (every revision that gets traffic has a ready replica),
``IngressReady`` (the gateway routes to it), ``LatestDeploymentReady`` (the newest revision is
ready), ``TransformerReady`` / ``ExplainerReady`` when the service has those components (the
controller adds them), and ``Ready`` (all of them). A condition's ``lastTransitionTime`` moves only when its status
does; a false one says why in ``reason`` and ``message``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from shipyard.control.controllers import traffic


@dataclass
class Observed:
    """What one reconcile pass found for one service."""

    name: str
    namespace: str
    generation: int
    latest: str
    latest_ready: str | None
    rolled_out: str | None
    previous: str | None
    targets: list[traffic.Target]
    ready: set[str]


def service_status(old: dict[str, Any], seen: Observed, why_not_ready: Callable[[str], str],
                   gateway_url: str | None, domain: str) -> dict[str, Any]:
    """The new status; ``why_not_ready(revision)`` explains a revision that is not ready."""
    serving = [t for t in seen.targets if t.percent > 0]
    predictor_ok = bool(serving) and all(t.revision in seen.ready for t in serving)
    latest_ok = seen.latest in seen.ready
    ingress_ok = predictor_ok and gateway_url is not None
    conditions = [
        condition(old, "PredictorReady", predictor_ok, "RevisionNotReady",
                  why_not_ready(serving[0].revision if serving else seen.latest)),
        condition(old, "IngressReady", ingress_ok, "NoReadyBackend",
                  "the gateway is not running" if predictor_ok else "no ready revision to route to yet"),
        condition(old, "LatestDeploymentReady", latest_ok, "RevisionNotReady", why_not_ready(seen.latest)),
    ]
    conditions.append(ready_condition(old, conditions))
    predictor = {
        "latestCreatedRevision": seen.latest,
        "latestReadyRevision": seen.latest_ready,
        "latestRolledoutRevision": seen.rolled_out,
        "previousRolledoutRevision": seen.previous,
        "traffic": traffic.to_status(seen.targets),
    }
    return {
        "url": f"http://{seen.name}.{seen.namespace}.{domain}",
        "address": {"url": gateway_url} if gateway_url else {},
        "conditions": conditions,
        "components": {"predictor": {key: value for key, value in predictor.items() if value is not None}},
        "observedGeneration": seen.generation,
    }


def ready_condition(old_status: dict[str, Any], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """``Ready``: every other condition true; else the first false one's reason and message."""
    failing = next((c for c in conditions if c["status"] != "True"), None)
    return condition(old_status, "Ready", failing is None, failing.get("reason", "") if failing else "",
                     failing.get("message", "") if failing else "")


def condition(old_status: dict[str, Any], kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    """A KServe condition; ``reason`` and ``message`` are kept only when it is false."""
    status = "True" if ok else "False"
    before = next((c for c in old_status.get("conditions") or [] if c.get("type") == kind), None)
    if before and before.get("status") == status and before.get("lastTransitionTime"):
        when = before["lastTransitionTime"]
    else:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = {"type": kind, "status": status, "lastTransitionTime": when}
    if not ok:
        result.update({key: value for key, value in (("reason", reason), ("message", message)) if value})
    return result
