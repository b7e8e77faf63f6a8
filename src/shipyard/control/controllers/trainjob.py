"""The TrainJob controller: queue -> admitted -> initializers -> running -> Complete | Failed.

One pass runs every half second (and at once when the API sets ``wake``). For each TrainJob:

1. a new job is resolved against its runtime (the snapshot the API stored in
   ``status.resolvedRuntime`` at submit; shipyard.train.runtimes.resolve) and queued;
2. the scheduler (control/scheduler.py) admits queued jobs by priority and gang fit;
3. an admitted job runs its dataset/model initializers (each a logged step), then its trainer
   processes (shipyard.train.launcher.JobRun);
4. a run that fails is restarted with backoff up to ``maxRestarts`` (``attempt`` counts up; the
   training code resumes from ``latest_checkpoint()``); ``spec.suspend`` stops it gracefully and
   requeues it on resume; ``spec.activeDeadlineSeconds`` (counted from admission, reset on
   resume) fails it with reason DeadlineExceeded;
5. ``status`` gets Kubeflow's conditions (Suspended, Complete, Failed) plus the SDK's derived
   Created and Running, ``jobsStatus`` per step, ``trainerStatus`` from the job's report.jsonl,
   and Shipyard's own ``status.shipyard`` (state, attempt, the run record used for adoption).

A plane killed with SIGKILL leaves its jobs running: the next plane adopts them (JobRun.adopt) or,
when they are gone, runs them again (a new attempt). A clean stop terminates the running jobs
gracefully and leaves them queued, so the next plane runs them again from their checkpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.control import scheduler
from shipyard.control.controllers.initializers import InitializerError, clean_dataset, initialize
from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers.status import condition
from shipyard.control.resources import CLUSTER_TRAINING_RUNTIME, TRAIN_JOB, TRAINING_RUNTIME, Resource, canonical_json
from shipyard.control.store import Store
from shipyard.control.train_validation import DATASET_CLEAN_AFTER, priority_of

log = logging.getLogger("shipyard.control")

KIND = TRAIN_JOB.kind
INTERVAL_S = 0.5
GRACE_S = 15.0
BACKOFF_S = (1.0, 30.0)  # first restart delay, cap (doubling in between)
INITIALIZERS = (("dataset", "dataset-initializer"), ("model", "model-initializer"))
#: States a job never leaves.
FINISHED = ("Complete", "Failed")


@dataclass
class Active:
    """A job holding its share of the machine: initializing or running."""

    job: Any  # shipyard.train.spec.ResolvedJob
    needs: dict[str, float]
    run: Any = None  # shipyard.train.launcher.JobRun once the trainer started
    task: asyncio.Task[None] | None = None  # initializers + start
    error: str | None = None  # why the initializers or the start failed


@dataclass
class Report:
    """What was read so far of one job's report.jsonl."""

    offset: int = 0
    first: tuple[float, float] | None = None  # (time, progress) of the first progress line
    last: tuple[float, float] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    updated: float | None = None


