"""``TrainerClient``: Kubeflow's TrainerClient methods against Shipyard's local control plane.

    >>> from shipyard.train.client import TrainerClient, CustomTrainer
    >>> def train(epochs):
    ...     import shipyard.train as st
    ...     for epoch in range(epochs):
    ...         st.report(metrics={"loss": 1 / (epoch + 1)}, step=epoch, progress=100 * (epoch + 1) / epochs)
    >>> client = TrainerClient()
    >>> name = client.train(runtime="python", trainer=CustomTrainer(train, func_args={"epochs": 3}))
    >>> client.wait_for_job_status(name)
    >>> "".join(client.get_job_logs(name))

Jobs are TrainJob documents applied through the plane's API, so they outlive the client and
show in ``shipyard get trainjob``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import string
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from shipyard.control.client import ControlClient, ControlError
from shipyard.control.resources import DEFAULT_NAMESPACE, TRAINER_API
from shipyard.home import shipyard_home
from shipyard.train.runtimes import PACKAGES_ANNOTATION, builtin_runtimes, framework_of, job_workdir
from shipyard.train.types import (BuiltinTrainer, CommandTrainer, CustomTrainer, FineTuneConfig, Initializer,
                                  LoraConfig, Runtime, RuntimeTrainer, Step, TrainJob, Trainer)

DEFAULT_RUNTIME = "torch-distributed"  # Kubeflow's default
TERMINAL = frozenset({"Complete", "Failed"})
#: The SDK's job statuses, most decisive first: the first condition that is True names the status.
STATUSES = ("Failed", "Complete", "Suspended", "Running", "Created")


def new_job_name() -> str:
    """A random letter and 11 hex digits, as Kubeflow's SDK names jobs (a valid DNS-1035 label)."""
    return secrets.choice(string.ascii_lowercase) + secrets.token_hex(6)[:11]


