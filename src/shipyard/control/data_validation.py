"""Shipyard's rules for the data kinds: Dataset, CacheRuntime, DataLoad, DataMigrate, DataProcess, DataClean.

Fluid's schemas (``schemas/dataset.v1alpha1.json.gz``...) and Shipyard's own DataClean schema are
checked by validation.py; this module adds what running the objects on one machine needs, and the
warnings for fields accepted but not honoured (there are no pods, nodes or images here). Every
problem is ``(field path, message)``; validation.py turns them into FieldErrors.

A Dataset's mounts and a CacheRuntime's levels and options are checked by building the dataset's
configuration (``shipyard.data.spec.DatasetConfig.from_documents``), the same code the controller
runs, so apply refuses exactly what could not run.

Shipyard's extensions live in annotations under ``data.shipyard.io/`` (``ANNOTATIONS``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from shipyard import quantity

Problem = tuple[str, str]

ANNOTATION_PREFIX = "data.shipyard.io/"
OUTPUT = "data.shipyard.io/output"
POLL_INTERVAL = "data.shipyard.io/poll-interval"
METADATA_SYNC_INTERVAL = "data.shipyard.io/metadata-sync-interval"
#: Shipyard's annotations per kind: name -> what it takes.
ANNOTATIONS: dict[str, dict[str, str]] = {
    "Dataset": {METADATA_SYNC_INTERVAL: 'how often the listing is re-read from the source, e.g. "5m" '
                                        "(default 5m)"},
    "DataLoad": {POLL_INTERVAL: 'OnEvent only: how often the source is checked for changes, e.g. "10s" '
                                "(default 10s)"},
    "DataProcess": {OUTPUT: '"dataset://NAME[/path]": the Dataset (same namespace) that receives the files '
                            "the script writes to $OUTPUT_PATH"},
}
DEFAULT_POLL_S = 10.0
DEFAULT_METADATA_SYNC_S = 300.0

OPERATION_KINDS = ("DataLoad", "DataMigrate", "DataProcess", "DataClean")
POLICIES = ("Once", "Cron", "OnEvent")
#: ``processor.script.command[0]`` values run_process understands.
COMMANDS = ("python", "python3", "bash", "sh", "sql")
LOAD_OPTIONS = {"parallelism": "a positive integer (files loaded at once; default 8)"}
MIGRATE_OPTIONS = {"checksum": '"true" or "false" (verify each copied file by sha256; default "true")',
                   "exclude": 'comma-separated globs of paths not copied, e.g. "*.tmp,cache/**"'}
NOT_LOCAL = "not honoured locally: operations run as threads and processes of the control plane, not pods"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def errors(kind: str, document: dict[str, Any]) -> list[Problem]:
    """Every problem of a data-kind document the schema does not catch."""
    spec = document.get("spec")
    if spec is None:
        what = {"Dataset": "spec.mounts", "CacheRuntime": "spec.runtimeClassName and spec.worker.tieredStore"}.get(
            kind, "spec.dataset")
        return [("spec", f"required field is missing (a {kind} needs {what})")]
    if not isinstance(spec, dict):
        return []  # the schema said so
    problems = _annotation_errors(kind, _annotations(document))
    if kind == "Dataset":
        problems += _dataset_errors(document, spec)
    elif kind == "CacheRuntime":
        problems += _runtime_errors(document)
    else:
        problems += _operation_errors(kind, document, spec)
    return problems


def warnings(kind: str, document: dict[str, Any]) -> list[Problem]:
    """Fields accepted but not acted on locally, by path; unknown data.shipyard.io annotations."""
    spec = document.get("spec") or {}
    found: list[Problem] = []
    if kind == "Dataset":
        found += _dataset_warnings(spec)
    elif kind == "CacheRuntime":
        found += _runtime_warnings(spec)
    else:
        found += _operation_warnings(kind, document, spec)
    known = ANNOTATIONS.get(kind, {})
    for key in _annotations(document):
        if key.startswith(ANNOTATION_PREFIX) and key not in known:
            everything = [name for names in ANNOTATIONS.values() for name in names]
            close = difflib.get_close_matches(key, list(known) or everything, n=1)
            if close:
                hint = f"; did you mean '{close[0]}'?"
            elif known:
                hint = f"; a {kind} reads {', '.join(known)}"
            else:
                hint = f"; a {kind} reads none"
            found.append((f"metadata.annotations[{key}]", f"unknown Shipyard annotation{hint}"))
    return found


# -- shared helpers (the controllers and the SDK use them too) ---------------------------------------
def parse_duration(value: Any) -> float:
    """``"10s"``, ``"5m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds -> seconds (> 0); ValueError otherwise."""
    seconds = quantity.parse_duration(value)
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive duration; expected e.g. 10s, 5m, 1h or a number of seconds")
    return seconds


