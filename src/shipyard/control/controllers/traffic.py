"""Where an InferenceService's traffic goes, with Knative's canary semantics (pure functions).

- no ``canaryTrafficPercent``: 100% to the latest ready revision (it becomes the rolled-out one);
- ``canaryTrafficPercent: N``: N% to the latest ready revision, the rest to the rolled-out one;
- ``canaryTrafficPercent: 0``: everything stays on the rolled-out one (rolled back and pinned),
  the latest is reachable through its ``latest`` tag only (blue-green: deploy dark, test, promote);
- a pin (``serving.shipyard.io/pinned-revision``, set by ``shipyard rollout rollback|pin``) sends
  everything to the pinned revision, whatever the canary field says.

Traffic only moves to ready revisions: until every revision of the wanted split is ready, the
split last published stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LATEST, PREV = "latest", "prev"


@dataclass(frozen=True)
class Target:
    """A share of an InferenceService's traffic."""

    revision: str
    percent: int
    tag: str | None = None


def desired_traffic(latest_ready: str | None, rolled_out: str | None, canary: int | None,
                    pinned: str | None) -> list[Target]:
    """The split the spec asks for, given the latest ready and the rolled-out revisions."""
    if pinned:
        if latest_ready is None or latest_ready == pinned:
            return [Target(pinned, 100, LATEST if latest_ready == pinned else PREV)]
        return [Target(pinned, 100, PREV), Target(latest_ready, 0, LATEST)]
    if latest_ready is None:
        return []
    if canary is None or rolled_out is None or rolled_out == latest_ready:
        return [Target(latest_ready, 100, LATEST)]
    canary = max(0, min(100, canary))
    return [Target(latest_ready, canary, LATEST), Target(rolled_out, 100 - canary, PREV)]


def can_switch(targets: list[Target], ready: set[str]) -> bool:
    """True when every revision the split sends traffic to is ready (a dark 0% revision does not hold it)."""
    return bool(targets) and all(target.revision in ready for target in targets if target.percent > 0)


def rolled_out_after(targets: list[Target], rolled_out: str | None,
                     previous: str | None) -> tuple[str | None, str | None]:
    """(latestRolledoutRevision, previousRolledoutRevision) once ``targets`` is published: a revision
    that gets all the traffic is rolled out."""
    full = [target.revision for target in targets if target.percent == 100]
    if full and full[0] != rolled_out:
        return full[0], rolled_out
    return rolled_out, previous


def to_status(targets: list[Target]) -> list[dict[str, Any]]:
    """KServe's ``status.components.predictor.traffic``."""
    entries = []
    for target in targets:
        entry: dict[str, Any] = {"revisionName": target.revision, "percent": target.percent,
                                 "latestRevision": target.tag == LATEST}
        if target.tag:
            entry["tag"] = target.tag
        entries.append(entry)
    return entries


def from_status(entries: list[dict[str, Any]] | None) -> list[Target]:
    return [Target(entry["revisionName"], int(entry.get("percent", 0)), entry.get("tag"))
            for entry in entries or [] if entry.get("revisionName")]


def describe(targets: list[Target]) -> str:
    """'sklearn-iris-predictor-00002 20% (latest), sklearn-iris-predictor-00001 80% (prev)'."""
    if not targets:
        return "none"
    return ", ".join(f"{t.revision} {t.percent}%" + (f" ({t.tag})" if t.tag else "") for t in targets)
