"""Talk to the control plane's API: the client behind ``shipyard apply/get/...`` and ``shipyard.Client``.

    >>> client = ControlClient()                     # finds the plane through $SHIPYARD_HOME/plane.json
    >>> client.apply(path="sklearn-iris.yaml")
    [{'kind': 'InferenceService', 'name': 'sklearn-iris', 'action': 'created', ...}]
    >>> client.wait_ready("isvc", "sklearn-iris")["status"]["url"]

Datasets and their operations (Fluid's objects; the names of Fluid's Python SDK are aliases):

    >>> client.create_dataset("imagenet", "s3://bucket/imagenet", cache={"quota": "20Gi"})
    >>> client.load("imagenet", ["/train"])                 # a DataLoad, waited for: its status
    >>> client.dataset_status("imagenet")["cacheStates"]["cachedPercentage"]
    '100.0%'

Batch predictions (a BatchJob, run by the plane; ``shipyard.batch.run_batch`` does the same in-process):

    >>> client.batch("./model.joblib", "dataset://customers/2024.parquet", "./scores.parquet", carry=["id"])
    {'phase': 'Succeeded', 'rowsDone': 100000, 'errors': 0, 'rowsPerSecond': 51234.5, ...}
"""

from __future__ import annotations

import copy
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shipyard.control.plane import running_plane
from shipyard.control.resources import (
    DEFAULT_NAMESPACE,
    FLUID_API,
    SHIPYARD_BATCH_API,
    SHIPYARD_DATA_API,
    kind_of,
    parse_documents,
)
from shipyard.control.validation import resolve_storage_paths

START_HINT = "start it with: shipyard up --detach"


class PlaneNotRunning(RuntimeError):
    """No control plane answers (none holds $SHIPYARD_HOME's plane lock, or nothing answers on /healthz)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"the control plane is not running{f' ({detail})' if detail else ''}; {START_HINT}")


class ControlError(Exception):
    """The API refused a request; ``errors`` lists per-document field errors of a refused apply."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


class NotReady(TimeoutError):
    """A resource did not become ready in time; the message carries its conditions."""


class OperationFailed(RuntimeError):
    """A data operation (or a Dataset) failed; the message is its status's reason and message."""


class BatchFailed(OperationFailed):
    """A BatchJob failed; ``status`` is its status (message, rowsDone, errors, errorsFile...)."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


def plane_url(home: Path | None = None) -> str:
    """The API URL of the running control plane; PlaneNotRunning says how to start one."""
    info = running_plane(home)
    if info is None:
        raise PlaneNotRunning()
    url = info.get("api_url")
    if not url:
        raise PlaneNotRunning("it is starting or its plane.json has no api_url")
    try:
        ok = httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False).status_code == 200
    except httpx.HTTPError as exc:
        raise PlaneNotRunning(f"nothing answers at {url}: {type(exc).__name__}") from None
    if not ok:
        raise PlaneNotRunning(f"{url}/healthz does not answer 200")
    return str(url)


def read_documents(source: str | Path, stdin: Any = None) -> list[dict[str, Any]]:
    """The documents of a YAML/JSON file (``-`` reads stdin), relative storageUri paths made absolute
    against the file's folder (stdin: the current folder). DocumentError/OSError name the file."""
    if str(source) == "-":
        text, base, name = (stdin or sys.stdin).read(), Path.cwd(), "stdin"
    else:
        path = Path(source).expanduser()
        text, base, name = path.read_text(), path.resolve().parent, str(source)
    return [resolve_storage_paths(document, base) for document in parse_documents(text, name)]


def plane_token(url: str, home: Path | None = None) -> str | None:
    """The token to send to the plane at ``url``: the one in plane.json when that is the local plane's
    address, else ``$SHIPYARD_TOKEN`` (None: send none; a plane on loopback needs none)."""
    from shipyard.control.auth import ENV

    info = running_plane(home) or {}
    if info.get("token") and str(info.get("api_url", "")).rstrip("/") == url.rstrip("/"):
        return str(info["token"])
    return os.environ.get(ENV) or None


