"""The activator: holds requests for a revision that has no ready replica, and meters every revision.

Knative's activator sits in the path of a revision scaled to zero: it buffers the requests, pokes
the autoscaler, and forwards them once a pod is ready. Here that is in-process:

- ``begin(key)`` / ``end(key)`` around every proxied request (held ones included) feed one
  ``ConcurrencyMeter`` per revision key (``namespace/revision``); the controller ``take``s the
  time-averaged concurrency and the number of requests every autoscaling tick.
- ``hold(table, backend)`` parks a request whose backend has no replica (the table marks such a
  backend ``activate``): at most ``table.activator_queue`` per revision (beyond: 503 +
  Retry-After), each for at most ``table.activator_timeout_s`` seconds (then 503). The first held
  request calls ``on_demand(key)`` so the controller scales the revision from zero at once.
- ``refreshed(router)`` runs after every route-table load: a held revision that has replicas now
  gets its requests released (oldest first); one that left the table sends them back to be
  routed again; one whose replicas cannot start (``failing``) gets them refused with the reason.

Cold starts (first held request -> its release to a ready replica) are kept per revision: the
last one and the median of the recent ones, for ``/metrics`` and the service's status.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from shipyard.control.autoscaler.metrics import ConcurrencyMeter
from shipyard.control.gateway.observe import percentile
from shipyard.control.gateway.routing import Backend, RouteTable, Router
from shipyard.protocol.errors import NotReady

#: Cold starts remembered per revision (for the median).
COLD_START_SAMPLES = 100


class Refused(NotReady):
    """A request the activator will not hold or stopped holding (503 + Retry-After: 1)."""


@dataclass
class _Waiter:
    future: asyncio.Future[Backend | None]
    revision: str
    table_key: tuple[str, str]
    since: float


@dataclass
class ColdStarts:
    """One revision's recent cold starts, in seconds."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=COLD_START_SAMPLES))
    count: int = 0

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.count += 1

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.recent)
        return {"last": round(self.recent[-1], 3), "p50": round(percentile(ordered, 0.5), 3), "count": self.count}


