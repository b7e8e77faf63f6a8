"""What the gateway saw per revision: requests in flight, and a rolling window of answers.

The controller reads these in-process: in-flight counts decide when a revision that no route
points at may be stopped (drain), and the window's error rate and p99 latency drive automatic
rollback of a canary. Everything here runs on the gateway's event loop, so no locks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

#: How far back answers are kept; longer windows asked of ``stats`` see only this much.
MAX_WINDOW_S = 600.0
#: Answers kept per revision at most (memory bound under heavy load; the oldest go first).
MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class RevisionStats:
    """One revision's answers over the last ``window_s`` seconds.

    ``errors`` counts answers the revision is to blame for (HTTP 5xx, gRPC INTERNAL / UNAVAILABLE /
    DEADLINE_EXCEEDED..., and replicas that could not be reached); a client's bad request is not one.
    """

    revision: str
    window_s: float
    requests: int
    errors: int
    in_flight: int
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``fraction`` in 0..1)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Observer:
    """Per-revision in-flight counters and answer windows of (time, ok, latency_ms)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._in_flight: dict[str, int] = {}
        self._answers: dict[str, deque[tuple[float, bool, float]]] = {}

    def begin(self, revision: str) -> float:
        """A request starts on ``revision``; returns its start time for ``end``."""
        self._in_flight[revision] = self._in_flight.get(revision, 0) + 1
        return self.clock()

    def end(self, revision: str, started: float, ok: bool) -> None:
        """The request that ``begin`` started is answered (``ok`` False when the revision failed it)."""
        now = self.clock()
        left = self._in_flight.get(revision, 1) - 1
        if left:
            self._in_flight[revision] = left
        else:
            self._in_flight.pop(revision, None)
        answers = self._answers.get(revision)
        if answers is None:
            answers = self._answers[revision] = deque(maxlen=MAX_SAMPLES)
        answers.append((now, ok, (now - started) * 1000.0))
        if answers[0][0] < now - MAX_WINDOW_S:
            self._trim(answers, now)

    @staticmethod
    def _trim(answers: deque[tuple[float, bool, float]], now: float) -> None:
        cutoff = now - MAX_WINDOW_S
        while answers and answers[0][0] < cutoff:
            answers.popleft()

    def in_flight(self, revision: str) -> int:
        """Requests sent to ``revision`` (live or mirrored) that have not been answered yet."""
        return self._in_flight.get(revision, 0)

    def stats(self, revision: str, window_s: float = 30.0) -> RevisionStats:
        """Counts and latency percentiles of the answers of the last ``window_s`` seconds."""
        if window_s <= 0:
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        recent = self.since(revision, self.clock() - window_s)
        latencies = sorted(ms for _, _, ms in recent)
        return RevisionStats(
            revision=revision,
            window_s=window_s,
            requests=len(recent),
            errors=sum(1 for _, ok, _ in recent if not ok),
            in_flight=self.in_flight(revision),
            p50_ms=percentile(latencies, 0.50) if latencies else None,
            p99_ms=percentile(latencies, 0.99) if latencies else None,
            mean_ms=sum(latencies) / len(latencies) if latencies else None,
        )

    def since(self, revision: str, after: float) -> list[tuple[float, bool, float]]:
        """``(time, ok, latency_ms)`` of the answers at or after ``after`` (this observer's clock), newest
        first: only those are visited, so a short window costs little however many answers are kept."""
        found = []
        for answer in reversed(self._answers.get(revision, ())):
            if answer[0] < after:
                break
            found.append(answer)
        return found

    def revisions(self) -> list[str]:
        """Revisions with requests in flight or answers in the window."""
        return sorted(set(self._in_flight) | set(self._answers))

    def forget(self, revision: str) -> None:
        """Drop a revision's answers (it was deleted); its in-flight count stays until they end."""
        self._answers.pop(revision, None)
