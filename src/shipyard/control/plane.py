"""``shipyard up``: the control plane process (API, gateway, the InferenceService, InferenceGraph, TrainJob,
Dataset, data operation and BatchJob controllers, local engine).

Everything runs on one asyncio loop. State lives in ``$SHIPYARD_HOME/state.db``; other commands
find a running plane through ``$SHIPYARD_HOME/plane.json`` (written atomically once everything
listens, removed on a clean exit). One plane per home: it holds an exclusive lock on
``plane.lock`` for its lifetime (the kernel drops it if the plane is killed, so a stale
``plane.json`` is never mistaken for a live plane).

The API server also serves the dashboard (ui_api.py), with live numbers sampled every second by
``UiMetrics`` (ui_metrics.py). Listening beyond loopback (``host``) needs a token (auth.py): the one
given, else a generated one; it is written to ``plane.json`` (then readable by its owner only).

Stopping: SIGTERM or Ctrl+C stops the API, then the gateway (in-flight requests finish), then
every replica. A plane killed with SIGKILL leaves its replicas running; the next ``shipyard up``
adopts them (or restarts the ones that are gone) and serves again from the stored specs. Data
operations still running at a stop (waited for a few seconds) run again when the plane is back; BatchJobs
are stopped and resume from their last finished chunk.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from shipyard import __version__, tracing
from shipyard.home import shipyard_home

if TYPE_CHECKING:  # the plane's parts are imported when it starts, so reading plane.json stays cheap
    from shipyard.control.controllers.batchjob import BatchJobController
    from shipyard.control.controllers.dataops import DataOpsController
    from shipyard.control.controllers.dataset import DatasetController
    from shipyard.control.controllers.inferencegraph import InferenceGraphController
    from shipyard.control.controllers.inferenceservice import InferenceServiceController
    from shipyard.control.controllers.trainjob import TrainJobController
    from shipyard.control.engines.local import LocalEngine
    from shipyard.control.gateway import Gateway
    from shipyard.control.store import Store
    from shipyard.control.ui_metrics import UiMetrics
    from shipyard.server.http import HttpServer

log = logging.getLogger("shipyard.control")

PLANE_FILE = "plane.json"
LOCK_FILE = "plane.lock"
STATE_FILE = "state.db"


class PlaneError(RuntimeError):
    """The control plane cannot start (the message says why and what to do)."""


@dataclass
class PlaneOptions:
    host: str = "127.0.0.1"
    api_port: int = 8400
    http_port: int = 8080
    grpc_port: int = 8081
    home: Path | None = None
    #: The API's token (auth.py): required when set; None beyond loopback generates one.
    token: str | None = None


def running_plane(home: Path | None = None) -> dict[str, Any] | None:
    """The ``plane.json`` of the plane running for ``home``, or None when none runs."""
    home = home or shipyard_home()
    try:
        info = json.loads((home / PLANE_FILE).read_text())
    except (OSError, ValueError):
        info = None
    if not _lock_held(home):
        return None
    return info if isinstance(info, dict) else {}


def _lock_held(home: Path) -> bool:
    """Does some process hold this home's plane lock?"""
    try:
        with open(home / LOCK_FILE, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def _take_lock(home: Path) -> IO[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / LOCK_FILE, "a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        info = running_plane(home) or {}
        where = f" (pid {info['pid']}, API {info.get('api_url')})" if info.get("pid") else ""
        raise PlaneError(f"a control plane is already running for {home}{where}; stop it first (Ctrl+C, or "
                         f"kill {info.get('pid', '<pid>')}), or give this one another --home") from None
    return handle


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


class Plane:
    """The running control plane: ``await start()``, then ``await stop()``."""

    def __init__(self, options: PlaneOptions) -> None:
        self.options = options
        self.home = (options.home or shipyard_home()).resolve()
        self.info: dict[str, Any] = {}
        self._lock: IO[bytes] | None = None
        self._stop = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.store: Store | None = None
        self.engine: LocalEngine | None = None
        self.controller: InferenceServiceController | None = None
        self.graphs: InferenceGraphController | None = None
        self.trainjobs: TrainJobController | None = None
        self._train_task: asyncio.Task[None] | None = None
        self.datasets: DatasetController | None = None
        self.dataops: DataOpsController | None = None
        self._data_tasks: list[asyncio.Task[None]] = []
        self._graph_task: asyncio.Task[None] | None = None
        self.batchjobs: BatchJobController | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self.gateway: Gateway | None = None
        self.api_server: HttpServer | None = None
        self.ui_metrics: UiMetrics | None = None
        self._ui_task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        """Take the lock, listen (API, gateway), adopt replicas, start reconciling; returns plane.json's content."""
        from shipyard.control import scheduler
        from shipyard.control.api import ControlApi
        from shipyard.control.auth import Auth, generate_token, is_loopback
        from shipyard.control.controllers.batchjob import BatchJobController
        from shipyard.control.controllers.dataops import DataOpsController
        from shipyard.control.controllers.dataset import DatasetController
        from shipyard.control.controllers.inferencegraph import InferenceGraphController
        from shipyard.control.controllers.inferenceservice import InferenceServiceController
        from shipyard.control.controllers.rollout import rollout
        from shipyard.control.controllers.trainjob import TrainJobController
        from shipyard.control.engines.local import LocalEngine
        from shipyard.control.gateway import Gateway
        from shipyard.control.store import Store
        from shipyard.control.ui_api import UiApi
        from shipyard.control.ui_metrics import UiMetrics
        from shipyard.server.http import HttpServer

        options = self.options
        token = options.token or (None if is_loopback(options.host) else generate_token())
        self._lock = _take_lock(self.home)
        try:
            try:  # one ledger of the machine for replicas and TrainJobs
                ledger = scheduler.Ledger(scheduler.detect_inventory())
            except ValueError as exc:
                raise PlaneError(f"cannot read the machine's inventory: {exc}") from None
            self.store = store = Store(self.home / STATE_FILE)
            self.engine = LocalEngine(self.home, prefork=True)  # pre-imported runtimes: fast cold starts
            self.engine.warm()
            self.gateway = gateway = Gateway(
                store.routes, options.host, options.http_port, options.grpc_port,
                graph_source=lambda: store.list("InferenceGraph"),
                graph_state_dir=self.home / "graphs",
            )
            self.controller = controller = InferenceServiceController(
                store, self.engine, self.home / "logs", in_flight=gateway.in_flight, references=gateway.references,
                stats=gateway.stats, shadow_report=gateway.shadow_report, gateway_url=lambda: gateway.http_url,
                take=gateway.take, cold_starts=gateway.cold_starts, routes_changed=gateway.refresh_soon, ledger=ledger,
                gateway_grpc=lambda: gateway.grpc_address,
            )
            gateway.activator.on_demand = controller.demand
            gateway.metrics_sources.append(controller.scaling.prometheus)
            self.trainjobs = trainjobs = TrainJobController(store, self.home, inventory=ledger.job_inventory())
            ledger.jobs = lambda: [(active.needs, [device for node in (active.job.devices or []) for device in node])
                                   for active in trainjobs.active.values()]
            self.graphs = graphs = InferenceGraphController(store, self.home, bandits=gateway.graphs.snapshot,
                                                            forget=gateway.graphs.forget)
            self.dataops = dataops = DataOpsController(store, self.home)
            self.datasets = datasets = DatasetController(store, self.home, operations=dataops.holders,
                                                         busy=dataops.busy, release=dataops.release)
            dataops.resync = datasets.resync
            self.batchjobs = batchjobs = BatchJobController(store, self.home, gateway_url=lambda: gateway.http_url)

            def changed() -> None:
                controller.wake.set()
                graphs.wake.set()
                trainjobs.wake.set()
                datasets.wake.set()
                dataops.wake.set()
                batchjobs.wake.set()

            self.ui_metrics = ui_metrics = UiMetrics(store, gateway, controller.replicas, datasets)
            ui = UiApi(store, self.home, ui_metrics, graph_stats=gateway.graphs.step_stats)
            api = ControlApi(store, rollout, self.home / "logs", on_change=changed, ui=ui,
                             auth=Auth(token, options.host))
            self.api_server = api_server = HttpServer(api, options.host, options.api_port, 16 * 1024 * 1024)
            await _listen(api_server.start(), f"the API on {options.host}:{options.api_port}", "--api-port")
            await _listen(gateway.start(), f"the gateway on {options.host}:{options.http_port} (REST) / "
                          f"{options.grpc_port} (gRPC)", "--http-port / --grpc-port")
            await controller.recover()
            await trainjobs.recover()
            await dataops.recover()
            await batchjobs.recover()
            await controller.reconcile_all()
        except BaseException:
            await self._close()
            raise
        self._loop_task = asyncio.ensure_future(controller.run(self._stop))
        self._train_task = asyncio.ensure_future(trainjobs.run(self._stop))
        self._data_tasks = [asyncio.ensure_future(datasets.run(self._stop)),
                            asyncio.ensure_future(dataops.run(self._stop))]
        self._graph_task = asyncio.ensure_future(graphs.run(self._stop))
        self._ui_task = asyncio.ensure_future(ui_metrics.run(self._stop))
        self._batch_task = asyncio.ensure_future(batchjobs.run(self._stop))
        self.info = {
            "pid": os.getpid(),
            "version": __version__,
            "home": str(self.home),
            "api_url": f"http://{f'[{options.host}]' if ':' in options.host else options.host}:{api_server.port}",
            "gateway_url": gateway.http_url,
            "gateway_grpc": gateway.grpc_address,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if token is not None:  # clients read it here (auth.py); plane.json is then its owner's only
            self.info["token"] = token
        _write_atomically(self.home / PLANE_FILE, json.dumps(self.info, indent=2) + "\n",
                          0o600 if token is not None else 0o644)
        return self.info

    async def stop(self) -> None:
        """A clean stop: API, controller loop, gateway (in-flight requests finish), then every replica."""
        (self.home / PLANE_FILE).unlink(missing_ok=True)
        if self.api_server is not None:
            await self.api_server.shutdown(5.0)
            self.api_server = None
        self._stop.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._train_task is not None:
            await self._train_task
        for task in self._data_tasks:
            await task
        if self._graph_task is not None:
            await self._graph_task
        if self._ui_task is not None:
            await self._ui_task
        if self._batch_task is not None:
            await self._batch_task
        if self.trainjobs is not None:  # running jobs stop gracefully and stay queued for the next plane
            await self.trainjobs.shutdown()
        if self.dataops is not None:  # runs still going after a few seconds run again on the next plane
            await self.dataops.shutdown()
        if self.batchjobs is not None:  # running jobs stop after their chunks in flight and resume on the next plane
            await self.batchjobs.shutdown()
        if self.datasets is not None:
            await self.datasets.shutdown()
        if self.gateway is not None:
            await self.gateway.stop(10.0)
            self.gateway = None
        if self.controller is not None:
            await self.controller.shutdown()
        await self._close()

    async def _close(self) -> None:
        """Release what start() took, without touching replicas (a failed start leaves them for adoption)."""
        if self.api_server is not None:
            await self.api_server.shutdown(0)
        if self.gateway is not None:
            await self.gateway.stop(0)
        self.api_server = self.gateway = None
        if self.controller is not None:
            await self.controller.cancel_starts()
        if self.engine is not None:
            await self.engine.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


async def _listen(starting: Any, what: str, flag: str) -> None:
    try:
        await starting
    except OSError as exc:
        raise PlaneError(f"cannot listen for {what}: {exc.strerror or exc}; pick other ports with {flag}") from None


async def serve_plane(options: PlaneOptions, announce: Callable[[dict[str, Any]], None]) -> int:
    """Run the control plane until SIGINT or SIGTERM; ``announce`` gets plane.json's content once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plane = Plane(options)
    announce(await plane.start())
    await stop.wait()
    log.info("stopping the control plane")
    await plane.stop()
    await asyncio.to_thread(tracing.shutdown)  # the gateway's last spans are exported
    return 0
