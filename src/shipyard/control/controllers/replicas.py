"""Replica supervision for the controllers: start (after a backoff), watch, drain, stop and adopt.

Each replica's state lives here and is mirrored in the store's ``replicas`` table, which is what a
restarted control plane adopts from. Starts and stops run as tasks, so a slow start never holds up
a reconcile pass. A replica that exits is restarted after 1, 2, 4 ... 30 s (the count starts over
once a replica stayed ready for a minute); its ``message`` says what happened, for the status.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from shipyard import processes
from shipyard.control.components import revision_prefix, split_key
from shipyard.control.engines.base import Engine, EngineError, ReplicaHandle, ReplicaSpec
from shipyard.control.model_source import ReplicaCommand, serve_command
from shipyard.control.prefork import FORMAT_ENV
from shipyard.control.resources import INFERENCE_SERVICE
from shipyard.control.scheduler import Holding, Ledger, ReplicaNeeds
from shipyard.control.store import ReplicaRecord, Store

log = logging.getLogger("shipyard.control")

KIND = INFERENCE_SERVICE.kind
BACKOFF_MAX_S = 30.0
#: A replica that stayed ready this long starts its backoff from 1 s again after a crash.
BACKOFF_RESET_S = 60.0
STOP_GRACE_S = 10.0
#: A ready replica leaves the routes only after this many failed ready checks in a row spanning at
#: least UNREADY_AFTER_S (Kubernetes' defaults take 30 s): a replica busy with load on a small machine
#: may miss a check or two, and taking it out would turn its traffic into 503s. A replica whose
#: process exits leaves at once.
UNREADY_AFTER = 3
UNREADY_AFTER_S = 10.0
#: A starting replica's readiness is polled from every READY_POLL_S up to READY_POLL_MAX_S for this long.
READY_POLL_S = 0.01
READY_POLL_MAX_S = 0.25
READY_WATCH_S = 600.0
CUDA_ENV = "CUDA_VISIBLE_DEVICES"

Key = tuple[str, str, int]  # (namespace, revision, index)


@dataclass
class Replica:
    """One replica as the controller sees it."""

    namespace: str
    isvc: str
    revision: str
    index: int
    log_path: Path
    state: str = "pending"  # pending | starting | ready | backoff | draining
    handle: ReplicaHandle | None = None
    restarts: int = 0
    failures: int = 0  # in a row, for the backoff
    next_start: float = 0.0  # monotonic
    ready_since: float | None = None
    unready_checks: int = 0
    unready_since: float = 0.0  # when the current run of failed ready checks began
    drain_since: float | None = None
    last_exit: str = ""
    message: str = ""
    started: float = 0.0
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.revision, self.index)

    @property
    def busy(self) -> bool:
        """Is a start or a stop in progress?"""
        return self.task is not None and not self.task.done()

    def record(self) -> ReplicaRecord:
        handle = self.handle
        return ReplicaRecord(self.namespace, self.isvc, self.revision, self.index, handle.pid if handle else None,
                             handle.http_url if handle else None, handle.grpc_address if handle else None,
                             self.state, self.restarts, self.last_exit, self.started, str(self.log_path))


class Replicas:
    """Every replica of every service, by (namespace, revision, index)."""

    def __init__(self, store: Store, engine: Engine, logs_dir: Path, on_change: Callable[[], None],
                 ledger: Ledger | None = None,
                 needs_of: Callable[[str, str, str], ReplicaNeeds] | None = None,
                 extra_args: Callable[[str, str], list[str]] | None = None) -> None:
        self.store = store
        self.engine = engine
        self.logs_dir = logs_dir
        self.on_change = on_change
        self.ledger = ledger
        #: (namespace, isvc, revision) -> what each replica of it holds; ValueError names a bad field.
        self.needs_of = needs_of or (lambda namespace, isvc, revision: ReplicaNeeds())
        #: (namespace, component key) -> arguments added to its replicas' command (a transformer's predictor).
        self.extra_args = extra_args or (lambda namespace, isvc: [])
        self.items: dict[Key, Replica] = {}
        self._commands: dict[tuple[str, str], ReplicaCommand] = {}

    def of(self, namespace: str, isvc: str, revision: str | None = None) -> list[Replica]:
        """A service's replicas (of one revision), by index."""
        return sorted((r for r in self.items.values() if r.namespace == namespace and r.isvc == isvc
                       and (revision is None or r.revision == revision)), key=lambda r: (r.revision, r.index))

    def ready_revisions(self, namespace: str, isvc: str) -> set[str]:
        return {r.revision for r in self.of(namespace, isvc) if r.state == "ready"}

    def endpoints(self, namespace: str, isvc: str, revision: str) -> list[dict[str, str | None]]:
        """The addresses of a revision's ready replicas, for the route table."""
        return [{"http": r.handle.http_url, "grpc": r.handle.grpc_address}
                for r in self.of(namespace, isvc, revision) if r.state == "ready" and r.handle]

    def failing(self, namespace: str, isvc: str, revision: str) -> str | None:
        """Why a revision cannot serve soon: the message of its failed replica when every replica it
        has is waiting to restart after a failure (None otherwise)."""
        replicas = [r for r in self.of(namespace, isvc, revision) if r.state != "draining"]
        if replicas and all(r.state == "backoff" for r in replicas):
            return replicas[0].message
        return None

    def why_not_ready(self, namespace: str, isvc: str, revision: str) -> str:
        """What keeps a revision from being ready, in words."""
        for replica in self.of(namespace, isvc, revision):
            if replica.state != "ready" and replica.message:
                if replica.message.startswith("replica"):
                    return replica.message
                return f"replica {replica.index} of {revision} is {replica.message}"
        return f"revision {revision} has no ready replica yet"

    # -- starting ----------------------------------------------------------------------------------
    def ensure(self, namespace: str, isvc: str, revision: str, count: int, now: float) -> None:
        """Start the missing replicas ``0..count-1`` of a revision (those that failed, after their backoff)."""
        for index in range(count):
            replica = self.items.get((namespace, revision, index))
            if replica is None:
                log_path = self.logs_dir / namespace / split_key(isvc)[0] / f"{revision}-{index}.log"
                replica = self.items[(namespace, revision, index)] = Replica(namespace, isvc, revision, index, log_path)
            if replica.busy:
                continue
            if replica.state == "draining":  # wanted again before it stopped
                replica.state, replica.drain_since = ("starting" if replica.handle else "pending"), None
            if replica.state in ("pending", "backoff") and now >= replica.next_start:
                holding = self._hold(replica)
                if holding is not None:
                    replica.task = asyncio.ensure_future(self._start(replica, holding))

    def _hold(self, replica: Replica) -> Holding | None:
        """Take the replica's share of the machine; None (it stays pending, and says why) when it does not fit."""
        if self.ledger is None:
            return Holding(ReplicaNeeds())
        try:
            needs = self.needs_of(replica.namespace, replica.isvc, replica.revision)
        except ValueError as exc:
            self._failed(replica, f"replica {replica.index} of {replica.revision} failed to start: {exc}")
            return None
        taken = self.ledger.take(replica.key, needs)
        if isinstance(taken, Holding):
            return taken
        message = f"Pending: {taken}"
        if replica.state == "pending" and replica.message != message:
            if not replica.message.startswith("Pending"):  # one event when it starts waiting, not per change
                self.store.event(KIND, replica.namespace, replica.isvc, "Warning", "Unschedulable",
                                 f"replica {replica.index} of {replica.revision} waits for resources: it needs "
                                 f"{needs.describe()}; {taken}")
            replica.message = message
            self.store.upsert_replica(replica.record())
        return None

    async def _start(self, replica: Replica, holding: Holding) -> None:
        namespace, isvc = replica.namespace, replica.isvc
        waited = replica.message.startswith("Pending")
        replica.state, replica.message, replica.started = "starting", "starting", time.time()
        try:
            command = await self.command(namespace, isvc, replica.revision)
            env = {**command.env, FORMAT_ENV: command.format}  # the engine forks fork-safe runtimes (prefork.py)
            if self.ledger is not None and self.ledger.inventory.gpu_ids:
                env[CUDA_ENV] = holding.cuda_visible_devices  # "" when it asked for no GPU
            spec = ReplicaSpec(namespace, isvc, replica.revision, replica.index, command.argv, env,
                               replica.log_path)
            self.store.upsert_replica(replica.record())
            replica.handle = await self.engine.start(spec)
        except (ValueError, EngineError, OSError) as exc:
            self._failed(replica, f"replica {replica.index} of {replica.revision} failed to start: {exc}")
            return
        replica.message = "loading its model"
        self.store.upsert_replica(replica.record())
        where = f"; {CUDA_ENV}={holding.cuda_visible_devices}" if holding.devices else ""
        self.store.event(KIND, namespace, isvc, "Normal", "ReplicaStarted",
                         f"replica {replica.index} of {replica.revision} started (pid {replica.handle.pid}, "
                         f"{replica.handle.http_url}{where})" + (" after waiting for resources" if waited else ""))
        self.on_change()
        await self._watch_ready(replica)

    async def _watch_ready(self, replica: Replica) -> None:
        """Poll a started replica until it is ready (then mark it at once), exits, or the watch ends."""
        handle = replica.handle
        assert handle is not None
        delay, deadline = READY_POLL_S, time.monotonic() + READY_WATCH_S
        while time.monotonic() < deadline and self.engine.alive(handle):
            if await self.engine.ready(handle):
                self._mark_ready(replica)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, READY_POLL_MAX_S)

    def _mark_ready(self, replica: Replica) -> None:
        replica.state, replica.ready_since, replica.message = "ready", time.monotonic(), "ready"
        replica.unready_checks = 0
        self.store.upsert_replica(replica.record())
        self.store.event(KIND, replica.namespace, replica.isvc, "Normal", "ReplicaReady",
                         f"replica {replica.index} of {replica.revision} is ready")
        self.on_change()

    async def command(self, namespace: str, isvc: str, revision: str) -> ReplicaCommand:
        """The revision's ``shipyard serve`` command (a remote model is fetched first, in a thread)."""
        cached = self._commands.get((namespace, revision))
        if cached is not None:
            return cached
        stored = next((r for r in self.store.revisions(namespace, isvc) if r.name == revision), None)
        if stored is None:
            raise ValueError(f"revision {revision} is not recorded")
        command = await asyncio.to_thread(serve_command, isvc, stored.spec, namespace)
        command.argv += self.extra_args(namespace, isvc)
        for message in command.warnings:
            self.store.event(KIND, namespace, isvc, "Warning", "FieldIgnored", f"{revision}: {message}")
        self._commands[(namespace, revision)] = command
        return command

    def forget(self, namespace: str, isvc: str) -> None:
        """Drop what is cached for a deleted service (a new one of that name starts afresh)."""
        for key in [key for key in self._commands if key[0] == namespace and key[1].startswith(f"{revision_prefix(isvc)}-")]:
            del self._commands[key]

    def _failed(self, replica: Replica, why: str) -> None:
        """A replica ended or could not start: schedule its restart after the backoff."""
        now = time.monotonic()
        if replica.ready_since is not None and now - replica.ready_since >= BACKOFF_RESET_S:
            replica.failures = 0
        delay = min(BACKOFF_MAX_S, 2.0 ** replica.failures)
        replica.failures += 1
        replica.restarts += 1
        replica.state, replica.handle, replica.ready_since = "backoff", None, None
        replica.next_start = now + delay
        replica.last_exit = why
        replica.message = f"{why}; restarting in {delay:g}s"
        self.store.upsert_replica(replica.record())
        self.store.event(KIND, replica.namespace, replica.isvc, "Warning", "ReplicaFailed", replica.message)

    # -- watching ----------------------------------------------------------------------------------
    async def observe(self) -> None:
        """Find replicas that exited (their restart is scheduled) and replicas that became ready or stopped
        being ready."""
        watched = [r for r in self.items.values() if r.handle is not None and not r.busy
                   and r.state in ("starting", "ready")]
        ready = await asyncio.gather(*(self._check(r) for r in watched))
        for replica, is_ready in zip(watched, ready):
            if is_ready is None:
                continue
            if not is_ready and replica.unready_checks == 0:
                replica.unready_since = time.monotonic()
            replica.unready_checks = 0 if is_ready else replica.unready_checks + 1
            if is_ready and replica.state == "starting":
                self._mark_ready(replica)
            elif (replica.state == "ready" and replica.unready_checks >= UNREADY_AFTER
                  and time.monotonic() - replica.unready_since >= UNREADY_AFTER_S):
                replica.state, replica.message = "starting", "not ready (its /v2/health/ready fails)"
                self.store.upsert_replica(replica.record())

    async def _check(self, replica: Replica) -> bool | None:
        """Ready or not; None (after scheduling a restart) when the process is gone."""
        handle = replica.handle
        assert handle is not None
        if not self.engine.alive(handle):
            why = _last_error(replica.log_path)
            self._failed(replica, f"replica {replica.index} of {replica.revision} {_exit(self.engine.exit_code(handle))}"
                         + (f": {why}" if why else ""))
            return None
        return await self.engine.ready(handle)

    # -- stopping ----------------------------------------------------------------------------------
    def drain(self, replica: Replica, now: float, may_stop: Callable[[Replica, float], bool],
              force: bool = False) -> None:
        """Take a replica out of service: it turns ``draining`` (the next route table leaves it out) and
        stops once ``may_stop(replica, now)`` says the gateway is done with it. ``force`` also cancels
        a start in progress."""
        if replica.busy:
            if force and replica.state == "starting" and replica.task is not None:
                replica.task.cancel()  # the engine kills what it spawned
            return
        if replica.state != "draining":
            replica.state, replica.drain_since, replica.message = "draining", now, "draining"
            if replica.handle is not None:
                self.store.upsert_replica(replica.record())
            return
        if replica.handle is None or may_stop(replica, now):
            replica.task = asyncio.ensure_future(self._stop(replica))

    async def _stop(self, replica: Replica) -> None:
        if replica.handle is not None:
            await self.engine.stop(replica.handle, STOP_GRACE_S)
            self.store.event(KIND, replica.namespace, replica.isvc, "Normal", "ReplicaStopped",
                             f"replica {replica.index} of {replica.revision} stopped (pid {replica.handle.pid})")
        self.store.delete_replica(replica.namespace, replica.revision, replica.index)
        if self.items.get(replica.key) is replica:
            del self.items[replica.key]
            if self.ledger is not None:
                self.ledger.release(replica.key)
        self.on_change()  # its share of the machine is free: a pending replica may start

    async def stop_all(self, replicas: list[Replica]) -> None:
        """Stop replicas now (starts in progress are cancelled, which kills what they spawned)."""
        for replica in replicas:
            if replica.busy and replica.state == "starting" and replica.task is not None:
                replica.task.cancel()
        await asyncio.gather(*(r.task for r in replicas if r.task is not None), return_exceptions=True)
        await asyncio.gather(*(self._stop(r) for r in replicas if self.items.get(r.key) is r),
                             return_exceptions=True)

    async def cancel_starts(self) -> None:
        """Cancel the starts in progress (each kills the process it spawned); running replicas stay."""
        tasks = [r.task for r in self.items.values() if r.busy and r.state == "starting" and r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- after a restart ---------------------------------------------------------------------------
    async def recover(self) -> None:
        """Adopt the replicas a previous control plane left running, schedule the others to start again,
        and stop replica processes that no record owns."""
        adopted: set[str] = set()
        for record in self.store.replicas():
            replica = Replica(record.namespace, record.isvc, record.revision, record.index, Path(record.log_path),
                              restarts=record.restarts, last_exit=record.last_exit, started=record.started)
            handle = await self.engine.adopt(asdict(record))
            if handle is not None:
                replica.handle, replica.state, replica.message = handle, handle.state, handle.state
                replica.ready_since = time.monotonic() if handle.state == "ready" else None
                adopted.add(handle.spec.replica_id)
                self._adopt_share(replica, handle.pid)
                self.store.event(KIND, record.namespace, record.isvc, "Normal", "ReplicaAdopted",
                                 f"replica {record.index} of {record.revision} (pid {handle.pid}) adopted after a "
                                 "control-plane restart")
            else:
                replica.message = "starting again after a control-plane restart"
                if record.pid:
                    self.store.event(KIND, record.namespace, record.isvc, "Warning", "ReplicaLost",
                                     f"replica {record.index} of {record.revision} (pid {record.pid}) was gone after "
                                     "a control-plane restart; starting a new one")
            self.items[replica.key] = replica
            self.store.upsert_replica(replica.record())
        for pid in await self.engine.sweep(adopted):
            log.warning("stopped replica process %d that no record owned", pid)


    def _adopt_share(self, replica: Replica, pid: int) -> None:
        """Record in the ledger what an adopted replica holds (its GPUs from its environment)."""
        if self.ledger is None:
            return
        try:
            needs = self.needs_of(replica.namespace, replica.isvc, replica.revision)
        except ValueError:
            needs = ReplicaNeeds()
        devices = [d for d in (processes.env_tag(pid, CUDA_ENV) or "").split(",") if d]
        self.ledger.adopt(replica.key, needs, devices)


def _last_error(log_path: Path, tail_bytes: int = 16384) -> str:
    """The last ``error: ...`` line ``shipyard serve`` wrote to a replica's log (why it stopped), if any."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - tail_bytes))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if line.startswith("error: ")]
    return errors[-1].removeprefix("error: ") if errors else ""


def _exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
