"""Kubernetes-shaped resources (``apiVersion/kind/metadata/spec/status``) and the kinds Shipyard knows."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Kind:
    """One resource kind: its canonical names and the apiVersions accepted for it."""

    kind: str
    plural: str
    short: tuple[str, ...]
    api_versions: tuple[str, ...]
    #: Cluster-scoped kinds are stored with namespace "" (as Kubernetes keeps them outside namespaces).
    namespaced: bool = True


INFERENCE_SERVICE = Kind(
    "InferenceService", "inferenceservices", ("inferenceservice", "isvc"), ("serving.kserve.io/v1beta1",)
)
INFERENCE_GRAPH = Kind(
    "InferenceGraph", "inferencegraphs", ("inferencegraph", "ig"), ("serving.kserve.io/v1alpha1",)
)
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
TRAIN_JOB = Kind("TrainJob", "trainjobs", ("trainjob", "tj"), (TRAINER_API,))
TRAINING_RUNTIME = Kind("TrainingRuntime", "trainingruntimes", ("trainingruntime",), (TRAINER_API,))
CLUSTER_TRAINING_RUNTIME = Kind("ClusterTrainingRuntime", "clustertrainingruntimes", ("clustertrainingruntime",),
                                (TRAINER_API,), namespaced=False)
FLUID_API = "data.fluid.io/v1alpha1"
#: Shipyard's own data kinds (Fluid has no DataClean).
SHIPYARD_DATA_API = "data.shipyard.io/v1alpha1"
DATASET = Kind("Dataset", "datasets", ("dataset",), (FLUID_API,))
CACHE_RUNTIME = Kind("CacheRuntime", "cacheruntimes", ("cacheruntime",), (FLUID_API,))
DATA_LOAD = Kind("DataLoad", "dataloads", ("dataload", "load"), (FLUID_API,))
DATA_MIGRATE = Kind("DataMigrate", "datamigrates", ("datamigrate", "migrate"), (FLUID_API,))
DATA_PROCESS = Kind("DataProcess", "dataprocesses", ("dataprocess",), (FLUID_API,))
DATA_CLEAN = Kind("DataClean", "datacleans", ("dataclean",), (SHIPYARD_DATA_API,))
#: The data operations: each runs against a Dataset and reports Fluid's OperationStatus.
DATA_OPERATIONS: tuple[Kind, ...] = (DATA_LOAD, DATA_MIGRATE, DATA_PROCESS, DATA_CLEAN)
DATA_KINDS: tuple[Kind, ...] = (DATASET, CACHE_RUNTIME, *DATA_OPERATIONS)
#: Shipyard's own batch prediction kind (shipyard.batch; KServe has none).
SHIPYARD_BATCH_API = "batch.shipyard.io/v1alpha1"
BATCH_JOB = Kind("BatchJob", "batchjobs", ("batchjob", "bj"), (SHIPYARD_BATCH_API,))
KINDS: dict[str, Kind] = {kind.kind: kind for kind in (INFERENCE_SERVICE, INFERENCE_GRAPH, TRAIN_JOB, TRAINING_RUNTIME,
                                                        CLUSTER_TRAINING_RUNTIME, *DATA_KINDS, BATCH_JOB)}


class UnknownKind(ValueError):
    """A kind name that is none of the known kinds or their aliases."""


def kind_of(name: str) -> Kind:
    """The kind for ``InferenceService``, ``inferenceservices``, ``isvc``... (case-insensitive)."""
    wanted = name.lower()
    for kind in KINDS.values():
        if wanted in (kind.kind.lower(), kind.plural, *kind.short):
            return kind
    known = ", ".join(f"{k.kind} ({'/'.join(k.short)})" for k in KINDS.values())
    raise UnknownKind(f"unknown kind '{name}'; Shipyard knows: {known}")


@dataclass
class Resource:
    """A stored resource. ``metadata`` keeps the user's labels and annotations."""

    api_version: str
    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    spec: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    generation: int = 0
    created: float = 0.0
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The resource as Kubernetes prints it."""
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "generation": self.generation,
            "creationTimestamp": _timestamp(self.created),
        }
        if self.labels:
            metadata["labels"] = self.labels
        if self.annotations:
            metadata["annotations"] = self.annotations
        if self.deleting:
            metadata["deletionTimestamp"] = _timestamp(time.time())
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata,
                "spec": self.spec, "status": self.status}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "Resource":
        """A resource from a validated document (a new uid; the store keeps an existing one)."""
        metadata = document.get("metadata") or {}
        namespaced = KINDS[document["kind"]].namespaced if document["kind"] in KINDS else True
        return cls(
            api_version=document["apiVersion"],
            kind=document["kind"],
            name=metadata["name"],
            namespace=(metadata.get("namespace") or DEFAULT_NAMESPACE) if namespaced else "",
            spec=document.get("spec") or {},
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            uid=str(uuid.uuid4()),
            created=time.time(),
        )


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class DocumentError(ValueError):
    """A file that is not YAML/JSON, or a document that is not a mapping."""


def parse_documents(text: str, source: str = "input") -> list[dict[str, Any]]:
    """Every document of a YAML (``---``-separated) or JSON text; empty documents are skipped.

    A JSON list or a Kubernetes ``List`` (``kind: List, items: [...]``) yields its items.
    """
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DocumentError(f"{source} is not valid YAML or JSON: {exc}") from None
    documents: list[dict[str, Any]] = []
    for index, document in enumerate(loaded):
        if document is None:
            continue
        items = document if isinstance(document, list) else (
            document.get("items") if isinstance(document, dict) and document.get("kind") == "List" else [document]
        )
        for item in items or []:
            if not isinstance(item, dict):
                raise DocumentError(
                    f"{source}: document {index + 1} is a {type(item).__name__}, expected a mapping with "
                    "apiVersion, kind, metadata and spec"
                )
            documents.append(item)
    return documents


def canonical_json(value: Any) -> str:
    """Stable JSON (sorted keys) for fingerprints and change detection."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