def dataset_uri_error(uri: str) -> str | None:
    """Why ``uri`` is not ``dataset://NAME[/path]``, or None."""
    try:
        parse_dataset_uri(uri)
    except ValueError as exc:
        return str(exc)
    return None


def parse_dataset_uri(uri: str) -> tuple[str, str]:
    """``dataset://NAME/a/b`` -> (``NAME``, ``/a/b``); the path is ``/`` when absent. ValueError says why not."""
    if not isinstance(uri, str) or not uri.startswith("dataset://"):
        raise ValueError(f"{uri!r} is not a dataset:// URI; expected dataset://NAME[/path]")
    name, _, path = uri[len("dataset://"):].partition("/")
    if not name:
        raise ValueError(f"{uri!r} names no dataset; expected dataset://NAME[/path]")
    if not _NAME.match(name) or len(name) > 63:
        raise ValueError(f"{uri!r}: '{name}' is not a Dataset name (lower case letters, digits and '-')")
    return name, "/" + path.strip("/")


def dataset_refs(kind: str, spec: dict[str, Any], namespace: str) -> list[tuple[str, str, str]]:
    """The Datasets an operation reads or writes: ``[(field path, namespace, name)]``, in that order."""
    refs: list[tuple[str, str, str]] = []
    if kind == "DataMigrate":
        for side in ("from", "to"):
            dataset = (spec.get(side) or {}).get("dataset")
            if isinstance(dataset, dict) and isinstance(dataset.get("name"), str):
                refs.append((f"spec.{side}.dataset", dataset.get("namespace") or namespace, dataset["name"]))
        return refs
    dataset = spec.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("name"), str):
        refs.append(("spec.dataset", dataset.get("namespace") or namespace, dataset["name"]))
    return refs


def _annotations(document: dict[str, Any]) -> dict[str, Any]:
    metadata = document.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def _annotation_errors(kind: str, annotations: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for key in (POLL_INTERVAL, METADATA_SYNC_INTERVAL):
        value = annotations.get(key)
        if key in ANNOTATIONS.get(kind, {}) and isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError as exc:
                problems.append((f"metadata.annotations[{key}]", str(exc)))
    output = annotations.get(OUTPUT)
    if kind == "DataProcess" and isinstance(output, str):
        problem = dataset_uri_error(output)
        if problem:
            problems.append((f"metadata.annotations[{OUTPUT}]", problem))
    return problems


# -- Dataset and CacheRuntime -------------------------------------------------------------------------
def _dataset_errors(document: dict[str, Any], spec: dict[str, Any]) -> list[Problem]:
    if "mounts" not in spec:
        return [("spec.mounts", "required field is missing: give at least one mount (mountPoint: a local folder, "
                 "file://, s3://, gs://, http(s)://...)")]
    if not isinstance(spec.get("mounts"), list) or not spec["mounts"]:
        return []  # the schema said so
    return _config_problems(document, None)


def _runtime_errors(document: dict[str, Any]) -> list[Problem]:
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    # A runtime binds to the Dataset of its name; its own fields are checked against a stand-in dataset.
    stand_in = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
                "metadata": {"name": metadata.get("name") or "dataset", "namespace": metadata.get("namespace")
                             or "default"},
                "spec": {"mounts": [{"mountPoint": "memory://shipyard-validation", "name": "validation"}]}}
    # from_documents names the runtime's fields "runtime.spec...": here the runtime is the document
    return [(path.removeprefix("runtime."), message) for path, message in _config_problems(stand_in, document)
            if not path.startswith("spec.mounts")]


