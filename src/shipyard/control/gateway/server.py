"""The gateway: one REST and one gRPC endpoint in front of every InferenceService's replicas.

It runs on the control plane's event loop. Route tables come from a ``routes()`` callable (the
store's ``routes``), polled every 100 ms; a table whose ``version`` changed is swapped in whole,
and requests already sent keep the backend they started on. The controller reads ``in_flight``
and ``references`` (drain before stopping a revision), ``stats`` (automatic rollback), ``take``
(the autoscaler's concurrency and request count per revision) and ``cold_starts``; it calls
``refresh_soon()`` right after publishing a table, so a replica that just became ready gets the
requests the activator holds without waiting for the next poll.

Payload logging: each table with a ``logger`` gets a PayloadLogger (shipyard.monitor) per
(namespace, isvc, url), opened and closed as tables come and go, its spool in
``{spool_dir}/{namespace}/{isvc}/{hash of url}`` (``spool_dir`` defaults to
``$SHIPYARD_HOME/spool``); their counters are in ``GET /metrics`` and ``payload_logging()``.

Inference graphs: ``graph_source()`` (the store's InferenceGraphs) is read with the route tables;
``graphs`` (graphs.py) runs them at their own names, with bandit state under ``graph_state_dir``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc

from shipyard.control.gateway.activator import Activator
from shipyard.control.gateway.graphs import GraphTable
from shipyard.control.gateway.grpc import GrpcProxy
from shipyard.control.gateway.observe import Observer, RevisionStats
from shipyard.control.gateway.rest import PayloadTap, RestProxy, new_client
from shipyard.control.gateway.routing import Key, RouteTable, Router
from shipyard.control.gateway.shadow import Mirror
from shipyard.monitor.logger import GatewayRoute, PayloadLoggers
from shipyard.server.http import HttpServer

log = logging.getLogger("shipyard.gateway")

#: Seconds between two reads of the route tables.
POLL_S = 0.1
#: Largest request accepted (REST body, gRPC message), as ``shipyard serve``'s default.
DEFAULT_MAX_REQUEST = 64 * 1024 * 1024

RoutesSource = Callable[[], Mapping[Key, Mapping[str, Any]] | Any]


class Gateway:
    """Routes V1/V2 REST (``http_port``) and V2 gRPC (``grpc_port``; None for none) requests
    to revisions by the tables ``routes()`` returns."""

    def __init__(self, routes: RoutesSource, host: str = "127.0.0.1", http_port: int = 8080,
                 grpc_port: int | None = 8081, *, poll_s: float = POLL_S,
                 max_request: int = DEFAULT_MAX_REQUEST, on_demand: Callable[[str], None] | None = None,
                 spool_dir: Path | None = None, logger_options: Mapping[str, Any] | None = None,
                 graph_source: Callable[[], Any] | None = None, graph_state_dir: Path | None = None) -> None:
        self.routes = routes
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.poll_s = poll_s
        self.max_request = max_request
        self.router = Router()
        self.observer = Observer()
        self.activator = Activator(on_demand)
        #: Payload loggers of the services whose table has a ``logger``.
        self.loggers = PayloadLoggers(spool_dir, **(logger_options or {}))
        self.tap = PayloadTap(self.loggers)
        # a logger URL naming a service by host (drift.default.example.com) is delivered through the gateway
        self.loggers.route = GatewayRoute(lambda: self.http_url if self._http is not None and self.http_port else None,
                                          lambda host: self.router.by_host(host) is not None)
        #: Callables adding Prometheus lines to ``GET /metrics`` (the controller's replica counts).
        self.metrics_sources: list[Callable[[], list[str]]] = []
        #: Inference graphs (graphs.py): read with the route tables from ``graph_source()``.
        self.graph_source = graph_source
        self.graphs = GraphTable(lambda: self.http_url if self._http is not None and self.http_port else None,
                                 graph_state_dir, lambda ns, isvc: self.router.lookup(ns, isvc) is not None,
                                 max_request=max_request)
        self.mirror: Mirror | None = None
        self._http: HttpServer | None = None
        self._grpc: grpc.aio.Server | None = None
        self._grpc_proxy: GrpcProxy | None = None
        self._clients: list[Any] = []
        self._poller: asyncio.Task[None] | None = None
        self._refreshing: set[asyncio.Task[bool]] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the tables, then listen; raises OSError naming the address when a port is taken."""
        await self.refresh()
        self.mirror = Mirror()
        self.mirror.start()
        client, shadow_client = new_client(), new_client(max_connections=16)
        self._clients = [client, shadow_client]
        app = RestProxy(self.router, self.observer, self.mirror, client, shadow_client, self.activator,
                        self.prometheus, self.tap, self.graphs)
        self._http = HttpServer(app, self.host, self.http_port, self.max_request)
        try:
            await self._http.start()
            self.http_port = self._http.port
            if self.grpc_port is not None:
                await self._start_grpc()
        except BaseException:
            await self.stop(0)
            raise
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        log.info("gateway listening on %s (REST) and %s (gRPC)", self.http_url, self.grpc_address or "-")

    async def _start_grpc(self) -> None:
        self._grpc_proxy = GrpcProxy(self.router, self.observer, self.mirror, self.activator,  # type: ignore[arg-type]
                                     self.tap, self.graphs)
        self._grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_request),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ])
        self._grpc.add_generic_rpc_handlers((self._grpc_proxy.handler(),))
        try:
            bound = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        except RuntimeError:  # newer grpcio raises instead of returning 0
            bound = 0
        if bound == 0:
            raise OSError(f"gateway cannot listen for gRPC on {self.host}:{self.grpc_port} (in use?)")
        self.grpc_port = bound
        await self._grpc.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening; requests in flight get up to ``grace_s`` seconds to finish."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        waits = []
        if self._http is not None:
            waits.append(self._http.shutdown(grace_s))
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace_s))
        await asyncio.gather(*waits, return_exceptions=True)
        if self.mirror is not None:
            await self.mirror.stop()
        if self._grpc_proxy is not None:
            await self._grpc_proxy.close()
        for client in self._clients:
            await client.aclose()
        await self.graphs.close()  # pending bandit state is saved
        await asyncio.to_thread(self.loggers.close)  # queued events reach the spool; delivery gets 2 s
        self._http = self._grpc = self._grpc_proxy = None
        self._clients = []

    # -- route tables ----------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Read the tables now (also done every ``poll_s``); True when any changed."""
        raw = self.routes()
        if inspect.isawaitable(raw):
            raw = await raw
        before = self.router.tables
        for problem in self.router.update(raw):
            log.error("ignoring a route table: %s", problem)
        if self.graph_source is not None:
            for problem in self.graphs.update(self.graph_source()):
                log.error("not serving an inference graph: %s", problem)
        after = self.router.tables
        self._sync_loggers()
        self.activator.refreshed(self.router)
        if self._grpc_proxy is not None:
            await self._grpc_proxy.prune()
        return after.keys() != before.keys() or any(table is not before.get(key) for key, table in after.items())

    def _sync_loggers(self) -> None:
        wanted = {(t.namespace, t.isvc, t.logger.url) for t in self.router.tables.values() if t.logger is not None}
        if not wanted and not self.loggers.loggers:
            return
        for logger in self.loggers.sync(wanted):  # closed off the loop: it may deliver for a moment
            asyncio.get_running_loop().run_in_executor(None, logger.close)

    def payload_logging(self) -> dict[str, dict[str, Any]]:
        """Each payload logger's counters, by ``namespace/isvc url``."""
        return self.loggers.stats()

    def refresh_soon(self) -> None:
        """Read the tables on the next loop turn (the controller just published one)."""
        if self._http is None:  # not serving (stopped, or not started yet)
            return
        task = asyncio.get_running_loop().create_task(self._refresh_logged())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh_logged(self) -> bool:
        try:
            return await self.refresh()
        except Exception:
            log.exception("reading the route tables failed; keeping the current ones")
            return False

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # a store hiccup must not stop routing on the last good tables
                log.exception("reading the route tables failed; keeping the current ones")

    def table(self, namespace: str, isvc: str) -> RouteTable | None:
        """The table in use for a service (its ``version`` says which one was loaded)."""
        return self.router.lookup(namespace, isvc)

    # -- what the controller reads: revisions by key, ``namespace/revision`` (routing.revision_key) --
    def in_flight(self, key: str) -> int:
        """Requests (live or mirrored) sent to the revision ``key`` and not answered yet."""
        return self.observer.in_flight(key)

    def references(self, key: str) -> bool:
        """Does a loaded table still send (or mirror) requests to the revision ``key``? It may be
        stopped once this is False and ``in_flight`` is 0."""
        return self.router.references(key)

    def stats(self, key: str, window_s: float = 30.0) -> RevisionStats:
        """Requests, errors and latency of the revision ``key`` over the last ``window_s`` seconds
        (mirrored requests included)."""
        return self.observer.stats(key, window_s)

    def take(self, key: str) -> tuple[float, int]:
        """(average requests in flight, requests arrived) at the revision ``key`` since the last call,
        held requests included: the autoscaler's input (call it once per tick)."""
        return self.activator.take(key)

    def cold_starts(self, key: str) -> dict[str, float | int] | None:
        """The revision's cold starts: ``{"last": s, "p50": s, "count": n}`` (None before the first)."""
        return self.activator.cold_starts(key)

    def prometheus(self) -> list[str]:
        """``GET /metrics``: the activator's numbers, requests in flight, and what the sources add."""
        lines = self.activator.prometheus()
        lines += ["# HELP shipyard_gateway_in_flight Requests sent to a revision and not answered yet.",
                  "# TYPE shipyard_gateway_in_flight gauge"]
        lines += [f'shipyard_gateway_in_flight{{revision="{key}"}} {self.observer.in_flight(key)}'
                  for key in self.observer.revisions()]
        lines += self.loggers.prometheus()
        for source in self.metrics_sources:
            try:
                lines += source()
            except Exception:  # a broken source must not break the endpoint
                log.exception("a metrics source failed")
        return lines

    def shadow_report(self, namespace: str, isvc: str) -> dict[str, Any] | None:
        """What the service's shadow revision answered compared with live (see ``Mirror.report``)."""
        return self.mirror.report(namespace, isvc) if self.mirror is not None else None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str | None:
        return f"{self.host}:{self.grpc_port}" if self.grpc_port is not None else None