class Activator:
    """Per-revision concurrency meters and the hold queues of revisions without a ready replica."""

    def __init__(self, on_demand: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_demand = on_demand
        self.clock = clock
        self._meters: dict[str, ConcurrencyMeter] = {}
        self._held: dict[str, deque[_Waiter]] = {}
        self._cold: dict[str, ColdStarts] = {}
        #: Requests refused per (revision key, reason): queue_full, timeout, failing.
        self.refused: dict[tuple[str, str], int] = {}

    # -- metering ------------------------------------------------------------------------------------
    def begin(self, key: str) -> None:
        """A request for revision ``key`` arrived (held or forwarded)."""
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = ConcurrencyMeter()
        meter.begin(self.clock())

    def end(self, key: str) -> None:
        """The request ``begin`` counted is answered (or refused)."""
        meter = self._meters.get(key)
        if meter is not None:
            meter.end(self.clock())

    def take(self, key: str) -> tuple[float, int]:
        """(time-averaged requests in flight, requests that arrived) for ``key`` since the last take."""
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = ConcurrencyMeter()
        return meter.take(self.clock())

    def forget(self, key: str) -> None:
        """Drop a revision's meter and cold-start history (the revision is gone)."""
        if not self._held.get(key):
            self._meters.pop(key, None)
            self._cold.pop(key, None)

    # -- holding -------------------------------------------------------------------------------------
    def held(self, key: str | None = None) -> int:
        """Requests held now (for one revision, or all)."""
        if key is not None:
            return len(self._held.get(key, ()))
        return sum(len(queue) for queue in self._held.values())

    async def hold(self, table: RouteTable, backend: Backend) -> Backend | None:
        """Wait until ``backend``'s revision has a ready replica; returns the backend to send to (of the
        table loaded then), or None when the revision left the table (route the request again).
        Raises ``Refused`` (503) when the queue is full, the wait times out or the revision fails."""
        key, service = backend.key, f"inference service '{table.namespace}/{table.isvc}'"
        if backend.failing:
            self._count(key, "failing")
            raise Refused(f"revision '{backend.revision}' of {service} cannot start a replica: {backend.failing}")
        queue = self._held.setdefault(key, deque())
        if len(queue) >= table.activator_queue:
            self._count(key, "queue_full")
            raise Refused(f"revision '{backend.revision}' of {service} is starting and the activator already holds "
                          f"{len(queue)} request(s) for it (serving.shipyard.io/activator-queue is "
                          f"{table.activator_queue}); retry in a second")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), backend.revision, table.key, self.clock())
        queue.append(waiter)
        if self.on_demand is not None:
            self.on_demand(key)
        try:
            async with asyncio.timeout(table.activator_timeout_s):
                return await waiter.future
        except TimeoutError:
            self._count(key, "timeout")
            raise Refused(f"revision '{backend.revision}' of {service} had no ready replica within "
                          f"{table.activator_timeout_s:g}s of holding this request "
                          f"(serving.shipyard.io/activator-timeout); retry later") from None
        finally:
            if waiter in queue:
                queue.remove(waiter)
            if not queue and self._held.get(key) is queue:
                del self._held[key]

    def refreshed(self, router: Router) -> None:
        """New route tables are loaded: release, re-route or refuse what is held."""
        now = self.clock()
        for key, queue in list(self._held.items()):
            waiting = [w for w in queue if not w.future.done()]
            if not waiting:
                continue
            table = router.lookup(*waiting[0].table_key)
            backend = _backend_of(table, waiting[0].revision) if table is not None else None
            if backend is not None and len(backend.pool):
                self._cold.setdefault(key, ColdStarts()).add(now - min(w.since for w in waiting))
                for waiter in waiting:
                    waiter.future.set_result(backend)
            elif backend is None:
                for waiter in waiting:
                    waiter.future.set_result(None)
            elif backend.failing:
                service = f"inference service '{table.namespace}/{table.isvc}'"  # type: ignore[union-attr]
                for waiter in waiting:
                    self._count(key, "failing")
                    waiter.future.set_exception(Refused(f"revision '{backend.revision}' of {service} cannot start "
                                                        f"a replica: {backend.failing}"))

    def _count(self, key: str, reason: str) -> None:
        self.refused[(key, reason)] = self.refused.get((key, reason), 0) + 1

    # -- reports -------------------------------------------------------------------------------------
    def cold_starts(self, key: str) -> dict[str, float | int] | None:
        """``{"last": s, "p50": s, "count": n}`` of a revision's cold starts, None before the first."""
        cold = self._cold.get(key)
        return cold.summary() if cold is not None and cold.recent else None

    def prometheus(self) -> list[str]:
        """The activator's numbers as Prometheus text lines."""
        lines = ["# HELP shipyard_gateway_held_requests Requests the activator holds for a revision without a "
                 "ready replica.", "# TYPE shipyard_gateway_held_requests gauge"]
        for key in sorted(set(self._held) | set(self._cold)):
            lines.append(f'shipyard_gateway_held_requests{{revision="{key}"}} {self.held(key)}')
        lines += ["# HELP shipyard_gateway_cold_start_seconds Time from a revision's first held request to its "
                  "release to a ready replica.", "# TYPE shipyard_gateway_cold_start_seconds summary"]
        for key in sorted(self._cold):
            summary = self.cold_starts(key)
            if summary is None:
                continue
            lines += [f'shipyard_gateway_cold_start_seconds{{revision="{key}",quantile="0.5"}} {summary["p50"]}',
                      f'shipyard_gateway_cold_start_seconds_count{{revision="{key}"}} {summary["count"]}',
                      f'shipyard_gateway_cold_start_last_seconds{{revision="{key}"}} {summary["last"]}']
        lines += ["# HELP shipyard_gateway_activator_refused_total Requests answered 503 by the activator.",
                  "# TYPE shipyard_gateway_activator_refused_total counter"]
        for (key, reason), count in sorted(self.refused.items()):
            lines.append(f'shipyard_gateway_activator_refused_total{{revision="{key}",reason="{reason}"}} {count}')
        return lines


def _backend_of(table: RouteTable, revision: str) -> Backend | None:
    """The backend (or shadow) of ``table`` serving exactly ``revision``."""
    for backend in table.backends:
        if backend.revision == revision:
            return backend
    if table.shadow is not None and table.shadow.revision == revision:
        return table.shadow
    return None
