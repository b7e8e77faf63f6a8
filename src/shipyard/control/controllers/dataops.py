"""The data operations controller: DataLoad, DataMigrate, DataProcess and DataClean.

One pass runs every half second (and at once when the API sets ``wake``), oldest operation first.
An operation runs when it is due and nothing holds it back:

- due: ``Once`` when its spec generation has not run yet (re-applying a changed spec runs it
  again); ``Cron`` when ``spec.schedule`` fires (one run at a time; the next fire time is counted
  from the end of a run); ``OnEvent`` (DataLoad only) once at the start, then whenever the
  ``SourceWatcher`` (polled every ``data.shipyard.io/poll-interval``, default 10s) reports paths
  that appeared or changed at the source: those paths are loaded;
- held back (phase Pending, a ``Waiting`` condition says why): a Dataset it names does not exist
  (``DatasetNotFound``: it waits, it does not fail) or is not Bound yet (``DatasetNotBound``); its
  ``runAfter`` operation is not Complete yet (``waitingFor.operationComplete: true``); another
  operation of the same kind holds the dataset (``DatasetLocked``: one per kind and dataset, as
  Fluid's ``operationRef``). When the ``runAfter`` operation Failed, this one fails too with reason
  ``UpstreamFailed`` naming it, so a failure stops everything after it.

A run happens in a worker thread (the loop never blocks) and appends to
``$SHIPYARD_HOME/logs/<kind>/<namespace>/<name>.log`` (``shipyard logs dataload NAME``). The status is
Fluid's OperationStatus (phase, duration, conditions, lastScheduleTime, lastSuccessfulTime,
waitingFor) plus ``status.shipyard`` (files, bytes, throughputMBps, runs, memoKey, skipped...).
A DataProcess passes its last successful memo key to run_process, which skips the run when the
inputs, code, environment and output are unchanged (condition reason ``UpToDate``).
``ttlSecondsAfterFinished`` removes a finished Once operation.

The operations are idempotent (a load skips what is cached, a migrate copies what differs, a
process is memoized, a clean of nothing is fine), so a run cut short by a plane restart simply runs
again when the plane is back.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from shipyard.control.controllers.dataset import in_thread
from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers.waiting import set_waiting
from shipyard.control.data_validation import (DEFAULT_POLL_S, OUTPUT, POLL_INTERVAL, dataset_refs,
                                              parse_dataset_uri, parse_duration)
from shipyard.control.resources import DATA_OPERATIONS, DATASET, Resource, canonical_json
from shipyard.control.store import Store

log = logging.getLogger("shipyard.control")

INTERVAL_S = 0.5
SHUTDOWN_WAIT_S = 5.0
FINISHED = ("Complete", "Failed")
KINDS = tuple(kind.kind for kind in DATA_OPERATIONS)


@dataclass
class Running:
    """One run in flight: the locks it holds and its task."""

    kind: str
    namespace: str
    name: str
    locks: list[tuple[str, str, str]]
    task: asyncio.Future[Any]
    started: float
    generation: int
    #: Set to stop a DataProcess script (its process group) when the operation is deleted or the plane stops.
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Watch:
    """An OnEvent DataLoad's watcher: its own cache handle, when to poll, what changed."""

    generation: int
    watcher: Any = None  # shipyard.data.operations.SourceWatcher once the first run set its baseline
    cache: Any = None
    poll: asyncio.Future[list[str]] | None = None
    next_poll: float = 0.0
    changes: set[str] = field(default_factory=set)
    error: str | None = None


