"""``shipyard.yaml``, the model package config: its typed schema, and reading it with clear errors.

The structs below are the single source of truth: :func:`json_schema` derives the published JSON
Schema (``docs/shipyard.schema.json``) from them, and :func:`read_config` validates a file against
them, naming the key path, the value found and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import msgspec
from msgspec import Meta

CONFIG_FILE = "shipyard.yaml"
EXAMPLES_FILE = "examples.yaml"
REQUIREMENTS_FILE = "requirements.txt"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

PositiveInt = Annotated[int, Meta(ge=1)]
ModelName = Annotated[str, Meta(pattern=NAME_PATTERN.pattern, description="letters, digits, '_', '.', '-'")]
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BF16", "BYTES"]
Scalar = Union[bool, int, float, str]
#: Kubernetes quantities: cpu "2", "500m", 1.5; memory "512Mi", "2Gi", "1G".
CpuQuantity = Annotated[str, Meta(pattern=r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$", description='cores, e.g. "2" or "500m"')]
MemoryQuantity = Annotated[
    str, Meta(pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kMGTPE])?$", description='bytes, e.g. "512Mi" or "2Gi"')
]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the file")]
SecretName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]


class PackageError(ValueError):
    """A package or its config is invalid; the message names the key and what was expected."""


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Base of the nested config sections: a misspelt key is an error, not silently ignored."""


class ColumnConfig(Struct):
    """One named column of a 2-D input, with optional rules on its values."""

    name: str
    min: float | None = None
    max: float | None = None
    #: The only values allowed (categories).
    values: list[Scalar] | None = None


