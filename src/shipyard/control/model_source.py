"""An InferenceService predictor -> the ``shipyard serve`` command line of one of its replicas.

Both predictor forms are read: ``spec.predictor.model`` (``modelFormat``, ``storageUri``,
``protocolVersion``, ``runtime``) and the legacy framework fields (``spec.predictor.sklearn``...,
each holding its own ``storageUri``). How the other predictor fields map onto a local replica:

- ``storageUri``: a local path or ``file://`` URI is served where it is; ``http(s)://``, ``s3://`` and
  other fsspec URLs are fetched once into ``$SHIPYARD_HOME/cache/models/<hash>/`` (a ``.tar.gz`` or
  ``.zip`` is unpacked there). A folder with ``shipyard.yaml`` is served as a Shipyard package.
  ``dataset://NAME/path`` reads the files under ``path`` of a Dataset through its cache into
  ``$SHIPYARD_HOME/cache/models/dataset-<hash>/``, the hash covering each file's version: a second
  replica or revision of the same files reuses that copy (no source read at all), and a model
  changed at the source gets a new copy once the dataset's listing shows the new version.
- ``containerConcurrency: N`` -> ``--max-queue N``: a replica holds at most N waiting requests per
  model and answers 503 + Retry-After beyond that (Knative would park them in its queue-proxy).
  0 or absent means the server's default queue.
- ``batcher.maxBatchSize`` / ``batcher.maxLatency`` -> ``--max-batch-size`` / ``--max-latency-ms``
  (the replica's own adaptive batcher, which also batches V2 and gRPC, unlike KServe's agent).
- ``timeout`` (seconds) is for the gateway: it lands in the route table as ``timeout_s``.
- ``env`` (name/value pairs) becomes the replica's environment.
- ``resources.requests`` (``cpu``, ``memory``, ``nvidia.com/gpu``; ``limits`` stand in for missing
  requests, as in Kubernetes) are what each replica holds in the machine's ledger (scheduler.py);
  the annotation ``serving.shipyard.io/gpu-memory`` (e.g. ``8Gi``) makes the replica share GPUs by
  declared memory instead of taking them whole (``replica_needs``). The GPUs a replica gets are
  passed as ``CUDA_VISIBLE_DEVICES`` (empty when it asked for none on a machine with GPUs); nothing
  is enforced at run time (no cgroups).
- ``runtime`` other than ``shipyard``, and container overrides (``image``, ``command``, ``args``), are
  ignored with a warning: Shipyard serves every format with its own runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shipyard.control.components import EXPLAINER, PREDICTOR, TRANSFORMER, split_key
from shipyard.home import shipyard_home
from shipyard.package.config import CONFIG_FILE
from shipyard.package.source import model_source as package_model_source
from shipyard.package.weights import FSSPEC_EXTRAS, chunks, file_name
from shipyard.control.scheduler import ReplicaNeeds
from shipyard.quantity import QuantityError, parse_quantity
from shipyard.runtimes.registry import FormatError, normalise_format

#: Legacy predictor fields (``spec.predictor.sklearn``...) Shipyard serves.
LEGACY_FORMATS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "huggingface")
#: ``modelFormat.name`` values Shipyard serves; ``custom`` is a Shipyard package or model.py folder.
MODEL_FORMATS = LEGACY_FORMATS + ("custom",)
#: ``modelFormat.name`` values each component takes (a transformer is a model.py with preprocess/postprocess;
#: an explainer is the built-in black-box SHAP explainer or a model.py with explain()).
COMPONENT_FORMATS = {PREDICTOR: MODEL_FORMATS + ("detector",), TRANSFORMER: ("custom",), EXPLAINER: ("shap", "custom")}
COMPONENT_HINTS = {
    TRANSFORMER: "a folder with model.py whose preprocess()/postprocess() run around the predictor",
    EXPLAINER: "shap (a folder with the background sample) or a folder with model.py defining explain()",
}
#: Legacy fields KServe has that no Shipyard runtime serves.
UNSUPPORTED_LEGACY = ("tensorflow", "triton", "pmml", "paddle")
PROTOCOLS = ("v1", "v2", "grpc-v1", "grpc-v2")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
IGNORED_CONTAINER_FIELDS = ("image", "command", "args", "runtimeVersion")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_ANNOTATION = "serving.shipyard.io/gpu-memory"


class ModelSourceError(ValueError):
    """A predictor that cannot become a replica; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass
