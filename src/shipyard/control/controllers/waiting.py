"""Conditions shared by the controllers of one-shot objects (data operations, BatchJobs)."""

from __future__ import annotations

from typing import Any, Callable


def set_waiting(status: dict[str, Any], reason: str, message: str,
                condition: Callable[[str, str, str], dict[str, Any]]) -> bool:
    """Put ``status`` in phase Pending with one ``Waiting`` condition (made by ``condition``); its
    lastTransitionTime is kept while the reason stays the same. True when the reason is new (worth an event)."""
    before = next((c for c in status.get("conditions") or [] if c.get("type") == "Waiting"), None)
    entry = condition("Waiting", reason, message)
    same = before is not None and before.get("reason") == reason
    if same:
        entry["lastTransitionTime"] = before.get("lastTransitionTime", entry["lastTransitionTime"])
    status.update(phase="Pending", conditions=[entry])
    return not same
