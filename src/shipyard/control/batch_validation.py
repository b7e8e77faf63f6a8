"""Shipyard's rules for the BatchJob kind (``batch.shipyard.io/v1alpha1``), on top of its schema.

``schemas/batchjob.v1alpha1.json`` (checked by validation.py) gives the fields, their types and
ranges; this module adds what the schema cannot say (the model's form, columns fed and carried at
once, a ``maxErrors`` that is neither a count nor a fraction) and then asks the engine's own
``shipyard.batch.spec.spec_problems``, the rules ``shipyard batch`` and the SDK share, with its
BatchSpec field names turned into the document's paths (``batch_size`` -> ``spec.batchSize``).
Every problem is ``(field path, message)``; validation.py turns them into FieldErrors.

The spec's fields are BatchSpec's in camelCase (``FIELDS``); ``batch_spec_kwargs`` makes the
BatchSpec arguments of a stored spec (the controller runs exactly what was validated), and
``spec_from_options`` makes a spec from the SDK's keyword arguments.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

Problem = tuple[str, str]

#: The spec's fields (camelCase) -> BatchSpec's attributes.
FIELDS: dict[str, str] = {
    "model": "model",
    "input": "input",
    "output": "output",
    "inputFormat": "input_format",
    "outputFormat": "output_format",
    "columns": "columns",
    "carry": "carry",
    "batchSize": "batch_size",
    "workers": "workers",
    "limit": "limit",
    "errors": "errors",
    "maxErrors": "max_errors",
    "modelName": "model_name",
    "concurrency": "concurrency",
    "requestRows": "request_rows",
    "retries": "retries",
    "timeoutSeconds": "timeout_s",
    "outputColumns": "output_columns",
}
#: BatchSpec's attributes -> the spec's fields.
ATTRIBUTES: dict[str, str] = {attribute: field for field, attribute in FIELDS.items()}
#: Fields that only matter when the model is reached over HTTP (a service or a server URL).
ENDPOINT_FIELDS = ("modelName", "concurrency", "requestRows", "retries", "timeoutSeconds")
#: Fields that only matter when the model is loaded in-process.
IN_PROCESS_FIELDS = ("workers",)
#: An InferenceService's name (KServe's DNS-1035 label), as validation.ISVC_NAME.
SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
MODEL_FORMS = ("a Shipyard package folder or a model artifact (a local path), the name of an InferenceService of "
               "this namespace, or an http(s)://host:port V2 server URL")


def model_form(model: str) -> str:
    """How a BatchJob reaches ``model``: ``"path"`` (an existing local file or folder), ``"url"`` (http(s)://),
    ``"service"`` (an InferenceService name), or ``"unknown"`` (another scheme, or a path that does not exist)."""
    scheme = _SCHEME.match(model)
    if scheme:
        return "url" if scheme.group(1).lower() in ("http", "https") else "unknown"
    if model.startswith("file://"):
        return "path"
    if Path(model).expanduser().exists():
        return "path"
    if SERVICE_NAME.match(model) and len(model) <= 63:
        return "service"
    return "unknown"


def errors(document: dict[str, Any], flagged: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """Every problem of a BatchJob document the schema does not catch: its own rules, then the engine's
    ``spec_problems`` for paths not flagged yet. ``flagged``: the paths the schema refused; those fields are
    left out (BatchSpec's defaults stand in) so the engine's rules still see the rest."""
    spec = document.get("spec")
    if spec is None:
        return [("spec", "required field is missing (a BatchJob needs spec.model, spec.input and spec.output)")]
    if not isinstance(spec, dict):
        return []  # the schema said so
    sound = {key: value for key, value in spec.items() if key in FIELDS and not any(
        path == f"spec.{key}" or path.startswith((f"spec.{key}.", f"spec.{key}[")) for path in flagged)}
    problems = _own_errors(sound)
    seen = set(flagged) | {path for path, _ in problems}
    problems += [(path, message) for path, message in engine_problems(sound, _namespace(document))
                 if path not in seen]
    return problems


def warnings(document: dict[str, Any]) -> list[Problem]:
    """Fields accepted but without effect for this model's form, by path."""
    spec = document.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        return []
    form = model_form(spec["model"])
    found: list[Problem] = []
    if form == "path":
        for key in ENDPOINT_FIELDS:
            if key in spec:
                found.append((f"spec.{key}", "ignored: the model is loaded in-process (a local path); it matters "
                              "when spec.model is an InferenceService name or an http(s):// server URL"))
    elif form in ("service", "url"):
        for key in IN_PROCESS_FIELDS:
            if key in spec:
                where = "an InferenceService" if form == "service" else "a server URL"
                found.append((f"spec.{key}", f"ignored: the model is reached over HTTP ({where}); set "
                              "spec.concurrency for the requests in flight"))
    return found


def _namespace(document: dict[str, Any]) -> str:
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    return metadata.get("namespace") or "default"


def _own_errors(spec: dict[str, Any]) -> list[Problem]:
    """What the engine's static rules leave to the document: the model's form, dataset:// URLs, fed and carried."""
    problems: list[Problem] = []
    model = spec.get("model")
    if isinstance(model, str) and model.strip():
        problems += _model_errors(model)
    for key in ("input", "output", "errors"):
        value = spec.get(key)
        if isinstance(value, str) and value.strip():
            problems += _location_errors(f"spec.{key}", value)
    columns, carry = spec.get("columns"), spec.get("carry")
    if isinstance(columns, list) and isinstance(carry, list):
        for index, value in enumerate(carry):
            if value in columns:
                problems.append((f"spec.carry[{index}]", f"'{value}' is also in spec.columns: a column is either fed "
                                 "to the model or carried through, not both"))
    return problems


def _model_errors(model: str) -> list[Problem]:
    form = model_form(model)
    if form == "url":
        parsed = urlparse(model)
        if not parsed.hostname:
            return [("spec.model", f"'{model}' names no host; expected http(s)://host:port")]
        return []
    if form != "unknown":
        return []
    scheme = _SCHEME.match(model)
    if scheme:
        return [("spec.model", f"'{model}': {scheme.group(1)}:// models are not fetched by a BatchJob; expected "
                 f"{MODEL_FORMS} (deploy a remote model as an InferenceService and name it here)")]
    return [("spec.model", f"no file or folder '{model}' on this machine, and it is not an InferenceService name; "
             f"expected {MODEL_FORMS}")]


def _location_errors(path: str, value: str) -> list[Problem]:
    if value.startswith("dataset://"):
        from shipyard.control.data_validation import dataset_uri_error

        problem = dataset_uri_error(value)
        return [(path, problem)] if problem else []
    if value.startswith("pvc://"):
        return [(path, "pvc:// needs Kubernetes; use a local path, dataset://NAME/path or an fsspec URL such as "
                 "s3://bucket/key")]
    return []


def engine_problems(spec: dict[str, Any], namespace: str = "default") -> list[Problem]:
    """``shipyard.batch.spec.spec_problems`` of a spec (its types already checked), by document path."""
    from shipyard.batch.spec import BatchSpec, spec_problems

    kwargs = batch_spec_kwargs(spec, namespace)
    for key in ("model", "input", "output"):  # a missing one is the schema's to report (spec_problems says it too)
        kwargs.setdefault(key, "")
    try:
        batch = BatchSpec(**kwargs)
    except (TypeError, ValueError) as exc:
        return [("spec", str(exc))]
    return [(field_path(field), message) for field, message in spec_problems(batch)]


def field_path(attribute: str) -> str:
    """A BatchSpec attribute (``batch_size``, ``columns[2]``) as a document path (``spec.batchSize``)."""
    if not attribute:
        return "spec"
    head, _, rest = attribute.partition("[")
    head, dot, tail = head.partition(".")
    name = ATTRIBUTES.get(head, head)
    return f"spec.{name}" + (f".{tail}" if dot else "") + (f"[{rest}" if rest else "")


def batch_spec_kwargs(spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    """BatchSpec's keyword arguments for a BatchJob spec (absent fields keep BatchSpec's defaults)."""
    kwargs: dict[str, Any] = {"namespace": namespace}
    for key, value in spec.items():
        attribute = FIELDS.get(key)
        if attribute is None:
            raise ValueError(f"spec.{key}: unknown field{_did_you_mean(key, list(FIELDS))}")
        kwargs[attribute] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) \
            else value
    return kwargs


def spec_from_options(model: str, input: str, output: str, options: dict[str, Any]) -> dict[str, Any]:
    """A BatchJob spec from the SDK's arguments: BatchSpec's names (``batch_size``) or the spec's (``batchSize``);
    ValueError names an unknown option."""
    spec: dict[str, Any] = {"model": str(model), "input": str(input), "output": str(output)}
    for key, value in options.items():
        if value is None:
            continue
        field = ATTRIBUTES.get(key) or (key if key in FIELDS else None)
        if field is None or field in ("model", "input", "output"):
            choices = [name for name in ATTRIBUTES if name not in ("model", "input", "output", "namespace")]
            raise ValueError(f"{key}: not a batch option{_did_you_mean(key, choices)}; options are "
                             f"{', '.join(choices)}")
        if field in ("columns", "carry") and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, tuple):
            value = list(value)
        spec[field] = value
    return spec


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def resolve_paths(spec: dict[str, Any], base: Path) -> None:
    """Relative local paths of a BatchJob spec made absolute against ``base`` (a YAML file's folder), in place:
    ``input``, ``output`` and ``errors`` always (a trailing ``/`` is kept), ``model`` when it names a file or
    folder there (otherwise it may be an InferenceService's name)."""
    for key in ("input", "output", "errors"):
        value = spec.get(key)
        if not isinstance(value, str) or not value or _SCHEME.match(value) or Path(value).expanduser().is_absolute():
            continue
        resolved = str((base / Path(value).expanduser()).resolve())
        spec[key] = resolved + "/" if value.endswith("/") and not resolved.endswith("/") else resolved
    model = spec.get("model")
    if isinstance(model, str) and model and not _SCHEME.match(model) and not Path(model).expanduser().is_absolute():
        candidate = base / Path(model).expanduser()
        if candidate.exists():
            spec["model"] = str(candidate.resolve())
