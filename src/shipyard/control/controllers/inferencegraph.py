"""The InferenceGraph controller: status, conditions and removal of KServe's InferenceGraphs.

A graph has no processes of its own: the gateway runs it (gateway/graphs.py) as soon as it is
stored. One pass runs every second (and at once when the API sets ``wake``). For each graph the
status is KServe's: ``url`` (``http://{name}.{namespace}.example.com``, the Host the gateway routes
to the graph), ``observedGeneration`` and the ``Ready`` condition: true when every InferenceService
a step names (``serviceName``) exists in the graph's namespace and is Ready; false with a reason
(``ServiceNotFound``, ``ServiceNotReady``, or ``NameTaken`` when an InferenceService has the
graph's own name: requests by that name go to the service) and a message naming the node, the step
and the service. ``serviceUrl`` steps are outside Shipyard and are not checked. Bandit nodes add
``status.shipyard.bandits``: each arm's pulls and mean reward, from the gateway's state. Events
say when the graph was applied, changed, became ready or stopped being ready.

Deleting a graph drops it from the gateway, removes its state folder
(``$SHIPYARD_HOME/graphs/<namespace>/<name>/``, where the bandit state lives) and forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers.status import condition
from shipyard.control.resources import INFERENCE_GRAPH, INFERENCE_SERVICE, Resource, canonical_json
from shipyard.control.store import Store

log = logging.getLogger("shipyard.control")

KIND = INFERENCE_GRAPH.kind
INTERVAL_S = 1.0
DOMAIN = "example.com"
#: Where a graph's state (bandit.json) lives, under $SHIPYARD_HOME.
STATE_DIR = "graphs"


def state_dir(home: Path, namespace: str, name: str) -> Path:
    """``$SHIPYARD_HOME/graphs/<namespace>/<name>``: a graph's state folder."""
    return home / STATE_DIR / namespace / name


def service_steps(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(node, step, service)`` of every step naming an InferenceService, in the spec's order."""
    found = []
    nodes = spec.get("nodes") if isinstance(spec, dict) else None
    for node_name, node in (nodes.items() if isinstance(nodes, dict) else ()):
        steps = node.get("steps") if isinstance(node, dict) else None
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict) and isinstance(step.get("serviceName"), str):
                found.append((str(node_name), str(step.get("name") or index), step["serviceName"]))
    return found


class InferenceGraphController:
    """Reconciles every stored InferenceGraph's status; ``home`` is $SHIPYARD_HOME.

    The gateway's side comes in as callables: ``bandits(namespace, name)`` is the graph's bandit
    snapshot (``{node: {arm: {"pulls", "meanReward", ...}}}``, None without Bandit nodes) and
    ``forget(namespace, name)`` drops a deleted graph from the gateway (pending state saves included).
    """

    def __init__(self, store: Store, home: Path,
                 bandits: Callable[[str, str], dict[str, Any] | None] | None = None,
                 forget: Callable[[str, str], None] | None = None, domain: str = DOMAIN) -> None:
        self.store = store
        self.home = home
        self.bandits = bandits or (lambda namespace, name: None)
        self.forget = forget or (lambda namespace, name: None)
        self.domain = domain
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set."""
        await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "inferencegraph")

    async def reconcile_all(self) -> None:
        graphs = self.store.list(KIND)
        if not graphs:
            return
        services = {(service.namespace, service.name): service for service in self.store.list(INFERENCE_SERVICE.kind)}
        for graph in graphs:
            try:
                if graph.deleting:
                    self.remove(graph.namespace, graph.name)
                else:
                    self.reconcile(graph, services)
            except Exception:
                log.exception("reconciling inferencegraph %s/%s failed", graph.namespace, graph.name)

    def reconcile(self, graph: Resource, services: dict[tuple[str, str], Resource]) -> None:
        """Write the graph's status when it changed; an event for each change that matters."""
        old = graph.status or {}
        ok, reason, message = self.readiness(graph, services)
        ready = condition(old, "Ready", ok, reason, message)
        status: dict[str, Any] = {
            "url": f"http://{graph.name}.{graph.namespace}.{self.domain}",
            "conditions": [ready],
            "observedGeneration": graph.generation,
        }
        snapshot = self.bandits(graph.namespace, graph.name)
        if snapshot:
            status["shipyard"] = {"bandits": snapshot}
        if canonical_json(status) == canonical_json(old):
            return
        self.store.set_status(KIND, graph.namespace, graph.name, status)
        seen = old.get("observedGeneration")
        if seen is None:
            self._event(graph, "Normal", "Applied", f"the gateway serves the graph at {status['url']} and as "
                        f"/v1/models/{graph.name}:predict, /v2/models/{graph.name}/infer")
        elif seen != graph.generation:
            self._event(graph, "Normal", "Updated", f"generation {graph.generation}: the gateway runs the new spec")
        before = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), None)
        if before is None or before.get("status") != ready["status"] or (
                not ok and before.get("message") != ready.get("message")):
            if ok:
                self._event(graph, "Normal", "Ready", "every service the graph calls is ready")
            else:
                self._event(graph, "Warning", reason, message)

    def readiness(self, graph: Resource, services: dict[tuple[str, str], Resource]) -> tuple[bool, str, str]:
        """(ready, reason, message): the first step whose InferenceService is missing or not ready."""
        if (graph.namespace, graph.name) in services:
            return (False, "NameTaken", f"InferenceService '{graph.name}' has this graph's name in namespace "
                    f"'{graph.namespace}': requests to '{graph.name}' go to the service; rename the graph")
        for node, step, name in service_steps(graph.spec):
            service = services.get((graph.namespace, name))
            where = f"node '{node}' step '{step}'"
            if service is None or service.deleting:
                return (False, "ServiceNotFound", f"{where}: InferenceService '{name}' not found in namespace "
                        f"'{graph.namespace}'")
            ready = next((c for c in (service.status or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
            if not ready or ready.get("status") != "True":
                why = (ready or {}).get("message") or "it has no ready revision yet"
                return False, "ServiceNotReady", f"{where}: InferenceService '{name}' is not ready: {why}"
        return True, "", ""

    def remove(self, namespace: str, name: str) -> None:
        """Drop a deleted graph from the gateway, remove its state folder, forget it."""
        self.forget(namespace, name)
        folder = state_dir(self.home, namespace, name)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        self.store.remove(KIND, namespace, name)
        log.info("inferencegraph %s/%s deleted", namespace, name)

    def _event(self, graph: Resource, type_: str, reason: str, message: str) -> None:
        self.store.event(KIND, graph.namespace, graph.name, type_, reason, message)