class TrainJobController:
    """Reconciles every stored TrainJob; ``home`` holds jobs/ (workspaces) and logs/."""

    def __init__(self, store: Store, home: Path, inventory: scheduler.Inventory | None = None) -> None:
        self.store = store
        self.home = home
        self.logs_dir = home / "logs"
        self.inventory = inventory or scheduler.detect_inventory()
        self.wake = asyncio.Event()
        self.active: dict[tuple[str, str], Active] = {}
        self._resolving: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._resolved: dict[tuple[str, str], Any] = {}
        self._reports: dict[tuple[str, str], Report] = {}
        self._deleting: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set."""
        await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "trainjob")

    async def reconcile_all(self) -> None:
        """One pass: every job one step on, then admission of what fits."""
        jobs = self.store.list(KIND)
        for resource in jobs:
            try:
                await self.reconcile(resource)
            except Exception:
                log.exception("reconciling trainjob %s/%s failed", resource.namespace, resource.name)
        self._admit()

    async def reconcile(self, resource: Resource) -> None:
        key = (resource.namespace, resource.name)
        if resource.deleting:
            if key not in self._deleting:
                self._deleting[key] = asyncio.ensure_future(self._delete(resource))
            return
        status = _copy(resource.status)
        own = status.setdefault("shipyard", {})
        state = own.get("state")
        if state is None:
            self._event(resource, "Normal", "Created", f"queued for runtime {_runtime_name(resource)}")
            own.update(state="Queued", attempt=0, restarts=0, queuedAt=time.time())
        elif state in FINISHED:
            self._stop_tracking(key)
            self._clean_dataset_after(resource, own)
        elif resource.spec.get("suspend"):
            if state != "Suspended":
                await self._suspend(resource, own)
        elif state == "Suspended":
            self._event(resource, "Normal", "Resumed", "resumed: queued again")
            own.update(state="Queued", queuedAt=time.time(), reason="Resumed", message="")
            status["_resumed"] = True
        elif state == "Restarting" and time.time() >= own.get("retryAt", 0):
            own.update(state="Queued")
        elif state in ("Initializing", "Running"):
            self._check_active(resource, own)
        if own["state"] == "Queued":
            self._ensure_resolved(resource, own)
        self._write_status(resource, status)

    # -- resolution and admission ------------------------------------------------------------------
    def _ensure_resolved(self, resource: Resource, own: dict[str, Any]) -> None:
        """Resolve a queued job in the background (a venv may have to be built)."""
        key = (resource.namespace, resource.name)
        if key in self._resolved and own.get("generation") == resource.generation:
            return
        task = self._resolving.get(key)
        if task is None:
            self._resolving[key] = asyncio.ensure_future(asyncio.to_thread(self._resolve, resource))
            return
        if not task.done():
            return
        del self._resolving[key]
        try:
            job = task.result()
        except Exception as exc:  # a runtime the job cannot use: the job fails, the plane carries on
            self._fail(resource, own, "InvalidRuntime", str(exc))
            return
        self._resolved[key] = job
        own.update(generation=resource.generation, resolved=_job_record(job))
        needs = scheduler.job_needs(job.num_nodes, job.resources_per_node)
        if not self.inventory.fits_machine(needs):
            self._fail(resource, own, "Unschedulable", f"the job needs {_amounts(needs)} but this machine has "
                       f"{_amounts(self.inventory.total)}")

    def _resolve(self, resource: Resource) -> Any:
        from shipyard.train.runtimes import resolve

        runtime = (resource.status or {}).get("resolvedRuntime") or runtime_document(
            self.store, resource.spec.get("runtimeRef") or {}, resource.namespace)
        if runtime is None:
            raise ValueError(f"runtime '{(resource.spec.get('runtimeRef') or {}).get('name')}' no longer exists")
        return resolve(resource.to_dict(), runtime, self.home)

    def _admit(self) -> None:
        """Start every queued, resolved job the scheduler admits now."""
        queued = []
        for resource in self.store.list(KIND):
            own = (resource.status or {}).get("shipyard") or {}
            key = (resource.namespace, resource.name)
            job = self._resolved.get(key)
            if own.get("state") != "Queued" or resource.deleting or resource.spec.get("suspend") or job is None \
                    or key in self.active:
                continue
            queued.append(scheduler.Demand(key, priority_of(resource.annotations), own.get("queuedAt", 0.0),
                                           scheduler.job_needs(job.num_nodes, job.resources_per_node)))
        running = [active.needs for active in self.active.values()]
        for demand in scheduler.admit(queued, self.inventory, running):
            resource = self.store.get(KIND, *demand.key)
            if resource is None:
                continue
            job = dataclasses.replace(self._resolved[demand.key], attempt=(resource.status.get("shipyard") or {})
                                      .get("attempt", 0), devices=self._devices_for(self._resolved[demand.key]))
            active = self.active[demand.key] = Active(job, demand.needs)
            active.task = asyncio.ensure_future(self._launch(resource, active))
            status = _copy(resource.status)
            status["shipyard"].update(state="Initializing", activeSince=time.time(), reason="", message="",
                                      resolved=_job_record(job))
            self._event(resource, "Normal", "Admitted", f"admitted ({_amounts(demand.needs)}); attempt {job.attempt}")
            self._write_status(resource, status)

    def _devices_for(self, job: Any) -> list[list[str]] | None:
        """GPU ids for each node of an admitted job, from those no running job holds; None on a
        machine without GPUs. A job that asks for none sees none (CUDA_VISIBLE_DEVICES="")."""
        if not self.inventory.gpu_ids:
            return None
        held = {device for active in self.active.values() for node in (active.job.devices or []) for device in node}
        free = [device for device in self.inventory.gpu_ids if device not in held]
        devices = scheduler.assign_devices(free, job.num_nodes, int(job.resources_per_node.get("gpu", 0)))
        if devices is None:  # admission counted GPUs, so this means the count and the ids disagree
            raise RuntimeError(f"no free GPU ids for {job.num_nodes} node(s) of job {job.namespace}/{job.name}")
        return devices

    async def _launch(self, resource: Resource, active: Active) -> None:
        """Run the initializers, then start the trainer's processes (in threads: both may block)."""
        from shipyard.train.launcher import JobRun

        job = active.job
        logs = self.logs_dir / job.namespace / job.name
        try:
            for field_name, step in INITIALIZERS:
                uri = ((resource.spec.get("initializer") or {}).get(field_name) or {}).get("storageUri")
                if uri:
                    self._event(resource, "Normal", "InitializerStarted", f"{step}: {uri}")
                    await asyncio.to_thread(initialize, uri, job.workdir / field_name, logs / f"{step}.log",
                                            namespace=resource.namespace, home=self.home)
            run = JobRun(job, logs, self.home)
            await asyncio.to_thread(run.start)
            active.run = run
            self._event(resource, "Normal", "Started", f"{job.num_nodes} node(s) x {job.nproc_per_node} "
                        f"process(es), attempt {job.attempt}")
        except (InitializerError, OSError, ValueError) as exc:
            active.error = str(exc)
        finally:
            self.wake.set()

    # -- running jobs ------------------------------------------------------------------------------
    def _check_active(self, resource: Resource, own: dict[str, Any]) -> None:
        key = (resource.namespace, resource.name)
        active = self.active.get(key)
        if active is None:  # e.g. the plane restarted during the initializers
            own.update(state="Queued", reason="Requeued", message="the control plane restarted before it ran")
            return
        deadline = resource.spec.get("activeDeadlineSeconds")
        if isinstance(deadline, int) and time.time() - own.get("activeSince", time.time()) > deadline:
            self._finish_active(key, GRACE_S)
            self._fail(resource, own, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds "
                       f"({deadline}s)")
            return
        if active.error is not None:
            self.active.pop(key, None)
            self._failed_run(resource, own, "InitializationFailed", active.error)
            return
        if active.run is None:
            return  # initializers still running
        if own["state"] != "Running":
            own.update(state="Running", startTime=own.get("startTime") or time.time(), run=active.run.record())
        outcome = active.run.poll()
        if outcome is None:
            return
        self.active.pop(key, None)
        own["exitCodes"] = dict(getattr(outcome, "exit_codes", {}) or {})
        if getattr(outcome, "succeeded", False):
            own.update(state="Complete", completionTime=time.time(), reason="Succeeded",
                       message="every training process exited 0", run=None)
            self._event(resource, "Normal", "Completed", "training finished")
        else:
            # The outcome's message names the step that failed first and how (its reason is only "Error").
            self._failed_run(resource, own, "TrainerFailed", getattr(outcome, "message", "")
                             or getattr(outcome, "reason", "") or "a process failed")

    def _clean_dataset_after(self, resource: Resource, own: dict[str, Any]) -> None:
        """``trainer.shipyard.io/dataset-clean-after: "true"``: evict a dataset:// initializer's files from the
        dataset's cache once the job finished (in the background; logged in the dataset-initializer log)."""
        uri = ((resource.spec.get("initializer") or {}).get("dataset") or {}).get("storageUri")
        wanted = str(resource.annotations.get(DATASET_CLEAN_AFTER, "")).lower() == "true"
        if not wanted or not isinstance(uri, str) or not uri.startswith("dataset://") or own.get("datasetCleaned"):
            return
        own["datasetCleaned"] = True
        log_path = self.logs_dir / resource.namespace / resource.name / "dataset-initializer.log"
        asyncio.ensure_future(asyncio.to_thread(clean_dataset, uri, log_path, namespace=resource.namespace,
                                                home=self.home))
        self._event(resource, "Normal", "DatasetCleaned", f"evicting {uri} from the dataset's cache")

    def _failed_run(self, resource: Resource, own: dict[str, Any], reason: str, message: str) -> None:
        """A failed attempt: restart with backoff while restarts are left, else the job fails."""
        job = self._resolved.get((resource.namespace, resource.name))
        allowed = getattr(job, "max_restarts", 0) if job is not None else 0
        restarts = own.get("restarts", 0)
        if restarts >= allowed:
            suffix = f" (after {restarts} restart{'s' * (restarts != 1)})" if restarts else ""
            self._fail(resource, own, reason, message + suffix)
            return
        delay = min(BACKOFF_S[0] * 2 ** restarts, BACKOFF_S[1])
        own.update(state="Restarting", restarts=restarts + 1, attempt=own.get("attempt", 0) + 1, run=None,
                   retryAt=time.time() + delay, reason=reason, message=message)
        self._event(resource, "Warning", "Restarting", f"{message}; restart {restarts + 1} of {allowed} in "
                    f"{delay:g}s")

    def _fail(self, resource: Resource, own: dict[str, Any], reason: str, message: str) -> None:
        self._finish_active((resource.namespace, resource.name), 0)
        own.update(state="Failed", completionTime=time.time(), reason=reason, message=message, run=None)
        self._event(resource, "Warning", reason, message)

    async def _suspend(self, resource: Resource, own: dict[str, Any]) -> None:
        key = (resource.namespace, resource.name)
        if key in self.active:
            await self._stop_active(key, GRACE_S)
        own.update(state="Suspended", run=None, reason="Suspended", message="spec.suspend is true")
        self._event(resource, "Normal", "Suspended", "suspended: processes stopped, the job waits for resume")

    def _finish_active(self, key: tuple[str, str], grace_s: float) -> None:
        """Stop a job's processes in the background (the reconcile pass must not block)."""
        active = self.active.pop(key, None)
        if active is not None:
            asyncio.ensure_future(self._terminate(active, grace_s))

    async def _stop_active(self, key: tuple[str, str], grace_s: float) -> None:
        active = self.active.pop(key, None)
        if active is not None:
            await self._terminate(active, grace_s)

    async def _terminate(self, active: Active, grace_s: float) -> None:
        if active.task is not None and not active.task.done():
            await asyncio.wait([active.task], timeout=grace_s + 5)
        if active.run is not None:
            await asyncio.to_thread(active.run.terminate, grace_s)

    def _stop_tracking(self, key: tuple[str, str]) -> None:
        self._resolved.pop(key, None)

    # -- status ------------------------------------------------------------------------------------
    def _write_status(self, resource: Resource, status: dict[str, Any]) -> None:
        own = status["shipyard"]
        resumed = status.pop("_resumed", False)
        state = own["state"]
        old = resource.status or {}
        conditions = [condition(old, "Created", True, "", "")]
        conditions[0].update(reason="Created", message="the job was accepted")
        if state in ("Suspended",) or resumed or _has(old, "Suspended"):
            suspended = condition(old, "Suspended", state == "Suspended", "", "")
            suspended.update(reason="Suspended" if state == "Suspended" else "Resumed",
                             message="spec.suspend is true" if state == "Suspended" else "the job was resumed")
            conditions.append(suspended)
        conditions.append(_with(condition(old, "Running", state == "Running", "", ""), state == "Running",
                                "Running", "the trainer's processes are running", state,
                                own.get("message") or f"the job is {state.lower()}"))
        if state in FINISHED:
            finished = condition(old, state, True, "", "")
            finished.update(reason=own.get("reason", ""), message=own.get("message", ""))
            conditions.append(finished)
        status["conditions"] = conditions
        status["jobsStatus"] = self._jobs_status(resource, own)
        trainer = self._trainer_status(resource, own)
        if trainer:
            status["trainerStatus"] = trainer
        if canonical_json(status) != canonical_json(old):
            self.store.set_status(KIND, resource.namespace, resource.name, status)

    def _jobs_status(self, resource: Resource, own: dict[str, Any]) -> list[dict[str, Any]]:
        """One entry per step (initializers, node-0, node-1...) with Kubeflow's counters."""
        state = own["state"]
        codes = own.get("exitCodes") or {}
        resolved = own.get("resolved") or {}
        steps = [step for field_name, step in INITIALIZERS
                 if ((resource.spec.get("initializer") or {}).get(field_name) or {}).get("storageUri")]
        entries = []
        for step in steps:
            done = state in ("Running", "Complete") or (state == "Failed" and own.get("startTime"))
            entries.append(_job_entry(step, active=state == "Initializing", succeeded=bool(done)))
        for index in range(int(resolved.get("num_nodes") or 0)):
            step = f"node-{index}"
            code = codes.get(step)
            entries.append(_job_entry(step, active=state == "Running", succeeded=state == "Complete",
                                      failed=code not in (None, 0) or (state == "Failed" and bool(own.get("startTime"))
                                                                         and state != "Complete"),
                                      suspended=state == "Suspended"))
        return entries

    def _trainer_status(self, resource: Resource, own: dict[str, Any]) -> dict[str, Any] | None:
        """progressPercentage, estimatedRemainingSeconds, metrics and lastUpdatedTime from report.jsonl."""
        workdir = (own.get("resolved") or {}).get("workdir")
        if not workdir:
            return (resource.status or {}).get("trainerStatus")
        key = (resource.namespace, resource.name)
        report = self._reports.setdefault(key, Report())
        read_report(Path(workdir) / ".shipyard" / "report.jsonl", report)
        if report.updated is None:
            return None
        status: dict[str, Any] = {"lastUpdatedTime": _iso(report.updated),
                                  "metrics": [{"name": name, "value": str(value)}
                                              for name, value in sorted(report.metrics.items())]}
        if report.last is not None:
            status["progressPercentage"] = int(report.last[1])
            eta = estimate_remaining(report.first, report.last)
            if own["state"] == "Complete":
                status["progressPercentage"], eta = 100, 0
            if eta is not None:
                status["estimatedRemainingSeconds"] = eta
        return status

    def _event(self, resource: Resource, type_: str, reason: str, message: str) -> None:
        self.store.event(KIND, resource.namespace, resource.name, type_, reason, message)

    # -- delete, recovery, shutdown ----------------------------------------------------------------
    async def _delete(self, resource: Resource) -> None:
        key = (resource.namespace, resource.name)
        try:
            await self._stop_active(key, GRACE_S)
            self.store.remove(KIND, resource.namespace, resource.name)
            for state in (self._resolved, self._reports):
                state.pop(key, None)
            log.info("deleted trainjob %s/%s", *key)
        finally:
            self._deleting.pop(key, None)

    async def recover(self) -> None:
        """After a (re)start: adopt the jobs whose processes still run; run the others again."""
        from shipyard.train.launcher import JobRun
        from shipyard.train.spec import ResolvedJob

        for resource in self.store.list(KIND):
            status = _copy(resource.status)
            own = status.get("shipyard") or {}
            if own.get("state") not in ("Initializing", "Running"):
                continue
            key = (resource.namespace, resource.name)
            job = None
            if own.get("resolved"):
                record = dict(own["resolved"])
                record["workdir"] = Path(record["workdir"])
                record["elastic"] = tuple(record["elastic"]) if record.get("elastic") else None
                job = ResolvedJob(**record)
                self._resolved[key] = job
            run = JobRun.adopt(job, own["run"]) if job is not None and own.get("run") else None
            if run is not None:
                self.active[key] = Active(job, scheduler.job_needs(job.num_nodes, job.resources_per_node), run)
                self._event(resource, "Normal", "Adopted", "the restarted control plane adopted the running job")
                continue
            own.update(state="Queued", attempt=own.get("attempt", 0) + 1, run=None, reason="Requeued",
                       message="its processes were gone after a control plane restart; it runs again")
            self._event(resource, "Warning", "Requeued", own["message"])
            self._write_status(resource, status)

    async def shutdown(self) -> None:
        """A clean stop: terminate running jobs gracefully and leave them queued for the next plane."""
        for task in list(self._deleting.values()) + list(self._resolving.values()):
            task.cancel()
        keys = list(self.active)
        await asyncio.gather(*(self._stop_active(key, GRACE_S) for key in keys), return_exceptions=True)
        for namespace, name in keys:
            resource = self.store.get(KIND, namespace, name)
            if resource is None:
                continue
            status = _copy(resource.status)
            status["shipyard"].update(state="Queued", attempt=status["shipyard"].get("attempt", 0) + 1, run=None,
                                      reason="PlaneStopped", message="the control plane stopped; it runs again "
                                      "when the plane starts")
            self.store.set_status(KIND, namespace, name, status)