class DataOpsController:
    """Runs the data operations stored in the control plane; ``home`` is $SHIPYARD_HOME."""

    def __init__(self, store: Store, home: Path, resync: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.home = home
        #: ``resync(namespace, name)``: a run wrote into this Dataset's source; its listing should be re-read.
        self.resync = resync or (lambda namespace, name: None)
        self.logs_dir = home / "logs"
        self.wake = asyncio.Event()
        self.running: dict[tuple[str, str, str], Running] = {}
        self.locks: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.watches: dict[tuple[str, str], Watch] = {}

    # -- what the Dataset controller asks -----------------------------------------------------------
    def holders(self, namespace: str, name: str) -> dict[str, str]:
        """``operationRef``: the operation holding the dataset, per kind (``other-ns/name`` across namespaces)."""
        return {kind: (op_name if op_ns == namespace else f"{op_ns}/{op_name}")
                for (kind, ds_ns, ds_name), (op_ns, op_name) in sorted(self.locks.items())
                if (ds_ns, ds_name) == (namespace, name)}

    def busy(self, namespace: str, name: str) -> bool:
        """Does a run use this dataset now (its deletion waits)?"""
        return any((ds_ns, ds_name) == (namespace, name) for _, ds_ns, ds_name in self.locks) or any(
            watch.poll is not None and not watch.poll.done() and (namespace, name) in self._watch_datasets(key)
            for key, watch in self.watches.items())

    def release(self, namespace: str, name: str) -> None:
        """Close the watchers reading this dataset (it is being deleted); they restart when it returns."""
        for key in [key for key in self.watches if (namespace, name) in self._watch_datasets(key)]:
            self._drop_watch(key)

    def _watch_datasets(self, key: tuple[str, str]) -> list[tuple[str, str]]:
        resource = self.store.get("DataLoad", *key)
        if resource is None:
            return []
        return [(ns, name) for _, ns, name in dataset_refs("DataLoad", resource.spec, key[0])]

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set."""
        await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "data operations")

    async def reconcile_all(self) -> None:
        operations = [resource for kind in KINDS for resource in self.store.list(kind)]
        operations.sort(key=lambda resource: (resource.created, resource.kind, resource.name))  # first come first
        for resource in operations:
            try:
                self.reconcile(resource)
            except Exception:
                log.exception("reconciling %s %s/%s failed", resource.kind, resource.namespace, resource.name)

    def reconcile(self, resource: Resource) -> None:
        key = (resource.kind, resource.namespace, resource.name)
        running = self.running.get(key)
        if running is not None and running.task.done():
            self._finished(resource, running)
            resource = self.store.get(*key) or resource
            running = None
        if resource.deleting:
            if running is None:
                self._remove(resource)
            else:
                running.cancel.set()
            return
        if running is not None:
            return
        status = json.loads(json.dumps(resource.status or {}))
        own = status.setdefault("shipyard", {})
        policy = resource.spec.get("policy") or "Once"
        if own.get("observedGeneration") != resource.generation:
            self._reset(resource, status, policy)
        if self._expired(resource, status, policy):
            return
        changes = self._due(resource, status, policy)
        if changes is None:
            self._write(resource, status)
            return
        blocked = self._held_back(resource, status)
        if blocked is None:
            self._start(resource, status, policy, changes)
        self._write(resource, status)

    # -- deciding -------------------------------------------------------------------------------------
    def _reset(self, resource: Resource, status: dict[str, Any], policy: str) -> None:
        """A new spec generation: it runs again (Once), reschedules (Cron) or re-watches (OnEvent)."""
        own = status["shipyard"]
        first = "observedGeneration" not in own
        own["observedGeneration"] = resource.generation
        own.pop("nextScheduleTime", None)
        own.pop("finishedAt", None)
        status.update(phase="Pending", conditions=[], waitingFor={"operationComplete": False})
        status.pop("duration", None)
        self._drop_watch((resource.namespace, resource.name))
        if policy == "Cron":
            own["nextScheduleTime"] = _iso(_next_fire(resource.spec.get("schedule"), time.time()))
        self._event(resource, "Normal", "Created" if first else "Updated",
                    f"{'created' if first else 'spec changed'}: policy {policy}" +
                    (f", next run at {own['nextScheduleTime']}" if policy == "Cron" else ""))

    def _expired(self, resource: Resource, status: dict[str, Any], policy: str) -> bool:
        """``ttlSecondsAfterFinished``: a finished Once operation is removed once its time is up."""
        ttl = resource.spec.get("ttlSecondsAfterFinished")
        finished = status["shipyard"].get("finishedAt")
        if policy != "Once" or not isinstance(ttl, int) or finished is None or status.get("phase") not in FINISHED:
            return False
        if time.time() < finished + ttl:
            return False
        log.info("%s %s/%s removed %ss after it finished", resource.kind, resource.namespace, resource.name, ttl)
        self._remove(resource)
        return True

    def _due(self, resource: Resource, status: dict[str, Any], policy: str) -> list[str] | None:
        """None when no run is due; else the paths to load ([] = the operation's own targets)."""
        own = status["shipyard"]
        if policy == "Cron":
            fire = _parse_iso(own.get("nextScheduleTime"))
            if fire is None:
                fire = _next_fire(resource.spec.get("schedule"), time.time())
                own["nextScheduleTime"] = _iso(fire)
            return [] if time.time() >= fire else None
        if policy == "OnEvent" and resource.kind == "DataLoad":
            watch = self.watches.get((resource.namespace, resource.name))
            if watch is None or watch.generation != resource.generation:
                return []  # the first run sets the watcher's baseline, then loads everything
            if watch.watcher is None:  # that first run failed: it is tried again every poll interval
                return [] if time.monotonic() >= watch.next_poll else None
            self._poll(resource, watch, own)
            return sorted(watch.changes) if watch.changes else None
        return [] if status.get("phase") not in FINISHED else None

    def _poll(self, resource: Resource, watch: Watch, own: dict[str, Any]) -> None:
        """Ask the watcher for changes every poll interval (in a worker thread)."""
        if watch.poll is not None and watch.poll.done():
            try:
                found = watch.poll.result()
                watch.error = None
                if found:
                    watch.changes.update(found)
                    self._event(resource, "Normal", "SourceChanged", f"{len(found)} path(s) changed at the source: "
                                f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''}")
            except Exception as exc:  # an unreachable source: keep watching
                if watch.error != str(exc):
                    self._event(resource, "Warning", "WatchFailed", f"checking the source failed: {exc}")
                watch.error = str(exc)
            watch.poll = None
            watch.next_poll = time.monotonic() + _poll_interval(resource)
        if watch.error:
            own["watchError"] = watch.error
        else:
            own.pop("watchError", None)
        if watch.poll is None and time.monotonic() >= watch.next_poll:
            watch.poll = asyncio.ensure_future(in_thread(watch.watcher.changes, name="shipyard-watch"))

    def _held_back(self, resource: Resource, status: dict[str, Any]) -> str | None:
        """Why the operation cannot start now (its status says so), or None."""
        namespace = resource.namespace
        waiting = status.setdefault("waitingFor", {"operationComplete": False})
        waiting["operationComplete"] = False
        for path, ds_ns, ds_name in self._datasets(resource):
            dataset = self.store.get(DATASET.kind, ds_ns, ds_name)
            if dataset is None or dataset.deleting:
                where = f" in namespace '{ds_ns}'" if ds_ns != namespace else ""
                return self._wait(resource, status, "DatasetNotFound", f"{path}: dataset '{ds_name}'{where} "
                                  f"{'is being deleted' if dataset else 'does not exist'}; waiting for it (apply "
                                  f"it, or delete this {resource.kind})")
            phase = (dataset.status or {}).get("phase")
            if phase != "Bound":
                ready = next((c for c in (dataset.status or {}).get("conditions") or [] if c.get("type") == "Ready"),
                             {})
                why = f": {ready.get('message')}" if ready.get("message") else ""
                return self._wait(resource, status, "DatasetNotBound", f"{path}: dataset '{ds_name}' is "
                                  f"{phase or 'NotBound'}{why}")
        upstream = resource.spec.get("runAfter")
        if isinstance(upstream, dict) and upstream.get("name"):
            up_ns = upstream.get("namespace") or namespace
            other = self.store.get(str(upstream.get("kind")), up_ns, str(upstream["name"]))
            what = f"{upstream.get('kind')} '{upstream['name']}'" + (f" in namespace '{up_ns}'"
                                                                       if up_ns != namespace else "")
            up_phase = (other.status or {}).get("phase") if other is not None else None
            up_current = other is not None and ((other.status or {}).get("shipyard") or {}).get(
                "observedGeneration") == other.generation
            if up_phase == "Failed" and up_current:
                failed = next((c for c in (other.status or {}).get("conditions") or [] if c.get("type") == "Failed"),
                              {})
                why = f": {failed.get('message')}" if failed.get("message") else ""
                self._fail(resource, status, "UpstreamFailed", f"runAfter {what} failed{why}; this step did not run")
                return "UpstreamFailed"
            if up_phase != "Complete" or not up_current:
                waiting["operationComplete"] = True
                state = "does not exist yet" if other is None else f"is {up_phase or 'Pending'}"
                return self._wait(resource, status, "WaitingForUpstream", f"runAfter {what} {state}; waiting for "
                                  "it to complete")
        for lock in self._locks(resource):
            holder = self.locks.get(lock)
            if holder is not None and holder != (namespace, resource.name):
                return self._wait(resource, status, "DatasetLocked", f"{resource.kind} '{holder[1]}' is running on "
                                  f"dataset '{lock[2]}'; one {resource.kind} per dataset at a time")
        return None

    def _datasets(self, resource: Resource) -> list[tuple[str, str, str]]:
        """Every Dataset the operation needs: its own, and a DataProcess's output."""
        refs = dataset_refs(resource.kind, resource.spec, resource.namespace)
        output = resource.annotations.get(OUTPUT)
        if resource.kind == "DataProcess" and output:
            name, _ = parse_dataset_uri(output)
            refs.append((f"metadata.annotations[{OUTPUT}]", resource.namespace, name))
        return refs

    def _written(self, resource: Resource) -> list[tuple[str, str]]:
        """The Datasets whose source a run of this operation writes to."""
        if resource.kind == "DataMigrate":
            target = (resource.spec.get("to") or {}).get("dataset")
            return [(target.get("namespace") or resource.namespace, str(target.get("name")))] if target else []
        output = resource.annotations.get(OUTPUT)
        if resource.kind == "DataProcess" and output:
            return [(resource.namespace, parse_dataset_uri(output)[0])]
        return []

    def _locks(self, resource: Resource) -> list[tuple[str, str, str]]:
        return [(resource.kind, ds_ns, ds_name) for _, ds_ns, ds_name in
                dataset_refs(resource.kind, resource.spec, resource.namespace)]

    # -- running --------------------------------------------------------------------------------------
    def _start(self, resource: Resource, status: dict[str, Any], policy: str, changes: list[str]) -> None:
        key = (resource.kind, resource.namespace, resource.name)
        own = status["shipyard"]
        locks = self._locks(resource)
        for lock in locks:
            self.locks[lock] = (resource.namespace, resource.name)
        watch = None
        if policy == "OnEvent" and resource.kind == "DataLoad":
            watch = self.watches.get((resource.namespace, resource.name))
            if watch is None or watch.generation != resource.generation or watch.watcher is None:
                self._drop_watch((resource.namespace, resource.name))
                watch = self.watches[(resource.namespace, resource.name)] = Watch(resource.generation)
                trigger = "OnEvent: first load, watching the source from now on"
            else:
                watch.changes.clear()
                trigger = f"OnEvent: {len(changes)} changed path(s)"
        else:
            trigger = {"Cron": f"Cron: schedule {resource.spec.get('schedule')!r}"}.get(policy, policy)
        runs = int(own.get("runs") or 0) + 1
        now = time.time()
        status.update(phase="Executing", conditions=[], lastScheduleTime=_iso(now), duration="Unfinished")
        own.update(runStarted=now, trigger=trigger, log=str(self.log_path(resource.kind, resource.namespace,
                                                                         resource.name)))
        own.pop("nextScheduleTime", None) if policy == "Cron" else None
        self._event(resource, "Normal", "Started", f"run {runs} ({trigger})")
        snapshot = copy.deepcopy(resource)
        cancel = threading.Event()
        task = asyncio.ensure_future(in_thread(self._execute, snapshot, runs, trigger, changes, watch,
                                               own.get("memoKey"), cancel, name=f"shipyard-{resource.kind.lower()}"))
        task.add_done_callback(lambda _: self.wake.set())
        self.running[key] = Running(resource.kind, resource.namespace, resource.name, locks, task, now,
                                    resource.generation, cancel)

    def _finished(self, resource: Resource, running: Running) -> None:
        """Record a run's outcome and release its locks."""
        key = (running.kind, running.namespace, running.name)
        del self.running[key]
        for lock in running.locks:
            if self.locks.get(lock) == (running.namespace, running.name):
                del self.locks[lock]
        if resource.deleting:
            return
        status = json.loads(json.dumps(resource.status or {}))
        own = status.setdefault("shipyard", {})
        now = time.time()
        seconds = now - running.started
        status["duration"] = _duration(seconds)
        own["runs"] = int(own.get("runs") or 0) + 1
        own["finishedAt"] = now
        own.pop("runStarted", None)
        try:
            result = running.task.result()
        except Exception as exc:
            self._fail(resource, status, "OperationFailed", str(exc) or type(exc).__name__)
        else:
            skipped = bool(result.skipped)
            reason = "UpToDate" if skipped and resource.kind == "DataProcess" else "Succeeded"
            status.update(phase="Complete", lastSuccessfulTime=_iso(now), conditions=[_condition(
                "Complete", reason, result.message or f"{resource.kind} completed")])
            own.update(files=result.files, bytes=result.bytes, skipped=skipped,
                       throughputMBps=round(result.bytes / result.seconds / 1e6, 2) if result.seconds > 0 else 0.0,
                       seconds=round(result.seconds, 3))
            details = result.details or {}
            if details.get("memoKey"):
                own["memoKey"] = details["memoKey"]
            for name in ("fetchedBytes", "cachedAlready", "outputFiles", "outputBytes", "blocks"):
                if name in details:
                    own[name] = details[name]
            self._event(resource, "Normal", "Skipped" if skipped and resource.kind == "DataProcess" else "Completed",
                        result.message or "completed")
            for namespace, name in self._written(resource):
                self.resync(namespace, name)
        policy = resource.spec.get("policy") or "Once"
        if policy == "Cron" and running.generation == resource.generation:
            own["nextScheduleTime"] = _iso(_next_fire(resource.spec.get("schedule"), now))
        if policy == "OnEvent":
            watch = self.watches.get((resource.namespace, resource.name))
            if watch is not None and watch.watcher is None:  # the first run failed: try again after a while
                watch.next_poll = time.monotonic() + _poll_interval(resource)
        self._write(resource, status)

    def _execute(self, resource: Resource, run: int, trigger: str, changes: list[str], watch: Watch | None,
                 memo_key: str | None, cancel: threading.Event) -> Any:
        """One run, in a worker thread: open what it needs, run it, log it."""
        from shipyard.data.operations import OperationError
        from shipyard.data.operations.result import locked

        path = self.log_path(resource.kind, resource.namespace, resource.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", buffering=1) as handle:
            write = locked(lambda line: handle.write(f"{_stamp()} {line}\n"))
            write(f"=== run {run} of {resource.kind} {resource.name} ({trigger}), generation {resource.generation}")
            try:
                result = self._operate(resource, changes, watch, memo_key, write, cancel)
            except OperationError as exc:
                write(f"failed: {exc}")
                raise
            except Exception as exc:
                write(f"failed: {type(exc).__name__}: {exc}")
                for line in traceback.format_exc().rstrip().splitlines():
                    write(line)
                raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
            write(f"=== run {run} complete")
            return result

    def _operate(self, resource: Resource, changes: list[str], watch: Watch | None, memo_key: str | None,
                 write: Any, cancel: threading.Event) -> Any:
        from shipyard.data.engine import DatasetCache
        from shipyard.data.operations import run_clean, run_load

        spec, namespace = resource.spec, resource.namespace
        opened: list[Any] = []

        def cache(ref: dict[str, Any] | None) -> Any:
            ref = ref or {}
            handle = DatasetCache.open(str(ref.get("name")), ref.get("namespace") or namespace, home=self.home)
            opened.append(handle)
            return handle

        try:
            if resource.kind == "DataLoad":
                targets = changes or [t["path"] for t in spec.get("target") or [] if isinstance(t, dict)] or None
                if watch is not None and watch.watcher is None:
                    self._watch_baseline(resource, watch, write)
                options = spec.get("options") or {}
                return run_load(cache(spec.get("dataset")), targets, parallelism=int(options.get("parallelism", 8)),
                                load_metadata=bool(spec.get("loadMetadata")) and not changes, log=write)
            if resource.kind == "DataClean":
                targets = [t["path"] for t in spec.get("target") or [] if isinstance(t, dict)] or None
                return run_clean(cache(spec.get("dataset")), targets, log=write)
            if resource.kind == "DataMigrate":
                return self._migrate(resource, cache, write)
            return self._process(resource, cache, memo_key, write, cancel)
        finally:
            for handle in opened:
                try:
                    handle.close()
                except Exception:  # the run's outcome stands
                    log.exception("closing a dataset cache failed")

    def _watch_baseline(self, resource: Resource, watch: Watch, write: Any) -> None:
        """An OnEvent load's watcher remembers the source's listing before the first load."""
        from shipyard.data.engine import DatasetCache
        from shipyard.data.operations import SourceWatcher

        ref = resource.spec.get("dataset") or {}
        handle = DatasetCache.open(str(ref.get("name")), ref.get("namespace") or resource.namespace, home=self.home)
        targets = [t["path"] for t in resource.spec.get("target") or [] if isinstance(t, dict)] or None
        watcher = SourceWatcher(handle, targets)
        try:
            watcher.changes()  # the baseline
        except Exception:
            handle.close()
            raise
        watch.cache, watch.watcher = handle, watcher
        watch.next_poll = time.monotonic() + _poll_interval(resource)
        write(f"watching the source every {_poll_interval(resource):g}s for changes to "
              f"{', '.join(targets) if targets else 'the whole dataset'}")

    def _migrate(self, resource: Resource, cache: Any, write: Any) -> Any:
        from shipyard.data.operations import Endpoint, run_migrate

        spec = resource.spec
        ends = []
        for side in ("from", "to"):
            value = spec.get(side) or {}
            if value.get("dataset"):
                ends.append(Endpoint(cache=cache(value["dataset"]), path=value["dataset"].get("path") or "/"))
            else:
                storage = value.get("externalStorage") or {}
                ends.append(Endpoint(uri=_external_uri(str(storage.get("uri"))),
                                     storage_options=_secret_options(storage.get("encryptOptions") or [], side)))
        options = spec.get("options") or {}
        exclude = [item.strip() for item in str(options.get("exclude", "")).split(",") if item.strip()]
        parallelism = spec.get("parallelism")
        return run_migrate(ends[0], ends[1], parallelism=parallelism if isinstance(parallelism, int) else 4,
                           checksum=str(options.get("checksum", "true")).lower() != "false", exclude=exclude,
                           log=write)

    def _process(self, resource: Resource, cache: Any, memo_key: str | None, write: Any,
                 cancel: threading.Event) -> Any:
        from shipyard.data.operations import ProcessSpec, run_process

        spec = resource.spec
        script = (spec.get("processor") or {}).get("script") or {}
        dataset = spec.get("dataset") or {}
        output, output_path = None, "/"
        target = resource.annotations.get(OUTPUT)
        if target:
            name, output_path = parse_dataset_uri(target)
            output = cache({"name": name, "namespace": resource.namespace})
        workdir = self.home / "work" / "dataprocess" / resource.namespace / resource.name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        env = {str(item["name"]): str(item.get("value", "")) for item in script.get("env") or []
               if isinstance(item, dict) and item.get("name")}
        process = ProcessSpec(command=list(script.get("command") or []), source=str(script.get("source") or ""),
                              env=env, input=cache(dataset), sub_path=dataset.get("subPath") or "/", output=output,
                              output_path=output_path, workdir=workdir)
        return run_process(process, previous_key=memo_key, log=write, cancel=cancel)

    # -- status ---------------------------------------------------------------------------------------
    def _wait(self, resource: Resource, status: dict[str, Any], reason: str, message: str) -> str:
        if set_waiting(status, reason, message, _condition):
            self._event(resource, "Normal", reason, message)
        return reason

    def _fail(self, resource: Resource, status: dict[str, Any], reason: str, message: str) -> None:
        own = status.setdefault("shipyard", {})
        status.update(phase="Failed", conditions=[_condition("Failed", reason, message)])
        status.setdefault("waitingFor", {})["operationComplete"] = False
        own.setdefault("finishedAt", time.time())
        policy = resource.spec.get("policy") or "Once"
        if policy == "Cron" and reason == "UpstreamFailed":  # a Cron step tries again at its next fire time
            own["nextScheduleTime"] = _iso(_next_fire(resource.spec.get("schedule"), time.time()))
        self._event(resource, "Warning", "Failed" if reason == "OperationFailed" else reason, message)

    def _write(self, resource: Resource, status: dict[str, Any]) -> None:
        if canonical_json(status) != canonical_json(resource.status or {}):
            self.store.set_status(resource.kind, resource.namespace, resource.name, status)

    def _event(self, resource: Resource, type_: str, reason: str, message: str) -> None:
        self.store.event(resource.kind, resource.namespace, resource.name, type_, reason, message)

    def log_path(self, kind: str, namespace: str, name: str) -> Path:
        """``$SHIPYARD_HOME/logs/<kind>/<namespace>/<name>.log`` (kind in lower case: ``dataload``)."""
        return operation_log(self.logs_dir, kind, namespace, name)

    # -- removal, recovery, shutdown ------------------------------------------------------------------
    def _remove(self, resource: Resource) -> None:
        self._drop_watch((resource.namespace, resource.name)) if resource.kind == "DataLoad" else None
        self.store.remove(resource.kind, resource.namespace, resource.name)
        self.log_path(resource.kind, resource.namespace, resource.name).unlink(missing_ok=True)
        if resource.kind == "DataProcess":
            shutil.rmtree(self.home / "work" / "dataprocess" / resource.namespace / resource.name, ignore_errors=True)
        log.info("deleted %s %s/%s", resource.kind, resource.namespace, resource.name)

    def _drop_watch(self, key: tuple[str, str]) -> None:
        watch = self.watches.pop(key, None)
        if watch is None or watch.cache is None:
            return
        cache = watch.cache

        def close(_: Any = None) -> None:
            try:
                cache.close()
            except Exception:
                log.exception("closing a watcher's dataset cache failed")

        if watch.poll is not None and not watch.poll.done():
            watch.poll.add_done_callback(close)  # a poll in flight still reads it
        else:
            close()

    async def recover(self) -> None:
        """After a (re)start: a run the previous plane did not finish runs again."""
        for kind in KINDS:
            for resource in self.store.list(kind):
                if (resource.status or {}).get("phase") != "Executing":
                    continue
                status = json.loads(json.dumps(resource.status))
                own = status.setdefault("shipyard", {})
                own.pop("runStarted", None)
                if (resource.spec.get("policy") or "Once") == "Cron":
                    own["nextScheduleTime"] = _iso(time.time())
                status.update(phase="Pending", conditions=[_condition(
                    "Waiting", "Requeued", "the control plane stopped during its run; it runs again")])
                status.pop("duration", None)
                self._event(resource, "Warning", "Requeued", "the control plane stopped during its run; it runs again")
                self.store.set_status(kind, resource.namespace, resource.name, status)

    async def shutdown(self) -> None:
        """A clean stop: wait a little for runs in flight; the ones still running are run again by the next plane."""
        tasks = [running.task for running in self.running.values()]
        for running in self.running.values():  # scripts stop; loads, migrates and cleans finish or run again
            running.cancel.set()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        for key, running in list(self.running.items()):
            stopped = running.task.done() and running.task.exception() is not None and running.cancel.is_set()
            if running.task.done() and not stopped:  # a script stopped by the shutdown stays queued to run again
                resource = self.store.get(*key)
                if resource is not None:
                    self._finished(resource, running)
        for key in list(self.watches):
            self._drop_watch(key)


# -- helpers --------------------------------------------------------------------------------------------
def operation_log(logs_dir: Path, kind: str, namespace: str, name: str) -> Path:
    """Where an operation's runs are logged."""
    return logs_dir / kind.lower() / namespace / f"{name}.log"


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = _iso(time.time())
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
            "lastTransitionTime": now}


def _next_fire(schedule: Any, after: float) -> float:
    from shipyard.data.operations import next_fire

    moment = datetime.fromtimestamp(after).astimezone()
    return next_fire(str(schedule), moment).timestamp()


def _poll_interval(resource: Resource) -> float:
    try:
        return parse_duration(resource.annotations.get(POLL_INTERVAL, DEFAULT_POLL_S))
    except ValueError:
        return DEFAULT_POLL_S


def _external_uri(uri: str) -> str:
    """Fluid's ``local:///abs`` is ``file:///abs``."""
    return "file://" + uri[len("local://"):] if uri.startswith("local://") else uri


def _secret_options(items: list[Any], side: str) -> dict[str, Any]:
    """externalStorage.encryptOptions -> storage options with the secrets' values (never stored)."""
    from shipyard.data.sources import nest_options, resolve_secret
    from shipyard.data.spec import SecretRef

    flat: dict[str, Any] = {}
    for item in items:
        ref = ((item.get("valueFrom") or {}).get("secretKeyRef")) or {}
        option = str(item.get("name"))
        flat[option] = resolve_secret(SecretRef(option, str(ref.get("name")), str(ref.get("key") or option)),
                                      f"{side}.externalStorage")
    return nest_options(flat)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=__import__("datetime").timezone.utc) \
            .timestamp()
    except ValueError:
        return None


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
