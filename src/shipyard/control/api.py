"""The control plane's HTTP API: JSON on 127.0.0.1:8400, served by server/http.py's HttpServer.

    GET    /healthz                                        {"ok": true, "version": ...}
    POST   /apis/apply                                     {"documents": [...], "dry_run": false}
    GET    /apis/{kind}                                    every namespace: {"items": [...]}
    GET    /apis/{kind}/{namespace}                        one namespace: {"items": [...]}
    GET    /apis/{kind}/{namespace}/{name}                 the resource with its status
    GET    /apis/{kind}/{namespace}/{name}/describe        + revisions, replicas, routes, events
    DELETE /apis/{kind}/{namespace}/{name}                 202: the controller stops replicas, then removes it
    GET    /apis/{kind}/{namespace}/{name}/logs            text: the last 200 lines of each live replica
    POST   /apis/{kind}/{namespace}/{name}/logs            {"revision", "tail", "cursor", "wait_s"} -> {"text", "cursor"}
                                                           (a TrainJob: {"step": "node-0", ...} instead of revision;
                                                           a data operation or a BatchJob: its one log, every
                                                           run appended)
    POST   /apis/inferenceservices/{namespace}/{name}/rollout   {"action": "promote|rollback|pin", "revision"}
    GET    /, /ui/{file}, /apis/ui/...                     the dashboard, its files and live numbers (ui_api.py)

Beyond loopback every route but /healthz and the dashboard's files needs the plane's token (auth.py).

``{kind}`` takes any of the kind's names (``inferenceservices``, ``isvc``, ``trainjobs``, ``tj``...); a
cluster-scoped kind (ClusterTrainingRuntime) ignores ``{namespace}`` (write ``-``), and its listing
includes Shipyard's built-in runtimes. A TrainJob's ``runtimeRef`` must name a runtime that exists
(or is applied with it); the runtime is copied into the job's ``status.resolvedRuntime`` at submit. Likewise a
``dataset://NAME`` storageUri (a TrainJob's initializer, an InferenceService's model, a BatchJob's input or output)
must name a Dataset of the resource's namespace that exists or is applied with it. Every error is
``{"error": message}``; an apply with invalid documents answers 400 with ``errors`` (document
index, field path, message) and applies none of them.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shipyard import __version__
from shipyard.control import logs
from shipyard.control import data_validation, train_validation
from shipyard.control.components import COMPONENTS, component_key, split_key
from shipyard.control.resources import (
    BATCH_JOB,
    CACHE_RUNTIME,
    CLUSTER_TRAINING_RUNTIME,
    DATA_OPERATIONS,
    DATASET,
    INFERENCE_SERVICE,
    TRAIN_JOB,
    Kind,
    Resource,
    UnknownKind,
    kind_of,
)
from shipyard.control.auth import Auth
from shipyard.control.store import Store
from shipyard.control.ui_api import UiApi, UiError
from shipyard.control.validation import ValidatedResource, ValidationError, validate
from shipyard.home import shipyard_home
from shipyard.server.rest import Request, Response, error_response, json_response

log = logging.getLogger("shipyard.control")

#: ``rollout(store, namespace, name, action, revision) -> dict``; an exception with an int ``status`` sets the answer's.
Rollout = Callable[[Store, str, str, str, str | None], Any]
DEFAULT_TAIL = 200
MAX_WAIT_S = 30.0


class ApiError(Exception):
    """A request the API refuses; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _DryRun(Exception):
    """Raised inside the apply transaction to roll it back after computing the actions."""

    def __init__(self, actions: list[str]) -> None:
        super().__init__("dry run")
        self.actions = actions


