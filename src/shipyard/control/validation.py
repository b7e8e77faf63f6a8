"""Check a document before anything is stored: the upstream schema, then Shipyard's rules, then warnings.

``validate(document)`` returns the resource and the warnings for fields that are accepted but not
honoured yet, or raises ``ValidationError`` listing every problem by field path
(``spec.predictor.minReplicas: -1 is less than the minimum of 0``).

The schema is KServe's own (``schemas/inferenceservice.v1beta1.json.gz``, see ``schemas/NOTICE``),
checked with ``jsonschema`` plus what the Kubernetes API server adds to OpenAPI: unknown fields are
errors (as ``kubectl apply --validate=strict``), ``x-kubernetes-int-or-string``,
``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-list-type`` set/map uniqueness, and the
int32/int64 ranges.
"""

from __future__ import annotations

import copy
import difflib
import functools
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shipyard.control import batch_validation, data_validation, graph_validation, train_validation
from shipyard.control.autoscaler import config as autoscaling
from shipyard.control.resources import (
    BATCH_JOB,
    DATA_KINDS,
    INFERENCE_GRAPH,
    INFERENCE_SERVICE,
    KINDS,
    Kind,
    Resource,
    UnknownKind,
    kind_of,
)

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_FILES = {
    "InferenceService": "inferenceservice.v1beta1.json.gz",
    "InferenceGraph": "inferencegraph.v1alpha1.json.gz",
    "TrainJob": "trainjob.v1alpha1.json.gz",
    "TrainingRuntime": "trainingruntime.v1alpha1.json.gz",
    "ClusterTrainingRuntime": "clustertrainingruntime.v1alpha1.json.gz",
    "Dataset": "dataset.v1alpha1.json.gz",
    "CacheRuntime": "cacheruntime.v1alpha1.json.gz",
    "DataLoad": "dataload.v1alpha1.json.gz",
    "DataMigrate": "datamigrate.v1alpha1.json.gz",
    "DataProcess": "dataprocess.v1alpha1.json.gz",
    "DataClean": "dataclean.v1alpha1.json",  # Shipyard's own, plain JSON
    "BatchJob": "batchjob.v1alpha1.json",  # Shipyard's own, plain JSON
}

#: KServe's InferenceService name rule (a DNS-1035 label: starts with a letter).
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Kubernetes namespace rule (a DNS-1123 label).
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63

MODEL_FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "huggingface", "custom", "detector")
#: ``modelFormat.name`` values of a transformer and an explainer (model_source.COMPONENT_FORMATS).
COMPONENT_FORMATS = {"transformer": ("custom",), "explainer": ("shap", "custom")}
#: Legacy ``spec.predictor.<framework>`` fields Shipyard serves (each names its model format).
FRAMEWORK_FIELDS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "huggingface")
UNSUPPORTED_FRAMEWORKS = ("tensorflow", "triton", "pmml", "paddle")
PROTOCOLS = ("v1", "v2", "grpc-v2")
URI_SCHEMES = ("file", "http", "https", "s3", "dataset")

#: Predictor fields the local engine acts on; any other one set gets a warning.
HONOURED_PREDICTOR = {
    "model", *FRAMEWORK_FIELDS, "minReplicas", "maxReplicas", "containerConcurrency", "timeout", "batcher",
    "canaryTrafficPercent", "labels", "annotations", "scaleMetric", "scaleTarget", "scaleMetricType", "autoScaling",
    "logger",
}
#: Fields of ``predictor.logger`` the gateway acts on (payload logging, shipyard.monitor).
HONOURED_LOGGER = {"mode", "url"}
LOGGER_MODES = ("all", "request", "response")
#: Fields of the model container (``model`` or a framework field) the local engine acts on.
HONOURED_CONTAINER = {"modelFormat", "storageUri", "protocolVersion", "runtime", "name"}