# -- helpers --------------------------------------------------------------------------------------------
def runtime_document(store: Store, ref: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    """The runtime a ``runtimeRef`` names: a stored one, else a built-in ClusterTrainingRuntime."""
    kind = ref.get("kind") or CLUSTER_TRAINING_RUNTIME.kind
    name = ref.get("name")
    stored = store.get(kind, namespace if kind == TRAINING_RUNTIME.kind else "", str(name))
    if stored is not None and not stored.deleting:
        return stored.to_dict()
    if kind == CLUSTER_TRAINING_RUNTIME.kind:
        return next((doc for doc in builtin_runtimes() if doc["metadata"]["name"] == name), None)
    return None


def builtin_runtimes() -> list[dict[str, Any]]:
    """Shipyard's built-in ClusterTrainingRuntimes (shipyard.train.runtimes)."""
    from shipyard.train.runtimes import builtin_runtimes as builtins

    return builtins()


def read_report(path: Path, report: Report) -> None:
    """Read the lines appended to ``path`` since the last call into ``report``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(report.offset)
            data = handle.read()
    except FileNotFoundError:
        return
    complete = data[: data.rfind(b"\n") + 1]
    report.offset += len(complete)
    for line in complete.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn or foreign line must not stop the status
        if not isinstance(entry, dict):
            continue
        when = entry.get("time") if isinstance(entry.get("time"), (int, float)) else time.time()
        report.updated = when
        metrics = entry.get("metrics")
        if isinstance(metrics, dict):
            report.metrics.update({str(k): v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        progress = entry.get("progress")
        if isinstance(progress, (int, float)) and not isinstance(progress, bool):
            point = (float(when), max(0.0, min(100.0, float(progress))))
            report.first = report.first or point
            report.last = point


def estimate_remaining(first: tuple[float, float] | None, last: tuple[float, float] | None) -> int | None:
    """Seconds left at the progress rate seen so far (None until progress has moved)."""
    if first is None or last is None or last[0] <= first[0] or last[1] <= first[1]:
        return None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return max(0, int(round((100.0 - last[1]) / rate)))


def _job_entry(name: str, active: bool = False, succeeded: bool = False, failed: bool = False,
               suspended: bool = False) -> dict[str, Any]:
    return {"name": name, "ready": int(active), "active": int(active), "succeeded": int(succeeded),
            "failed": int(failed and not succeeded), "suspended": int(suspended)}


def _job_record(job: Any) -> dict[str, Any]:
    record = dataclasses.asdict(job)
    record["workdir"] = str(job.workdir)
    return record


def _with(entry: dict[str, Any], ok: bool, reason: str, message: str, other_reason: str,
          other_message: str) -> dict[str, Any]:
    entry.update(reason=reason if ok else other_reason, message=message if ok else other_message)
    return entry


def _has(status: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind for c in status.get("conditions") or [])


def _copy(status: dict[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(status or {}))


def _runtime_name(resource: Resource) -> str:
    return str((resource.spec.get("runtimeRef") or {}).get("name"))


def _amounts(needs: dict[str, float]) -> str:
    parts = [f"cpu {needs.get('cpu', 0):g}"]
    if needs.get("memory"):
        parts.append(f"memory {needs['memory'] / 2**30:.1f}Gi")
    if needs.get("gpu"):
        parts.append(f"gpu {needs['gpu']:g}")
    return ", ".join(parts)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
