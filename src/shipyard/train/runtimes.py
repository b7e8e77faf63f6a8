"""Built-in ClusterTrainingRuntimes, and resolving a TrainJob against its runtime.

The built-in runtimes are documents in Kubeflow Trainer's own shape (``mlPolicy``, a JobSet
``template`` whose ``node`` job carries the label ``trainer.kubeflow.org/trainjob-ancestor-step:
trainer``), so ``shipyard get clustertrainingruntimes -o yaml`` prints something a Kubeflow user
recognises. Their images are kept for that reason only: processes run on this machine, in the
current interpreter or in a virtual environment built from the job's packages.

:func:`resolve` merges a TrainJob with its runtime the way Kubeflow's webhook and plugins do: the
job's ``spec.trainer`` overrides the runtime's trainer container (``command``, ``args``, ``env``,
``resourcesPerNode``) and ``mlPolicy.numNodes``. Shipyard's own knobs are annotations on the job:
``trainer.shipyard.io/max-restarts`` (an int, else the runtime's JobSet ``failurePolicy.maxRestarts``),
``trainer.shipyard.io/packages`` (a JSON list of requirements) and ``trainer.shipyard.io/elastic``
(``"MIN:MAX"`` nodes, torch only).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from shipyard import quantity
from shipyard.train.spec import FRAMEWORKS, ResolvedJob, reserved_env

log = logging.getLogger("shipyard.train")

API_VERSION = "trainer.kubeflow.org/v1alpha1"
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
MAX_RESTARTS_ANNOTATION = "trainer.shipyard.io/max-restarts"
PACKAGES_ANNOTATION = "trainer.shipyard.io/packages"
ELASTIC_ANNOTATION = "trainer.shipyard.io/elastic"

#: (name, framework, mlPolicy framework entry, image): Kubeflow's default runtimes, plus plain python.
_BUILTINS: list[tuple[str, str, dict[str, Any], str]] = [
    ("torch-distributed", "torch", {"torch": {}}, "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"),
    ("jax-distributed", "jax", {"jax": {}}, "nvcr.io/nvidia/jax:25.10-py3"),
    ("xgboost-distributed", "xgboost", {"xgboost": {}}, "ghcr.io/kubeflow/trainer/xgboost-runtime"),
    ("deepspeed-distributed", "deepspeed",
     {"mpi": {"numProcPerNode": 1, "mpiImplementation": "OpenMPI", "sshAuthMountPath": "/home/mpiuser/.ssh",
              "runLauncherAsNode": True}},
     "ghcr.io/kubeflow/trainer/deepspeed-runtime"),
    ("python", "python", {}, "python:3.11-slim"),
]


class TrainSpecError(ValueError):
    """A TrainJob or runtime field that cannot be run; the message starts with the field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _runtime_document(name: str, framework: str, policy: dict[str, Any], image: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {FRAMEWORK_LABEL: framework}},
        "spec": {
            "mlPolicy": {"numNodes": 1, **policy},
            "template": {"spec": {
                "failurePolicy": {"maxRestarts": 0},
                "replicatedJobs": [{
                    "name": "node",
                    "template": {
                        "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                        "spec": {"template": {"spec": {"containers": [{"name": "node", "image": image}]}}},
                    },
                }],
            }},
        },
    }


def builtin_runtimes() -> list[dict[str, Any]]:
    """The built-in ClusterTrainingRuntime documents (``deepspeed-distributed`` only when deepspeed imports)."""
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    return [_runtime_document(*entry) for entry in _BUILTINS if entry[1] != "deepspeed" or has_deepspeed]


def builtin_runtime(name: str) -> dict[str, Any] | None:
    """The built-in runtime called ``name`` (a fresh copy), or None."""
    for document in builtin_runtimes():
        if document["metadata"]["name"] == name:
            return copy.deepcopy(document)
    return None