SHIPYARD_ANNOTATIONS = "serving.shipyard.io/"
#: Shipyard's annotations and the values each takes: (kind, low, high); kind "text" takes any non-empty text.
ANNOTATIONS: dict[str, tuple[str, float, float]] = {
    "serving.shipyard.io/shadow-revision": ("text", 0, 0),
    "serving.shipyard.io/shadow-percent": ("number", 0, 100),
    "serving.shipyard.io/pinned-revision": ("text", 0, 0),
    "serving.shipyard.io/rollback-max-error-rate": ("number", 0, 1),
    "serving.shipyard.io/rollback-max-p99-ms": ("number", 0, float("inf")),
    "serving.shipyard.io/rollback-window-s": ("number", 1, float("inf")),
    "serving.shipyard.io/rollback-min-requests": ("integer", 1, float("inf")),
    # the autoscaler's (autoscaler/config.py checks them, with Knative's autoscaling.knative.dev/ ones)
    **{key: ("autoscaling", 0, 0) for key in autoscaling.SHIPYARD_ANNOTATIONS},
    # a quantity such as 8Gi: the GPU memory a replica shares (model_source.replica_needs checks it)
    "serving.shipyard.io/gpu-memory": ("resources", 0, 0),
    # "false": payload logging sends only responses with status 200, as KServe does
    "serving.shipyard.io/logger-errors": ("boolean", 0, 0),
}

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


@dataclass(frozen=True)
class FieldError:
    """A problem (or a warning) about one field, named by its path (``spec.predictor.model``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ValueError):
    """A document that cannot be applied; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(error) for error in errors))
        self.errors = errors


@dataclass
class ValidatedResource:
    """A document that may be applied, and its warnings (fields accepted but not honoured)."""

    resource: Resource
    warnings: list[FieldError] = field(default_factory=list)


def validate(document: Any) -> ValidatedResource:
    """Check one document (a parsed YAML/JSON mapping) and turn it into a ``Resource``.

    Raises ``ValidationError`` with every error found; nothing here touches the store.
    """
    if not isinstance(document, dict):
        raise ValidationError([FieldError("", f"a document must be a mapping, not {type(document).__name__}")])
    kind = _check_kind(document)  # without a known kind there is no schema to check against
    errors = _metadata_errors(document.get("metadata"))
    named = {error.path for error in errors}
    schema_errors = [error for error in _schema_errors(kind, document) if error.path not in named]
    errors += schema_errors
    spec = document.get("spec")
    if kind in DATA_KINDS:  # Fluid's kinds and DataClean: data_validation.py
        flagged = {error.path for error in schema_errors}
        errors += [FieldError(path, message) for path, message in data_validation.errors(kind.kind, document)
                   if path not in flagged]
        if errors:
            raise ValidationError(_unique(errors))
        warnings = [FieldError(path, message) for path, message in data_validation.warnings(kind.kind, document)]
        return ValidatedResource(Resource.from_document(document), warnings)
    if kind is BATCH_JOB:  # batch_validation.py: its rules, then the engine's spec_problems (shipyard.batch)
        flagged = {error.path for error in schema_errors}
        errors += [FieldError(path, message) for path, message in
                   batch_validation.errors(document, flagged) if path not in flagged]
        if errors:
            raise ValidationError(_unique(errors))
        warnings = [FieldError(path, message) for path, message in batch_validation.warnings(document)]
        return ValidatedResource(Resource.from_document(document), warnings)
    if kind is INFERENCE_GRAPH:  # graph_validation.py: the graph's rules (shipyard.graph.spec) and warnings
        flagged = {error.path for error in schema_errors}
        errors += [FieldError(path, message) for path, message in graph_validation.errors(document)
                   if path not in flagged and not any(path.startswith(f"{mark}.") for mark in flagged)]
        if errors:
            raise ValidationError(_unique(errors))
        warnings = [FieldError(path, message) for path, message in graph_validation.warnings(document)]
        return ValidatedResource(Resource.from_document(document), warnings)
    if kind is not INFERENCE_SERVICE:  # the trainer kinds have their own rules
        flagged = {error.path for error in schema_errors}
        errors += [FieldError(path, message) for path, message in train_validation.errors(kind.kind, document)
                   if path not in flagged]
        if errors:
            raise ValidationError(_unique(errors))
        warnings = [FieldError(path, message) for path, message in train_validation.warnings(kind.kind, document)]
        return ValidatedResource(Resource.from_document(document), warnings)
    if spec is None:
        errors.append(FieldError("spec", "required field is missing (an InferenceService needs spec.predictor)"))
    elif isinstance(spec, dict):
        flagged = {error.path for error in schema_errors}
        errors += [error for error in _shipyard_errors(spec) if error.path not in flagged]
        metadata = document.get("metadata")
        annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
        errors += _annotation_errors(annotations)
        flagged = {error.path for error in errors}
        errors += [FieldError(path, message) for path, message in
                   autoscaling.config_problems(spec.get("predictor"), annotations) if path not in flagged]
        flagged = {error.path for error in errors}
        errors += [error for error in _resource_errors(spec.get("predictor"), annotations) if error.path not in flagged]
        errors += [error for component in COMPONENT_FORMATS if isinstance(spec.get(component), dict)
                   for error in _resource_errors(spec[component], annotations, component) if error.path not in flagged]
    if errors:
        raise ValidationError(_unique(errors))
    return ValidatedResource(Resource.from_document(document), _warnings(document))


