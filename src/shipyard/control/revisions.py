"""Revision identity: which parts of ``spec.predictor`` make a new immutable revision.

A revision is a snapshot of the predictor minus the fields that only steer the rollout or the
scale (Knative keeps those outside the revision template too): changing ``canaryTrafficPercent``
moves traffic between existing revisions, it never starts a new one. Revisions are named
``<isvc>-predictor-00001``, ``-00002``... by the store, in creation order.
"""

from __future__ import annotations

import hashlib
from typing import Any

from shipyard.control.resources import canonical_json

#: Predictor fields that are not part of a revision.
ROLLOUT_FIELDS = frozenset({
    "canaryTrafficPercent", "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
    "autoScaling", "deploymentStrategy",
})


def revision_spec(predictor: dict[str, Any]) -> dict[str, Any]:
    """The part of a predictor that a revision freezes."""
    return {key: value for key, value in predictor.items() if key not in ROLLOUT_FIELDS}


def predictor_fingerprint(predictor: dict[str, Any]) -> str:
    """A stable hash of the revision part of a predictor (key order and rollout fields do not count)."""
    return hashlib.sha256(canonical_json(revision_spec(predictor)).encode()).hexdigest()[:16]


def revision_key(namespace: str, revision: str) -> str:
    """A revision's name across namespaces, ``namespace/revision`` (names are unique only within one);
    the gateway keeps its in-flight counts and answer windows under it."""
    return f"{namespace}/{revision}"