class TrainerClient:
    """Submit and watch TrainJobs. ``namespace`` is where jobs go; ``url`` defaults to the plane of
    ``$SHIPYARD_HOME`` (PlaneNotRunning says how to start one)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, url: str | None = None, home: Path | None = None,
                 control: ControlClient | None = None) -> None:
        self.namespace = namespace
        self.home = home or shipyard_home()
        self.control = control or ControlClient(url, home=self.home)

    def close(self) -> None:
        self.control.close()

    def __enter__(self) -> "TrainerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runtimes -------------------------------------------------------------------------------
    def list_runtimes(self) -> list[Runtime]:
        """The built-in runtimes, then stored ClusterTrainingRuntimes and this namespace's TrainingRuntimes
        (a stored one with a built-in's name replaces it)."""
        found: dict[tuple[str, str], Runtime] = {}
        for document in self._runtime_documents():
            runtime = runtime_of(document)
            found[(runtime.kind, runtime.name)] = runtime
        return list(found.values())

    def get_runtime(self, name: str) -> Runtime:
        """The runtime ``name``: this namespace's TrainingRuntime first, then cluster runtimes (as Kubeflow
        resolves a runtimeRef). ValueError lists the known names."""
        runtimes = self.list_runtimes()
        for runtime in sorted(runtimes, key=lambda r: r.kind != "TrainingRuntime"):
            if runtime.name == name:
                return runtime
        raise ValueError(f"no training runtime '{name}'; known: {', '.join(sorted({r.name for r in runtimes}))}")

    def _runtime_documents(self) -> list[dict[str, Any]]:
        documents = list(builtin_runtimes())
        documents += self._stored("ClusterTrainingRuntime", None)
        documents += self._stored("TrainingRuntime", self.namespace)
        return documents

    def _stored(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        found = self.control.get(kind, namespace=namespace)
        return found if isinstance(found, list) else [found]

    # -- jobs -----------------------------------------------------------------------------------
    def train(self, runtime: str | Runtime | None = None, initializer: Initializer | None = None,
              trainer: Trainer | None = None, name: str | None = None,
              annotations: dict[str, str] | None = None) -> str:
        """Submit a TrainJob and return its name (random unless ``name`` is given).

        ``runtime`` defaults to torch-distributed (Kubeflow's default); the built-in trainer always runs
        on a torch runtime. Raises ControlError with field paths if the plane refuses the job.
        """
        name = name or new_job_name()
        document = trainjob_document(name, runtime, trainer, initializer, home=self.home, annotations=annotations)
        self.control.apply(document, namespace=self.namespace)
        return name

    def list_jobs(self, runtime: str | Runtime | None = None) -> list[TrainJob]:
        """This namespace's jobs, oldest first; with ``runtime``, only the jobs that use it."""
        wanted = runtime.name if isinstance(runtime, Runtime) else runtime
        jobs = [job_of(item) for item in self._stored("TrainJob", self.namespace)]
        jobs = [job for job in jobs if wanted is None or job.runtime == wanted]
        return sorted(jobs, key=lambda job: job.creation_timestamp or "")

    def get_job(self, name: str) -> TrainJob:
        """One job with its status, steps, progress and metrics."""
        return job_of(self.control.get("TrainJob", name, self.namespace))

    def get_job_logs(self, name: str, step: str = "node-0", follow: bool = False,
                     tail: int = 100_000) -> Iterator[str]:
        """The log lines of one step (``node-0``, ``node-1``, ``dataset-initializer``, ``model-initializer``).

        With ``follow``, lines are yielded as they are written until the job has finished.
        """
        if not follow:
            text = self.control.log_chunk("TrainJob", name, self.namespace, step=step, tail=tail).get("text") or ""
            yield from text.splitlines()
            return
        cursor, pending, finished = None, "", False
        while True:
            try:
                chunk = self.control.log_chunk("TrainJob", name, self.namespace, step=step, tail=tail, cursor=cursor,
                                               wait_s=0 if finished else 2.0)
            except ControlError as exc:  # the step has not started yet (no log file)
                if exc.status != 404 or finished:
                    raise
                chunk = {"text": "", "cursor": None}
                time.sleep(0.2)
            cursor = chunk.get("cursor") or cursor
            pending += chunk.get("text") or ""
            *lines, pending = pending.split("\n")
            yield from lines
            if finished:
                break
            if not chunk.get("text"):
                # once the job has ended, one last read picks up lines written since the previous one
                finished = self.get_job(name).status in TERMINAL
                if finished and cursor is None:
                    break
        if pending:
            yield pending

    def wait_for_job_status(self, name: str, status: Iterable[str] = ("Complete",), timeout: float = 600,
                            polling_interval: float = 0.5) -> TrainJob:
        """Wait until the job's status is one of ``status``.

        RuntimeError when it fails (and Failed was not asked for); TimeoutError after ``timeout`` seconds.
        """
        wanted = set(status)
        unknown = wanted - set(STATUSES)
        if unknown:
            raise ValueError(f"status must be among {', '.join(STATUSES)}, not {', '.join(sorted(unknown))}")
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(name)
            if job.status in wanted:
                return job
            if job.status == "Failed":
                raise RuntimeError(f"TrainJob {name} failed: {failure_message(job.resource)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"TrainJob {name} is {job.status}, not {' or '.join(sorted(wanted))}, "
                                   f"after {timeout:g}s")
            time.sleep(polling_interval)

    def delete_job(self, name: str, wait: bool = False, timeout: float = 60.0) -> None:
        """Delete a job; its processes are stopped. With ``wait``, return once it is gone."""
        self.control.delete("TrainJob", name, self.namespace, wait=wait, timeout=timeout)

    def suspend_job(self, name: str) -> None:
        """Suspend a job (``spec.suspend: true``): its processes stop gracefully and it waits in the queue."""
        self._set_suspend(name, True)

    def resume_job(self, name: str) -> None:
        """Resume a suspended job (``spec.suspend: false``); it starts again when the scheduler admits it."""
        self._set_suspend(name, False)

    def _set_suspend(self, name: str, suspend: bool) -> None:
        current = self.control.get("TrainJob", name, self.namespace)
        assert isinstance(current, dict)
        metadata = current["metadata"]
        document = {"apiVersion": current["apiVersion"], "kind": "TrainJob",
                    "metadata": {key: metadata[key] for key in ("name", "namespace", "labels", "annotations")
                                 if metadata.get(key)},
                    "spec": {**current["spec"], "suspend": suspend}}
        self.control.apply(document)


# -- documents ------------------------------------------------------------------------------------
def trainjob_document(name: str, runtime: str | Runtime | None = None, trainer: Trainer | None = None,
                      initializer: Initializer | None = None, home: Path | None = None,
                      annotations: dict[str, str] | None = None,
                      num_proc_per_node: int | None = None) -> dict[str, Any]:
    """The TrainJob document (Kubeflow's ``trainer.kubeflow.org/v1alpha1`` shape) for a trainer.

    A CustomTrainer's function is written to ``$SHIPYARD_HOME/train/scripts/<hash>.py`` (by content,
    so it is never overwritten) and the job runs that file. ValueError names a bad argument.
    """
    if trainer is not None and not isinstance(trainer, (CustomTrainer, CommandTrainer, BuiltinTrainer)):
        raise ValueError(f"trainer must be a CustomTrainer, CommandTrainer or BuiltinTrainer, not "
                         f"{type(trainer).__name__}")
    runtime_name = runtime.name if isinstance(runtime, Runtime) else runtime or DEFAULT_RUNTIME
    spec: dict[str, Any] = {"runtimeRef": {"name": runtime_name, "apiGroup": TRAINER_API.split("/")[0],
                                           "kind": "ClusterTrainingRuntime"}}
    if isinstance(runtime, Runtime) and runtime.kind == "TrainingRuntime":
        spec["runtimeRef"]["kind"] = "TrainingRuntime"
    metadata: dict[str, Any] = {"name": name}
    notes = dict(annotations or {})
    if trainer is not None:
        spec["trainer"], packages = trainer_spec(trainer, home or shipyard_home())
        if num_proc_per_node is not None:
            spec["trainer"]["numProcPerNode"] = _positive("num_proc_per_node", num_proc_per_node)
        if packages:
            notes[PACKAGES_ANNOTATION] = json.dumps(packages)
    if initializer is not None:
        spec["initializer"] = {step: {"storageUri": str(uri)} for step, uri in
                               (("dataset", initializer.dataset), ("model", initializer.model)) if uri}
    if notes:
        metadata["annotations"] = notes
    return {"apiVersion": TRAINER_API, "kind": "TrainJob", "metadata": metadata, "spec": spec}


def trainer_spec(trainer: Trainer, home: Path) -> tuple[dict[str, Any], list[str]]:
    """``spec.trainer`` for a trainer, and the packages it asks for."""
    if isinstance(trainer, BuiltinTrainer):
        from shipyard.train.builtin import finetune

        config: FineTuneConfig = trainer.config
        spec: dict[str, Any] = {"command": ["python", str(Path(finetune.__file__).resolve())],
                                "args": ["--config", config.to_json()]}
        return _with_layout(spec, config.num_nodes, config.resources_per_node), []
    if isinstance(trainer, CustomTrainer):
        script = write_script(trainer.script(), home)
        spec = {"command": ["python", str(script)]}
    else:
        if not trainer.command or not all(isinstance(part, str) for part in trainer.command):
            raise ValueError("CommandTrainer.command must be a non-empty list of strings, e.g. ['python', 'train.py']")
        spec = {"command": list(trainer.command)}
        if trainer.args:
            spec["args"] = [str(arg) for arg in trainer.args]
    if trainer.env:
        spec["env"] = [{"name": str(key), "value": str(value)} for key, value in trainer.env.items()]
    packages = list(trainer.packages_to_install or [])
    return _with_layout(spec, trainer.num_nodes, trainer.resources_per_node), packages


def _with_layout(spec: dict[str, Any], num_nodes: int | None, resources: dict[str, Any] | None) -> dict[str, Any]:
    if num_nodes is not None:
        spec["numNodes"] = _positive("num_nodes", num_nodes)
    if resources:
        spec["resourcesPerNode"] = {"limits": resource_limits(resources)}
    return spec


def resource_limits(resources: dict[str, Any]) -> dict[str, str]:
    """Kubeflow's ``resources_per_node`` ({"cpu": 2, "memory": "4Gi", "gpu": 1}) as Kubernetes limits."""
    limits = {}
    for key, value in resources.items():
        if key not in ("cpu", "memory", "gpu", "nvidia.com/gpu"):
            raise ValueError(f"resources_per_node: unknown resource '{key}'; expected cpu, memory or gpu")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or str(value).strip() == "":
            raise ValueError(f"resources_per_node['{key}'] must be a number or a quantity such as '4Gi', "
                             f"not {value!r}")
        limits["nvidia.com/gpu" if key == "gpu" else key] = str(value)
    return limits


def _positive(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field_name} must be a positive integer, not {value!r}")
    return value


def write_script(text: str, home: Path) -> Path:
    """Write a job script under ``home/train/scripts`` by content hash (atomically); its path."""
    folder = home / "train" / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train_{hashlib.sha256(text.encode()).hexdigest()[:16]}.py"
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return path


# -- reading back ---------------------------------------------------------------------------------
def runtime_of(document: dict[str, Any]) -> Runtime:
    """A Runtime from a (Cluster)TrainingRuntime document (framework from Kubeflow's framework label)."""
    metadata = document.get("metadata") or {}
    spec = document.get("spec") or {}
    policy = spec.get("mlPolicy") or {}
    try:
        framework = framework_of(document)
    except ValueError:  # a runtime Shipyard cannot run (mpi, flux) is still listed
        framework = next(iter(set(policy) - {"numNodes"}), "unknown")
    per_node = (policy.get("torch") or {}).get("numProcPerNode", 1)
    return Runtime(name=metadata.get("name", ""), kind=document.get("kind", "ClusterTrainingRuntime"),
                   namespace=metadata.get("namespace") or None,
                   trainer=RuntimeTrainer(framework=framework, num_nodes=int(policy.get("numNodes") or 1),
                                          num_proc_per_node=per_node))


def status_of(resource: dict[str, Any]) -> str:
    """The SDK's status of a TrainJob: the first of Failed, Complete, Suspended, Running whose condition
    is True, else Created."""
    conditions = {entry.get("type"): entry.get("status") for entry in
                  (resource.get("status") or {}).get("conditions") or []}
    return next((name for name in STATUSES if conditions.get(name) == "True"), "Created")


def failure_message(resource: dict[str, Any]) -> str:
    """The Failed condition's reason and message."""
    for entry in (resource.get("status") or {}).get("conditions") or []:
        if entry.get("type") == "Failed":
            return ": ".join(part for part in (entry.get("reason"), entry.get("message")) if part) or "no reason given"
    return "no reason given"


def job_of(resource: dict[str, Any]) -> TrainJob:
    """The SDK's TrainJob from the API's document."""
    spec, status = resource.get("spec") or {}, resource.get("status") or {}
    steps = []
    for entry in status.get("jobsStatus") or []:
        state = entry.get("status") or next(
            (label for key, label in (("failed", "Failed"), ("active", "Running"), ("succeeded", "Complete"),
                                      ("suspended", "Suspended")) if entry.get(key)), "Created")
        steps.append(Step(name=entry.get("name", ""), status=state, exit_code=entry.get("exitCode")))
    trainer_status = status.get("trainerStatus") or {}
    metrics = {str(item.get("name")): str(item.get("value")) for item in trainer_status.get("metrics") or []}
    progress = trainer_status.get("progressPercentage")
    return TrainJob(name=resource["metadata"]["name"], runtime=(spec.get("runtimeRef") or {}).get("name", ""),
                    steps=steps, num_nodes=int((spec.get("trainer") or {}).get("numNodes") or 1),
                    creation_timestamp=resource["metadata"].get("creationTimestamp"), status=status_of(resource),
                    progress=float(progress) if progress is not None else None, metrics=metrics, resource=resource)


__all__ = ["TrainerClient", "CustomTrainer", "CommandTrainer", "BuiltinTrainer", "FineTuneConfig", "LoraConfig",
           "Initializer", "Runtime", "TrainJob", "Step", "ControlError", "trainjob_document", "job_workdir"]