# -- kind and metadata ----------------------------------------------------------------------------
def _check_kind(document: dict[str, Any]) -> Kind:
    api_version, kind_name = document.get("apiVersion"), document.get("kind")
    errors = []
    if not isinstance(kind_name, str) or not kind_name:
        errors.append(FieldError("kind", f"required; expected one of: {', '.join(KINDS)}"))
    if not isinstance(api_version, str) or not api_version:
        errors.append(FieldError("apiVersion", "required; e.g. serving.kserve.io/v1beta1"))
    if errors:
        raise ValidationError(errors)
    try:
        kind = kind_of(kind_name)
    except UnknownKind as exc:
        raise ValidationError([FieldError("kind", str(exc))]) from None
    if kind_name != kind.kind:
        errors.append(FieldError("kind", f"'{kind_name}' is not a kind name; write '{kind.kind}'"))
    if api_version not in kind.api_versions:
        errors.append(FieldError("apiVersion", f"'{api_version}' is not served for {kind.kind}; use "
                                 f"{' or '.join(kind.api_versions)}"))
    if errors:
        raise ValidationError(errors)
    return kind


def _metadata_errors(metadata: Any) -> list[FieldError]:
    if metadata is None:
        return [FieldError("metadata.name", "required field is missing")]
    if not isinstance(metadata, dict):
        return [FieldError("metadata", f"expected a mapping, got {type(metadata).__name__}")]
    errors = []
    name = metadata.get("name")
    if name is None:
        hint = " (generateName is not supported by apply)" if "generateName" in metadata else ""
        errors.append(FieldError("metadata.name", f"required field is missing{hint}"))
    elif not isinstance(name, str) or not ISVC_NAME.match(name) or len(name) > MAX_NAME:
        errors.append(FieldError("metadata.name", f"{name!r} is not a valid name: use at most {MAX_NAME} lower case "
                                 "letters, digits or '-', starting with a letter and ending with a letter or digit "
                                 "(e.g. 'sklearn-iris'), as KServe and Kubeflow Trainer require"))
    namespace = metadata.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not NAMESPACE.match(namespace)
                                  or len(namespace) > MAX_NAME):
        errors.append(FieldError("metadata.namespace", f"{namespace!r} is not a valid namespace: use at most "
                                 f"{MAX_NAME} lower case letters, digits or '-', starting and ending with a letter "
                                 "or digit"))
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            errors.append(FieldError(f"metadata.{key}", f"expected a mapping of strings, got {type(value).__name__}"))
            continue
        for item, text in value.items():
            if not isinstance(text, str):
                errors.append(FieldError(f"metadata.{key}[{item}]", f"{text!r} is not a string; quote it "
                                         f"(\"{text}\")"))
    return errors


def _resource_errors(predictor: Any, annotations: Any, component: str = "predictor") -> list[FieldError]:
    """A replica's ``resources`` and ``gpu-memory`` as the scheduler will read them (checked now, not at start)."""
    if not isinstance(predictor, dict):
        return []
    from shipyard.control.model_source import ModelSourceError, replica_needs

    try:
        replica_needs(predictor, annotations if isinstance(annotations, dict) else None, component)
    except ModelSourceError as exc:
        return [FieldError(exc.path, str(exc).removeprefix(f"{exc.path}: "))]
    return []


