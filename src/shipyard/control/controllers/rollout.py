"""Rollout actions (promote, rollback, pin) and the automatic canary rollback policy.

Actions change only stored desired state, so they survive a control-plane restart; the controller
moves the traffic on its next pass. ``promote`` removes ``canaryTrafficPercent`` and any pin;
``rollback`` and ``pin`` record the revision to serve in the annotation
``serving.shipyard.io/pinned-revision``. Applying the service's YAML again replaces its
annotations (as ``kubectl apply`` would), which lifts the pin.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from shipyard.control.resources import INFERENCE_SERVICE
from shipyard.control.store import Store

PIN_ANNOTATION = "serving.shipyard.io/pinned-revision"
SHADOW_ANNOTATION = "serving.shipyard.io/shadow-revision"
SHADOW_PERCENT_ANNOTATION = "serving.shipyard.io/shadow-percent"
ROLLBACK_MAX_ERROR_RATE = "serving.shipyard.io/rollback-max-error-rate"
ROLLBACK_MAX_P99_MS = "serving.shipyard.io/rollback-max-p99-ms"
ROLLBACK_WINDOW_S = "serving.shipyard.io/rollback-window-s"
ROLLBACK_MIN_REQUESTS = "serving.shipyard.io/rollback-min-requests"
ACTIONS = ("promote", "rollback", "pin")


class RolloutError(Exception):
    """A rollout that cannot be done; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def predictor_status(status: dict[str, Any]) -> dict[str, Any]:
    return ((status or {}).get("components") or {}).get("predictor") or {}


def rollout(store: Store, namespace: str, name: str, action: str, revision: str | None = None) -> dict[str, Any]:
    """Promote, roll back or pin an InferenceService; returns ``{"message", "pinned"}``."""
    if action not in ACTIONS:
        raise RolloutError(400, f"action must be one of {', '.join(ACTIONS)}, got '{action}'")
    resource = store.get(INFERENCE_SERVICE.kind, namespace, name)
    if resource is None:
        raise RolloutError(404, f"inferenceservice {namespace}/{name} not found")
    if resource.deleting:
        raise RolloutError(409, f"inferenceservice {namespace}/{name} is being deleted")
    known = [r.name for r in store.revisions(namespace, name)]
    predictor = predictor_status(resource.status)
    spec = copy.deepcopy(resource.spec)
    annotations = dict(resource.annotations)
    if action == "promote":
        if revision:
            raise RolloutError(400, "promote takes no REVISION: it sends all traffic to the latest ready revision")
        canary = (spec.get("predictor") or {}).pop("canaryTrafficPercent", None)
        pin = annotations.pop(PIN_ANNOTATION, None)
        target = predictor.get("latestReadyRevision") or (known[-1] if known else None)
        if canary is None and pin is None:
            message = f"nothing to promote: all traffic already goes to the latest ready revision ({target})"
        else:
            message = f"promoting {target}: it gets all traffic"
        pinned = None
    else:
        pinned = _resolve(revision, known, namespace, name) if action == "pin" else _rollback_target(predictor)
        if pinned is None:
            raise RolloutError(409, f"{name} has no previous rolled-out revision to roll back to")
        annotations[PIN_ANNOTATION] = pinned
        message = f"pinned to {pinned}: it gets all traffic once ready"
    resource.spec, resource.annotations = spec, annotations
    store.apply(resource)
    return {"message": message, "pinned": pinned}


def _rollback_target(predictor: dict[str, Any]) -> str | None:
    """During a canary (or a dark deploy), the rolled-out revision; otherwise the one before it."""
    latest, rolled_out = predictor.get("latestReadyRevision"), predictor.get("latestRolledoutRevision")
    if latest and rolled_out and latest != rolled_out:
        return rolled_out
    return predictor.get("previousRolledoutRevision")


def _resolve(revision: str | None, known: list[str], namespace: str, name: str) -> str:
    """A revision's full name from its name or number (``2``, ``00002``)."""
    if not revision:
        raise RolloutError(400, "pin needs a REVISION (e.g. " + (known[-1] if known else f"{name}-predictor-00001") + ")")
    if revision in known:
        return revision
    if revision.isdigit():
        wanted = f"{name}-predictor-{int(revision):05d}"
        if wanted in known:
            return wanted
    raise RolloutError(404, f"{namespace}/{name} has no revision '{revision}'; it has: {', '.join(known) or 'none'}")


@dataclass(frozen=True)
class RollbackPolicy:
    """Thresholds a canary must stay within (from the ``serving.shipyard.io/rollback-*`` annotations)."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    window_s: float = 30.0
    min_requests: int = 50

    def breach(self, requests: int, errors: int, p99_ms: float | None) -> str | None:
        """Why a canary with these numbers over the window must be rolled back, or None."""
        if requests < self.min_requests:
            return None
        rate = errors / requests if requests else 0.0
        if self.max_error_rate is not None and rate > self.max_error_rate:
            return (f"error rate {rate:.1%} ({errors} of {requests} requests in the last {self.window_s:g}s) "
                    f"is above {self.max_error_rate:.1%}")
        if self.max_p99_ms is not None and p99_ms is not None and p99_ms > self.max_p99_ms:
            return (f"p99 latency {p99_ms:.0f} ms over the last {self.window_s:g}s ({requests} requests) is above "
                    f"{self.max_p99_ms:g} ms")
        return None


def rollback_policy(annotations: dict[str, str]) -> RollbackPolicy | None:
    """The automatic rollback policy of a service, None when it has none; ValueError names a bad annotation."""
    if ROLLBACK_MAX_ERROR_RATE not in annotations and ROLLBACK_MAX_P99_MS not in annotations:
        return None
    return RollbackPolicy(
        max_error_rate=_number(annotations, ROLLBACK_MAX_ERROR_RATE, 0.0, 1.0),
        max_p99_ms=_number(annotations, ROLLBACK_MAX_P99_MS, 0.0),
        window_s=_number(annotations, ROLLBACK_WINDOW_S, 1.0) or 30.0,
        min_requests=int(_number(annotations, ROLLBACK_MIN_REQUESTS, 1.0) or 50),
    )


def _number(annotations: dict[str, str], key: str, low: float, high: float | None = None) -> float | None:
    if key not in annotations:
        return None
    try:
        value = float(annotations[key])
    except (TypeError, ValueError):
        value = float("nan")
    if not (value >= low and (high is None or value <= high)):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ValueError(f"metadata.annotations.{key}: expected a number {bounds}, got '{annotations[key]}'")
    return value