def _config_problems(dataset: dict[str, Any], runtime: dict[str, Any] | None) -> list[Problem]:
    """What DatasetConfig.from_documents refuses, by field path (it stops at the first problem)."""
    from shipyard.data.spec import DataSpecError, DatasetConfig

    try:
        DatasetConfig.from_documents(dataset, runtime)
    except DataSpecError as exc:
        return [(exc.path, exc.message)]
    except (ValueError, TypeError) as exc:  # a bug's message is still better than a 500
        return [("spec", str(exc))]
    return []


def _dataset_warnings(spec: dict[str, Any]) -> list[Problem]:
    found: list[Problem] = []
    ignored = {
        "nodeAffinity": "not honoured locally: the cache lives on this machine",
        "tolerations": "not honoured locally: there are no nodes to tolerate",
        "placement": "not honoured locally: each Dataset has its own cache folder on this machine",
        "dataRestoreLocation": "not honoured: the cache index is a local SQLite file, not restored from a backup",
        "owner": "not honoured: files are read and written as the control plane's user",
        "runtimes": "ignored: a Dataset binds to the CacheRuntime of the same name and namespace",
        "accessModes": "not honoured: the dataset is writable unless a mount sets readOnly: true",
    }
    for key, why in ignored.items():
        if spec.get(key):
            found.append((f"spec.{key}", why))
    for index, mount in enumerate(spec.get("mounts") or []):
        if isinstance(mount, dict) and mount.get("shared") is not None:
            found.append((f"spec.mounts[{index}].shared", "not honoured: it only matters to Fluid's engines"))
    return found


#: CacheRuntime fields Shipyard acts on; any other field set gets a warning.
_RUNTIME_HONOURED = {"runtimeClassName", "options", "worker", "client"}
_COMPONENT_HONOURED = {"tieredStore"}


def _runtime_warnings(spec: dict[str, Any]) -> list[Problem]:
    found: list[Problem] = []
    runtime_class = spec.get("runtimeClassName")
    if isinstance(runtime_class, str) and runtime_class not in ("shipyard", ""):
        found.append(("spec.runtimeClassName", f"'{runtime_class}' is not used: Shipyard's local block cache "
                      "is the runtime (write 'shipyard')"))
    for key, value in spec.items():
        if key not in _RUNTIME_HONOURED and value not in (None, {}, []):
            found.append((f"spec.{key}", "not honoured locally: the cache runs inside Shipyard, not as pods"))
    for component in ("worker", "client"):
        part = spec.get(component)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "replicas" and value in (None, 1):
                continue
            if key not in _COMPONENT_HONOURED and value not in (None, {}, [], False):
                found.append((f"spec.{component}.{key}", "not honoured locally: the cache runs inside Shipyard, "
                              "not as pods" + ("; one cache serves every reader" if key == "replicas" else "")))
    if isinstance(spec.get("worker"), dict) and isinstance(spec.get("client"), dict) \
            and spec["worker"].get("tieredStore") and spec["client"].get("tieredStore"):
        found.append(("spec.client.tieredStore", "ignored: spec.worker.tieredStore is used when both are set"))
    return found