# -- quantities ------------------------------------------------------------------------------------
def parse_quantity(value: Any, path: str) -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``4Gi``, ``1.5``) as a number; TrainSpecError names ``path``."""
    try:
        return quantity.parse_quantity(value, path)
    except quantity.QuantityError as exc:
        raise TrainSpecError(path, exc.message) from None


def _resources(requirements: Any, path: str, nproc: int) -> dict[str, float]:
    """``{"cpu", "memory", "gpu"}`` from a ResourceRequirements (requests win over limits).

    Without a cpu request a node asks for one core per process, so admission counts its processes."""
    if requirements is None:
        requirements = {}
    if not isinstance(requirements, dict):
        raise TrainSpecError(path, f"expected a mapping with limits/requests, got {requirements!r}")
    merged: dict[str, tuple[Any, str]] = {}
    for section in ("limits", "requests"):
        values = requirements.get(section) or {}
        if not isinstance(values, dict):
            raise TrainSpecError(f"{path}.{section}", f"expected a mapping of resource names, got {values!r}")
        for key, value in values.items():
            merged[key] = (value, f"{path}.{section}.{key}")
    result = {"cpu": float(nproc), "memory": 0.0, "gpu": 0.0}
    for key, (value, where) in merged.items():
        if key == "cpu":
            result["cpu"] = parse_quantity(value, where)
        elif key == "memory":
            result["memory"] = parse_quantity(value, where)
        elif key == "gpu" or key.endswith("/gpu"):
            result["gpu"] = parse_quantity(value, where)
    return result


# -- resolving -------------------------------------------------------------------------------------
def _trainer_container(runtime: dict[str, Any]) -> dict[str, Any]:
    """The runtime's trainer container: in the job labelled as the trainer step (else named ``node``)."""
    jobs = (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    chosen = None
    for job in jobs:
        labels = ((job.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if labels.get(ANCESTOR_LABEL) == "trainer":
            chosen = job
            break
        if job.get("name") == "node" and chosen is None:
            chosen = job
    if chosen is None:
        return {}
    pod = ((((chosen.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
    containers = pod.get("containers") or []
    for container in containers:
        if container.get("name") == "node":
            return container
    return containers[0] if containers else {}


def framework_of(runtime: dict[str, Any]) -> str:
    """The runtime's framework: its ``trainer.kubeflow.org/framework`` label, else its ``mlPolicy`` kind."""
    label = ((runtime.get("metadata") or {}).get("labels") or {}).get(FRAMEWORK_LABEL)
    if label in FRAMEWORKS:
        return label
    policy = (runtime.get("spec") or {}).get("mlPolicy") or {}
    for key in ("torch", "jax", "xgboost"):
        if key in policy:
            return key
    if "mpi" in policy or "flux" in policy:
        name = (runtime.get("metadata") or {}).get("name", "?")
        raise TrainSpecError("spec.runtimeRef", f"runtime {name!r} uses {'mpi' if 'mpi' in policy else 'flux'}, "
                                                "which Shipyard does not run (TrainingRuntimeNotSupported)")
    return "python"


def _int(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainSpecError(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _strings(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, (str, int, float)) for item in value):
        raise TrainSpecError(path, f"expected a list of strings, got {value!r}")
    return [str(item) for item in value]


def _env(items: Any, path: str, warnings: list[str], check_reserved: bool) -> dict[str, str]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise TrainSpecError(path, f"expected a list of {{name, value}}, got {items!r}")
    env: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise TrainSpecError(where, f"expected {{name, value}}, got {item!r}")
        name = item["name"]
        if check_reserved and reserved_env(name):
            raise TrainSpecError(f"{where}.name", f"{name} is set by the training runtime and cannot be overridden")
        if "valueFrom" in item:
            warnings.append(f"{where}.valueFrom is not supported locally; {name} is left unset")
            continue
        env[name] = str(item.get("value", ""))
    return env


def _annotation_int(annotations: dict[str, Any], key: str, default: int) -> int:
    if key not in annotations:
        return default
    where = f"metadata.annotations[{key}]"
    try:
        value = int(str(annotations[key]).strip())
    except ValueError:
        raise TrainSpecError(where, f"expected a whole number >= 0, got {annotations[key]!r}") from None
    if value < 0:
        raise TrainSpecError(where, f"expected a whole number >= 0, got {annotations[key]!r}")
    return value


def _elastic(annotations: dict[str, Any], framework: str, num_nodes: int) -> tuple[int, int] | None:
    if ELASTIC_ANNOTATION not in annotations:
        return None
    where = f"metadata.annotations[{ELASTIC_ANNOTATION}]"
    text = str(annotations[ELASTIC_ANNOTATION]).strip()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match:
        raise TrainSpecError(where, f"expected MIN:MAX nodes such as 1:2, got {text!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if framework not in ("torch", "deepspeed"):
        raise TrainSpecError(where, f"elastic training needs a torch runtime, not {framework!r}")
    if not 1 <= low <= num_nodes <= high:
        raise TrainSpecError(where, f"expected 1 <= MIN <= numNodes ({num_nodes}) <= MAX, got {text!r}")
    return low, high


def _packages(annotations: dict[str, Any]) -> list[str]:
    if PACKAGES_ANNOTATION not in annotations:
        return []
    where = f"metadata.annotations[{PACKAGES_ANNOTATION}]"
    try:
        packages = json.loads(annotations[PACKAGES_ANNOTATION])
    except (TypeError, ValueError):
        raise TrainSpecError(where, 'expected a JSON list of requirements such as ["numpy<3"]') from None
    if not isinstance(packages, list) or not all(isinstance(item, str) and item.strip() for item in packages):
        raise TrainSpecError(where, 'expected a JSON list of requirements such as ["numpy<3"]')
    return packages


def job_workdir(home: Path, namespace: str, name: str) -> Path:
    """A job's workspace: ``<home>/jobs/<namespace>/<name>``."""
    return Path(home) / "jobs" / namespace / name


def resolve(job_doc: dict[str, Any], runtime_doc: dict[str, Any], home: Path,
            warnings: list[str] | None = None) -> ResolvedJob:
    """The job ``job_doc`` (a TrainJob) run with ``runtime_doc`` (a (Cluster)TrainingRuntime).

    Raises TrainSpecError naming the field that cannot be run. Notes on fields that are ignored
    here (``spec.trainer.image``, ``valueFrom``) are appended to ``warnings`` when given, and logged.
    Building the environment for ``trainer.shipyard.io/packages`` can take minutes the first time
    (it is cached by the requirements' hash), so call this off the event loop.
    """
    notes: list[str] = warnings if warnings is not None else []
    start = len(notes)
    metadata = job_doc.get("metadata") or {}
    spec = job_doc.get("spec") or {}
    trainer = spec.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise TrainSpecError("spec.trainer", f"expected a mapping, got {trainer!r}")
    annotations = metadata.get("annotations") or {}
    runtime_spec = runtime_doc.get("spec") or {}
    policy = runtime_spec.get("mlPolicy") or {}
    container = _trainer_container(runtime_doc)
    framework = framework_of(runtime_doc)

    if trainer.get("image"):
        notes.append(f"spec.trainer.image {trainer['image']!r} is ignored: the job runs on this machine, "
                     "in this Python environment or one built from trainer.shipyard.io/packages")
    num_nodes = _int(trainer["numNodes"], "spec.trainer.numNodes", 1) if trainer.get("numNodes") is not None \
        else _int(policy.get("numNodes", 1), "spec.mlPolicy.numNodes (runtime)", 1)
    mpi_nproc = (policy.get("mpi") or {}).get("numProcPerNode", 1)
    nproc = _int(trainer["numProcPerNode"], "spec.trainer.numProcPerNode", 1) \
        if trainer.get("numProcPerNode") is not None else _int(mpi_nproc, "spec.mlPolicy.mpi.numProcPerNode", 1)

    if trainer.get("command") is not None:
        command = _strings(trainer["command"], "spec.trainer.command")
    else:
        command = _strings(container.get("command") or [], "container command (runtime)")
    if trainer.get("args") is not None:
        args = _strings(trainer["args"], "spec.trainer.args")
    else:
        args = _strings(container.get("args") or [], "container args (runtime)")
    command = command + args
    if not command:
        raise TrainSpecError("spec.trainer.command", "required: the runtime has no command, so the job must say "
                                                     "what to run, e.g. [python, train.py]")

    if framework in ("torch", "deepspeed"):
        from shipyard.train.launcher import torchrun_target

        try:
            torchrun_target(command)
        except ValueError as error:
            raise TrainSpecError("spec.trainer.command", str(error).split(": ", 1)[1]) from None
    env = _env(container.get("env"), "container env (runtime)", notes, check_reserved=False)
    env.update(_env(trainer.get("env"), "spec.trainer.env", notes, check_reserved=True))
    if trainer.get("resourcesPerNode") is not None:
        resources = _resources(trainer["resourcesPerNode"], "spec.trainer.resourcesPerNode", nproc)
    else:
        resources = _resources(container.get("resources"), "container resources (runtime)", nproc)

    failure = ((runtime_spec.get("template") or {}).get("spec") or {}).get("failurePolicy") or {}
    max_restarts = _annotation_int(annotations, MAX_RESTARTS_ANNOTATION,
                                   _int(failure.get("maxRestarts", 0), "failurePolicy.maxRestarts (runtime)", 0))
    elastic = _elastic(annotations, framework, num_nodes)
    packages = _packages(annotations)
    namespace = metadata.get("namespace") or "default"
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise TrainSpecError("metadata.name", "required")
    python = sys.executable
    if packages:
        from shipyard.package.config import PackageError
        from shipyard.package.environment import EnvironmentBuildError, ensure_environment

        try:
            python = str(ensure_environment(packages))
        except PackageError as error:
            raise TrainSpecError(f"metadata.annotations[{PACKAGES_ANNOTATION}]", str(error)) from None
        except EnvironmentBuildError as error:
            raise TrainSpecError(f"metadata.annotations[{PACKAGES_ANNOTATION}]",
                                 f"the environment could not be built: {error}") from None
    for note in notes[start:]:
        log.warning("trainjob %s/%s: %s", namespace, name, note)
    return ResolvedJob(
        namespace=namespace, name=name, uid=str(metadata.get("uid") or f"{namespace}-{name}"),
        framework=framework, num_nodes=num_nodes, nproc_per_node=nproc, command=command, env=env,
        workdir=job_workdir(home, namespace, name), python=python, resources_per_node=resources,
        max_restarts=max_restarts, elastic=elastic,
    )
