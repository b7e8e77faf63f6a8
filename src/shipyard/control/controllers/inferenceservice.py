"""The InferenceService controller: spec -> revisions -> replicas -> routes -> status.

One reconcile pass runs every half second, and at once when the API sets ``wake``. For each
service it:

1. creates a revision when the predictor's fingerprint changed (revisions.py);
2. works out the traffic (traffic.py; only ready revisions get traffic; a revision scaled to zero
   counts as ready) and keeps the autoscaler's count of replicas running (scaling.py; replicas.py:
   restarts with backoff, resources from the machine's ledger) for every revision that has
   traffic, is tagged, is the latest or is shadowed;
3. publishes the gateway's route table (store.set_routes) BEFORE stopping anything (and tells the
   gateway at once), then stops the replicas of revisions that lost their traffic once the gateway
   no longer routes to them and has no request in flight for them, and the replicas scaled away;
4. rolls a canary back when it breaks its ``serving.shipyard.io/rollback-*`` thresholds;
5. writes ``status`` (status.py; plus ``status.shadow``, the gateway's comparison of shadow and live
   answers, and ``status.shipyard.autoscaling``, per revision) and events.

Autoscaling runs in its own loop (``autoscale``): each revision's autoscaler decides every tick,
and at once when the activator holds a request for a revision at zero (``demand``); a changed
count wakes the reconcile loop.

Deleting a service withdraws its routes, drains, stops its replicas and then forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers import traffic
from shipyard.control.controllers.replicas import Replica, Replicas
from shipyard.control.controllers.scaling import MAX_SLEEP_S, Scaling
from shipyard.control.controllers.rollout import (
    PIN_ANNOTATION,
    SHADOW_ANNOTATION,
    SHADOW_PERCENT_ANNOTATION,
    predictor_status,
    rollback_policy,
)
from shipyard.control.components import (
    COMPONENTS,
    PREDICTOR,
    component_key,
    component_resource,
    component_status,
    predictor_host,
    present,
    split_key,
)
from shipyard.control.controllers.status import Observed, condition, ready_condition, service_status
from shipyard.control.engines.base import Engine
from shipyard.control.model_source import gateway_settings, replica_needs
from shipyard.control.resources import INFERENCE_SERVICE, Resource, canonical_json
from shipyard.control.revisions import predictor_fingerprint, revision_key, revision_spec
from shipyard.control.scheduler import Ledger, ReplicaNeeds
from shipyard.control.store import Revision, Store

log = logging.getLogger("shipyard.control")

KIND = INFERENCE_SERVICE.kind
INTERVAL_S = 0.5
#: How long the gateway may take to load a new route table (it polls every 100 ms).
ROUTE_PICKUP_S = 0.5
#: A revision whose requests have not finished this long after it lost its traffic is stopped anyway.
DRAIN_TIMEOUT_S = 30.0
#: "false": payload logging sends only responses with status 200 (KServe's behaviour); failed ones too otherwise.
LOGGER_ERRORS_ANNOTATION = "serving.shipyard.io/logger-errors"
DOMAIN = "example.com"
#: The predictor's ``protocolVersion`` -> how its transformer or explainer calls it (V2 unless it says v1 or gRPC).
CALLER_PROTOCOLS = {"v1": "v1", "v2": "v2", "grpc-v1": "v1", "grpc-v2": "grpc-v2"}
#: Keys of the gateway's shadow report that the status leaves out (known already, or changing every instant).
SHADOW_REPORT_SKIPPED = ("namespace", "isvc", "pending")


class RevisionStats(Protocol):
    """What the controller reads from the gateway about one revision over a window."""

    requests: int
    errors: int
    p99_ms: float | None


class Plan:
    """One pass's view of one service: its revisions, what is ready, what the status last said."""

    def __init__(self, resource: Resource, revisions: list[Revision], ready: set[str]) -> None:
        status = predictor_status(resource.status)
        self.revisions = {r.name: r for r in revisions}
        self.latest = revisions[-1]
        self.ready = ready
        candidates = [r for r in ready | {status.get("latestReadyRevision")} if r in self.revisions]
        self.latest_ready = max(candidates, key=lambda r: self.revisions[r].number) if candidates else None
        self.rolled_out = self._known(status.get("latestRolledoutRevision"))
        self.previous = self._known(status.get("previousRolledoutRevision"))
        self.published = [t for t in traffic.from_status(status.get("traffic")) if t.revision in self.revisions]
        self.shadow: str | None = None
        self.shadow_percent = 100
        self.annotations = resource.annotations

    def _known(self, revision: str | None) -> str | None:
        return revision if revision in self.revisions else None


