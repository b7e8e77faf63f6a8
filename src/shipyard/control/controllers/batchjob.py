"""The BatchJob controller: each BatchJob runs once, in a worker thread, through ``shipyard.batch.run_batch``.

One pass runs every half second (and at once when the API sets ``wake``), oldest job first:

- a new spec generation is ``Pending``, then ``Running`` as soon as it can start: at most
  ``SHIPYARD_BATCH_JOBS`` (default 2) jobs run at once (the others wait with reason ``Queued``); a
  job whose ``spec.model`` names an InferenceService waits for it to exist and be Ready
  (``ServiceNotFound`` / ``ServiceNotReady``) and then sends its requests through the gateway;
- while it runs, ``status`` follows the engine's progress callback (rows, errors, rows/s, chunks),
  written at most every ``PROGRESS_WRITE_S``;
- it ends ``Succeeded`` or ``Failed`` (the engine's one-line message: a bad input, a model that does
  not load, more failed rows than ``spec.maxErrors``); a finished job does not run again unless its
  spec changes (a new generation runs from the start: the engine's manifest fingerprint notices);
- deleting a job sets its stop Event (the engine returns within about one chunk), discards its
  partial work (``shipyard.batch.discard``), its log, then the resource;
- a plane that stops (cleanly or not) leaves its running jobs ``Running`` in the store; the next plane
  requeues them (reason ``Requeued``) and the engine resumes each from its manifest of finished
  chunks (``status.resumedChunks``).

Each run appends to ``$SHIPYARD_HOME/logs/batchjob/<namespace>/<name>.log`` (``shipyard logs batchjob
NAME``): the engine's own lines (the plan, resuming, retries, bad rows), progress every
``PROGRESS_LOG_S`` and the summary.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shipyard.control.batch_validation import ATTRIBUTES, batch_spec_kwargs, model_form
from shipyard.control.controllers.dataops import operation_log
from shipyard.control.controllers.dataset import in_thread
from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers.waiting import set_waiting
from shipyard.control.resources import BATCH_JOB, INFERENCE_SERVICE, Resource, canonical_json
from shipyard.control.store import Store

log = logging.getLogger("shipyard.control")

KIND = BATCH_JOB.kind
INTERVAL_S = 0.5
#: Status is rewritten from the progress callback at most this often (seconds).
PROGRESS_WRITE_S = 0.5
#: A progress line goes to the job's log at most this often (seconds).
PROGRESS_LOG_S = 5.0
#: A clean plane stop waits this long for running jobs to stop (they resume on the next plane).
SHUTDOWN_WAIT_S = 15.0
FINISHED = ("Succeeded", "Failed")
DEFAULT_MAX_RUNNING = 2


def max_running() -> int:
    """How many BatchJobs run at once: ``SHIPYARD_BATCH_JOBS`` (default 2)."""
    try:
        return max(1, int(os.environ.get("SHIPYARD_BATCH_JOBS", DEFAULT_MAX_RUNNING)))
    except ValueError:
        return DEFAULT_MAX_RUNNING


@dataclass
class Progress:
    """The latest progress the engine reported (set from the job's thread, read by the loop)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latest: Any = None  # shipyard.batch.BatchProgress
    version: int = 0


@dataclass
class Run:
    """One job in flight: its thread's task, its stop Event, its progress."""

    namespace: str
    name: str
    generation: int
    started: float
    task: asyncio.Future[Any] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    written_version: int = 0
    written_at: float = 0.0
    #: Why it was stopped ("deleted", "spec changed", "plane stopped"), when it was.
    stopping: str | None = None


class BatchJobController:
    """Runs the BatchJobs stored in the control plane; ``home`` is $SHIPYARD_HOME.

    ``gateway_url()`` is the gateway's REST URL (a job naming an InferenceService calls it there).
    """

    def __init__(self, store: Store, home: Path, gateway_url: Callable[[], str | None] | None = None) -> None:
        self.store = store
        self.home = home
        self.logs_dir = home / "logs"
        self.gateway_url = gateway_url or (lambda: None)
        self.wake = asyncio.Event()
        self.running: dict[tuple[str, str], Run] = {}
        #: Deleted jobs whose partial work is being discarded (in a thread) before they are removed.
        self.removing: dict[tuple[str, str], asyncio.Future[Any]] = {}

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set."""
        await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "batch jobs")

    async def reconcile_all(self) -> None:
        jobs = sorted(self.store.list(KIND), key=lambda resource: (resource.created, resource.name))
        for resource in jobs:  # first come, first served
            try:
                self.reconcile(resource)
            except Exception:
                log.exception("reconciling BatchJob %s/%s failed", resource.namespace, resource.name)

    def reconcile(self, resource: Resource) -> None:
        key = (resource.namespace, resource.name)
        run = self.running.get(key)
        if run is not None and run.task is not None and run.task.done():
            self._finished(resource, run)
            resource = self.store.get(KIND, *key) or resource
            run = None
        if resource.deleting:
            if run is not None:
                self._stop(resource, run, "deleted")
            else:
                self._delete(resource)
            return
        if run is not None:
            if run.generation != resource.generation:
                self._stop(resource, run, "spec changed")  # it runs again with the new spec once stopped
            else:
                self._publish(resource, run)
            return
        status = _copy(resource.status)
        if status.get("observedGeneration") != resource.generation:
            self._reset(resource, status)
        if status.get("phase") in FINISHED:
            self._write(resource, status)
            return
        if self._held_back(resource, status) is None:
            self._start(resource, status)
        self._write(resource, status)

    # -- deciding -------------------------------------------------------------------------------------
    def _reset(self, resource: Resource, status: dict[str, Any]) -> None:
        """A new spec generation: everything about the last run goes; it runs (again)."""
        first = "observedGeneration" not in status
        runs = status.get("runs", 0)
        status.clear()
        status.update(observedGeneration=resource.generation, phase="Pending", rowsDone=0, rowsTotal=None, errors=0,
                      rowsPerSecond=0.0, output=resource.spec.get("output"), runs=runs, conditions=[])
        self._event(resource, "Normal", "Created" if first else "Updated",
                    f"{'created' if first else 'spec changed'}: {_summary(resource.spec)}")

    def _held_back(self, resource: Resource, status: dict[str, Any]) -> str | None:
        """Why the job cannot start now (its status says so), or None."""
        model = str(resource.spec.get("model") or "")
        if model_form(model) == "service":
            service = self.store.get(INFERENCE_SERVICE.kind, resource.namespace, model)
            if service is None or service.deleting:
                return self._wait(resource, status, "ServiceNotFound", f"spec.model: InferenceService '{model}' "
                                  f"{'is being deleted' if service else 'does not exist'} in namespace "
                                  f"'{resource.namespace}'; waiting for it (apply it, or delete this BatchJob)")
            ready = next((c for c in (service.status or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
            if ready.get("status") != "True":
                why = f": {ready.get('message')}" if ready.get("message") else ""
                return self._wait(resource, status, "ServiceNotReady", f"spec.model: InferenceService '{model}' is "
                                  f"not Ready yet{why}")
            if not self.gateway_url():
                return self._wait(resource, status, "GatewayNotReady", "the gateway is not listening yet")
        limit = max_running()
        if len(self.running) >= limit:
            return self._wait(resource, status, "Queued", f"{len(self.running)} BatchJob(s) running, at most {limit} "
                              "at once (SHIPYARD_BATCH_JOBS); it starts when one ends")
        return None

    def batch_spec(self, resource: Resource) -> Any:
        """The engine's BatchSpec for a stored job; a service name becomes the gateway's URL and the model's name."""
        from shipyard.batch import BatchSpec

        kwargs = batch_spec_kwargs(resource.spec, resource.namespace)
        model, gateway = str(resource.spec.get("model") or ""), self.gateway_url()
        if model_form(model) == "service" and gateway:
            kwargs["model"] = gateway.rstrip("/")
            kwargs["model_name"] = resource.spec.get("modelName") or model
        return BatchSpec(**kwargs)

    # -- running --------------------------------------------------------------------------------------
    def _start(self, resource: Resource, status: dict[str, Any]) -> None:
        key = (resource.namespace, resource.name)
        try:
            spec = self.batch_spec(resource)
        except (TypeError, ValueError) as exc:  # a stored spec the engine cannot take (validated by an older version?)
            message = f"spec: {exc}"
            status.update(phase="Failed", completionTime=_iso(time.time()), message=message,
                          conditions=[_condition("Failed", "InvalidSpec", message)])
            self._event(resource, "Warning", "Failed", message)
            return
        runs = int(status.get("runs") or 0) + 1
        resumed = bool(status.pop("resuming", False))
        now = time.time()
        status.update(phase="Running", runs=runs, startTime=status.get("startTime") if resumed else _iso(now),
                      message="", log=str(self.log_path(resource.namespace, resource.name)),
                      conditions=[_condition("Running", "Resumed" if resumed else "Started",
                                             "resuming from its last finished chunk" if resumed else
                                             f"scoring {resource.spec.get('input')}")])
        status.pop("completionTime", None)
        status["startTime"] = status["startTime"] or _iso(now)
        self._write(resource, status)  # Running before its thread can report progress
        resource.status = status
        self._event(resource, "Normal", "Resumed" if resumed else "Started", f"run {runs}: {_summary(resource.spec)}")
        run = Run(resource.namespace, resource.name, resource.generation, now)
        run.task = asyncio.ensure_future(in_thread(self._execute, copy.deepcopy(resource), spec, run, runs,
                                                   name="shipyard-batchjob"))
        run.task.add_done_callback(lambda _: self.wake.set())
        self.running[key] = run

    def _execute(self, resource: Resource, spec: Any, run: Run, number: int) -> Any:
        """One run, in a worker thread: run_batch with the job's stop Event, logged."""
        from shipyard.batch import run_batch

        path = self.log_path(resource.namespace, resource.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", buffering=1) as handle:
            lock = threading.Lock()

            def write(line: str) -> None:
                with lock:
                    handle.write(f"{_stamp()} {line}\n")

            last_logged = [0.0]

            def progress(update: Any) -> None:
                with run.progress.lock:
                    run.progress.latest = update
                    run.progress.version += 1
                now = time.monotonic()
                if now - last_logged[0] >= PROGRESS_LOG_S:
                    last_logged[0] = now
                    write(f"progress: {_progress_text(update)}")

            write(f"=== run {number} of BatchJob {resource.name} (generation {resource.generation}): "
                  f"{_summary(resource.spec)}")
            try:
                result = run_batch(spec, progress=progress, stop=run.stop, log=write)
            except Exception as exc:  # the engine reports failures in its result; this is a bug's last word
                write(f"failed: {type(exc).__name__}: {exc}")
                for line in traceback.format_exc().rstrip().splitlines():
                    write(line)
                raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
            if result.state == "Stopped":
                write(f"=== stopped ({run.stopping or 'stop requested'}): {result.message}")
            else:
                write(f"=== {result.state}: {result.rows} rows, {result.errors} errors in {result.seconds:.1f}s "
                      f"({result.rows_per_s:,.0f} rows/s) -> {result.output}" +
                      (f"; {result.message}" if result.message and result.state == "Failed" else ""))
            if run.stopping == "deleted" and result.state != "Succeeded":
                _discard(spec, write)
            return result

    def _publish(self, resource: Resource, run: Run) -> None:
        """Progress into status, at most every PROGRESS_WRITE_S."""
        with run.progress.lock:
            latest, version = run.progress.latest, run.progress.version
        if latest is None or version == run.written_version or time.monotonic() - run.written_at < PROGRESS_WRITE_S:
            return
        status = _copy(resource.status)
        status.update(_progress_status(latest))
        run.written_version, run.written_at = version, time.monotonic()
        self._write(resource, status)

    def _stop(self, resource: Resource, run: Run, why: str) -> None:
        if run.stopping is None:
            run.stopping = why
            run.stop.set()
            self._event(resource, "Normal", "Stopping", f"{why}: stopping after the chunks in flight")

    def _finished(self, resource: Resource, run: Run) -> None:
        """Record a run's outcome."""
        del self.running[(run.namespace, run.name)]
        assert run.task is not None
        try:
            result = run.task.result()
        except Exception as exc:
            result, error = None, str(exc) or type(exc).__name__
        else:
            error = None
        if resource.deleting:
            if run.stopping == "deleted":  # its partial work was discarded in its thread
                self._remove(resource)
            return
        status = _copy(resource.status)
        with run.progress.lock:
            latest = run.progress.latest
        if latest is not None:  # the last progress, in case the run ended between two writes
            status.update(_progress_status(latest))
        if run.generation != resource.generation:  # stopped for a new spec: reconcile starts that one
            status["observedGeneration"] = None
            self._write(resource, status)
            return
        now = time.time()
        if result is None or result.state == "Failed":
            message = error if result is None else field_message(result.message or "failed")
            status.update(phase="Failed", completionTime=_iso(now), message=message,
                          conditions=[_condition("Failed", "BatchFailed", message)])
            self._event(resource, "Warning", "Failed", message)
        elif result.state == "Stopped":  # a stop nobody asked for here (the plane is stopping): run it again
            status.update(phase="Pending", resuming=True,
                          conditions=[_condition("Waiting", "Requeued", result.message)])
            self._write(resource, status)
            return
        else:
            status.update(phase="Succeeded", completionTime=_iso(now), message=result.message or "",
                          conditions=[_condition("Complete", "Succeeded", f"{result.rows} rows scored, "
                                                 f"{result.errors} failed, in {result.seconds:.1f}s")])
            self._event(resource, "Normal", "Succeeded", f"{result.rows} rows, {result.errors} errors in "
                        f"{result.seconds:.1f}s ({result.rows_per_s:,.0f} rows/s) -> {result.output}")
        if result is not None:
            status.update(rowsDone=result.rows, rowsWritten=result.written, errors=result.errors,
                          rowsPerSecond=round(result.rows_per_s, 1), chunksDone=result.chunks, output=result.output,
                          errorsFile=result.errors_file, resumedChunks=result.resumed_chunks,
                          seconds=round(result.seconds, 3))
            if result.state == "Succeeded":
                status.update(rowsTotal=result.rows, chunksTotal=result.chunks)
        self._write(resource, status)

    # -- deleting -------------------------------------------------------------------------------------
    def _delete(self, resource: Resource) -> None:
        """A deleted job that is not running: discard its partial work (in a thread), then forget it."""
        key = (resource.namespace, resource.name)
        pending = self.removing.get(key)
        if pending is None:
            if (resource.status or {}).get("phase") == "Succeeded":
                self._remove(resource)
                return
            try:
                spec = self.batch_spec(resource)
            except Exception:  # nothing it could have left behind can be found: just forget it
                self._remove(resource)
                return
            future = asyncio.ensure_future(in_thread(_discard, spec, None, name="shipyard-batchjob-discard"))
            future.add_done_callback(lambda _: self.wake.set())
            self.removing[key] = future
            return
        if pending.done():
            del self.removing[key]
            self._remove(resource)

    def _remove(self, resource: Resource) -> None:
        self.store.remove(KIND, resource.namespace, resource.name)
        self.log_path(resource.namespace, resource.name).unlink(missing_ok=True)
        log.info("deleted BatchJob %s/%s", resource.namespace, resource.name)

    # -- status ---------------------------------------------------------------------------------------
    def _wait(self, resource: Resource, status: dict[str, Any], reason: str, message: str) -> str:
        if set_waiting(status, reason, message, _condition):
            self._event(resource, "Normal", reason, message)
        return reason

    def _write(self, resource: Resource, status: dict[str, Any]) -> None:
        if canonical_json(status) != canonical_json(resource.status or {}):
            self.store.set_status(KIND, resource.namespace, resource.name, status)

    def _event(self, resource: Resource, type_: str, reason: str, message: str) -> None:
        self.store.event(KIND, resource.namespace, resource.name, type_, reason, message)

    def log_path(self, namespace: str, name: str) -> Path:
        """``$SHIPYARD_HOME/logs/batchjob/<namespace>/<name>.log``."""
        return operation_log(self.logs_dir, KIND, namespace, name)

    # -- recovery and shutdown ------------------------------------------------------------------------
    async def recover(self) -> None:
        """After a (re)start: a job the previous plane was running is requeued; the engine resumes it."""
        for resource in self.store.list(KIND):
            if (resource.status or {}).get("phase") != "Running" or resource.deleting:
                continue
            status = _copy(resource.status)
            message = "the control plane stopped during its run; it resumes from its last finished chunk"
            status.update(phase="Pending", resuming=True, conditions=[_condition("Waiting", "Requeued", message)])
            self._event(resource, "Warning", "Requeued", message)
            self.store.set_status(KIND, resource.namespace, resource.name, status)

    async def shutdown(self) -> None:
        """A clean stop: stop the running jobs (each keeps its finished chunks) and leave them Running in the
        store, so the next plane resumes them; a job that ended meanwhile is recorded."""
        for run in self.running.values():
            run.stopping = run.stopping or "plane stopped"
            run.stop.set()
        tasks = [run.task for run in self.running.values() if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        for key, run in list(self.running.items()):
            if run.task is None or not run.task.done() or run.task.exception() is not None:
                continue
            result = run.task.result()
            resource = self.store.get(KIND, *key)
            if resource is not None and result.state != "Stopped":
                self._finished(resource, run)
            elif resource is not None:
                self._publish(resource, run)
        for future in self.removing.values():
            future.cancel()


# -- helpers --------------------------------------------------------------------------------------------
def _discard(spec: Any, write: Callable[[str], None] | None) -> None:
    """Remove a deleted job's partial work (the engine's manifest and parts)."""
    from shipyard.batch import discard

    try:
        discard(spec)
        if write is not None:
            write("deleted: partial work discarded")
    except Exception as exc:  # the job goes anyway
        log.warning("discarding a deleted BatchJob's partial work failed: %s", exc)


def _progress_status(update: Any) -> dict[str, Any]:
    return {"rowsDone": update.rows_done, "rowsTotal": update.rows_total, "errors": update.errors,
            "rowsPerSecond": round(float(update.rows_per_s), 1), "chunksDone": update.chunks_done,
            "chunksTotal": update.chunks_total}


def _progress_text(update: Any) -> str:
    total = f"/{update.rows_total}" if update.rows_total else ""
    share = f" ({100 * update.rows_done / update.rows_total:.0f}%)" if update.rows_total else ""
    return (f"{update.rows_done}{total} rows{share}, {update.errors} errors, chunk {update.chunks_done}"
            f"{f'/{update.chunks_total}' if update.chunks_total else ''}, {update.rows_per_s:,.0f} rows/s")


def _summary(spec: dict[str, Any]) -> str:
    """``MODEL: INPUT -> OUTPUT`` and the options set."""
    options = ", ".join(f"{key}={_compact(spec[key])}" for key in spec if key not in ("model", "input", "output"))
    return f"{spec.get('model')}: {spec.get('input')} -> {spec.get('output')}" + (f" ({options})" if options else "")


def _compact(value: Any) -> str:
    """A spec value as YAML's flow style would show it: ``[id, ts]``, ``{predict: label}``, ``0.01``."""
    if isinstance(value, list):
        return "[" + ", ".join(_compact(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_compact(item)}" for key, item in value.items()) + "}"
    return str(value)


def field_message(message: str) -> str:
    """An engine message starting with a BatchSpec field (``batch_size: ...``) named by its spec path."""
    head, sep, rest = message.partition(":")
    if sep and head in ATTRIBUTES:
        return f"spec.{ATTRIBUTES[head]}:{rest}"
    return message


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = _iso(time.time())
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}


def _copy(status: dict[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(status or {}))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