class ControlApi:
    """The API app: ``await api(request) -> response``.

    ``rollout`` does promote/rollback/pin (the controller's logic); ``on_change`` is called after
    anything is applied, deleted or rolled out, so the controller can reconcile at once. ``ui`` serves
    the dashboard and its endpoints (ui_api.py; by default without live numbers), ``auth`` decides who
    may call (auth.py; by default loopback rules: no token).
    """

    def __init__(self, store: Store, rollout: Rollout | None = None, logs_dir: Path | None = None,
                 on_change: Callable[[], None] | None = None, ui: UiApi | None = None,
                 auth: Auth | None = None) -> None:
        self.store = store
        self.rollout_fn = rollout
        self.logs_dir = logs_dir or shipyard_home() / "logs"
        self.on_change = on_change or (lambda: None)
        self.ui = ui or UiApi(store, self.logs_dir.parent)
        self.auth = auth or Auth()

    async def __call__(self, request: Request) -> Response:
        try:
            refused = self.auth.check(request)
            if refused is not None:
                return refused
            handlers, args = self.route(request.path)
            handler = handlers.get("GET" if request.method == "HEAD" else request.method)
            if handler is None:
                raise ApiError(405, f"{request.method} is not allowed on {request.path}; use {', '.join(handlers)}")
            return await handler(request, *args)
        except (ApiError, UiError) as exc:
            return error_response(exc.status, exc.message)
        except Exception as exc:  # a bug of ours: say so, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    def route(self, path: str) -> tuple[dict[str, Callable[..., Any]], tuple[Any, ...]]:
        """Handlers by method for a path, and the arguments taken from it."""
        parts = path.strip("/").split("/")
        dashboard = self.ui.route(parts)  # /, /ui/..., /apis/ui/...
        if dashboard is not None:
            return dashboard
        match parts:
            case ["healthz"]:
                return {"GET": self.healthz}, ()
            case ["apis", "apply"]:
                return {"POST": self.apply}, ()
            case ["apis", kind]:
                return {"GET": self.list}, (_kind(kind), None)
            case ["apis", kind, namespace]:
                return {"GET": self.list}, (_kind(kind), _scope(_kind(kind), namespace))
            case ["apis", kind, namespace, name]:
                return {"GET": self.get, "DELETE": self.delete}, (_kind(kind), _scope(_kind(kind), namespace), name)
            case ["apis", kind, namespace, name, "describe"]:
                return {"GET": self.describe}, (_kind(kind), _scope(_kind(kind), namespace), name)
            case ["apis", kind, namespace, name, "logs"]:
                return {"GET": self.logs_text, "POST": self.logs}, (_kind(kind), namespace, name)
            case ["apis", kind, namespace, name, "rollout"]:
                return {"POST": self.rollout}, (_kind(kind), namespace, name)
        raise ApiError(404, f"no route for {path}; the API serves /healthz and /apis/...")

    async def healthz(self, request: Request) -> Response:
        return json_response({"ok": True, "version": __version__})

    # -- apply ----------------------------------------------------------------------------------
    async def apply(self, request: Request) -> Response:
        body = _json_body(request)
        documents = body.get("documents")
        if not isinstance(documents, list) or not documents:
            raise ApiError(400, '"documents" must be a non-empty list of resources')
        validated, errors, conflict = self._validate_all(documents)
        if errors:
            invalid = len({error["document"] for error in errors})
            return json_response({"error": f"{invalid} of {len(documents)} document{'s' * (len(documents) > 1)} "
                                  "cannot be applied; nothing was applied", "errors": errors},
                                 409 if conflict else 400)
        dry_run = bool(body.get("dry_run", False))
        for item in validated:  # snapshot the runtime into a new job's status (KEP-2599)
            if item.resource.kind == TRAIN_JOB.kind and self.store.get(*item.resource.key) is None:
                item.resource.status = {"resolvedRuntime": self._runtime_for(item.resource, validated)}
        try:
            with self.store.transaction() as db:
                actions = [self.store.apply(item.resource, db)[1] for item in validated]
                if dry_run:
                    raise _DryRun(actions)
        except _DryRun as rolled_back:
            actions = rolled_back.actions
        if not dry_run and any(action != "unchanged" for action in actions):
            self.on_change()
        results = [{"apiVersion": item.resource.api_version, "kind": item.resource.kind,
                    "namespace": item.resource.namespace, "name": item.resource.name, "action": action,
                    "warnings": [str(warning) for warning in item.warnings]}
                   for item, action in zip(validated, actions)]
        return json_response({"results": results, "dry_run": dry_run})

    def _validate_all(self, documents: list[Any]) -> tuple[list[ValidatedResource], list[dict[str, Any]], bool]:
        """Every document checked (none stops the others), duplicates and resources being deleted refused."""
        validated: list[ValidatedResource] = []
        errors: list[dict[str, Any]] = []
        conflict = False
        seen: dict[tuple[str, str, str], int] = {}
        for index, document in enumerate(documents):
            try:
                item = validate(document)
            except ValidationError as exc:
                errors += [{"document": index, "path": error.path, "message": error.message} for error in exc.errors]
                continue
            key = item.resource.key
            stored = self.store.get(*key)
            if key in seen:
                errors.append({"document": index, "path": "metadata.name", "message": f"'{key[2]}' in namespace "
                               f"'{key[1]}' is also document {seen[key]}; give each resource once"})
            elif stored is not None and stored.deleting:
                conflict = True
                errors.append({"document": index, "path": "metadata.name", "message": f"'{key[2]}' is being "
                               "deleted; wait until it is gone (shipyard delete --wait), then apply it again"})
            seen.setdefault(key, index)
            validated.append(item)
        applied = {item.resource.key for item in validated}
        for index, document in enumerate(documents):
            if not (isinstance(document, dict) and document.get("kind") == TRAIN_JOB.kind):
                continue
            problem = train_validation.runtime_ref_error(document, lambda kind, namespace, name: (
                (kind, namespace, name) in applied or self._stored_runtime(kind, namespace, name) is not None))
            if problem is not None:
                errors.append({"document": index, "path": problem[0], "message": problem[1]})
        for index, document in enumerate(documents):
            for path, namespace, name in _dataset_uris(document):
                stored = self.store.get(DATASET.kind, namespace, name)
                if (DATASET.kind, namespace, name) in applied or (stored is not None and not stored.deleting):
                    continue
                errors.append({"document": index, "path": path, "message": f"no Dataset '{name}' in namespace "
                               f"'{namespace}'; apply it first (or in the same apply); list them with: shipyard get "
                               f"datasets -n {namespace}"})
        return validated, errors, conflict

    def _stored_runtime(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A runtime document: stored, else (ClusterTrainingRuntime) built in."""
        from shipyard.control.controllers.trainjob import runtime_document

        return runtime_document(self.store, {"kind": kind, "name": name}, namespace)

    def _runtime_for(self, job: Resource, validated: list[ValidatedResource]) -> dict[str, Any] | None:
        """The runtime a new job resolves against: one applied with it, else a stored or built-in one."""
        ref = job.spec.get("runtimeRef") or {}
        kind = ref.get("kind") or CLUSTER_TRAINING_RUNTIME.kind
        namespace = job.namespace if kind != CLUSTER_TRAINING_RUNTIME.kind else ""
        for item in validated:
            if item.resource.key == (kind, namespace, ref.get("name")):
                return item.resource.to_dict()
        return self._stored_runtime(kind, namespace, str(ref.get("name")))

    # -- read -----------------------------------------------------------------------------------
    async def list(self, request: Request, kind: Kind, namespace: str | None) -> Response:
        items = [resource.to_dict() for resource in self.store.list(kind.kind, namespace)]
        if kind is CLUSTER_TRAINING_RUNTIME:
            stored = {item["metadata"]["name"] for item in items}
            items += [doc for doc in _builtin_runtimes() if doc["metadata"]["name"] not in stored]
            items.sort(key=lambda item: item["metadata"]["name"])
        return json_response({"items": items})

    async def get(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        if kind is CLUSTER_TRAINING_RUNTIME and self.store.get(kind.kind, "", name) is None:
            builtin = next((doc for doc in _builtin_runtimes() if doc["metadata"]["name"] == name), None)
            if builtin is not None:
                return json_response(builtin)
        return json_response(self._resource(kind, namespace, name).to_dict())

    async def describe(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        resource = self._resource(kind, namespace, name)
        described = resource.to_dict()
        if kind is not INFERENCE_SERVICE:
            described["events"] = [asdict(event) for event in self.store.events(kind.kind, namespace, name)]
            return json_response(described)
        keys = [component_key(name, component) for component in COMPONENTS]  # predictor, transformer, explainer
        described["revisions"] = [asdict(revision) for key in keys for revision in self.store.revisions(namespace, key)]
        described["replicas"] = [asdict(replica) for key in keys for replica in self.store.replicas(namespace, key)]
        routes = self.store.routes()
        described["routes"] = routes.get((namespace, name))
        described["componentRoutes"] = {split_key(key)[1]: routes[(namespace, key)] for key in keys[1:]
                                        if (namespace, key) in routes}
        described["events"] = [asdict(event) for event in self.store.events(kind.kind, namespace, name)]
        return json_response(described)

    def _resource(self, kind: Kind, namespace: str, name: str) -> Resource:
        resource = self.store.get(kind.kind, namespace, name)
        if resource is None:
            raise ApiError(404, f"{kind.kind.lower()} '{name}' not found in namespace '{namespace}'")
        return resource

    # -- delete and rollout ---------------------------------------------------------------------
    async def delete(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        if not self.store.mark_deleting(kind.kind, namespace, name):
            raise ApiError(404, f"{kind.kind.lower()} '{name}' not found in namespace '{namespace}'")
        self.on_change()
        return json_response({"kind": kind.kind, "namespace": namespace, "name": name, "action": "deleting"}, 202)

    async def rollout(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        if kind is not INFERENCE_SERVICE:
            raise ApiError(400, f"rollouts apply to InferenceServices, not {kind.kind}")
        if self.rollout_fn is None:
            raise ApiError(501, "this control plane has no rollout controller")
        body = _json_body(request)
        action, revision = body.get("action"), body.get("revision")
        if not isinstance(action, str) or (revision is not None and not isinstance(revision, str)):
            raise ApiError(400, 'the body must be {"action": "promote|rollback|pin", "revision": optional name}')
        try:
            result = self.rollout_fn(self.store, namespace, name, action, revision)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                raise ApiError(status, str(exc)) from None
            if isinstance(exc, (ValueError, LookupError)):
                raise ApiError(400, str(exc)) from None
            raise
        self.on_change()
        return json_response(result if isinstance(result, dict) else {"message": str(result)})

    # -- logs -----------------------------------------------------------------------------------
    async def logs_text(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        chunk = logs.tail(self._log_files(kind, namespace, name, None), DEFAULT_TAIL)
        return Response(200, chunk.text.encode(), "text/plain; charset=utf-8", [("x-shipyard-log-cursor", chunk.cursor)])

    async def logs(self, request: Request, kind: Kind, namespace: str, name: str) -> Response:
        """Without a cursor: the last ``tail`` lines. With one: the lines since, waiting up to ``wait_s`` for some."""
        body = _json_body(request)
        revision, cursor = body.get("step", body.get("revision")) if kind is TRAIN_JOB else body.get("revision"), body.get("cursor")
        tail, wait_s = body.get("tail", DEFAULT_TAIL), body.get("wait_s", 0)
        if revision is not None and not isinstance(revision, str):
            raise ApiError(400, '"step" must be a step name such as node-0' if kind is TRAIN_JOB else
                           '"revision" must be a revision name, "latest" or "prev"')
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ApiError(400, f'"tail" must be a number of lines (0 or more), got {tail!r}')
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not 0 <= wait_s <= MAX_WAIT_S:
            raise ApiError(400, f'"wait_s" must be between 0 and {MAX_WAIT_S:g} seconds, got {wait_s!r}')

        def find() -> list[logs.LogFile]:
            return self._log_files(kind, namespace, name, revision)

        if cursor is None:
            chunk = logs.tail(find(), tail)
        else:
            try:
                logs.decode_cursor(str(cursor))
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            chunk = await logs.follow(find, str(cursor), float(wait_s))
        return json_response({"text": chunk.text, "cursor": chunk.cursor})

    def _log_files(self, kind: Kind, namespace: str, name: str, revision: str | None) -> list[logs.LogFile]:
        """A revision's logs (a name, ``latest`` or ``prev``); by default those of revisions with replicas now.

        For a TrainJob, ``revision`` is a step (``node-0``, ``dataset-initializer``...); by default every step."""
        resource = self.store.get(kind.kind, namespace, name)
        if kind in DATA_OPERATIONS or kind is BATCH_JOB:  # logs/<kind>/<namespace>/<name>.log
            return self._operation_log(kind, resource, namespace, name)
        if kind in (DATASET, CACHE_RUNTIME):
            raise ApiError(400, f"a {kind.kind} has no log; its operations have one each (shipyard logs dataload "
                           "NAME)")
        if kind is not INFERENCE_SERVICE:
            return self._step_logs(kind, resource, namespace, name, revision)
        replicas = [replica for component in COMPONENTS
                    for replica in self.store.replicas(namespace, component_key(name, component))]
        recorded = {Path(replica.log_path): replica.revision for replica in replicas if replica.log_path}
        files = logs.files_in(self.logs_dir / namespace / name, recorded)
        if revision in ("latest", "prev"):
            predictor = ((resource.status if resource else {}).get("components") or {}).get("predictor") or {}
            wanted = (predictor.get("latestCreatedRevision") or predictor.get("latestReadyRevision")
                      if revision == "latest" else predictor.get("previousRolledoutRevision"))
            if not wanted:
                raise ApiError(404, f"'{name}' has no {revision} revision yet")
            revision = wanted
        if revision is not None:
            chosen = [file for file in files if file.revision == revision]
            if not chosen:
                known = sorted({file.revision for file in files})
                raise ApiError(404, f"no logs of revision '{revision}' of '{name}'; logs exist for: "
                               f"{', '.join(known) or 'no revision'}")
            return chosen
        if resource is None and not files:
            raise ApiError(404, f"{kind.kind.lower()} '{name}' not found in namespace '{namespace}'")
        live = {replica.revision for replica in replicas}
        return [file for file in files if file.revision in live] or files


    def _operation_log(self, kind: Kind, resource: Resource | None, namespace: str, name: str) -> list[logs.LogFile]:
        """A data operation's or BatchJob's log (every run appends to it); it may not exist until the first run."""
        from shipyard.control.controllers.dataops import operation_log

        path = operation_log(self.logs_dir, kind.kind, namespace, name)
        if resource is None and not path.exists():
            raise ApiError(404, f"{kind.kind.lower()} '{name}' not found in namespace '{namespace}'")
        return [logs.LogFile(name, name, path)]

    def _step_logs(self, kind: Kind, resource: Resource | None, namespace: str, name: str,
                   step: str | None) -> list[logs.LogFile]:
        """A TrainJob's step logs (``<step>.log``); ``step`` None: all of them."""
        files = [logs.LogFile(path.stem, path.stem, path) for path in
                 sorted((self.logs_dir / namespace / name).glob("*.log"))]
        if resource is None and not files:
            raise ApiError(404, f"{kind.kind.lower()} '{name}' not found in namespace '{namespace}'")
        if step is None:
            return files
        chosen = [file for file in files if file.label == step]
        finished = resource is None or ((resource.status or {}).get("shipyard") or {}).get("state") in (
            "Complete", "Failed")
        if not chosen and finished:
            known = ", ".join(file.label for file in files) or "none yet"
            raise ApiError(404, f"no logs of step '{step}' of '{name}'; steps with logs: {known}")
        # a step that has not started yet has no file: follow it anyway (it appears once it starts)
        return chosen or [logs.LogFile(step, step, self.logs_dir / namespace / name / f"{step}.log")]


def _dataset_uris(document: Any) -> list[tuple[str, str, str]]:
    """``(field path, namespace, dataset name)`` of every dataset:// storageUri of a TrainJob or an InferenceService,
    and of a BatchJob's input, output and errors."""
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        return []
    spec, kind = document["spec"], document.get("kind")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    namespace = metadata.get("namespace") or "default"
    holders: list[tuple[str, Any]] = []
    if kind == TRAIN_JOB.kind and isinstance(spec.get("initializer"), dict):
        holders = [(f"spec.initializer.{step}", spec["initializer"].get(step)) for step in ("dataset", "model")]
    elif kind == INFERENCE_SERVICE.kind and isinstance(spec.get("predictor"), dict):
        holders = [(f"spec.predictor.{form}", spec["predictor"].get(form)) for form in spec["predictor"]]
    elif kind == BATCH_JOB.kind:  # its input, output and errors file may be dataset:// URLs
        holders = [(f"spec.{key}", {"storageUri": spec.get(key)}) for key in ("input", "output", "errors")]
    found = []
    for path, holder in holders:
        uri = holder.get("storageUri") if isinstance(holder, dict) else None
        if isinstance(uri, str) and uri.startswith("dataset://") and not data_validation.dataset_uri_error(uri):
            where = path if kind == BATCH_JOB.kind else f"{path}.storageUri"
            found.append((where, namespace, data_validation.parse_dataset_uri(uri)[0]))
    return found


def _scope(kind: Kind, namespace: str) -> str:
    """The namespace a resource of ``kind`` is stored under: "" for a cluster-scoped kind."""
    return namespace if kind.namespaced else ""


def _builtin_runtimes() -> list[dict[str, Any]]:
    from shipyard.control.controllers.trainjob import builtin_runtimes

    return builtin_runtimes()


def _kind(name: str) -> Kind:
    try:
        return kind_of(name)
    except UnknownKind as exc:
        raise ApiError(404, str(exc)) from None


def _json_body(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}")
    return body