# -- operations ---------------------------------------------------------------------------------------
def _operation_errors(kind: str, document: dict[str, Any], spec: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    policy = spec.get("policy") or "Once"
    if policy == "Cron":
        schedule = spec.get("schedule")
        if not isinstance(schedule, str) or not schedule.strip():
            problems.append(("spec.schedule", "required when policy is Cron: a cron expression such as "
                             "'0 * * * *', '@hourly' or '@every 30s'"))
        else:
            problems += _schedule_errors(schedule)
    elif policy == "OnEvent" and kind != "DataLoad":
        problems.append(("spec.policy", f"OnEvent is supported for DataLoad only (it loads what changes at the "
                         f"source); a {kind} takes Once or Cron"))
    problems += _run_after_errors(kind, document, spec.get("runAfter"))
    ttl = spec.get("ttlSecondsAfterFinished")
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl < 0:
        problems.append(("spec.ttlSecondsAfterFinished", f"{ttl} is less than the minimum of 0"))
    if kind in ("DataLoad", "DataClean"):
        for index, target in enumerate(spec.get("target") or []):
            if isinstance(target, dict) and not str(target.get("path") or "").strip():
                problems.append((f"spec.target[{index}].path", "required: a path or glob in the dataset, e.g. "
                                 "/train or /train/*.parquet"))
    if kind == "DataLoad":
        problems += _option_errors(spec.get("options"))
    elif kind == "DataMigrate":
        problems += _migrate_errors(spec)
    elif kind == "DataProcess":
        problems += _process_errors(spec)
    return problems


def _schedule_errors(schedule: str) -> list[Problem]:
    from datetime import datetime, timezone

    from shipyard.data.operations.cron import CronError, next_fire

    try:
        next_fire(schedule, datetime.now(timezone.utc))
    except CronError as exc:
        return [("spec.schedule", str(exc))]
    return []


def _run_after_errors(kind: str, document: dict[str, Any], run_after: Any) -> list[Problem]:
    if not isinstance(run_after, dict):
        return []
    problems: list[Problem] = []
    other = run_after.get("kind")
    if isinstance(other, str) and other not in OPERATION_KINDS:
        problems.append(("spec.runAfter.kind", f"'{other}' is not an operation Shipyard runs; use one of "
                         f"{', '.join(OPERATION_KINDS)}"))
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    same = (other == kind and run_after.get("name") == metadata.get("name")
            and (run_after.get("namespace") or metadata.get("namespace") or "default")
            == (metadata.get("namespace") or "default"))
    if same:
        problems.append(("spec.runAfter.name", "an operation cannot run after itself"))
    return problems


def _option_errors(options: Any) -> list[Problem]:
    if not isinstance(options, dict) or "parallelism" not in options:
        return []
    value = options["parallelism"]
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        return [("spec.options.parallelism", f"{value!r} is not {LOAD_OPTIONS['parallelism']}")]
    return []


def _migrate_errors(spec: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    datasets = 0
    for side in ("from", "to"):
        value = spec.get(side)
        if not isinstance(value, dict):
            continue
        forms = [key for key in ("dataset", "externalStorage") if value.get(key) is not None]
        if len(forms) != 1:
            problems.append((f"spec.{side}", "set exactly one of dataset or externalStorage" +
                             (f"; found {' and '.join(forms)}" if forms else "")))
            continue
        if forms == ["dataset"]:
            datasets += 1
            continue
        storage = value["externalStorage"]
        uri = storage.get("uri") if isinstance(storage, dict) else None
        if isinstance(uri, str):
            problems += _external_uri_errors(f"spec.{side}.externalStorage.uri", uri)
        for index, option in enumerate((storage or {}).get("encryptOptions") or []):
            ref = ((option or {}).get("valueFrom") or {}).get("secretKeyRef") if isinstance(option, dict) else None
            if not isinstance(ref, dict):
                problems.append((f"spec.{side}.externalStorage.encryptOptions[{index}].valueFrom.secretKeyRef",
                                 "required: the secret (name, key) that holds this option's value"))
    if datasets == 0 and not problems and isinstance(spec.get("from"), dict) and isinstance(spec.get("to"), dict):
        problems.append(("spec", "a DataMigrate copies between a Dataset and external storage: one of spec.from or "
                         "spec.to must be a dataset"))
    parallelism = spec.get("parallelism")
    if isinstance(parallelism, int) and not isinstance(parallelism, bool) and parallelism < 1:
        problems.append(("spec.parallelism", f"{parallelism} is less than the minimum of 1"))
    options = spec.get("options") if isinstance(spec.get("options"), dict) else {}
    checksum = options.get("checksum")
    if checksum is not None and str(checksum).lower() not in ("true", "false"):
        problems.append(("spec.options.checksum", f"{checksum!r} is not {MIGRATE_OPTIONS['checksum']}"))
    return problems


def _external_uri_errors(path: str, uri: str) -> list[Problem]:
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1).lower() == "dataset":
        return [(path, "a dataset is not external storage; use from.dataset / to.dataset")]
    if scheme and scheme.group(1).lower() == "pvc":
        return [(path, "pvc:// needs Kubernetes; use a local folder, file://, s3://, gs:// or another fsspec URL")]
    if not scheme:
        local = uri[len("local://"):] if uri.startswith("local://") else uri
        if not local.startswith("/"):
            return [(path, f"'{uri}' is a relative path; use an absolute path or a URL such as s3://bucket/prefix")]
    return []


def _process_errors(spec: dict[str, Any]) -> list[Problem]:
    processor = spec.get("processor")
    if not isinstance(processor, dict):
        return []
    problems: list[Problem] = []
    if processor.get("job") is not None:
        problems.append(("spec.processor.job", "pod specs need Kubernetes; use processor.script (command "
                         f"{' / '.join(COMMANDS)} and source)"))
    script = processor.get("script")
    if script is None:
        if processor.get("job") is None:
            problems.append(("spec.processor.script", "required field is missing: command (e.g. [python]) and "
                             "source (the script, or SQL with command [sql])"))
        return problems
    if not isinstance(script, dict):
        return problems
    command = script.get("command")
    if command is None:
        problems.append(("spec.processor.script.command", "required field is missing: [python], [bash], [sh] or "
                         "[sql] (the interpreter of source)"))
    elif isinstance(command, list) and (not command or command[0] not in COMMANDS):
        first = repr(command[0]) if command else "an empty list"
        problems.append(("spec.processor.script.command" + ("[0]" if command else ""), f"{first} is not supported; "
                         f"the first item is one of {', '.join(COMMANDS)} (sql runs source with DuckDB)"))
    for index, item in enumerate(script.get("env") or []):
        if isinstance(item, dict) and item.get("valueFrom") is not None:
            problems.append((f"spec.processor.script.env[{index}].valueFrom", "not supported locally (there are no "
                             "secrets or config maps); set value"))
    return problems


def _operation_warnings(kind: str, document: dict[str, Any], spec: dict[str, Any]) -> list[Problem]:
    found: list[Problem] = []
    for key in ("affinity", "nodeSelector", "tolerations", "resources", "schedulerName", "podMetadata", "image",
                "imageTag", "imagePullPolicy", "runtimeType", "parallelOptions"):
        if spec.get(key):
            found.append((f"spec.{key}", NOT_LOCAL))
    run_after = spec.get("runAfter")
    if isinstance(run_after, dict) and run_after.get("affinityStrategy"):
        found.append(("spec.runAfter.affinityStrategy", "not honoured: every step runs on this machine"))
    policy = spec.get("policy") or "Once"
    if spec.get("schedule") and policy != "Cron":
        found.append(("spec.schedule", f"ignored: policy is {policy}, not Cron"))
    annotations = _annotations(document)
    if kind == "DataLoad":
        for index, target in enumerate(spec.get("target") or []):
            if isinstance(target, dict) and target.get("replicas") not in (None, 1):
                found.append((f"spec.target[{index}].replicas", "not honoured: one machine keeps one copy"))
        found += _unknown_options(spec.get("options"), LOAD_OPTIONS)
        if POLL_INTERVAL in annotations and policy != "OnEvent":
            found.append((f"metadata.annotations[{POLL_INTERVAL}]", f"ignored: policy is {policy}, not OnEvent"))
    elif kind == "DataMigrate":
        if spec.get("block"):
            found.append(("spec.block", "not honoured: the dataset stays readable while it migrates"))
        found += _unknown_options(spec.get("options"), MIGRATE_OPTIONS)
    elif kind == "DataProcess":
        processor = spec.get("processor") if isinstance(spec.get("processor"), dict) else {}
        for key in ("podMetadata", "serviceAccountName"):
            if processor.get(key):
                found.append((f"spec.processor.{key}", NOT_LOCAL))
        script = processor.get("script") if isinstance(processor.get("script"), dict) else {}
        for key in ("image", "imageTag", "imagePullPolicy", "resources", "volumes", "volumeMounts"):
            if script.get(key):
                found.append((f"spec.processor.script.{key}", "not honoured locally: the script runs as a process "
                              "of this machine's Python environment"))
        if script.get("restartPolicy") == "OnFailure":
            found.append(("spec.processor.script.restartPolicy", "OnFailure is not honoured: a failed run fails the "
                          "DataProcess (apply it again to retry)"))
    return found


def _unknown_options(options: Any, known: dict[str, str]) -> list[Problem]:
    if not isinstance(options, dict):
        return []
    found = []
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; Shipyard reads {', '.join(known)}"
            found.append((f"spec.options.{key}", f"not honoured{hint}"))
    return found