class ReplicaCommand:
    """How to run one replica of a revision, and what the gateway needs to know about it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    protocol: str = "v1"
    timeout_s: float | None = None
    format: str = ""
    model_path: Path | None = None
    warnings: list[str] = field(default_factory=list)


def models_cache() -> Path:
    return shipyard_home() / "cache" / "models"


def predictor_model(predictor: dict[str, Any], component: str = PREDICTOR) -> tuple[str, dict[str, Any], str]:
    """The model part of a component (``predictor``, ``transformer`` or ``explainer``): (its field path,
    its mapping, its format name)."""
    root = f"spec.{component}"
    formats = COMPONENT_FORMATS[component]
    if "model" in predictor:
        model = predictor["model"] or {}
        name = (model.get("modelFormat") or {}).get("name")
        if not name:
            raise ModelSourceError(f"{root}.model.modelFormat.name", f"is required (e.g. {formats[0]})")
        if name.lower() not in formats:
            raise ModelSourceError(f"{root}.model.modelFormat.name",
                                   f"'{name}' is not served by Shipyard as a {component}; expected one of "
                                   f"{', '.join(formats)}")
        return f"{root}.model", model, name.lower()
    if component != PREDICTOR:
        raise ModelSourceError(root, f"needs 'model' (modelFormat {' or '.join(formats)} + storageUri): "
                               + COMPONENT_HINTS[component])
    for legacy in LEGACY_FORMATS:
        if legacy in predictor:
            return f"{root}.{legacy}", predictor[legacy] or {}, legacy
    for legacy in UNSUPPORTED_LEGACY:
        if legacy in predictor:
            raise ModelSourceError(f"{root}.{legacy}",
                                   f"is not served by Shipyard; use {root}.model with one of {', '.join(MODEL_FORMATS)}")
    if "containers" in predictor:
        raise ModelSourceError(f"{root}.containers", "custom containers are not supported locally; use a "
                               "Shipyard package: modelFormat custom + storageUri pointing at it")
    raise ModelSourceError(root, "needs 'model' (modelFormat + storageUri) or a framework field "
                           f"({', '.join(LEGACY_FORMATS)})")


def gateway_settings(predictor: dict[str, Any]) -> tuple[str, float | None]:
    """(protocolVersion, timeout in seconds) of a predictor, for the route table; never fails (the
    replica's command checks these fields)."""
    try:
        _, model, _ = predictor_model(predictor)
    except ModelSourceError:
        model = {}
    protocol = model.get("protocolVersion")
    timeout = predictor.get("timeout")
    valid_timeout = isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0
    return (protocol if protocol in PROTOCOLS else "v1"), (float(timeout) if valid_timeout else None)


def replica_needs(predictor: dict[str, Any], annotations: dict[str, str] | None = None,
                  component: str = PREDICTOR) -> ReplicaNeeds:
    """What each replica of ``predictor`` (a component's spec) holds in the machine's ledger: its
    container's ``resources.requests`` (``limits`` where a request is missing) and the ``gpu-memory``
    annotation. ModelSourceError names the field."""
    try:
        where, model, _ = predictor_model(predictor, component)
    except ModelSourceError:
        where, model = f"spec.{component}", {}
    resources = model.get("resources") or {}
    if not isinstance(resources, dict):
        raise ModelSourceError(f"{where}.resources", f"expected requests and limits, got {resources!r}")
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for name, part in (("requests", requests), ("limits", limits)):
        if not isinstance(part, dict):
            raise ModelSourceError(f"{where}.resources.{name}", f"expected a mapping of resource names, got {part!r}")

    def amount(name: str) -> float:
        part = "requests" if name in requests else "limits"
        value = requests.get(name, limits.get(name))
        if value is None:
            return 0.0
        try:
            return parse_quantity(value, f"{where}.resources.{part}.{name}")
        except QuantityError as exc:
            raise ModelSourceError(exc.path, exc.message) from None

    gpu_name = GPU_RESOURCE if GPU_RESOURCE in requests or GPU_RESOURCE in limits else "gpu"
    gpus = amount(gpu_name)
    if gpus != int(gpus):
        part = "requests" if gpu_name in requests else "limits"
        raise ModelSourceError(f"{where}.resources.{part}.{gpu_name}", f"expected a whole number of GPUs, got "
                               f"{gpus:g}; share a GPU with the {GPU_MEMORY_ANNOTATION} annotation instead")
    gpu_memory = 0.0
    declared = (annotations or {}).get(GPU_MEMORY_ANNOTATION)
    if declared is not None:
        try:
            gpu_memory = parse_quantity(declared, f"metadata.annotations[{GPU_MEMORY_ANNOTATION}]")
        except QuantityError as exc:
            raise ModelSourceError(exc.path, exc.message) from None
        if gpu_memory <= 0:
            raise ModelSourceError(f"metadata.annotations[{GPU_MEMORY_ANNOTATION}]",
                                   f"expected a memory size such as 8Gi, got {declared!r}")
    return ReplicaNeeds(amount("cpu"), amount("memory"), int(gpus), gpu_memory)


def serve_command(isvc: str, predictor: dict[str, Any], namespace: str = "default") -> ReplicaCommand:
    """The ``shipyard serve`` arguments for ``predictor`` served as ``isvc`` (a component key: the
    transformer's and explainer's specs are served under their service's name; remote models are fetched
    now; ``namespace`` is where a ``dataset://`` storageUri's Dataset lives)."""
    isvc, component = split_key(isvc)
    root = f"spec.{component}"
    where, model, format_name = predictor_model(predictor, component)
    warnings: list[str] = []
    runtime = model.get("runtime")
    if runtime and runtime != "shipyard":
        warnings.append(f"{where}.runtime: '{runtime}' is ignored; Shipyard serves every format with its own runtime")
    for name in IGNORED_CONTAINER_FIELDS:
        if model.get(name):
            warnings.append(f"{where}.{name}: ignored; a local replica runs `shipyard serve`, not a container")
    protocol = model.get("protocolVersion") or "v1"
    if protocol not in PROTOCOLS:
        raise ModelSourceError(f"{where}.protocolVersion", f"'{protocol}' is not one of {', '.join(PROTOCOLS)}")
    if model.get("storageUris") or model.get("storage"):
        raise ModelSourceError(f"{where}.storageUri", "storageUris and storage are not supported; give one storageUri")
    uri = model.get("storageUri")
    if not uri or not isinstance(uri, str):
        raise ModelSourceError(f"{where}.storageUri", "is required: a local path, file://, http(s):// or s3:// URI")
    path = resolve_storage_uri(uri, f"{where}.storageUri", namespace)
    served_format = check_format(path, format_name, isvc, where)

    argv = [str(path), "--name", isvc]
    batcher = predictor.get("batcher") or {}
    if batcher.get("maxBatchSize") is not None:
        argv += ["--max-batch-size", str(_positive_int(batcher["maxBatchSize"], f"{root}.batcher.maxBatchSize"))]
    if batcher.get("maxLatency") is not None:
        argv += ["--max-latency-ms", str(_positive_int(batcher["maxLatency"], f"{root}.batcher.maxLatency", 0))]
    concurrency = predictor.get("containerConcurrency")
    if concurrency:
        argv += ["--max-queue", str(_positive_int(concurrency, f"{root}.containerConcurrency"))]
    timeout = predictor.get("timeout")
    timeout_s = float(_positive_int(timeout, f"{root}.timeout")) if timeout else None
    env, env_warnings = _environment(model.get("env") or [], f"{where}.env")
    env.setdefault("OTEL_SERVICE_NAME", f"{isvc}-{component}")
    if served_format == "detector":  # its window and counters survive restarts, one file per service
        from shipyard.monitor.state import STATE_ENV  # (imports pandas)

        env.setdefault(STATE_ENV, str(shipyard_home() / "monitor" / namespace / isvc / "state.json"))
    return ReplicaCommand(argv, env, protocol, timeout_s, served_format, path, warnings + env_warnings)


def check_format(path: Path, format_name: str, isvc: str, where: str) -> str:
    """The format Shipyard will serve ``path`` as; an error when it is not the declared ``format_name``."""
    field_path = f"{where}.modelFormat.name" if where.endswith(".model") else where
    if format_name == "detector":
        from shipyard.monitor.detector_folder import DetectorConfigError, is_detector_folder, read_detector_config

        if not is_detector_folder(path):
            raise ModelSourceError(f"{where}.storageUri", f"{path} is not a detector folder (a folder with "
                                   "detector.yaml); see docs/monitoring.md")
        try:
            read_detector_config(path)
        except DetectorConfigError as exc:
            raise ModelSourceError(f"{where}.storageUri", str(exc)) from None
        return "detector"
    try:
        source, _ = package_model_source(path, isvc)
    except ValueError as exc:  # PackageError, FormatError: the artifact cannot be served
        raise ModelSourceError(f"{where}.storageUri", str(exc)) from None
    is_package = path.is_dir() and (path / CONFIG_FILE).is_file()
    if format_name == "custom":
        if not is_package and source.format != "python":
            raise ModelSourceError(field_path, f"'custom' needs a Shipyard package (shipyard.yaml) or a folder with "
                                   f"model.py, but {path} is a {source.format} model")
        return source.format
    try:
        declared = normalise_format(format_name)
    except FormatError as exc:
        raise ModelSourceError(field_path, str(exc)) from None
    if source.format != declared:
        raise ModelSourceError(field_path, f"says '{format_name}', but {path} is a {source.format} model")
    return source.format


def _positive_int(value: Any, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelSourceError(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _environment(items: list[Any], where: str) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    warnings = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("name"):
            raise ModelSourceError(f"{where}[{index}]", "expected {name, value}")
        if "valueFrom" in item:
            warnings.append(f"{where}[{index}].valueFrom: not honoured locally; set 'value' instead")
            continue
        env[str(item["name"])] = str(item.get("value", ""))
    return env, warnings


# -- storageUri ------------------------------------------------------------------------------------
def resolve_storage_uri(uri: str, where: str, namespace: str = "default") -> Path:
    """A local path for ``uri``: local paths as they are, remote ones fetched once into the cache,
    ``dataset://`` through the Dataset's cache (the Dataset of ``namespace``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "dataset":
        return _model_in(dataset_copy(uri, where, namespace))
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri).expanduser()
        if not path.is_absolute():
            raise ModelSourceError(where, f"'{uri}' is relative; give an absolute path or a file:// URI (the control "
                                   "plane does not know which folder it was applied from)")
        if not path.exists():
            raise ModelSourceError(where, f"'{uri}' does not exist")
        return path
    folder = models_cache() / hashlib.sha256(uri.encode()).hexdigest()[:32]
    if not folder.is_dir():
        _fetch_into(uri, folder, where)
    return _model_in(folder)


def dataset_copy(uri: str, where: str, namespace: str = "default", home: Path | None = None) -> Path:
    """The files of ``dataset://NAME/path``, read through the Dataset's cache into a models-cache folder
    keyed by the files' versions (the listing as the dataset's metadata has it)."""
    from shipyard.control.data_validation import parse_dataset_uri

    try:
        name, _ = parse_dataset_uri(uri)
    except ValueError as exc:
        raise ModelSourceError(where, str(exc)) from None
    try:
        cache = open_dataset(name, namespace, home)
    except (LookupError, ValueError, OSError) as exc:
        raise ModelSourceError(where, f"{uri}: {exc}") from None
    try:
        entries = dataset_entries(cache, uri, where)
        identity = json.dumps([namespace, uri, [[e.path, e.version, e.size] for e in entries]])
        folder = (home / "cache" / "models" if home else models_cache()) / \
            f"dataset-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            partial = folder.with_name(f".{folder.name}.{os.getpid()}.part")
            shutil.rmtree(partial, ignore_errors=True)
            try:
                copy_dataset_files(cache, uri, entries, partial)
                try:
                    os.replace(partial, folder)
                except OSError:  # another replica's copy finished first: use it
                    if not folder.is_dir():
                        raise
            except OSError as exc:
                raise ModelSourceError(where, f"cannot read {uri} through its dataset's cache: {exc}") from None
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return folder
    finally:
        cache.close()


def open_dataset(name: str, namespace: str = "default", home: Path | None = None) -> Any:
    """``DatasetCache.open`` (imported here so serving a local model never imports the data layer)."""
    from shipyard.data.engine import DatasetCache

    return DatasetCache.open(name, namespace, home=home)


def dataset_entries(cache: Any, uri: str, where: str) -> list[Any]:
    """The files a dataset:// URI names: one file, or every file under a folder (or matching a glob)."""
    from shipyard.control.data_validation import parse_dataset_uri
    from shipyard.data.operations.watch import resolve_target

    name, path = parse_dataset_uri(uri)
    try:
        entries = sorted(resolve_target(cache, path), key=lambda entry: entry.path)
    except OSError as exc:
        raise ModelSourceError(where, f"cannot list {uri}: {exc}") from None
    if not entries:
        raise ModelSourceError(where, f"{uri}: dataset '{name}' has no file at {path}")
    return entries


def copy_dataset_files(cache: Any, uri: str, entries: list[Any], target: Path) -> int:
    """Stream ``entries`` (under the URI's path) through the cache into ``target``; returns the bytes copied."""
    from shipyard.control.data_validation import parse_dataset_uri
    from shipyard.data.operations.watch import glob_root, has_magic

    _, root = parse_dataset_uri(uri)
    root = glob_root(root) if has_magic(root) else root
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for entry in entries:
        relative = entry.path.rsplit("/", 1)[-1] if entry.path == root else entry.path[len(root):].lstrip("/")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle = cache.open_file(entry.path)
        try:
            with open(destination, "wb") as out:
                while chunk := handle.read(1024 * 1024):
                    out.write(chunk)
                    copied += len(chunk)
        finally:
            handle.close()
    return copied


def _model_in(folder: Path) -> Path:
    """The model inside a fetched folder: its one file or one sub-folder, else the folder itself."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and (entries[0].is_dir() or not _is_archive(entries[0].name)):
        return entries[0]
    return folder


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _fetch_into(uri: str, folder: Path, where: str) -> None:
    """Download ``uri`` (a file or, for fsspec URLs, a folder) into ``folder``, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        scheme = urlparse(uri).scheme
        if scheme not in ("http", "https") and _fsspec_get_folder(uri, partial, where):
            pass
        else:
            target = partial / file_name(uri)
            with open(target, "wb") as out:
                for chunk in chunks(uri):
                    out.write(chunk)
            if _is_archive(target.name):
                _unpack(target, partial, where)
                target.unlink()
        try:
            os.replace(partial, folder)
        except OSError:  # another fetch of the same URI finished first: use its copy
            if not folder.is_dir():
                raise
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelSourceError):
            raise
        raise ModelSourceError(where, f"cannot fetch {uri}: {exc}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _fsspec_get_folder(uri: str, target: Path, where: str) -> bool:
    """Copy a remote folder (s3://bucket/prefix/) into ``target``; False when ``uri`` is a single file."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise ModelSourceError(where, f"fetching {uri} needs fsspec: pip install fsspec") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        extra = FSSPEC_EXTRAS.get(urlparse(uri).scheme)
        raise ModelSourceError(where, f"cannot fetch {uri}: {exc}" + (f"; pip install {extra}" if extra else "")) from None
    if not fs.isdir(path):
        if not fs.exists(path):
            raise ModelSourceError(where, f"{uri} does not exist")
        return False
    fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
    return True


def _unpack(archive: Path, target: Path, where: str) -> None:
    """Unpack a tar or zip archive into ``target``, refusing members that would land outside it."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            root = target.resolve()
            for member in zipped.namelist():
                if not (target / member).resolve().is_relative_to(root):
                    raise ModelSourceError(where, f"{archive.name}: member '{member}' would unpack outside its folder")
            zipped.extractall(target)
        return
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except tarfile.TarError as exc:
        raise ModelSourceError(where, f"{archive.name} is not a readable archive: {exc}") from None
