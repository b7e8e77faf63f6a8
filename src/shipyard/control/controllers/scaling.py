"""How many replicas each running revision gets: one ``Autoscaler`` per revision (autoscaler/), fed every tick.

Every revision the controller keeps running (it has traffic, a tag, is the latest or is shadowed)
gets an Autoscaler configured from the service's scale fields (``minReplicas``, ``maxReplicas``,
``scaleMetric``, ``scaleTarget``: the current spec's, over the revision's own predictor, which
keeps its ``resources`` and ``containerConcurrency``) and its annotations. A revision that stops
being wanted loses its autoscaler and drains as before; wanted again, it starts afresh at its
initial scale.

Every ``tick_s`` (``serving.shipyard.io/autoscale-tick``), and at once when the activator holds a
request for a revision (``demand``), ``tick`` takes the gateway's meter of the revision (the
average requests in flight and the requests that arrived since the last tick, held ones
included), samples its replica processes' cpu and memory (cpu/memory metrics only), and asks for
a ``Decision``. Each change of the desired count is an event (``ScaledUp`` / ``ScaledDown``, with
the decision's reason) and shows in ``status.shipyard.autoscaling``.

Bounds: ``maxReplicas``, or without it what the machine could hold of the revision's replicas
(by their ``resources.requests``; one replica per cpu core of the inventory when they request
nothing). Replicas over what is free right now stay Pending (replicas.py, the ledger).

Readiness at zero: a revision scaled to zero from a ready state (or deployed at zero with
``initial-scale: 0``) stays ready for routing, as Knative's revisions do: its traffic waits at the
activator while it starts. It stops counting as ready once one of its replicas fails.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from shipyard.control.autoscaler import (AutoscaleConfig, AutoscaleError, Autoscaler, Decision, ProcessUsage,
                                         autoscale_config)
from shipyard.control.controllers.replicas import Replicas
from shipyard.control.model_source import ModelSourceError, replica_needs
from shipyard.control.resources import INFERENCE_SERVICE, Resource
from shipyard.control.revisions import ROLLOUT_FIELDS, revision_key
from shipyard.control.scheduler import Inventory, ReplicaNeeds
from shipyard.control.store import Revision, Store

log = logging.getLogger("shipyard.control")

KIND = INFERENCE_SERVICE.kind
#: The autoscale loop wakes at least this often (and at most every 10 ms).
MAX_SLEEP_S = 0.5


@dataclass
class RevisionScale:
    """One running revision's autoscaler and what it decided last."""

    namespace: str
    isvc: str
    revision: str
    read: AutoscaleConfig  # as the spec and annotations say
    config: AutoscaleConfig  # with the machine's bound when there is no maxReplicas
    needs: ReplicaNeeds
    scaler: Autoscaler
    desired: int
    next_tick: float
    decision: Decision | None = None
    last_scale_time: str | None = None
    zero_ready: bool = False
    usage: ProcessUsage | None = None
    sampled: list[int] = dataclasses.field(default_factory=list)  # the pids of the last usage sample

    @property
    def key(self) -> str:
        return revision_key(self.namespace, self.revision)