class InferenceServiceController:
    """Reconciles every stored InferenceService toward running replicas, routes and status.

    The gateway's side comes in as callables: ``in_flight(key)`` and ``references(key)`` (may a
    revision stop?), ``stats(key, window_s)`` (automatic rollback), ``shadow_report(namespace,
    isvc)`` (shown as ``status.shadow``) and ``gateway_url()``; a revision's ``key`` is
    ``revisions.revision_key(namespace, revision)``. Autoscaling reads ``take(key)`` (the gateway's
    concurrency meter) and ``cold_starts(key)``; ``routes_changed()`` tells the gateway a table was
    published; ``ledger`` is the machine's resources, shared with TrainJobs.
    """

    def __init__(
        self,
        store: Store,
        engine: Engine,
        logs_dir: Path,
        in_flight: Callable[[str], int] = lambda revision: 0,
        references: Callable[[str], bool] | None = None,
        stats: Callable[[str, float], RevisionStats] | None = None,
        shadow_report: Callable[[str, str], dict[str, Any] | None] | None = None,
        gateway_url: Callable[[], str | None] = lambda: None,
        domain: str = DOMAIN,
        take: Callable[[str], tuple[float, int]] | None = None,
        cold_starts: Callable[[str], dict[str, Any] | None] | None = None,
        routes_changed: Callable[[], None] | None = None,
        ledger: Ledger | None = None,
        gateway_grpc: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.in_flight = in_flight
        self.references = references
        self.stats = stats
        self.shadow_report = shadow_report
        self.gateway_url = gateway_url
        self.gateway_grpc = gateway_grpc
        self.domain = domain
        self.wake = asyncio.Event()
        self.ledger = ledger
        self.routes_changed = routes_changed or (lambda: None)
        self.replicas = Replicas(store, engine, logs_dir, self.wake.set, ledger, self._needs, self._caller_args)
        self.scaling = Scaling(store, self.replicas, ledger.inventory if ledger is not None else None,
                               take or (lambda key: (0.0, 0)), cold_starts, self._warn_once)
        self._autoscale = asyncio.Event()
        self._tables: dict[tuple[str, str], dict[str, Any]] = {}  # last published, by (namespace, isvc)
        self._routed: dict[tuple[str, str], set[str]] = {}  # the revisions the last table sends requests to
        self._published_at: dict[tuple[str, str], float] = {}
        self._deleting: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._warned: set[tuple[str, str, str]] = set()

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile (and autoscale) until ``stop`` is set."""
        ticker = asyncio.ensure_future(self.autoscale(stop))
        try:
            await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "inferenceservice")
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def autoscale(self, stop: asyncio.Event) -> None:
        """Tick the revisions' autoscalers when they are due (or demanded) until ``stop`` is set."""
        while not stop.is_set():
            self._autoscale.clear()
            try:
                if self.scaling.tick(time.monotonic()):
                    self.wake.set()
            except Exception:  # pragma: no cover - tick guards each revision; this is the last net
                log.exception("autoscaling pass failed")
            pause = min(MAX_SLEEP_S, max(0.01, self.scaling.next_due() - time.monotonic()))
            waits = [asyncio.ensure_future(self._autoscale.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()

    def demand(self, key: str) -> None:
        """The activator holds a request for the revision ``key`` (``namespace/revision``): decide now."""
        if self.scaling.demand(key):
            self._autoscale.set()

    async def reconcile_all(self) -> None:
        """One pass over every InferenceService."""
        resources = self.store.list(KIND)
        await self.replicas.observe()
        for resource in resources:
            try:
                await self.reconcile(resource)
            except Exception:
                log.exception("reconciling %s/%s failed", resource.namespace, resource.name)
        live = {(r.namespace, component_key(r.name, c)) for r in resources for c in present(r)}
        for key in [key for key in self._tables if key not in live and split_key(key[1])[1] != PREDICTOR]:
            self._withdraw(*key)  # a transformer or explainer taken out of its service's spec
        for replica in list(self.replicas.items.values()):  # replicas of services (or components) that are gone
            if (replica.namespace, replica.isvc) not in live:
                self.replicas.drain(replica, time.monotonic(), self._may_stop, force=True)

    async def reconcile(self, resource: Resource) -> None:
        """Bring one service (each of its components) one step closer to its spec."""
        namespace, name = resource.namespace, resource.name
        if resource.deleting:
            for component in COMPONENTS:
                self.scaling.forget(namespace, component_key(name, component))  # no more decisions (nor events)
            if (namespace, name) not in self._deleting:
                self._deleting[(namespace, name)] = asyncio.ensure_future(self._delete(namespace, name))
            return
        status = self._reconcile_component(resource, PREDICTOR)
        for component in present(resource)[1:]:
            part, ready = component_status(self._reconcile_component(component_resource(resource, component), component))
            part["url"] = f"http://{predictor_host(name, namespace, self.domain).replace(PREDICTOR, component, 1)}"
            status["components"][component] = part
            status["conditions"].insert(-1, condition(resource.status or {}, f"{component.capitalize()}Ready",
                                                      ready is not None and ready["status"] == "True",
                                                      (ready or {}).get("reason", "RevisionNotReady"),
                                                      (ready or {}).get("message", "")))
            scaling = self.scaling.status(namespace, component_key(name, component))
            status["shipyard"]["autoscaling"].update(scaling)
        status["components"][PREDICTOR]["url"] = f"http://{predictor_host(name, namespace, self.domain)}"
        status["conditions"][-1] = ready_condition(resource.status or {}, status["conditions"][:-1])
        if canonical_json(status) != canonical_json(resource.status or {}):
            self.store.set_status(KIND, namespace, name, status)

    def _reconcile_component(self, resource: Resource, component: str) -> dict[str, Any]:
        """One component (``resource`` is the service, or a stand-in for its transformer or explainer):
        revisions, traffic, replicas, routes, rollback; the status it would have as a service."""
        namespace, name = resource.namespace, resource.name
        predictor = resource.spec.get("predictor") or {}
        ready = self.replicas.ready_revisions(namespace, name) | self.scaling.zero_ready(namespace, name)
        plan = Plan(resource, self._revisions(resource, predictor), ready)
        if component == PREDICTOR:
            self._shadow(resource, plan)
        desired = self._desired(resource, predictor, plan)
        switch = traffic.can_switch(desired, plan.ready)
        targets = desired if switch else plan.published
        if switch and targets != plan.published:
            where = "" if component == PREDICTOR else f"{component} "
            self.store.event(KIND, namespace, name, "Normal", "TrafficShifted",
                             f"{where}traffic: {traffic.describe(targets)}")
        rolled_out, previous = traffic.rolled_out_after(targets, plan.rolled_out, plan.previous)

        wanted = {t.revision for t in desired + targets} | {plan.latest.name} | ({plan.shadow} if plan.shadow else set())
        now = time.monotonic()
        counts = self.scaling.sync(resource, plan.revisions, wanted, now)
        for revision in sorted(wanted):
            self.replicas.ensure(namespace, name, revision, counts[revision], now)
        self._publish(namespace, name, targets, plan, component)  # routes first: only then may replicas stop
        for replica in self.replicas.of(namespace, name):
            if replica.revision not in wanted or replica.index >= counts.get(replica.revision, 0):
                self.replicas.drain(replica, now, self._may_stop)
        if component == PREDICTOR:
            self._auto_rollback(resource, targets, rolled_out)
        seen = Observed(name, namespace, resource.generation, plan.latest.name, plan.latest_ready, rolled_out,
                        previous, targets, plan.ready)
        status = service_status(resource.status or {}, seen,
                                lambda revision: self.replicas.why_not_ready(namespace, name, revision),
                                self.gateway_url(), self.domain)
        report = self.shadow_report(namespace, name) if self.shadow_report is not None else None
        if report and component == PREDICTOR:
            status["shadow"] = {key: value for key, value in report.items() if key not in SHADOW_REPORT_SKIPPED}
        status["shipyard"] = {**(status.get("shipyard") or {}), "autoscaling": self.scaling.status(namespace, name)}
        return status

    def _caller_args(self, namespace: str, key: str) -> list[str]:
        """How a transformer's or explainer's replicas reach the predictor: through the gateway, as
        ``<isvc>-predictor.<namespace>.<domain>``, speaking the predictor's protocol."""
        isvc, component = split_key(key)
        if component == PREDICTOR:
            return []
        url = self.gateway_url()
        if url is None:
            raise ValueError("the gateway is not listening yet; the replica starts once it is")
        resource = self.store.get(KIND, namespace, isvc)
        protocol = ((((resource.spec if resource else {}).get(PREDICTOR) or {}).get("model") or {})
                    .get("protocolVersion")) or "v2"
        args = ["--predictor-url", url, "--predictor-host", predictor_host(isvc, namespace, self.domain),
                "--predictor-protocol", CALLER_PROTOCOLS.get(protocol, "v2")]
        grpc = self.gateway_grpc()
        if grpc:
            args += ["--predictor-grpc-url", f"grpc://{grpc}"]
        return args

    # -- revisions and traffic ---------------------------------------------------------------------
    def _revisions(self, resource: Resource, predictor: dict[str, Any]) -> list[Revision]:
        """The service's revisions, oldest first, with a new one when the predictor changed."""
        revisions = self.store.revisions(resource.namespace, resource.name)
        fingerprint = predictor_fingerprint(predictor)
        if revisions and revisions[-1].fingerprint == fingerprint:
            return revisions
        revision = self.store.add_revision(resource.namespace, resource.name, fingerprint, revision_spec(predictor),
                                           resource.generation)
        self.store.event(KIND, resource.namespace, resource.name, "Normal", "RevisionCreated",
                         f"revision {revision.name} created for generation {resource.generation}")
        return [*revisions, revision]

    def _desired(self, resource: Resource, predictor: dict[str, Any], plan: Plan) -> list[traffic.Target]:
        pinned = resource.annotations.get(PIN_ANNOTATION)
        if pinned and pinned not in plan.revisions:
            self._warn_once(resource, f"metadata.annotations.{PIN_ANNOTATION}: no revision '{pinned}'; "
                            "the pin is ignored")
            pinned = None
        canary = predictor.get("canaryTrafficPercent")
        canary = canary if isinstance(canary, int) and not isinstance(canary, bool) else None
        return traffic.desired_traffic(plan.latest_ready, plan.rolled_out, canary, pinned)

    def _shadow(self, resource: Resource, plan: Plan) -> None:
        """The revision the service's annotations ask to mirror traffic to, and how much of it."""
        shadow = resource.annotations.get(SHADOW_ANNOTATION)
        if not shadow:
            return
        plan.shadow = plan.latest.name if shadow == "latest" else shadow if shadow in plan.revisions else None
        if plan.shadow is None:
            self._warn_once(resource, f"metadata.annotations.{SHADOW_ANNOTATION}: no revision '{shadow}'; expected "
                            f"'latest' or one of {', '.join(plan.revisions)}")
        try:
            plan.shadow_percent = max(0, min(100, int(resource.annotations.get(SHADOW_PERCENT_ANNOTATION, 100))))
        except ValueError:
            self._warn_once(resource, f"metadata.annotations.{SHADOW_PERCENT_ANNOTATION}: expected a whole number "
                            "from 0 to 100; mirroring 100%")

    # -- routes ------------------------------------------------------------------------------------
    def _publish(self, namespace: str, isvc: str, targets: list[traffic.Target], plan: Plan,
                 component: str = PREDICTOR) -> None:
        """Write the gateway's route table when it changed (with a higher version)."""
        key = (namespace, isvc)
        table = self.route_table(namespace, isvc, targets, plan, component)
        last = self._tables.get(key)
        if last is not None and {**last, "version": 0} == table:
            return
        table["version"] = (last or {}).get("version", 0) + 1
        self.store.set_routes(namespace, isvc, table)
        self._tables[key] = table
        self._published_at[key] = time.monotonic()
        self._routed[key] = _routed_revisions(table)
        self.routes_changed()

    def route_table(self, namespace: str, isvc: str, targets: list[traffic.Target], plan: Plan,
                    component: str = PREDICTOR) -> dict[str, Any]:
        """The table the gateway routes by (see the control-plane contract); ``protocol`` and ``timeout_s``
        (``spec.predictor.timeout``) are the latest revision's; ``isvc`` is the component key."""
        protocol, timeout_s = gateway_settings(plan.latest.spec)
        backends = []
        for t in targets:
            backend = {"revision": t.revision, "percent": t.percent, "tags": [t.tag] if t.tag else [],
                       "replicas": self.replicas.endpoints(namespace, isvc, t.revision), "activate": True}
            failing = None if backend["replicas"] else self.replicas.failing(namespace, isvc, t.revision)
            if failing:
                backend["failing"] = failing
            backends.append(backend)
        shadow = None
        if plan.shadow and plan.shadow_percent > 0 and plan.shadow in plan.ready and not any(
                t.revision == plan.shadow and t.percent == 100 for t in targets):
            shadow = {"revision": plan.shadow, "percent": plan.shadow_percent,
                      "replicas": self.replicas.endpoints(namespace, isvc, plan.shadow)}
        scale = self.scaling.states.get((namespace, plan.latest.name))
        activator = {"queue": scale.config.activator_queue, "timeout_s": scale.config.activator_timeout_s} \
            if scale is not None else None
        table = {"isvc": isvc, "namespace": namespace, "protocol": protocol, "timeout_s": timeout_s,
                 "backends": backends, "shadow": shadow, "activator": activator, "version": 0}
        if component != PREDICTOR:
            table["component"] = component
        logger = logger_settings(plan.latest.spec, plan.annotations, component)
        if logger is not None:
            table["logger"] = logger
        return table

    def _may_stop(self, replica: Replica, now: float) -> bool:
        """May a draining replica stop? When its revision lost its traffic: once the gateway no longer
        routes to it and has no request in flight for it. When it was scaled away (its revision still
        routed): once the gateway had time to load the table without it (its SIGTERM drain does the rest)."""
        key = (replica.namespace, replica.isvc)
        waited = now - max(self._published_at.get(key, 0.0), replica.drain_since or now)
        if replica.revision in self._routed.get(key, set()):
            return waited >= ROUTE_PICKUP_S
        return waited >= DRAIN_TIMEOUT_S or not self._gateway_uses(revision_key(replica.namespace, replica.revision),
                                                                    waited)

    def _gateway_uses(self, key: str, waited: float) -> bool:
        """Does the gateway still route to, or have requests in flight at, the revision ``key``?"""
        routed = self.references(key) if self.references is not None else waited < ROUTE_PICKUP_S
        return routed or self.in_flight(key) > 0

    # -- automatic rollback ------------------------------------------------------------------------
    def _auto_rollback(self, resource: Resource, targets: list[traffic.Target], rolled_out: str | None) -> None:
        """Pin the rolled-out revision when the canary breaks its thresholds."""
        if self.stats is None or rolled_out is None:
            return
        canary = next((t for t in targets if t.tag == traffic.LATEST and 0 < t.percent < 100
                       and t.revision != rolled_out), None)
        if canary is None:
            return
        try:
            policy = rollback_policy(resource.annotations)
        except ValueError as exc:
            self._warn_once(resource, str(exc))
            return
        if policy is None:
            return
        numbers = self.stats(revision_key(resource.namespace, canary.revision), policy.window_s)
        why = policy.breach(numbers.requests, numbers.errors, numbers.p99_ms)
        stored = self.store.get(KIND, resource.namespace, resource.name)
        if why is None or stored is None or stored.deleting:
            return
        stored.annotations = {**stored.annotations, PIN_ANNOTATION: rolled_out}
        self.store.apply(stored)
        self.store.event(KIND, resource.namespace, resource.name, "Warning", "CanaryRolledBack",
                         f"canary {canary.revision} rolled back to {rolled_out}: {why}")
        self.wake.set()

    def _needs(self, namespace: str, isvc: str, revision: str) -> ReplicaNeeds:
        """What each replica of ``revision`` holds in the ledger (ValueError names a bad field); ``isvc`` is a
        component key."""
        stored = next((r for r in self.store.revisions(namespace, isvc) if r.name == revision), None)
        service, component = split_key(isvc)
        resource = self.store.get(KIND, namespace, service)
        if stored is None:
            return ReplicaNeeds()
        return replica_needs(stored.spec, resource.annotations if resource is not None else {}, component)

    def _warn_once(self, resource: Resource, message: str) -> None:
        marker = (resource.namespace, resource.name, message)
        if marker not in self._warned:
            self._warned.add(marker)
            self.store.event(KIND, resource.namespace, resource.name, "Warning", "InvalidAnnotation", message)

    # -- delete, recovery, shutdown ----------------------------------------------------------------
    async def _delete(self, namespace: str, name: str) -> None:
        """Withdraw the routes, let in-flight requests finish, stop every replica, forget the service."""
        keys = [component_key(name, component) for component in COMPONENTS]
        try:
            for key in keys:
                self.store.set_routes(namespace, key, None)
            withdrawn = time.monotonic()
            replicas = [replica for key in keys for replica in self.replicas.of(namespace, key)]
            revisions = {r.revision for r in replicas}
            while time.monotonic() - withdrawn < DRAIN_TIMEOUT_S and any(
                    self._gateway_uses(revision, time.monotonic() - withdrawn) for revision in revisions):
                await asyncio.sleep(0.05)
            await self.replicas.stop_all(replicas)
            self.store.remove(KIND, namespace, name)
            for key in keys:
                self.replicas.forget(namespace, key)
                self.scaling.forget(namespace, key)
                for state in (self._tables, self._routed, self._published_at):
                    state.pop((namespace, key), None)
            log.info("deleted inferenceservice %s/%s: routes withdrawn, %d replica(s) stopped", namespace, name,
                     len(replicas))
        finally:
            self._deleting.pop((namespace, name), None)

    def _withdraw(self, namespace: str, key: str) -> None:
        """Stop routing to a component removed from its service (its replicas then drain)."""
        self.store.set_routes(namespace, key, None)
        self.scaling.forget(namespace, key)
        for state in (self._tables, self._routed):
            state.pop((namespace, key), None)
        self._published_at[(namespace, key)] = time.monotonic()
        self.routes_changed()
        isvc, component = split_key(key)
        self.store.event(KIND, namespace, isvc, "Normal", "ComponentRemoved", f"the {component} was removed from "
                         "the spec: requests go to the predictor; its replicas drain")

    async def recover(self) -> None:
        """After a (re)start: adopt or reschedule the recorded replicas, and load the published tables."""
        await self.replicas.recover()
        for key, table in self.store.routes().items():
            self._tables[key] = table
            self._routed[key] = _routed_revisions(table)

    async def shutdown(self) -> None:
        """Stop every replica (a clean ``shipyard up`` exit; a killed one leaves them to be adopted)."""
        for task in list(self._deleting.values()):
            task.cancel()
        await asyncio.gather(*self._deleting.values(), return_exceptions=True)
        await self.replicas.stop_all(list(self.replicas.items.values()))

    async def cancel_starts(self) -> None:
        await self.replicas.cancel_starts()


def logger_settings(predictor: dict[str, Any], annotations: dict[str, str],
                    component: str = PREDICTOR) -> dict[str, Any] | None:
    """The route table's ``logger`` for a component's ``logger`` (validation checked it), with
    ``errors`` false when the annotation ``serving.shipyard.io/logger-errors`` is "false"."""
    logger = predictor.get("logger")
    if not isinstance(logger, dict) or not isinstance(logger.get("url"), str):
        return None
    errors = str(annotations.get(LOGGER_ERRORS_ANNOTATION, "true")).strip().lower() != "false"
    return {"mode": logger.get("mode") or "all", "url": logger["url"], "errors": errors, "component": component}


def _routed_revisions(table: dict[str, Any]) -> set[str]:
    shadow = table.get("shadow")
    return {b["revision"] for b in table.get("backends", [])} | ({shadow["revision"]} if shadow else set())