class TensorConfig(Struct):
    """One declared input or output; ``-1`` in ``shape`` marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: list[Annotated[int, Meta(ge=-1)]]
    description: str | None = None
    #: Names of the columns of a ``[-1, n]`` input (a request may then send one tensor per column).
    columns: list[Union[str, ColumnConfig]] | None = None
    #: Allowed range and values for every element.
    min: float | None = None
    max: float | None = None
    values: list[Scalar] | None = None


class Resources(Struct):
    """What one replica of the model needs (container requests and limits)."""

    cpu: CpuQuantity = "1"
    memory: MemoryQuantity = "2Gi"
    gpu: Annotated[int, Meta(ge=0)] = 0


class Weight(Struct):
    """A file fetched once (fsspec: file://, http(s)://, s3://), checked, cached, and linked into the package."""

    uri: str
    #: Where it appears inside the package; default ``data/<file name of uri>``.
    path: str | None = None
    sha256: Sha256 | None = None


ExplainerAlgorithm = Literal["auto", "tree", "linear", "kernel", "permutation"]
#: Background sample files an explainer reads.
BACKGROUND_SUFFIXES = (".csv", ".parquet", ".npy")


class ExplainerConfig(Struct):
    """Built-in explanations (``:explain``): SHAP with a background sample from the package."""

    type: Literal["shap"] = "shap"
    #: ``auto``: tree for tree models, linear for linear scikit-learn models, else kernel.
    algorithm: ExplainerAlgorithm = "auto"
    #: A .csv (header row = feature names), .parquet or .npy file inside the package; default: the
    #: inputs of ``examples.yaml``.
    background: str | None = None
    #: Rows sampled from the background (a fixed seed, so answers repeat).
    max_background_rows: PositiveInt = 100
    #: kernel: coalitions per row (default: shap's "auto"); permutation: model evaluations per row.
    nsamples: PositiveInt | None = None
    #: The output tensor the model-agnostic explainers explain (default: predict_proba of a
    #: classifier, else the first output).
    output: str | None = None
    #: The shap format: the predictor's input tensor (default ``input-0``) and parameters sent with
    #: every call to it (e.g. ``predict_proba: true``).
    input_name: str | None = None
    parameters: dict[str, Any] = {}


class PackageConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The whole ``shipyard.yaml``. Every key is optional; a bare folder with a model serves too."""

    name: ModelName | None = None
    version: str = "1"
    description: str | None = None
    #: sklearn, xgboost, lightgbm, onnx, pytorch, huggingface, r or python (custom model.py).
    format: str | None = None
    #: The model file or folder, relative to the package.
    artifact: str | None = None
    #: The signature: enforced on every request through every protocol.
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    #: ``strict`` rejects a request that breaks the signature (400); ``warn`` logs it and predicts.
    checks: Literal["strict", "warn"] = "strict"
    #: Serve ``predict_proba`` instead of ``predict`` by default (classifiers).
    predict_proba: bool = False
    #: How many predicts of this model may run at once (custom models).
    concurrency: PositiveInt = 1
    #: Adaptive batching (see ``shipyard serve --help``); max_batch_size turns it on for any format.
    max_batch_size: PositiveInt | None = None
    max_latency_ms: Annotated[float, Meta(ge=0)] | None = None
    max_queue: PositiveInt | None = None
    #: Library threads for one predict (ONNX Runtime intra-op, torch).
    threads: PositiveInt | None = None
    #: Python version of the model's environment ("3.11"); another one than the server's isolates it.
    python_version: Annotated[str, Meta(pattern=r"^3\.[0-9]+$")] | None = None
    #: pip requirements; ``requirements.txt`` in the package is read when this key is absent.
    requirements: list[str] | None = None
    requirements_file: str | None = None
    #: Debian packages the container image installs.
    system_packages: list[str] = []
    environment_variables: dict[str, str] = {}
    #: Names only; values come from the environment or a secrets folder at run time.
    secrets: list[SecretName] = []
    resources: Resources = msgspec.field(default_factory=Resources)
    weights: list[Weight] = []
    #: A sample of the model's inputs (.csv, .parquet or .npy, relative to the package): what a drift or
    #: outlier detector whose detector.yaml names this package compares traffic with.
    reference: str | None = None
    #: ``auto``: a separate virtual environment when the requirements are not met by the server's;
    #: ``always`` / ``never`` force it.
    isolate: Literal["auto", "always", "never"] = "auto"
    #: Hugging Face: pipeline task, embedding normalisation, arguments passed on every call.
    task: str | None = None
    normalize: bool = False
    pipeline_kwargs: dict[str, Any] | None = None
    #: R: predict(type=), input column names, packages to load first.
    type: str | None = None
    columns: list[str] | None = None
    packages: list[str] | None = None
    #: ``:explain`` with SHAP (docs/monitoring.md, Explainers).
    explainer: ExplainerConfig | None = None


KNOWN_KEYS = frozenset(PackageConfig.__struct_fields__)
#: Keys whose value is one of a few words, for error messages that list them.
ENUMS: dict[str, Any] = {"datatype": Datatype, "checks": Literal["strict", "warn"],
                         "isolate": Literal["auto", "always", "never"], "algorithm": ExplainerAlgorithm,
                         "type": Literal["shap"]}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``shipyard.yaml``, generated from :class:`PackageConfig`."""
    schema = msgspec.json.schema(PackageConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shipyard.yaml"
    schema["description"] = "A Shipyard model package config (docs/packaging.md)."
    return schema


def check_name(name: str, where: str) -> str:
    """Model names travel in URLs: letters, digits, '_', '.', '-'."""
    if not NAME_PATTERN.match(name):
        raise PackageError(
            f"{where}: model name '{name}' is not allowed; use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit)"
        )
    return name


_ERROR_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\"?([^\]\"]*)\"?\]")


def _lookup(raw: Any, path: str) -> tuple[str, Any, bool]:
    """Turn msgspec's ``.resources.cpu`` / ``.inputs[0].shape`` into a key path and the value there."""
    value, found, parts = raw, True, []
    for match in _PATH_PART.finditer(path):
        key, index, other = match.groups()
        if index is not None:
            parts.append(f"[{index}]")
            step: Any = int(index)
        else:
            step = key if key is not None else other
            parts.append(f".{step}" if parts else str(step))
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            value, found = None, False
    return "".join(parts), value, found


def explain(error: msgspec.ValidationError, raw: Any, where: str) -> str:
    """A validation error as ``FILE: key.path = value: what was expected``."""
    match = _ERROR_PATH.match(str(error))
    assert match is not None
    what, path = match.group("what"), match.group("path") or ""
    key, value, found = _lookup(raw, path)
    what = what.replace("Expected `", "expected `").replace("Object contains unknown field", "unknown key")
    what = re.sub(r"` >= (-?\d+)", r"` of at least \1", what)
    leaf = key.rsplit(".", 1)[-1]
    if what.startswith("Invalid enum value") and leaf in ENUMS:
        what = f"expected one of {', '.join(get_args(ENUMS[leaf]))}"
    if leaf == "name" and "regex" in what:
        what = "not allowed; use letters, digits, '_', '.' and '-' (starting with a letter or digit)"
    if not key:
        return f"{where}: {what}"
    if "unknown key" in what or not found:
        return f"{where}: {key}: {what}"
    return f"{where}: {key} = {value!r}: {what}"


def _stringify_env(raw: dict[str, Any]) -> None:
    """YAML reads ``DEBUG: true`` and ``WORKERS: 2`` as bool and int; environment values are text."""
    env = raw.get("environment_variables")
    if isinstance(env, dict):
        raw["environment_variables"] = {
            key: (str(value).lower() if isinstance(value, bool) else str(value))
            if isinstance(value, (bool, int, float)) else value
            for key, value in env.items()
        }


def parse_config(raw: Any, where: str) -> tuple[PackageConfig, list[str]]:
    """Validate a config mapping; return it typed, with warnings for keys this version does not know."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PackageError(f"{where}: expected a mapping of keys (name, format, artifact, ...), got {type(raw).__name__}")
    raw = dict(raw)
    for key in ("version", "python_version"):
        if isinstance(raw.get(key), (int, float)) and not isinstance(raw.get(key), bool):
            raw[key] = str(raw[key])
    _stringify_env(raw)
    resources = raw.get("resources")
    if isinstance(resources, dict) and isinstance(resources.get("cpu"), (int, float)):
        raw["resources"] = {**resources, "cpu": str(resources["cpu"])}
    try:
        config = msgspec.convert({k: v for k, v in raw.items() if k in KNOWN_KEYS}, PackageConfig)
    except msgspec.ValidationError as exc:
        raise PackageError(explain(exc, raw, where)) from None
    if config.requirements is not None and config.requirements_file is not None:
        raise PackageError(f"{where}: give 'requirements' or 'requirements_file', not both")
    _check_signature(config, where)
    _check_explainer(config, where)
    warnings = [f"{where}: key '{key}' is not used by this version of Shipyard{_suggest(key)}"
                for key in raw if key not in KNOWN_KEYS]
    return config, warnings


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_signature(config: PackageConfig, where: str) -> None:
    for group in ("inputs", "outputs"):
        tensors = getattr(config, group) or []
        names = [t.name for t in tensors]
        for index, tensor in enumerate(tensors):
            if tensor.name in names[:index]:
                raise PackageError(f"{where}: {group}[{index}].name = {tensor.name!r}: tensor names must be unique")
            if tensor.min is not None and tensor.max is not None and tensor.min > tensor.max:
                raise PackageError(f"{where}: {group}[{index}]: min {tensor.min} is above max {tensor.max}")
            if tensor.columns is not None:
                width = tensor.shape[-1] if len(tensor.shape) == 2 else None
                if width is None or width not in (-1, len(tensor.columns)):
                    raise PackageError(
                        f"{where}: {group}[{index}].columns names {len(tensor.columns)} columns, so its shape "
                        f"must be [-1, {len(tensor.columns)}]; got {tensor.shape}"
                    )


def _check_explainer(config: PackageConfig, where: str) -> None:
    background = config.explainer.background if config.explainer else None
    if background is None:
        return
    if not background.lower().endswith(BACKGROUND_SUFFIXES):
        raise PackageError(f"{where}: explainer.background = {background!r}: expected a "
                           f"{', '.join(BACKGROUND_SUFFIXES)} file")
    if Path(background).is_absolute() or ".." in Path(background).parts:
        raise PackageError(f"{where}: explainer.background = {background!r}: must be a path inside the package")


def read_config(folder: Path) -> tuple[PackageConfig, dict[str, Any], list[str]]:
    """Parse ``folder/shipyard.yaml``: the typed config, the raw mapping, and warnings."""
    import yaml  # only for packages that have a config: a served artifact never loads it

    path = folder / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PackageError(f"{path} is not valid YAML: {exc}") from None
    config, warnings = parse_config(raw, str(path))
    return config, raw, warnings


def requirements_of(config: PackageConfig, folder: Path) -> list[str]:
    """The package's pip requirements: the ``requirements`` key, else its requirements file, else none."""
    if config.requirements is not None:
        return list(config.requirements)
    path = folder / (config.requirements_file or REQUIREMENTS_FILE)
    if not path.is_file():
        if config.requirements_file is not None:
            raise PackageError(f"{folder / CONFIG_FILE}: requirements_file '{config.requirements_file}' does not exist")
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]
