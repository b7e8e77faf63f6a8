"""The Kubernetes manifests of a build: a KServe ``ServingRuntime`` running the image and an ``InferenceService``."""

from __future__ import annotations

import re
from typing import Any

import yaml

from shipyard.package.build_plan import BuildError, BuildPlan
from shipyard.package.image import GRPC_PORT, HTTP_PORT, USER_ID, serve_options

#: Where KServe's storage initializer puts the files of a ``storageUri``.
KSERVE_MODEL_DIR = "/mnt/models"
#: KServe's modelFormat names, where they differ from Shipyard's format names.
KSERVE_FORMATS = {"python": "custom"}
SERVING_RUNTIME_FILE = "kubernetes/servingruntime.yaml"
INFERENCE_SERVICE_FILE = "kubernetes/inferenceservice.yaml"
LABELS = {"app.kubernetes.io/managed-by": "shipyard"}


def kubernetes_name(name: str) -> str:
    """A model name as a DNS-1035 label (what InferenceService names must be): ``Iris_v2`` -> ``iris-v2``."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not label[:1].isalpha():
        label = f"model-{label}".rstrip("-")
    if len(label) > 63:
        raise BuildError(f"model name '{name}' is too long for a Kubernetes name ({len(label)} characters, "
                         "at most 63); set a shorter 'name' in shipyard.yaml")
    return label


def render_manifests(plan: BuildPlan) -> dict[str, str]:
    """The manifests' files: path in the build context -> YAML."""
    return {
        SERVING_RUNTIME_FILE: _yaml(serving_runtime(plan)),
        INFERENCE_SERVICE_FILE: _yaml(inference_service(plan)),
    }


def resources(plan: BuildPlan) -> dict[str, Any]:
    """The container's requests and limits (equal, so the pod gets what ``resources`` in shipyard.yaml asks)."""
    requested = plan.config.resources
    amounts: dict[str, Any] = {"cpu": requested.cpu, "memory": requested.memory}
    if requested.gpu:
        amounts["nvidia.com/gpu"] = requested.gpu
    return {"requests": dict(amounts), "limits": dict(amounts)}


def runtime_name(plan: BuildPlan) -> str:
    """The ServingRuntime's name: one per model, since its image carries the model."""
    return f"shipyard-{plan.k8s_name}"


def kserve_format(plan: BuildPlan) -> str:
    """The model's format as KServe names it."""
    return KSERVE_FORMATS.get(plan.format, plan.format)


def serving_runtime(plan: BuildPlan) -> dict[str, Any]:
    """A KServe ServingRuntime (serving.kserve.io/v1alpha1) running this image."""
    model_dir = KSERVE_MODEL_DIR if plan.storage_uri else plan.model_dir
    http_probe = {"path": "/v2/health/ready", "port": HTTP_PORT}
    container = {
        "name": "kserve-container",
        "image": plan.image,
        "command": ["shipyard"],
        "args": ["serve", model_dir, "--name", plan.name, *serve_options(plan)],
        "ports": [
            {"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "resources": resources(plan),
        "readinessProbe": {"httpGet": http_probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {**http_probe, "path": "/v2/health/live"}, "periodSeconds": 15,
                          "failureThreshold": 4},
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime_name(plan), "labels": dict(LABELS)},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"},
            # autoSelect off: this runtime's image carries one model, so only InferenceServices naming it use it.
            "supportedModelFormats": [{"name": kserve_format(plan), "autoSelect": False}],
            "protocolVersions": ["v1", "v2", "grpc-v2"],
            "multiModel": False,
            "containers": [container],
        },
    }


def inference_service(plan: BuildPlan) -> dict[str, Any]:
    """A KServe InferenceService (serving.kserve.io/v1beta1) serving the model with this runtime.

    Without a storage URI the model is the one baked into the image, so ``storageUri`` is left out
    (it is optional in the CRD) and no storage initializer runs.
    """
    # Kubernetes expands $(NAME) in values; $$ keeps a literal $.
    env: list[dict[str, Any]] = [{"name": key, "value": value.replace("$(", "$$(")}
                                 for key, value in plan.config.environment_variables.items()]
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": f"{plan.k8s_name}-secrets", "key": name}}}
            for name in plan.config.secrets]
    model: dict[str, Any] = {
        "modelFormat": {"name": kserve_format(plan)},
        "runtime": runtime_name(plan),
        "protocolVersion": "v2",
    }
    if plan.storage_uri:
        model["storageUri"] = plan.storage_uri
    model["resources"] = resources(plan)
    if env:
        model["env"] = env
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": plan.k8s_name,
            "labels": dict(LABELS),
            # Two ports (REST and gRPC) need a plain Deployment: Knative (Serverless mode) allows one.
            # KServe 0.15+ calls this mode Standard and still accepts the old name, which older ones need.
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {"predictor": {"model": model}},
    }


def _yaml(document: dict[str, Any]) -> str:
    return "# Written by `shipyard build`.\n" + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
