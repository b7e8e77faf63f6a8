"""Shipyard's rules for the Kubeflow Trainer kinds (TrainJob, TrainingRuntime, ClusterTrainingRuntime).

The upstream schemas (``schemas/trainjob.v1alpha1.json.gz``...) are checked by validation.py; this
module adds what Kubeflow's webhook and CEL rules enforce, and what running jobs on one machine
needs. Every problem is ``(field path, message)``; validation.py turns them into FieldErrors.

Whether ``spec.runtimeRef`` names a runtime that exists needs the store, so the API checks it
with ``runtime_ref_error``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from shipyard.train.spec import RESERVED_ENV, reserved_env

Problem = tuple[str, str]

#: Annotations of Shipyard's trainer: name -> what it takes.
PRIORITY = "trainer.shipyard.io/priority"
MAX_RESTARTS = "trainer.shipyard.io/max-restarts"
PACKAGES = "trainer.shipyard.io/packages"
ELASTIC = "trainer.shipyard.io/elastic"
DATASET_CLEAN_AFTER = "trainer.shipyard.io/dataset-clean-after"
ANNOTATIONS = {
    PRIORITY: "an integer (higher is admitted first; default 0)",
    MAX_RESTARTS: "an integer, 0 or more",
    PACKAGES: 'a JSON list of pip requirements, e.g. ["numpy", "scikit-learn==1.5.2"]',
    ELASTIC: 'torch only: "MIN:MAX" nodes (torchrun --nnodes MIN:MAX)',
    DATASET_CLEAN_AFTER: '"true" or "false": with a dataset:// dataset initializer, evict its files from the '
                         "dataset's cache when the job finishes",
}
ANNOTATION_PREFIX = "trainer.shipyard.io/"

RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
API_GROUP = "trainer.kubeflow.org"
URI_SCHEMES = ("file", "http", "https", "s3", "hf", "dataset")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def errors(kind: str, document: dict[str, Any]) -> list[Problem]:
    """Every problem of a trainer-kind document the schema does not catch."""
    spec = document.get("spec")
    if spec is None:
        what = "spec.runtimeRef and spec.trainer" if kind == "TrainJob" else "spec.mlPolicy and spec.template"
        return [("spec", f"required field is missing (a {kind} needs {what})")]
    if not isinstance(spec, dict):
        return []  # the schema said so
    metadata = document.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    problems = _annotation_errors(annotations)
    if kind == "TrainJob":
        problems += _trainjob_errors(spec)
    else:
        problems += _runtime_errors(spec)
    return problems


def warnings(kind: str, document: dict[str, Any]) -> list[Problem]:
    """Fields accepted but not acted on locally, by path."""
    spec = document.get("spec") or {}
    found: list[Problem] = []
    if kind == "TrainJob":
        trainer = spec.get("trainer") or {}
        if trainer.get("image"):
            found.append(("spec.trainer.image", "ignored: Shipyard runs the trainer as processes in this Python "
                          "environment (or a venv from the trainer.shipyard.io/packages annotation)"))
        if spec.get("runtimePatches"):
            found.append(("spec.runtimePatches", "not honoured by the local engine (there are no pods to patch)"))
        if spec.get("managedBy") not in (None, "trainer.kubeflow.org/trainjob-controller"):
            found.append(("spec.managedBy", f"'{spec['managedBy']}' is ignored: Shipyard's controller runs the job"))
        for step in ("dataset", "model"):
            if ((spec.get("initializer") or {}).get(step) or {}).get("secretRef"):
                found.append((f"spec.initializer.{step}.secretRef", "ignored: credentials come from the usual "
                              "environment (AWS_*, HF_TOKEN) of the control plane"))
        uri = ((spec.get("initializer") or {}).get("dataset") or {}).get("storageUri")
        clean_after = ((document.get("metadata") or {}).get("annotations") or {}).get(DATASET_CLEAN_AFTER)
        if str(clean_after).lower() == "true" and not (isinstance(uri, str) and uri.startswith("dataset://")):
            found.append((f"metadata.annotations[{DATASET_CLEAN_AFTER}]", "ignored: it cleans the cache of a "
                          "dataset:// dataset initializer, and spec.initializer.dataset.storageUri is not one"))
    elif spec.get("podGroupPolicy"):
        found.append(("spec.podGroupPolicy", "not needed: Shipyard's scheduler always admits a job's processes "
                      "together (gang admission)"))
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    for key in annotations:
        if key.startswith(ANNOTATION_PREFIX) and key not in ANNOTATIONS:
            found.append((f"metadata.annotations[{key}]", f"unknown Shipyard annotation; Shipyard reads "
                          f"{', '.join(ANNOTATIONS)}"))
    return found


def runtime_ref_error(document: dict[str, Any], exists: Callable[[str, str, str], bool]) -> Problem | None:
    """A problem when the TrainJob's ``spec.runtimeRef`` names no runtime.

    ``exists(kind, namespace, name)`` says whether a runtime is known (built in, stored or applied
    together with the job); a ClusterTrainingRuntime's namespace is "".
    """
    spec = document.get("spec") if isinstance(document, dict) else None
    ref = spec.get("runtimeRef") if isinstance(spec, dict) else None
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        return None  # the schema already said what is missing
    kind = ref.get("kind") or "ClusterTrainingRuntime"
    namespace = ((document.get("metadata") or {}).get("namespace") or "default") if kind == "TrainingRuntime" else ""
    if kind not in RUNTIME_KINDS or exists(kind, namespace, ref["name"]):
        return None
    where = f" in namespace '{namespace}'" if namespace else ""
    return ("spec.runtimeRef.name", f"no {kind} '{ref['name']}'{where}; list them with: shipyard get "
            f"{kind.lower()}{' -n ' + namespace if namespace else ''}")


# -- TrainJob ---------------------------------------------------------------------------------------
def _trainjob_errors(spec: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    ref = spec.get("runtimeRef")
    if isinstance(ref, dict):
        if ref.get("kind") is not None and ref.get("kind") not in RUNTIME_KINDS:
            problems.append(("spec.runtimeRef.kind", f"'{ref['kind']}' is not a runtime kind; use "
                             f"{' or '.join(RUNTIME_KINDS)}"))
        if ref.get("apiGroup") is not None and ref.get("apiGroup") != API_GROUP:
            problems.append(("spec.runtimeRef.apiGroup", f"'{ref['apiGroup']}' is not served; use {API_GROUP}"))
    trainer = spec.get("trainer")
    if isinstance(trainer, dict):
        problems += _at_least(trainer.get("numNodes"), 1, "spec.trainer.numNodes")
        problems += _at_least(trainer.get("numProcPerNode"), 1, "spec.trainer.numProcPerNode")
        problems += _env_errors(trainer.get("env"), "spec.trainer.env")
        for key in ("command", "args"):
            if trainer.get(key) == []:
                problems.append((f"spec.trainer.{key}", "is empty; leave it out to use the runtime's"))
    problems += _at_least(spec.get("activeDeadlineSeconds"), 1, "spec.activeDeadlineSeconds")
    initializer = spec.get("initializer")
    if isinstance(initializer, dict):
        for step in ("dataset", "model"):
            entry = initializer.get(step)
            if not isinstance(entry, dict):
                continue
            problems += _env_errors(entry.get("env"), f"spec.initializer.{step}.env")
            uri = entry.get("storageUri")
            if isinstance(uri, str):
                problems += _storage_uri_errors(f"spec.initializer.{step}.storageUri", uri)
    return problems


def _env_errors(env: Any, path: str) -> list[Problem]:
    if not isinstance(env, list):
        return []
    problems = []
    for index, item in enumerate(env):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if reserved_env(name):
            problems.append((f"{path}[{index}].name", f"'{name}' is reserved: the runtime sets it in every training "
                             f"process (reserved: PET_*, {', '.join(sorted(RESERVED_ENV))})"))
        if isinstance(item, dict) and item.get("valueFrom") is not None:
            problems.append((f"{path}[{index}].valueFrom", "not supported locally (there are no secrets or config "
                             "maps); set value"))
    return problems


def _storage_uri_errors(path: str, uri: str) -> list[Problem]:
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1).lower() not in URI_SCHEMES:
        return [(path, f"scheme '{scheme.group(1)}://' is not supported; use a local path, file://, http(s)://, "
                 "s3://, hf:// (read from the local Hugging Face cache) or dataset://NAME/path (through a Dataset's "
                 "cache)")]
    if scheme and scheme.group(1).lower() == "dataset":
        from shipyard.control.data_validation import dataset_uri_error

        problem = dataset_uri_error(uri)
        return [(path, problem)] if problem else []
    if scheme and scheme.group(1).lower() != "file":
        if scheme.group(1).lower() == "hf" and not uri[len("hf://"):].strip("/"):
            return [(path, "hf:// needs a repository id, e.g. hf://distilbert/distilbert-base-uncased")]
        return []
    local = Path(uri[len("file://"):] if scheme else uri)
    if not local.is_absolute():
        return [(path, f"'{uri}' is a relative path: use an absolute path (shipyard apply -f FILE resolves "
                 "relative paths against FILE's folder)")]
    if not local.exists():
        return [(path, f"{local} does not exist")]
    return []


# -- runtimes and annotations -----------------------------------------------------------------------
def _runtime_errors(spec: dict[str, Any]) -> list[Problem]:
    policy = spec.get("mlPolicy")
    if not isinstance(policy, dict):
        return []
    problems = _at_least(policy.get("numNodes"), 1, "spec.mlPolicy.numNodes")
    frameworks = [key for key in ("torch", "mpi", "flux", "jax", "xgboost") if key in policy]
    if len(frameworks) > 1:
        problems.append(("spec.mlPolicy", f"set at most one of torch, mpi, flux, jax or xgboost; found "
                         f"{', '.join(frameworks)}"))
    if "flux" in policy:
        problems.append(("spec.mlPolicy.flux", "Flux is not supported locally; use torch, jax, xgboost or mpi"))
    return problems


def _annotation_errors(annotations: Any) -> list[Problem]:
    if not isinstance(annotations, dict):
        return []
    problems: list[Problem] = []
    for key in (PRIORITY, MAX_RESTARTS):
        value = annotations.get(key)
        if not isinstance(value, str):
            continue
        try:
            number = int(value)
        except ValueError:
            problems.append((f"metadata.annotations[{key}]", f"{value!r} is not an integer; expected {ANNOTATIONS[key]}"))
            continue
        if key == MAX_RESTARTS and number < 0:
            problems.append((f"metadata.annotations[{key}]", f"{number} is less than the minimum of 0"))
    clean_after = annotations.get(DATASET_CLEAN_AFTER)
    if isinstance(clean_after, str) and clean_after.lower() not in ("true", "false"):
        problems.append((f"metadata.annotations[{DATASET_CLEAN_AFTER}]", f"{clean_after!r} is not "
                         f"{ANNOTATIONS[DATASET_CLEAN_AFTER]}"))
    packages = annotations.get(PACKAGES)
    if isinstance(packages, str):
        try:
            parsed = json.loads(packages)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(item, str) and item.strip() for item in parsed):
            problems.append((f"metadata.annotations[{PACKAGES}]", f"{packages!r} is not {ANNOTATIONS[PACKAGES]}"))
    return problems


def _at_least(value: Any, low: int, path: str) -> list[Problem]:
    if isinstance(value, int) and not isinstance(value, bool) and value < low:
        return [(path, f"{value} is less than the minimum of {low}")]
    return []


def priority_of(annotations: dict[str, str]) -> int:
    """A job's priority from ``trainer.shipyard.io/priority`` (validated at apply); 0 without one."""
    try:
        return int(annotations.get(PRIORITY, "0"))
    except ValueError:
        return 0