class ControlClient:
    """The control plane's API as methods. ``url`` defaults to the plane found in ``$SHIPYARD_HOME``;
    ``token`` (for a plane beyond loopback) to plane.json's, else ``$SHIPYARD_TOKEN``."""

    def __init__(self, url: str | None = None, timeout: float = 30.0, home: Path | None = None,
                 token: str | None = None) -> None:
        self.url = (url or plane_url(home)).rstrip("/")
        self.timeout = timeout
        token = token or plane_token(self.url, home)
        headers = {"authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resources ------------------------------------------------------------------------------
    def apply(self, documents: list[dict[str, Any]] | dict[str, Any] | None = None, *, path: str | Path | None = None,
              text: str | None = None, dry_run: bool = False, namespace: str | None = None) -> list[dict[str, Any]]:
        """Apply documents, a file or a YAML text, all or none: ``[{kind, namespace, name, action, warnings}]``.

        ``namespace`` fills in documents without one (and refuses documents that name another).
        Raises ControlError with ``errors`` (document index, field path, message) if any is invalid.
        """
        if sum(source is not None for source in (documents, path, text)) != 1:
            raise ValueError("give exactly one of documents, path or text")
        if path is not None:
            items = read_documents(path)
        elif text is not None:
            items = [resolve_storage_paths(doc, Path.cwd()) for doc in parse_documents(text)]
        else:  # copies: the caller's documents stay as they were
            items = [resolve_storage_paths(copy.deepcopy(doc), Path.cwd()) for doc in
                     (documents if isinstance(documents, list) else [documents])]
        if namespace is not None:
            items = [with_namespace(document, namespace) for document in items]
        return self._call("POST", "/apis/apply", {"documents": items, "dry_run": dry_run})["results"]

    def get(self, kind: str, name: str | None = None,
            namespace: str | None = DEFAULT_NAMESPACE) -> dict[str, Any] | list[dict[str, Any]]:
        """One resource (with status), or every resource of the kind in ``namespace`` (None: all namespaces)."""
        plural = kind_of(kind).plural
        if name is None:
            suffix = f"/{namespace}" if namespace else ""
            return self._call("GET", f"/apis/{plural}{suffix}")["items"]
        return self._call("GET", f"/apis/{plural}/{namespace or DEFAULT_NAMESPACE}/{name}")

    def describe(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """The resource with its revisions, replicas, routes and recent events."""
        return self._call("GET", f"/apis/{kind_of(kind).plural}/{namespace}/{name}/describe")

    def delete(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE, wait: bool = False,
               timeout: float = 60.0) -> None:
        """Delete a resource; with ``wait``, return once the controller has removed it and its replicas."""
        plural = kind_of(kind).plural
        self._call("DELETE", f"/apis/{plural}/{namespace}/{name}")
        deadline = time.monotonic() + timeout
        while wait:
            try:
                self._call("GET", f"/apis/{plural}/{namespace}/{name}")
            except ControlError as exc:
                if exc.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} is still being deleted after {timeout:g}s")
            time.sleep(0.2)

    def rollout(self, name: str, action: str, revision: str | None = None,
                namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """``promote``, ``rollback`` or ``pin`` (with ``revision``) an InferenceService: ``{"message", ...}``."""
        return self._call("POST", f"/apis/inferenceservices/{namespace}/{name}/rollout",
                          {"action": action, "revision": revision})

    def wait_ready(self, kind: str, name: str, timeout: float = 120.0, namespace: str = DEFAULT_NAMESPACE,
                   interval: float = 0.25) -> dict[str, Any]:
        """Poll until the resource's current generation is Ready; NotReady lists its conditions on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            resource = self._call("GET", f"/apis/{kind_of(kind).plural}/{namespace}/{name}")
            if is_ready(resource):
                return resource
            if time.monotonic() > deadline:
                raise NotReady(f"{name} is not ready after {timeout:g}s: {conditions_summary(resource)}")
            time.sleep(interval)

    # -- datasets and data operations -------------------------------------------------------------
    def create_dataset(self, name: str, mount_point: str, *, mount_name: str | None = None, path: str | None = None,
                       options: dict[str, str] | None = None, read_only: bool = False,
                       cache: dict[str, Any] | None = None, namespace: str = DEFAULT_NAMESPACE, wait: bool = True,
                       timeout: float = 120.0) -> dict[str, Any]:
        """Apply a Dataset with one mount (and, with ``cache``, its CacheRuntime); with ``wait``, return
        it once Bound (OperationFailed when its source cannot be reached).

        ``mount_point`` is any fsspec URL or an absolute local folder; ``options`` its storage options.
        ``cache``: ``{"quota": "20Gi", "medium": "SSD"|"MEM", "path": folder}`` for one level, or
        ``{"levels": [{"medium", "quota", "path", "high", "low"}, ...]}``; plus ``evictionPolicy``
        (``scan-resistant``/``lru``), ``blockSize`` (``4Mi``), ``metadataTTL`` (``5m``), ``verifyReads``.
        """
        mount: dict[str, Any] = {"mountPoint": mount_point}
        for key, value in (("name", mount_name), ("path", path), ("options", options)):
            if value is not None:
                mount[key] = value
        if read_only:
            mount["readOnly"] = True
        documents = [{"apiVersion": FLUID_API, "kind": "Dataset", "metadata": {"name": name, "namespace": namespace},
                      "spec": {"mounts": [mount]}}]
        if cache is not None:
            documents.append(cache_runtime(name, namespace, cache))
        self.apply(documents)
        if not wait:
            return self.get("dataset", name, namespace)  # type: ignore[return-value]
        return self.wait_dataset(name, namespace=namespace, timeout=timeout)

    def wait_dataset(self, name: str, namespace: str = DEFAULT_NAMESPACE, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the Dataset is Bound; OperationFailed says why when it Failed, NotReady on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            dataset = self._call("GET", f"/apis/datasets/{namespace}/{name}")
            status = dataset.get("status") or {}
            if status.get("phase") == "Bound":
                return dataset
            if status.get("phase") == "Failed":
                raise OperationFailed(f"dataset {name}: {conditions_summary(dataset)}")
            if time.monotonic() > deadline:
                raise NotReady(f"dataset {name} is not Bound after {timeout:g}s: {conditions_summary(dataset)}")
            time.sleep(0.2)

    def dataset_status(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """A Dataset's status: phase, ufsTotal, fileNum, cacheStates, conditions, operationRef."""
        return self._call("GET", f"/apis/datasets/{namespace}/{name}").get("status") or {}

    def load(self, dataset: str, paths: list[str] | str | None = None, *, name: str | None = None,
             policy: str = "Once", schedule: str | None = None, parallelism: int | None = None,
             load_metadata: bool = False, run_after: tuple[str, str] | None = None,
             namespace: str = DEFAULT_NAMESPACE, wait: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """Apply a DataLoad of ``paths`` (paths or globs; None: the whole dataset) and, with ``wait``,
        return it once its run completed (OperationFailed with the reason otherwise).

        ``policy``: Once, Cron (with ``schedule``: "0 * * * *", "@every 30s") or OnEvent (reloads what
        changes at the source). ``run_after``: ``("DataMigrate", "name")`` runs it after that operation.
        """
        spec: dict[str, Any] = {"dataset": {"name": dataset}, "policy": policy}
        if paths:
            spec["target"] = [{"path": item} for item in ([paths] if isinstance(paths, str) else paths)]
        if parallelism is not None:
            spec["options"] = {"parallelism": str(parallelism)}
        if load_metadata:
            spec["loadMetadata"] = True
        return self._operation("DataLoad", name or _op_name(dataset, "load"), spec, namespace, schedule, run_after,
                               wait, timeout)

    preload = load  # Fluid's Python SDK name

    def migrate(self, dataset: str, uri: str, *, direction: str = "from", path: str = "/", name: str | None = None,
                checksum: bool = True, exclude: list[str] | None = None, parallelism: int | None = None,
                policy: str = "Once", schedule: str | None = None, run_after: tuple[str, str] | None = None,
                namespace: str = DEFAULT_NAMESPACE, wait: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """Apply a DataMigrate between ``path`` of ``dataset`` and external storage ``uri`` (any fsspec
        URL or absolute folder): ``direction="from"`` copies from ``uri`` into the dataset, ``"to"`` the
        other way. Files already equal at the target are left alone; ``checksum`` verifies each copy."""
        if direction not in ("from", "to"):
            raise ValueError(f"direction: expected 'from' (into the dataset) or 'to' (out of it), got {direction!r}")
        inside = {"dataset": {"name": dataset, "namespace": namespace, "path": path}}
        outside = {"externalStorage": {"uri": uri}}
        spec: dict[str, Any] = {"from": outside, "to": inside} if direction == "from" else {"from": inside,
                                                                                            "to": outside}
        options = {"checksum": "true" if checksum else "false"}
        if exclude:
            options["exclude"] = ",".join(exclude)
        spec.update(policy=policy, options=options)
        if parallelism is not None:
            spec["parallelism"] = parallelism
        return self._operation("DataMigrate", name or _op_name(dataset, "migrate"), spec, namespace, schedule,
                               run_after, wait, timeout)

    def process(self, dataset: str, processor: Any, output: str | None = None, *, sub_path: str = "/",
                env: dict[str, str] | None = None, name: str | None = None, policy: str = "Once",
                schedule: str | None = None, run_after: tuple[str, str] | None = None,
                namespace: str = DEFAULT_NAMESPACE, wait: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """Apply a DataProcess over ``sub_path`` of ``dataset``. ``processor``: a function
        ``fn(dataset_path, output_path)`` (shipped by its source, as make_processor_from_func does), a
        Fluid ``processor.script`` dict (``{"command": ["python"|"bash"|"sh"|"sql"], "source": ...}``) or
        ``{"script": {...}}``. ``output``: ``dataset://NAME[/path]`` (or a Dataset's name) that receives
        the files written to $OUTPUT_PATH. A re-run with unchanged inputs and code is skipped."""
        if callable(processor):
            from shipyard.data.operations.process import make_processor_from_func

            script = make_processor_from_func(processor)
        elif isinstance(processor, dict):
            script = copy.deepcopy(processor.get("script", processor))
        else:
            raise ValueError(f"processor: expected a function or a processor.script dict, got {processor!r}")
        if env:
            script["env"] = [*script.get("env", []), *({"name": k, "value": v} for k, v in env.items())]
        spec = {"dataset": {"name": dataset, "namespace": namespace, "mountPath": "/data", "subPath": sub_path},
                "processor": {"script": script}, "policy": policy}
        annotations = None
        if output is not None:
            annotations = {"data.shipyard.io/output": output if output.startswith("dataset://")
                           else f"dataset://{output}"}
        return self._operation("DataProcess", name or _op_name(dataset, "process"), spec, namespace, schedule,
                               run_after, wait, timeout, annotations)

    def clean(self, dataset: str, paths: list[str] | str | None = None, *, name: str | None = None,
              policy: str = "Once", schedule: str | None = None, run_after: tuple[str, str] | None = None,
              namespace: str = DEFAULT_NAMESPACE, wait: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """Apply a DataClean evicting ``paths`` (paths or globs; None: everything) from the dataset's
        cache; the source is not touched."""
        spec: dict[str, Any] = {"dataset": {"name": dataset}, "policy": policy}
        if paths:
            spec["target"] = [{"path": item} for item in ([paths] if isinstance(paths, str) else paths)]
        return self._operation("DataClean", name or _op_name(dataset, "clean"), spec, namespace, schedule,
                               run_after, wait, timeout)

    clean_up = clean  # Fluid's Python SDK name

    def wait_operation(self, kind: str, name: str, timeout: float = 600.0,
                       namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """Poll until the operation's current spec has run: Complete returns it, Failed raises
        OperationFailed with the reason and message, a timeout raises NotReady with its conditions."""
        plural = kind_of(kind).plural
        deadline = time.monotonic() + timeout
        while True:
            operation = self._call("GET", f"/apis/{plural}/{namespace}/{name}")
            status = operation.get("status") or {}
            observed = (status.get("shipyard") or {}).get("observedGeneration")
            current = observed == (operation.get("metadata") or {}).get("generation")
            if current and status.get("phase") == "Complete":
                return operation
            if current and status.get("phase") == "Failed":
                raise OperationFailed(f"{kind_of(kind).kind} {name} failed: {conditions_summary(operation)}")
            if time.monotonic() > deadline:
                raise NotReady(f"{kind_of(kind).kind} {name} is {status.get('phase') or 'not started'} after "
                               f"{timeout:g}s: {conditions_summary(operation)}")
            time.sleep(0.2)

    def _operation(self, kind: str, name: str, spec: dict[str, Any], namespace: str, schedule: str | None,
                   run_after: tuple[str, str] | None, wait: bool, timeout: float,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
        if schedule is not None:
            spec["schedule"] = schedule
        if run_after is not None:
            spec["runAfter"] = {"kind": run_after[0], "name": run_after[1]}
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            metadata["annotations"] = annotations
        api = SHIPYARD_DATA_API if kind == "DataClean" else FLUID_API
        self.apply([{"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}])
        if not wait:
            return self.get(kind, name, namespace)  # type: ignore[return-value]
        return self.wait_operation(kind, name, timeout, namespace)

    # -- batch predictions ------------------------------------------------------------------------
    def batch(self, model: str | Path, input: str | Path, output: str | Path, *, name: str | None = None,
              namespace: str = DEFAULT_NAMESPACE, wait: bool = True, timeout: float = 3600.0,
              **options: Any) -> dict[str, Any]:
        """Score ``input`` with ``model`` into ``output`` as a BatchJob run by the control plane; with ``wait``,
        return its status once Succeeded (BatchFailed with the status when it Failed, NotReady on timeout: the
        job keeps running). Without ``wait``, its status so far (follow it with ``wait_batch(name)``).

        ``model``: a package folder or an artifact (local path), an InferenceService's name or an http(s) V2
        server URL. ``input``/``output``: local paths, fsspec URLs or ``dataset://NAME/path`` (Parquet, CSV,
        JSON Lines; an output ending in ``/`` is a folder of parts). Relative paths are taken from the current
        folder. ``options`` are BatchSpec's (``columns``, ``carry``, ``batch_size``, ``workers``, ``limit``,
        ``errors``, ``max_errors``, ``input_format``, ``output_format``, ``model_name``, ``concurrency``,
        ``request_rows``, ``retries``, ``timeout_s``, ``output_columns``) or the spec's camelCase names.
        ``name`` defaults to ``<model>-batch-<6 hex>``.
        """
        from shipyard.control.batch_validation import spec_from_options

        spec = spec_from_options(str(model), str(input), str(output), options)
        name = name or _batch_name(str(options.get("model_name") or options.get("modelName") or model))
        self.apply([{"apiVersion": SHIPYARD_BATCH_API, "kind": "BatchJob",
                     "metadata": {"name": name, "namespace": namespace}, "spec": spec}])
        if not wait:
            return self.get("batchjob", name, namespace).get("status") or {}  # type: ignore[union-attr]
        return self.wait_batch(name, namespace=namespace, timeout=timeout).get("status") or {}

    def wait_batch(self, name: str, namespace: str = DEFAULT_NAMESPACE, timeout: float = 3600.0,
                   interval: float = 0.25) -> dict[str, Any]:
        """Poll until the BatchJob's current spec has run: Succeeded returns the job, Failed raises BatchFailed
        (its message and status), a timeout NotReady with its progress."""
        deadline = time.monotonic() + timeout
        while True:
            job = self._call("GET", f"/apis/batchjobs/{namespace}/{name}")
            status = job.get("status") or {}
            current = status.get("observedGeneration") == (job.get("metadata") or {}).get("generation")
            if current and status.get("phase") == "Succeeded":
                return job
            if current and status.get("phase") == "Failed":
                raise BatchFailed(f"BatchJob {name} failed: {status.get('message') or conditions_summary(job)}",
                                  status)
            if time.monotonic() > deadline:
                raise NotReady(f"BatchJob {name} is {status.get('phase') or 'not started'} after {timeout:g}s "
                               f"({status.get('rowsDone', 0)} rows done): {conditions_summary(job)}")
            time.sleep(interval)

    # -- logs -----------------------------------------------------------------------------------
    def logs(self, name: str, namespace: str = DEFAULT_NAMESPACE, revision: str | None = None, tail: int = 200,
             kind: str = "isvc") -> str:
        """The last ``tail`` lines of each replica's log (lines prefixed ``[replica]`` when there are several)."""
        return self._logs(kind, name, namespace, {"revision": revision, "tail": tail})["text"]

    def follow_logs(self, name: str, namespace: str = DEFAULT_NAMESPACE, revision: str | None = None,
                    tail: int = 200, kind: str = "isvc", wait_s: float = 10.0) -> Iterator[str]:
        """The last ``tail`` lines, then new lines as they are written (until the caller stops iterating)."""
        chunk = self._logs(kind, name, namespace, {"revision": revision, "tail": tail})
        while True:
            if chunk["text"]:
                yield chunk["text"]
            chunk = self._logs(kind, name, namespace, {"revision": revision, "cursor": chunk["cursor"],
                                                        "wait_s": wait_s})

    def log_chunk(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE, *, step: str | None = None,
                  tail: int | None = None, cursor: str | None = None, wait_s: float = 0.0) -> dict[str, Any]:
        """One read of a log: ``{"text", "cursor"}``. Without ``cursor``, the last ``tail`` lines;
        with it, what was written since (waiting up to ``wait_s`` for something new). ``step``
        names a TrainJob step (``node-0``, ``dataset-initializer``...) or an isvc revision."""
        body: dict[str, Any] = {"step": step} if cursor is None else {"step": step, "cursor": cursor, "wait_s": wait_s}
        if cursor is None and tail is not None:
            body["tail"] = tail
        return self._logs(kind, name, namespace, body)

    def _logs(self, kind: str, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/apis/{kind_of(kind).plural}/{namespace}/{name}/logs", body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        wait_s = (body or {}).get("wait_s", 0)  # a long poll answers after up to wait_s
        try:
            response = self._http.request(method, path, json=body, timeout=self.timeout + wait_s)
        except httpx.TransportError as exc:
            raise PlaneNotRunning(f"cannot reach {self.url}: {type(exc).__name__}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text}
        if response.status_code >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise ControlError(response.status_code, message or f"HTTP {response.status_code}",
                               payload.get("errors") if isinstance(payload, dict) else None)
        return payload


def cache_runtime(name: str, namespace: str, cache: dict[str, Any]) -> dict[str, Any]:
    """A CacheRuntime document (Fluid's generic runtime) from the SDK's ``cache`` shorthand."""
    known = {"levels", "quota", "medium", "path", "high", "low", "evictionPolicy", "blockSize", "metadataTTL",
             "verifyReads"}
    unknown = sorted(set(cache) - known)
    if unknown:
        raise ValueError(f"cache: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    levels = cache.get("levels") or [{key: cache[key] for key in ("quota", "medium", "path", "high", "low")
                                      if key in cache}]
    tiered = []
    for index, level in enumerate(levels):
        medium = str(level.get("medium", "SSD")).upper()
        quota = level.get("quota", "10Gi")
        if medium == "MEM":
            entry: dict[str, Any] = {"processMemory": {"quota": quota}}
        elif medium in ("SSD", "HDD"):
            entry = {"hostPath": {"paths": [str(level["path"])], "quotas": [quota]}} if level.get("path") else \
                {"emptyDir": {"quota": quota}}
        else:
            raise ValueError(f"cache.levels[{index}].medium: expected MEM, SSD or HDD, got {level.get('medium')!r}")
        for mark in ("high", "low"):
            if level.get(mark) is not None:
                entry[mark] = str(level[mark])
        tiered.append(entry)
    options = {key: str(cache[key]).lower() if isinstance(cache[key], bool) else str(cache[key])
               for key in ("evictionPolicy", "blockSize", "metadataTTL", "verifyReads") if key in cache}
    spec: dict[str, Any] = {"runtimeClassName": "shipyard", "worker": {"tieredStore": {"levels": tiered}}}
    if options:
        spec["options"] = options
    return {"apiVersion": FLUID_API, "kind": "CacheRuntime", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def _op_name(dataset: str, verb: str) -> str:
    """A fresh operation name: ``<dataset>-<verb>-<6 hex>`` (kept within 63 characters)."""
    return f"{dataset[:63 - len(verb) - 8]}-{verb}-{uuid.uuid4().hex[:6]}"


def _batch_name(model: str) -> str:
    """``<model>-batch-<6 hex>``: the model's file, folder or service name as a resource name."""
    if "://" in model:
        model = "endpoint"
    stem = model.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0].lower()
    slug = "".join(char if char.isalnum() and char.isascii() else "-" for char in stem).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    if not slug or not slug[0].isalpha():
        slug = f"m-{slug}".rstrip("-")
    return f"{slug[:44].rstrip('-')}-batch-{uuid.uuid4().hex[:6]}"


def with_namespace(document: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The document in ``namespace``; ValueError when it names another one (as kubectl refuses)."""
    metadata = document.setdefault("metadata", {}) if isinstance(document, dict) else None
    if not isinstance(metadata, dict):
        return document
    named = metadata.get("namespace")
    if named not in (None, namespace):
        raise ValueError(f"{metadata.get('name')!r} names namespace '{named}', which does not match "
                         f"--namespace '{namespace}'")
    metadata["namespace"] = namespace
    return document


def condition(resource: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for entry in (resource.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def is_ready(resource: dict[str, Any]) -> bool:
    """Ready=True for the resource's current generation (a Ready left from the previous spec does not count)."""
    ready = condition(resource, "Ready")
    observed = (resource.get("status") or {}).get("observedGeneration")
    generation = (resource.get("metadata") or {}).get("generation") or 0
    return bool(ready and ready.get("status") == "True" and (observed is None or observed >= generation))


def conditions_summary(resource: dict[str, Any]) -> str:
    """'PredictorReady=False (RevisionFailed: ...); Ready=False (...)' or what is missing."""
    entries = (resource.get("status") or {}).get("conditions") or []
    if not entries:
        return "it has no status yet (is the control plane's controller running?)"
    parts = []
    for entry in entries:
        why = ": ".join(part for part in (entry.get("reason"), entry.get("message")) if part)
        parts.append(f"{entry.get('type')}={entry.get('status')}" + (f" ({why})" if why else ""))
    return "; ".join(parts)