def machine_bound(inventory: Inventory | None, needs: ReplicaNeeds) -> int:
    """How many replicas asking ``needs`` the idle machine could hold (at least 1); one per cpu core when
    they ask for nothing."""
    if inventory is None:
        return 1_000_000
    total = inventory.total
    bounds = [math.floor(total.get(name, 0.0) / want + 1e-9)
              for name, want in (("cpu", needs.cpu), ("memory", needs.memory)) if want > 0]
    if needs.gpu_memory:
        per_gpu = sum(math.floor(size / needs.gpu_memory + 1e-9) for size in inventory.gpu_memory.values())
        bounds.append(per_gpu // max(needs.gpu, 1))
    elif needs.gpu:
        bounds.append(len(inventory.gpu_ids) // needs.gpu)
    if not bounds:
        bounds.append(math.floor(total.get("cpu", 1.0) + 1e-9))
    return max(1, min(bounds))


class Scaling:
    """The autoscalers of every running revision, by (namespace, revision)."""

    def __init__(self, store: Store, replicas: Replicas, inventory: Inventory | None,
                 take: Callable[[str], tuple[float, int]],
                 cold_starts: Callable[[str], dict[str, Any] | None] | None = None,
                 warn: Callable[[Resource, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.replicas = replicas
        self.inventory = inventory
        self.take = take
        self.cold_starts = cold_starts or (lambda key: None)
        self.warn = warn or (lambda resource, message: None)
        self.clock = clock
        self.states: dict[tuple[str, str], RevisionScale] = {}
        self._demanded: set[tuple[str, str]] = set()

    # -- which revisions, configured how -------------------------------------------------------------
    def sync(self, resource: Resource, revisions: dict[str, Revision], wanted: set[str], now: float) -> dict[str, int]:
        """Give every wanted revision an autoscaler (reconfigured when the knobs changed), drop the others';
        returns the replica count each wanted revision should run."""
        namespace, isvc = resource.namespace, resource.name
        predictor = resource.spec.get("predictor") or {}
        scale_fields = {key: value for key, value in predictor.items() if key in ROLLOUT_FIELDS}
        counts: dict[str, int] = {}
        for name in sorted(wanted):
            revision = revisions[name]
            read = self._config(resource, {**revision.spec, **scale_fields})
            needs = self._needs(revision.spec, resource.annotations)
            state = self.states.get((namespace, name))
            if state is None:
                state = self.states[(namespace, name)] = self._new(namespace, isvc, name, read, needs, now)
            elif state.read != read or state.needs != needs:
                state.read, state.needs, state.config = read, needs, self._bounded(read, needs)
                state.scaler.reconfigure(state.config)
                if not state.config.kpa and state.usage is None:
                    state.usage = ProcessUsage()
                state.next_tick = now  # decide with the new knobs at once
            counts[name] = state.desired
        for key in [key for key, state in self.states.items()
                    if state.namespace == namespace and state.isvc == isvc and state.revision not in wanted]:
            del self.states[key]
        return counts

    def forget(self, namespace: str, isvc: str) -> None:
        """Drop a deleted service's autoscalers."""
        for key in [k for k, s in self.states.items() if s.namespace == namespace and s.isvc == isvc]:
            del self.states[key]

    def _new(self, namespace: str, isvc: str, revision: str, read: AutoscaleConfig, needs: ReplicaNeeds,
             now: float) -> RevisionScale:
        config = self._bounded(read, needs)
        live = sum(1 for r in self.replicas.of(namespace, isvc, revision) if r.state != "draining")
        desired = max(config.initial_replicas, live)
        if config.max_replicas is not None:
            desired = min(desired, config.max_replicas)
        return RevisionScale(namespace, isvc, revision, read, config, needs, Autoscaler(config), desired, now,
                             zero_ready=config.min_replicas == 0 and config.initial_replicas == 0,
                             usage=None if config.kpa else ProcessUsage())

    def _config(self, resource: Resource, predictor: dict[str, Any]) -> AutoscaleConfig:
        try:
            return autoscale_config(predictor, resource.annotations)
        except AutoscaleError as exc:  # validated at apply; a stored spec from before still runs, on defaults
            self.warn(resource, f"{exc}; autoscaling uses the defaults until it is fixed")
            low = predictor.get("minReplicas")
            return AutoscaleConfig(min_replicas=low if isinstance(low, int) and not isinstance(low, bool)
                                   and low >= 1 else 1)

    @staticmethod
    def _needs(spec: dict[str, Any], annotations: dict[str, str]) -> ReplicaNeeds:
        try:
            return replica_needs(spec, annotations)
        except ModelSourceError:  # the replica's start reports it (replicas.py asks again)
            return ReplicaNeeds()

    def _bounded(self, read: AutoscaleConfig, needs: ReplicaNeeds) -> AutoscaleConfig:
        """The config with the machine's bound standing in for an absent maxReplicas."""
        if read.max_replicas is not None:
            return read
        bound = max(machine_bound(self.inventory, needs), read.min_replicas)
        return dataclasses.replace(read, max_replicas=bound, initial_replicas=min(read.initial_replicas, bound))

    # -- ticks ---------------------------------------------------------------------------------------
    def demand(self, key: str) -> bool:
        """The activator holds a request for revision ``key``: decide for it at the next tick (now)."""
        namespace, _, revision = key.partition("/")
        if (namespace, revision) not in self.states:
            return False
        self._demanded.add((namespace, revision))
        return True

    def next_due(self) -> float:
        """When the next revision is due for a decision (monotonic seconds)."""
        if self._demanded:
            return self.clock()
        return min((state.next_tick for state in self.states.values()), default=self.clock() + MAX_SLEEP_S)

    def tick(self, now: float) -> bool:
        """Feed and ask every due revision's autoscaler; True when a desired count changed."""
        changed = False
        demanded, self._demanded = self._demanded, set()
        for key, state in list(self.states.items()):
            if key not in demanded and now < state.next_tick:
                continue
            state.next_tick = now + state.config.tick_s
            try:
                changed |= self._decide(state, now)
            except Exception:  # one revision's trouble must not stop the others' scaling
                log.exception("autoscaling %s failed", state.key)
        return changed

    def _decide(self, state: RevisionScale, now: float) -> bool:
        concurrency, requests = self.take(state.key)
        state.scaler.record(now, concurrency, requests)
        replicas = self.replicas.of(state.namespace, state.isvc, state.revision)
        if state.usage is not None:  # HPA-style: ready replicas only (a start's imports are not load)
            pids = sorted(r.handle.pid for r in replicas if r.handle is not None and r.state == "ready")
            cpu, memory = state.usage.sample(pids)
            if pids == state.sampled:
                state.scaler.record_usage(now, cpu, memory)
            state.sampled = pids  # a replica new to the sample counts from the next tick (from this baseline)
        ready = sum(1 for r in replicas if r.state == "ready")
        decision = state.decision = state.scaler.decide(now, ready)
        if decision.desired == state.desired:
            return False
        if decision.desired == 0 and (ready > 0 or state.zero_ready):
            state.zero_ready = True
        reason = decision.reason
        if state.read.max_replicas is None and state.config.max_replicas is not None:
            reason = reason.replace(f"; maxReplicas {state.config.max_replicas}",
                                    f"; the machine holds {state.config.max_replicas} (no maxReplicas)")
        up = decision.desired > state.desired
        self.store.event(KIND, state.namespace, state.isvc, "Normal", "ScaledUp" if up else "ScaledDown",
                         f"{state.revision}: {state.desired} -> {decision.desired} replicas: {reason}")
        state.desired = decision.desired
        state.last_scale_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return True

    # -- what others read ----------------------------------------------------------------------------
    def zero_ready(self, namespace: str, isvc: str) -> set[str]:
        """The service's revisions that count as ready without a ready replica (scaled to zero, or
        starting from zero), as long as none of their replicas failed."""
        found = set()
        for state in self.states.values():
            if state.namespace != namespace or state.isvc != isvc or not state.zero_ready:
                continue
            if any(r.state == "backoff" for r in self.replicas.of(namespace, isvc, state.revision)):
                state.zero_ready = False
                continue
            found.add(state.revision)
        return found

    def status(self, namespace: str, isvc: str) -> dict[str, dict[str, Any]]:
        """``status.shipyard.autoscaling``: per revision, desired and ready counts, the metric and why."""
        report: dict[str, dict[str, Any]] = {}
        for state in sorted(self.states.values(), key=lambda s: s.revision):
            if state.namespace != namespace or state.isvc != isvc:
                continue
            replicas = self.replicas.of(namespace, isvc, state.revision)
            pending = [r for r in replicas if r.state == "pending" and r.message.startswith("Pending")]
            decision, config = state.decision, state.config
            entry: dict[str, Any] = {
                "desired": state.desired,
                "actual": sum(1 for r in replicas if r.state == "ready"),
                "metric": config.metric,
                "target": config.target,
                "targetUnit": config.target_unit,
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
                "value": None if decision is None or decision.value is None else round(decision.value, 3),
                "panic": bool(decision and decision.panic),
                "reason": decision.reason if decision else None,
                "lastScaleTime": state.last_scale_time,
                "coldStartSeconds": self.cold_starts(state.key),
            }
            if pending:
                entry["pending"] = len(pending)
                entry["pendingReason"] = pending[0].message
            report[state.revision] = {key: value for key, value in entry.items() if value is not None}
        return report

    def prometheus(self) -> list[str]:
        """Desired, ready and pending replicas and the observed metric per revision, as Prometheus lines."""
        lines = ["# HELP shipyard_revision_desired_replicas Replicas the autoscaler wants for a revision.",
                 "# TYPE shipyard_revision_desired_replicas gauge"]
        rows = []
        for state in sorted(self.states.values(), key=lambda s: s.key):
            replicas = self.replicas.of(state.namespace, state.isvc, state.revision)
            labels = f'revision="{state.key}",metric="{state.config.metric}"'
            value = state.decision.value if state.decision is not None else None
            rows.append((labels, state.desired, sum(1 for r in replicas if r.state == "ready"),
                         sum(1 for r in replicas if r.state == "pending"), value,
                         int(bool(state.decision and state.decision.panic))))
        lines += [f"shipyard_revision_desired_replicas{{{labels}}} {desired}" for labels, desired, *_ in rows]
        lines += ["# HELP shipyard_revision_ready_replicas Ready replicas of a revision.",
                  "# TYPE shipyard_revision_ready_replicas gauge"]
        lines += [f"shipyard_revision_ready_replicas{{{row[0]}}} {row[2]}" for row in rows]
        lines += ["# HELP shipyard_revision_pending_replicas Replicas of a revision waiting to start (resources).",
                  "# TYPE shipyard_revision_pending_replicas gauge"]
        lines += [f"shipyard_revision_pending_replicas{{{row[0]}}} {row[3]}" for row in rows]
        lines += ["# HELP shipyard_autoscaler_observed_value The metric value of the last decision.",
                  "# TYPE shipyard_autoscaler_observed_value gauge"]
        lines += [f"shipyard_autoscaler_observed_value{{{row[0]}}} {row[4]:g}" for row in rows if row[4] is not None]
        lines += ["# HELP shipyard_autoscaler_panic 1 while the revision's autoscaler is in panic mode.",
                  "# TYPE shipyard_autoscaler_panic gauge"]
        lines += [f"shipyard_autoscaler_panic{{{row[0]}}} {row[5]}" for row in rows]
        return lines