def _annotation_errors(annotations: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(annotations, dict):
        return errors
    for key, (kind, low, high) in ANNOTATIONS.items():
        value = annotations.get(key)
        if not isinstance(value, str) or kind in ("autoscaling", "resources"):
            continue
        path = f"metadata.annotations[{key}]"
        if kind == "text":
            if not value.strip():
                errors.append(FieldError(path, "must not be empty"))
            continue
        if kind == "boolean":
            if value.strip().lower() not in ("true", "false"):
                errors.append(FieldError(path, f"{value!r} is not \"true\" or \"false\""))
            continue
        try:
            number = int(value) if kind == "integer" else float(value)
        except ValueError:
            errors.append(FieldError(path, f"{value!r} is not {'an integer' if kind == 'integer' else 'a number'}"))
            continue
        if not low <= number <= high:
            bound = f"at least {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
            errors.append(FieldError(path, f"{value!r} is out of range; expected {bound}"))
    return errors


# -- the upstream schema --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def schema_of(kind: str) -> dict[str, Any]:
    """The vendored upstream openAPIV3Schema of a kind (Shipyard's own kinds: plain JSON)."""
    path = SCHEMA_DIR / SCHEMA_FILES[kind]
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        return json.load(handle)


def extended_schema(kind: str) -> dict[str, Any]:
    """The schema documents are checked against: the vendored one, where an InferenceService's
    transformer and explainer also take the predictor's ``model`` form (Shipyard's extension: KServe
    runs them only from container images), and an InferenceGraph takes Shipyard's router fields
    (``graph_validation.extend_schema``: routerType Bandit, ``bandit``, ``inputMap``, ``timeout``, ``retries``)."""
    schema = copy.deepcopy(schema_of(kind))  # schema_of's answer is cached and shared
    if kind == "InferenceService":
        spec = schema["properties"]["spec"]["properties"]
        for component in COMPONENT_FORMATS:
            spec[component]["properties"]["model"] = spec["predictor"]["properties"]["model"]
    elif kind == "InferenceGraph":
        graph_validation.extend_schema(schema)
    return schema


# jsonschema is imported where it is used: the CLI imports this module, and the import costs ~0.15 s.
def _properties(validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """JSON Schema's ``properties``, plus Kubernetes' rule that a field the schema does not list is an error."""
    from jsonschema import Draft4Validator, ValidationError

    yield from Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if not validator.is_type(instance, "object") or "additionalProperties" in schema \
            or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    for key in instance:
        if key not in properties:
            hint = _did_you_mean(str(key), list(properties))
            error = ValidationError(f"unknown field{hint}", validator="unknown")
            error.path.appendleft(key)
            yield error


def _did_you_mean(word: str, choices: list[str]) -> str:
    same = [choice for choice in choices if choice.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _any_of(validator: Any, any_of: list[Any], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    from jsonschema import Draft4Validator, ValidationError

    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(instance, bool) or not isinstance(instance, (int, str)):
            yield ValidationError(f"{instance!r} is not an integer or a string")
        return
    yield from Draft4Validator.VALIDATORS["anyOf"](validator, any_of, instance, schema)


def _format(validator: Any, fmt: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    limits = _INT_RANGES.get(fmt)
    if limits and validator.is_type(instance, "integer") and not limits[0] <= instance <= limits[1]:
        from jsonschema import ValidationError

        yield ValidationError(f"{instance} is out of the {fmt} range")


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """``x-kubernetes-list-type``: a ``set`` has no duplicates; a ``map`` no two items with the same keys."""
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        if list_type == "map" and not isinstance(item, dict):
            continue
        identity = json.dumps([item.get(k) for k in keys] if list_type == "map" else item, sort_keys=True)
        if identity in seen:
            what = ", ".join(f"{k}={item.get(k)!r}" for k in keys) if list_type == "map" else repr(item)
            from jsonschema import ValidationError

            error = ValidationError(f"duplicate of item {seen[identity]} ({what})")
            error.path.appendleft(index)
            yield error
        else:
            seen[identity] = index


@functools.lru_cache(maxsize=None)
def _validator(kind: str) -> Any:
    """A JSON Schema (draft 4, as OpenAPI v3) validator with the Kubernetes rules, for a kind's schema."""
    from jsonschema import Draft4Validator, validators

    kubernetes = validators.extend(Draft4Validator, {
        "properties": _properties, "anyOf": _any_of, "format": _format, "x-kubernetes-list-type": _list_type,
    })
    return kubernetes(extended_schema(kind))


def _schema_errors(kind: Kind, document: dict[str, Any]) -> Iterator[FieldError]:
    document = {key: value for key, value in document.items() if key != "status"}  # apply ignores status
    for error in sorted(_validator(kind.kind).iter_errors(document), key=lambda e: _dotted(list(e.absolute_path))):
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = re.match(r"^'([^']+)'", error.message)
            path.append(missing.group(1) if missing else "?")
            yield FieldError(_dotted(path), "required field is missing")
        elif error.validator == "pattern" and error.schema.get("x-kubernetes-int-or-string"):
            yield FieldError(_dotted(path), f"{error.instance!r} is not a quantity (e.g. 2, 500m, 1Gi)")
        else:
            yield FieldError(_dotted(path), error.message)


def _dotted(path: list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- Shipyard's own rules -------------------------------------------------------------------------
def _shipyard_errors(spec: dict[str, Any]) -> list[FieldError]:
    errors = []
    if "canary" in spec:
        errors.append(FieldError("spec.canary", "the Standard-mode canary list is not supported; set "
                                 "spec.predictor.canaryTrafficPercent (Knative canary semantics) instead"))
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        return errors  # the schema already said it is missing or not a mapping
    errors += _predictor_form_errors(predictor)
    errors += _range_errors(predictor)
    errors += _logger_errors(predictor.get("logger"))
    for component in COMPONENT_FORMATS:
        part = spec.get(component)
        if isinstance(part, dict):
            root = f"spec.{component}"
            errors += _component_form_errors(component, part)
            errors += _range_errors(part, root)
            errors += _logger_errors(part.get("logger"), root)
    return errors


def _component_form_errors(component: str, part: dict[str, Any]) -> list[FieldError]:
    """A transformer or explainer: ``model`` with a format it takes and a storageUri."""
    root, formats = f"spec.{component}", COMPONENT_FORMATS[component]
    hint = (f"set {root}.model: {{modelFormat: {{name: {formats[0]}}}, storageUri: FOLDER}} "
            + ("(model.py with preprocess()/postprocess())" if component == "transformer"
               else "(shap: the background sample; custom: model.py with explain())"))
    errors = []
    if part.get("containers"):
        errors.append(FieldError(f"{root}.containers", f"container images are not run locally; {hint}"))
    if "art" in part:
        errors.append(FieldError(f"{root}.art", f"ART explainers are not available; {hint}"))
    model = part.get("model")
    if model is None:
        return errors or [FieldError(f"{root}.model", f"required field is missing; {hint}")]
    if not isinstance(model, dict):
        return errors
    name = (model.get("modelFormat") or {}).get("name")
    if not isinstance(name, str) or name.lower() not in formats:
        errors.append(FieldError(f"{root}.model.modelFormat.name", f"{name!r} is not a {component} format; "
                                 f"expected {' or '.join(formats)}"))
        name = formats[0]
    uri = model.get("storageUri")
    if uri is None:
        errors.append(FieldError(f"{root}.model.storageUri", f"required field is missing; {hint}"))
    elif isinstance(uri, str):
        errors += _storage_uri_errors(f"{root}.model.storageUri", uri, name.lower())
    protocol = model.get("protocolVersion")
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        errors.append(FieldError(f"{root}.model.protocolVersion", f"'{protocol}' is not supported; use one of "
                                 f"{', '.join(PROTOCOLS)}"))
    return errors


def _logger_errors(logger: Any, root: str = "spec.predictor") -> list[FieldError]:
    """A component's ``logger``: a mode of all|request|response and a url the gateway can send to."""
    if logger is None:
        return []
    path = f"{root}.logger"
    if not isinstance(logger, dict):
        return [FieldError(path, f"expected a mapping with mode and url, got {type(logger).__name__}")]
    errors = []
    mode = logger.get("mode", "all")
    if mode not in LOGGER_MODES:
        errors.append(FieldError(f"{path}.mode", f"{mode!r} is not one of {', '.join(LOGGER_MODES)}"))
    url = logger.get("url")
    if url is None:
        errors.append(FieldError(f"{path}.url", "required field is missing; set an http(s):// CloudEvents "
                                 "receiver or file:///path/events.jsonl"))
    elif not isinstance(url, str):
        errors.append(FieldError(f"{path}.url", f"expected a URL, got {type(url).__name__}"))
    else:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https"):
            if not parsed.hostname:
                errors.append(FieldError(f"{path}.url", f"{url!r} has no host; e.g. http://localhost:8000/events"))
        elif parsed.scheme == "file":
            if parsed.netloc or not parsed.path.startswith("/") or parsed.path.endswith("/"):
                errors.append(FieldError(f"{path}.url", f"{url!r} is not a file path; write file:///abs/path/events.jsonl"))
        else:
            errors.append(FieldError(f"{path}.url", f"{url!r} is not supported; use an http(s):// CloudEvents receiver "
                                     "or file:///path/events.jsonl"))
    return errors


def _predictor_form_errors(predictor: dict[str, Any]) -> list[FieldError]:
    """Exactly one of ``model`` or a framework field, with a format and storageUri Shipyard can serve."""
    if predictor.get("containers"):
        return [FieldError("spec.predictor.containers", "custom containers are not supported locally; use a "
                           "Shipyard package: modelFormat custom + storageUri pointing at it")]
    errors = [FieldError(f"spec.predictor.{name}", f"{name} models are not supported; Shipyard serves "
                         f"{', '.join(MODEL_FORMATS)} (custom: a Shipyard package)")
              for name in UNSUPPORTED_FRAMEWORKS if name in predictor]
    forms = [name for name in ("model", *FRAMEWORK_FIELDS) if name in predictor]
    if len(forms) > 1:
        errors.append(FieldError("spec.predictor", f"set exactly one of model or a framework field; found "
                                 f"{', '.join(forms)}"))
    if not forms and not errors:
        errors.append(FieldError("spec.predictor", "no model: set spec.predictor.model (modelFormat.name and "
                                 "storageUri) or a framework field such as spec.predictor.sklearn.storageUri"))
    if "storageUris" in predictor:
        errors.append(FieldError("spec.predictor.storageUris", "not supported; set storageUri on "
                                 "spec.predictor.model"))
    for form in forms:
        container = predictor[form]
        if not isinstance(container, dict):
            continue
        path = f"spec.predictor.{form}"
        model_format = form
        if form == "model":
            name = (container.get("modelFormat") or {}).get("name")
            if isinstance(name, str):
                model_format = name.lower()
                if model_format not in MODEL_FORMATS:
                    errors.append(FieldError(f"{path}.modelFormat.name", f"'{name}' is not supported; Shipyard "
                                             f"serves {', '.join(MODEL_FORMATS)}"))
            elif "modelFormat" not in container:
                errors.append(FieldError(f"{path}.modelFormat", f"required field is missing; set modelFormat.name "
                                         f"to one of {', '.join(MODEL_FORMATS)}"))
        if "storage" in container:
            errors.append(FieldError(f"{path}.storage", "storage specs (secret keys) are not supported; set "
                                     "storageUri (s3:// credentials come from the usual AWS environment)"))
        uri = container.get("storageUri")
        if uri is None:
            errors.append(FieldError(f"{path}.storageUri", "required field is missing; set a local path, file://, "
                                     "http(s)://, s3:// or dataset:// URI (or a Shipyard package folder)"))
        elif isinstance(uri, str):
            errors += _storage_uri_errors(f"{path}.storageUri", uri, model_format)
        protocol = container.get("protocolVersion")
        if isinstance(protocol, str) and protocol not in PROTOCOLS:
            errors.append(FieldError(f"{path}.protocolVersion", f"'{protocol}' is not supported; use one of "
                                     f"{', '.join(PROTOCOLS)}"))
    return errors


def _storage_uri_errors(path: str, uri: str, model_format: str) -> list[FieldError]:
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1).lower() not in URI_SCHEMES:
        return [FieldError(path, f"scheme '{scheme.group(1)}://' is not supported; use a local path, file://, "
                           "http://, https://, s3:// or dataset://NAME/path (through a Dataset's cache)")]
    if scheme and scheme.group(1).lower() == "dataset":
        problem = data_validation.dataset_uri_error(uri)
        return [FieldError(path, problem)] if problem else []
    if scheme and scheme.group(1).lower() != "file":
        return []
    local = Path(uri[len("file://"):] if scheme else uri)
    if not local.is_absolute():
        return [FieldError(path, f"'{uri}' is a relative path: the control plane cannot tell what it is relative "
                           "to; use an absolute path (shipyard apply -f FILE resolves relative paths against "
                           "FILE's folder)")]
    if not local.exists():
        return [FieldError(path, f"{local} does not exist")]
    if model_format == "custom" and not (local.is_dir() and any((local / marker).is_file()
                                                                  for marker in ("shipyard.yaml", "model.py"))):
        return [FieldError(path, f"{local} is not a Shipyard package: modelFormat custom needs a folder with "
                           "shipyard.yaml (or model.py)")]
    return []


def _range_errors(predictor: dict[str, Any], root: str = "spec.predictor") -> list[FieldError]:
    """Bounds the upstream schema leaves to KServe's webhook."""
    errors = []

    def at_least(value: Any, low: int, path: str) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            errors.append(FieldError(path, f"{value} is less than the minimum of {low}"))

    percent = predictor.get("canaryTrafficPercent")
    at_least(percent, 0, f"{root}.canaryTrafficPercent")
    if isinstance(percent, int) and percent > 100:
        errors.append(FieldError(f"{root}.canaryTrafficPercent", f"{percent} is greater than the maximum "
                                 "of 100"))
    at_least(predictor.get("minReplicas"), 0, f"{root}.minReplicas")
    at_least(predictor.get("maxReplicas"), 0, f"{root}.maxReplicas")
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and 0 < high < low:
        errors.append(FieldError(f"{root}.maxReplicas", f"{high} is less than minReplicas ({low})"))
    at_least(predictor.get("containerConcurrency"), 0, f"{root}.containerConcurrency")
    at_least(predictor.get("timeout"), 1, f"{root}.timeout")
    batcher = predictor.get("batcher")
    if isinstance(batcher, dict):
        at_least(batcher.get("maxBatchSize"), 1, f"{root}.batcher.maxBatchSize")
        at_least(batcher.get("maxLatency"), 0, f"{root}.batcher.maxLatency")
        at_least(batcher.get("timeout"), 1, f"{root}.batcher.timeout")
    return errors


# -- warnings -------------------------------------------------------------------------------------
def _warnings(document: dict[str, Any]) -> list[FieldError]:
    """Fields accepted but not acted on, by path; unknown annotations of other tools get none."""
    spec = document.get("spec") or {}
    warnings = []
    predictor = spec.get("predictor") or {}
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    warnings += _autoscaling_warnings(predictor, annotations)
    for component in ("predictor", *COMPONENT_FORMATS):
        part = spec.get(component)
        if isinstance(part, dict):
            warnings += _component_warnings(f"spec.{component}", part)
    for key in annotations:
        if key.startswith(SHIPYARD_ANNOTATIONS) and key not in ANNOTATIONS:
            hint = _did_you_mean(key, list(ANNOTATIONS)) or f"; Shipyard reads {', '.join(ANNOTATIONS)}"
            warnings.append(FieldError(f"metadata.annotations[{key}]", f"unknown Shipyard annotation{hint}"))
    return warnings


def _component_warnings(root: str, predictor: dict[str, Any]) -> list[FieldError]:
    """A component's fields (and its model container's) that the local engine does not act on."""
    warnings = []
    for key in predictor:
        if key not in HONOURED_PREDICTOR and key not in UNSUPPORTED_FRAMEWORKS and key not in ("containers", "art"):
            warnings.append(FieldError(f"{root}.{key}", "not honoured by the local engine (replicas are "
                                       "processes on this machine)"))
    logger = predictor.get("logger")
    if isinstance(logger, dict):
        for key in logger:
            if key not in HONOURED_LOGGER:
                warnings.append(FieldError(f"{root}.logger.{key}", "not honoured: the gateway sends every "
                                           "event itself, batched by its own payload logger"))
    for form in ("model", *FRAMEWORK_FIELDS):
        container = predictor.get(form)
        if not isinstance(container, dict):
            continue
        runtime = container.get("runtime")
        if runtime not in (None, "shipyard"):
            warnings.append(FieldError(f"{root}.{form}.runtime", f"'{runtime}' is not used: Shipyard serves "
                                       "the model with its own runtime for the format"))
        for key in container:
            if key == "resources":
                warnings += _resources_warnings(f"{root}.{form}.resources", container[key])
            elif key not in HONOURED_CONTAINER:
                warnings.append(FieldError(f"{root}.{form}.{key}", "not honoured by the local engine"))
    return warnings


def _autoscaling_warnings(predictor: dict[str, Any], annotations: dict[str, Any]) -> list[FieldError]:
    """KServe's autoscaling fields and Knative's annotations Shipyard's autoscaler does not read."""
    warnings = []
    metric_type = predictor.get("scaleMetricType")
    if metric_type is not None and metric_type != "Utilization":
        warnings.append(FieldError("spec.predictor.scaleMetricType", f"'{metric_type}' is not honoured: cpu and "
                                   "memory targets are a percentage of the container's request (of one core without "
                                   "a cpu request; MiB per replica without a memory request)"))
    if "autoScaling" in predictor:
        warnings.append(FieldError("spec.predictor.autoScaling", "not honoured: set scaleMetric and scaleTarget (and "
                                   "Knative's autoscaling.knative.dev/ annotations)"))
    names = [key[len(autoscaling.KNATIVE):] for key in autoscaling.KNATIVE_ANNOTATIONS]
    for key in annotations:
        if not key.startswith(autoscaling.KNATIVE) or key in autoscaling.KNATIVE_ANNOTATIONS:
            continue
        path, name = f"metadata.annotations[{key}]", key[len(autoscaling.KNATIVE):]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
        if name == "class":
            message = ("not honoured: the autoscaler follows scaleMetric (Knative's KPA for concurrency and rps, "
                       "HPA-style for cpu and memory)")
        elif close:
            message = f"not honoured by Shipyard's autoscaler; did you mean '{autoscaling.KNATIVE}{close[0]}'?"
        else:
            message = ("not honoured by Shipyard's autoscaler (docs/deployments.md lists the autoscaling.knative.dev/ "
                       "annotations it reads)")
        warnings.append(FieldError(path, message))
    return warnings


def _resources_warnings(path: str, resources: Any) -> list[FieldError]:
    """Requests set the cpu/memory autoscaling targets; limits are not enforced on local processes."""
    limits = resources.get("limits") if isinstance(resources, dict) else None
    if isinstance(limits, dict) and ({"cpu", "memory"} & set(limits)):
        return [FieldError(f"{path}.limits", "cpu and memory limits are not enforced locally (replicas are processes "
                           "on this machine); requests (or limits without requests) set the cpu/memory autoscaling "
                           "targets")]
    return []


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))


# -- paths relative to a file ----------------------------------------------------------------------
def resolve_storage_paths(document: Any, base: Path) -> Any:
    """Make relative local paths absolute against ``base`` (a YAML file's folder): a predictor's or an
    initializer's ``storageUri``, a TrainJob's script (``command: [python, train.py]``), a Dataset's
    ``mountPoint``, a DataMigrate's ``externalStorage.uri`` and a BatchJob's model, input, output and errors.

    The control plane runs elsewhere, so only the client knows what a relative path meant. Returns
    the document (changed in place); anything that is not a relative local path is left alone.
    """
    spec = document.get("spec") if isinstance(document, dict) else None
    predictor = spec.get("predictor") if isinstance(spec, dict) else None
    initializer = spec.get("initializer") if isinstance(spec, dict) else None
    containers = [predictor.get(form) for form in ("model", *FRAMEWORK_FIELDS)] if isinstance(predictor, dict) else []
    for component in COMPONENT_FORMATS:  # a transformer's or explainer's folder
        part = spec.get(component) if isinstance(spec, dict) else None
        containers += [part.get("model")] if isinstance(part, dict) else []
    if isinstance(initializer, dict):  # a TrainJob's dataset and model initializers
        containers += [initializer.get("dataset"), initializer.get("model")]
    places = [(container, "storageUri") for container in containers]
    if isinstance(document, dict) and document.get("kind") == "Dataset" and isinstance(spec, dict):
        places += [(mount, "mountPoint") for mount in spec.get("mounts") or []]
    if isinstance(document, dict) and document.get("kind") == "DataMigrate" and isinstance(spec, dict):
        places += [((spec.get(side) or {}).get("externalStorage"), "uri") for side in ("from", "to")
                   if isinstance(spec.get(side), dict)]
    for container, key in places:
        uri = container.get(key) if isinstance(container, dict) else None
        if not isinstance(uri, str) or not uri or _SCHEME.match(uri) or Path(uri).is_absolute():
            continue
        container[key] = str((base / Path(uri).expanduser()).resolve())
    if isinstance(document, dict) and document.get("kind") == "BatchJob" and isinstance(spec, dict):
        batch_validation.resolve_paths(spec, base)  # input, output, errors; model when it names a file there
    trainer = spec.get("trainer") if isinstance(spec, dict) else None
    command = trainer.get("command") if isinstance(trainer, dict) else None
    if isinstance(command, list):  # [python, train.py, ...]: the script next to the YAML file
        trainer["command"] = [_local_script(item, base) for item in command]
    return document


def _local_script(argument: Any, base: Path) -> Any:
    """A relative ``*.py`` argument that names a file next to the YAML file, made absolute."""
    if not isinstance(argument, str) or not argument.endswith(".py") or Path(argument).is_absolute():
        return argument
    candidate = base / argument
    return str(candidate.resolve()) if candidate.is_file() else argument
