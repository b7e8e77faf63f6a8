"""The gateway's inference graphs: KServe's InferenceGraph run inside the gateway.

``GraphTable`` holds one ``GraphRuntime`` per stored InferenceGraph (parsed with
``shipyard.graph.spec.parse_graph``), refreshed with the route tables (``update``): a graph whose
uid and generation did not change keeps its runtime; a changed spec gets a new ``GraphRouter`` with
the same bandit state. A graph is reached at its own name when no InferenceService has that name
(a service of the same name wins):

    POST /v1/models/{graph}:predict            V1 into the graph
    POST /v2/models/{graph}/infer              V2 into the graph
    POST any path, Host: {graph}.{namespace}.{domain}   (V2 when the path ends in /infer, V1 for :predict,
                                               else V2 when the body has V2 "inputs", else V1)
    POST /v1/models/{graph}:feedback, /v2/models/{graph}/feedback (or any path ending so, by Host)
         {"request_id": "...", "reward": number} -> 200 {"credited": [{"node", "step"}]},
         404 for an unknown (or already credited) request id, 400 for a bad body
    GET  /v1/models/{graph}, /v2/models/{graph}[/ready]   {"name", "ready", "platform", "nodes"}
    gRPC ModelInfer with model_name {graph}    run as V2; an Ensemble's outputs come back as "{step}.{output}"

Every answer carries ``x-request-id`` (the request's, else a new one: the key for feedback) and
``x-shipyard-graph-route: root=step-a,sub=step-b`` (the steps taken, in order).

Steps calling an InferenceService (``serviceName``) go through this gateway over loopback HTTP
(``/v1/models/{svc}:predict`` or ``/v2/models/{svc}/infer`` with ``Host: {svc}.{namespace}.example.com``),
so canary splits, scale-to-zero activation, payload logging and transformers apply to them too;
``serviceUrl`` steps are posted to their URL. ``x-request-id``, ``traceparent``, ``tracestate`` and
``authorization`` are passed on. A step that cannot be reached or does not answer in time raises
``StepError`` (502 / 504, the status in the message; the router names the node, step and service);
an error answer is returned as it came (the router names its status).

Per-step counters (the dashboard's ``GET /apis/ui/graphs/{ns}/{name}/stats``): requests and errors (an outcome
that is not 2xx after its retries, a timeout included) of every (node, step), in memory since the gateway started;
kept across a new generation of the same graph, dropped with it (``step_stats``).

Bandit state: one ``BanditState`` per graph, loaded from ``{state_dir}/{namespace}/{name}/bandit.json``
when the graph is first built, saved (atomically, at most once a second) after feedback and bandit
choices, flushed when the gateway stops, and deleted with the graph (``forget``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx

from shipyard import logformat, tracing
from shipyard.graph.bandit import BanditState
from shipyard.graph.router import GraphRouter, StepError, StepResult
from shipyard.graph.spec import Graph, GraphSpecError, Step, parse_graph
from shipyard.protocol.errors import InferenceError, InvalidInput
from shipyard.protocol.v2 import encode
from shipyard.server.rest import JSON, Request, Response, error_response, json_response

log = logging.getLogger("shipyard.gateway")

Key = tuple[str, str]

ROUTE_HEADER = "x-shipyard-graph-route"
REQUEST_ID_HEADER = "x-request-id"
#: Request headers (and gRPC metadata) a graph passes on to its steps.
PASSED_HEADERS = ("x-request-id", "traceparent", "tracestate", "authorization")
DOMAIN = "example.com"
DEFAULT_NAMESPACE = "default"
PLATFORM = "shipyard-inferencegraph"
#: Seconds between a change of a bandit's state and its save (changes meanwhile are saved together).
SAVE_DELAY_S = 1.0
#: A step without any timeout (step, routerTimeouts.serviceClient, spec.timeout) still ends after this.
DEFAULT_STEP_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5.0
#: HTTP status of a failed graph -> gRPC code name (the rest: UNKNOWN for 4xx, INTERNAL for 5xx).
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 413: "RESOURCE_EXHAUSTED", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
              499: "CANCELLED", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
              504: "DEADLINE_EXCEEDED"}


@dataclass
class GraphRuntime:
    """One served graph: its parsed spec, router and bandit state."""

    namespace: str
    name: str
    uid: str
    generation: int
    graph: Graph
    router: GraphRouter
    bandits: BanditState
    state_path: Path

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def has_bandit(self) -> bool:
        return any(node.router_type == "Bandit" for node in self.graph.nodes.values())

    def services(self) -> list[str]:
        """The InferenceServices its steps call."""
        return sorted({step.service_name for node in self.graph.nodes.values() for step in node.steps
                       if step.service_name})


class GraphTable:
    """The graphs the gateway serves, their transport (``call``) and their bandit state.

    ``gateway_url()`` is the gateway's own REST address (None while it does not listen);
    ``has_service(namespace, name)`` says whether a route table exists for a service (readiness of
    ``GET /v2/models/{graph}/ready``); ``state_dir`` holds ``{namespace}/{name}/bandit.json``.
    """

    def __init__(self, gateway_url: Callable[[], str | None], state_dir: Path | None = None,
                 has_service: Callable[[str, str], bool] | None = None, domain: str = DOMAIN,
                 max_request: int = 64 * 1024 * 1024) -> None:
        if state_dir is None:
            from shipyard.home import shipyard_home

            state_dir = shipyard_home() / "graphs"
        self.gateway_url = gateway_url
        self.state_dir = state_dir
        self.has_service = has_service or (lambda namespace, name: True)
        self.domain = domain
        self.max_request = max_request
        self.graphs: dict[Key, GraphRuntime] = {}
        self.errors: dict[Key, str] = {}
        #: Per graph, ``[requests, errors]`` of each (node, step) since the gateway started (the dashboard's).
        self.step_counts: dict[Key, dict[tuple[str, str], list[int]]] = {}
        self._hosts: dict[str, Key | None] = {}
        self._saves: dict[Key, asyncio.TimerHandle] = {}
        self._client: httpx.AsyncClient | None = None

    # -- the table -------------------------------------------------------------------------------
    def update(self, resources: Iterable[Any]) -> list[str]:
        """Take the stored graphs (objects with namespace, name, uid, generation, spec, deleting);
        returns the messages of graphs that do not parse, each reported once (the old version stays)."""
        new: dict[Key, GraphRuntime] = {}
        problems: list[str] = []
        for resource in resources:
            if resource.deleting:
                continue
            key = (resource.namespace, resource.name)
            old = self.graphs.get(key)
            if old is not None and old.uid == resource.uid and old.generation == resource.generation:
                new[key] = old
                continue
            try:
                graph = parse_graph(resource.namespace, resource.name, resource.spec)
            except (GraphSpecError, ValueError, TypeError) as exc:
                message = f"inferencegraph {resource.namespace}/{resource.name}: {exc}"
                if self.errors.get(key) != message:
                    problems.append(message)
                self.errors[key] = message
                if old is not None:
                    new[key] = old
                continue
            self.errors.pop(key, None)
            path = self.state_dir / resource.namespace / resource.name / "bandit.json"
            bandits = old.bandits if old is not None and old.uid == resource.uid else self._load(path)
            counts = self._counts_for(key, graph, keep=old is not None and old.uid == resource.uid)
            new[key] = GraphRuntime(resource.namespace, resource.name, resource.uid, resource.generation, graph,
                                    GraphRouter(graph, self._call_for(resource.namespace), bandits,
                                                on_step=_counter(counts)), bandits, path)
        for key in self.graphs.keys() - new.keys():
            self._cancel_save(key)
            self.step_counts.pop(key, None)
        if new.keys() != self.graphs.keys():
            self._hosts.clear()
        self.graphs = new  # one assignment: a request sees the old set or the new one
        return problems

    def _counts_for(self, key: Key, graph: Graph, keep: bool) -> dict[tuple[str, str], list[int]]:
        """The graph's step counters: those of steps it still has kept (same uid), new ones at zero."""
        old = self.step_counts.get(key, {}) if keep else {}
        counts = {(node.name, step.name): old.get((node.name, step.name), [0, 0])
                  for node in graph.nodes.values() for step in node.steps}
        self.step_counts[key] = counts
        return counts

    def step_stats(self, namespace: str, name: str) -> dict[str, dict[str, int]] | None:
        """``{"node/step": {"requests": n, "errors": n}}`` since the gateway started (every step of the
        graph, zeros included); None when the gateway does not serve the graph. ``errors`` counts steps
        whose outcome was not 2xx after their retries (a timeout included)."""
        counts = self.step_counts.get((namespace, name))
        if counts is None or (namespace, name) not in self.graphs:
            return None
        return {f"{node}/{step}": {"requests": value[0], "errors": value[1]}
                for (node, step), value in counts.items()}

    def _load(self, path: Path) -> BanditState:
        try:
            return BanditState().load(path)
        except (OSError, ValueError) as exc:
            log.error("bandit state %s could not be read (%s); starting afresh", path, exc)
            return BanditState()

    def lookup(self, namespace: str, name: str) -> GraphRuntime | None:
        return self.graphs.get((namespace, name))

    def find(self, name: str, namespace: str | None = None) -> GraphRuntime | None:
        """The graph a model name means: in ``namespace`` if given and there, else in the default one."""
        found = self.graphs.get((namespace, name)) if namespace else None
        return found or self.graphs.get((DEFAULT_NAMESPACE, name))

    def by_host(self, host: str | None) -> GraphRuntime | None:
        """The graph ``Host: {graph}.{namespace}.{domain}`` names (a dict lookup once a host was seen)."""
        if not host or not self.graphs:
            return None
        try:
            key = self._hosts[host]
        except KeyError:
            from shipyard.control.gateway.routing import parse_host

            parsed = parse_host(host)  # (label, namespace)
            key = (parsed[1], parsed[0]) if parsed is not None else None
            if len(self._hosts) > 1024:
                self._hosts.clear()
            self._hosts[host] = key
        return self.graphs.get(key) if key is not None else None

    def snapshot(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The graph's bandit arms (``{node: {arm: {"pulls", "meanReward", ...}}}``); None without Bandit nodes."""
        runtime = self.graphs.get((namespace, name))
        if runtime is None or not runtime.has_bandit:
            return None
        return runtime.bandits.snapshot()

    def forget(self, namespace: str, name: str) -> None:
        """A deleted graph: stop serving it, drop pending saves, delete its bandit state."""
        key = (namespace, name)
        self._cancel_save(key)
        runtime = self.graphs.get(key)
        self.step_counts.pop(key, None)
        if runtime is not None:
            self.graphs = {k: v for k, v in self.graphs.items() if k != key}
            self._hosts.clear()
        path = runtime.state_path if runtime is not None else self.state_dir / namespace / name / "bandit.json"
        path.unlink(missing_ok=True)

    async def close(self) -> None:
        """Save pending bandit state and close the steps' HTTP client."""
        for key in list(self._saves):
            self._cancel_save(key)
            runtime = self.graphs.get(key)
            if runtime is not None:
                self._save(runtime)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- bandit state ------------------------------------------------------------------------------
    def _changed(self, runtime: GraphRuntime) -> None:
        if runtime.key in self._saves:
            return
        loop = asyncio.get_running_loop()
        self._saves[runtime.key] = loop.call_later(SAVE_DELAY_S, self._save_later, runtime)

    def _save_later(self, runtime: GraphRuntime) -> None:
        self._saves.pop(runtime.key, None)
        current = self.graphs.get(runtime.key)
        if current is not None and current.bandits is runtime.bandits:  # not deleted meanwhile
            self._save(current)

    def _save(self, runtime: GraphRuntime) -> None:
        try:
            runtime.bandits.save(runtime.state_path)
        except OSError as exc:
            log.error("saving the bandit state of %s/%s to %s failed: %s", runtime.namespace, runtime.name,
                      runtime.state_path, exc)

    def _cancel_save(self, key: Key) -> None:
        handle = self._saves.pop(key, None)
        if handle is not None:
            handle.cancel()

    # -- the steps' transport --------------------------------------------------------------------
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                http1=True, http2=False, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=128, keepalive_expiry=30.0),
                follow_redirects=False, trust_env=False,
            )
        return self._client

    def _call_for(self, namespace: str) -> Callable[..., Any]:
        async def call(step: Step, body: Any, protocol: str, headers: dict[str, str],
                       timeout_s: float | None) -> StepResult:
            return await self.call(namespace, step, body, protocol, headers, timeout_s)

        return call

    async def call(self, namespace: str, step: Step, body: Any, protocol: str, headers: dict[str, str],
                   timeout_s: float | None) -> StepResult:
        """Send one step's request: a service through this gateway, a URL directly."""
        sent = {name: value for name, value in headers.items() if name in PASSED_HEADERS}
        sent.update({"content-type": JSON, "accept-encoding": "identity"})
        if step.service_name:
            service = step.service_name
            base = self.gateway_url()
            if base is None:
                raise StepError(503, "the gateway is not listening (503)")
            url = base + (f"/v1/models/{service}:predict" if protocol == "v1" else f"/v2/models/{service}/infer")
            sent["host"] = f"{service}.{namespace}.{self.domain}"
        elif step.service_url:
            url = step.service_url
        else:  # nodeName steps are the router's own
            raise StepError(500, f"step '{step.name}' has no service to call")
        timeout = timeout_s if timeout_s is not None and timeout_s > 0 else DEFAULT_STEP_TIMEOUT_S
        # the router prefixes these messages with "node 'n' step 's' (service 'x'): "
        try:
            response = await self.client().post(url, content=encode(body), headers=sent, timeout=timeout)
        except httpx.TimeoutException:
            raise StepError(504, f"no answer within {timeout:g}s (504)") from None
        except httpx.HTTPError as exc:
            raise StepError(502, f"could not be reached at {url} (502): {type(exc).__name__}: {exc}") from None
        status = response.status_code
        try:
            decoded: Any = json.loads(response.content) if response.content else None
        except ValueError:
            text = response.content[:300].decode("utf-8", "replace")
            decoded = {"error": f"a body that is not JSON: {text}"}
            if 200 <= status < 300:
                raise StepError(502, f"answered {status} with a body that is not JSON: {text}") from None
        return StepResult(status, decoded, _kept_headers(response))

    # -- REST --------------------------------------------------------------------------------------
    async def rest(self, request: Request, runtime: GraphRuntime, by_host: bool = False) -> Response:
        """Answer a request for a graph (by its name in the path, or by Host)."""
        path = request.path
        if path.endswith(":feedback") or path.endswith("/feedback"):
            if request.method != "POST":
                return error_response(405, f"{request.method} is not allowed on {path}; POST the feedback")
            return self.feedback(runtime, self._body(request))
        if path.endswith(":predict"):
            protocol = "v1"
        elif path.endswith("/infer"):
            protocol = "v2"
        elif request.method in ("GET", "HEAD") and (by_host or path.rstrip("/").endswith(
                (f"/models/{runtime.name}", f"/models/{runtime.name}/ready"))):
            return self.info(runtime)
        elif by_host and request.method == "POST":
            protocol = ""
        else:
            return error_response(404, f"inference graph '{runtime.name}' answers POST /v1/models/{runtime.name}"
                                  f":predict, POST /v2/models/{runtime.name}/infer, POST .../{runtime.name}:feedback "
                                  f"and GET /v2/models/{runtime.name}; not {request.method} {path}")
        if request.method != "POST":
            return error_response(405, f"{request.method} is not allowed on {path}; use POST")
        body = self._body(request)
        if not protocol:
            protocol = "v2" if _looks_v2(body) else "v1"
        request_id = request.headers.get(REQUEST_ID_HEADER) or logformat.REQUEST_ID.get() or str(uuid.uuid4())
        headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
        headers[REQUEST_ID_HEADER] = request_id
        answer = await self.run(runtime, body, protocol, headers, request_id)
        return Response(answer.status, encode(answer.body), JSON,
                        [(REQUEST_ID_HEADER, request_id), (ROUTE_HEADER, route_text(answer.route))])

    async def run(self, runtime: GraphRuntime, body: Any, protocol: str, headers: dict[str, str],
                  request_id: str) -> Any:
        """Run the graph (its bandit state is saved soon after when it has Bandit nodes)."""
        if tracing.ACTIVE:
            tracing.annotate({"shipyard.graph": f"{runtime.namespace}/{runtime.name}"})
            tracing.inject_into(headers)  # the steps' spans are children of the gateway's
        try:
            return await runtime.router.run(body, protocol, headers, request_id)
        finally:
            if runtime.has_bandit:
                self._changed(runtime)

    def _body(self, request: Request) -> Any:
        if "inference-header-content-length" in request.headers:
            raise InvalidInput("inference graphs take JSON bodies; the binary tensor extension "
                               "(Inference-Header-Content-Length) is not supported")
        raw = request.body
        encoding = request.headers.get("content-encoding")
        if encoding:
            from shipyard.server.compression import decompress

            raw = decompress(raw, encoding, self.max_request)
        if not raw.strip():
            raise InvalidInput("the request body is empty; send a JSON object")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from None

    def feedback(self, runtime: GraphRuntime, body: Any) -> Response:
        """``{"request_id": "...", "reward": number}``: credit the arms that request took."""
        from shipyard.graph.bandit import UnknownRequestError

        if not isinstance(body, dict):
            raise InvalidInput('feedback must be a JSON object: {"request_id": "...", "reward": number}')
        request_id, reward = body.get("request_id"), body.get("reward")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput(f'"request_id" must be the x-request-id of an answer of graph '
                               f"'{runtime.name}', got {request_id!r}")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise InvalidInput(f'"reward" must be a finite number, got {reward!r}')
        if not runtime.has_bandit:
            raise InvalidInput(f"inference graph '{runtime.name}' has no Bandit node to take feedback")
        try:
            credited = runtime.bandits.reward(request_id, float(reward))
        except UnknownRequestError as exc:
            return error_response(404, f"inference graph '{runtime.name}': {exc}")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self._changed(runtime)
        return json_response({"credited": [{"node": node, "step": step} for node, step in credited]})

    def info(self, runtime: GraphRuntime) -> Response:
        """What ``GET /v2/models/{graph}`` says: ready when every service it calls has a route."""
        missing = [name for name in runtime.services() if not self.has_service(runtime.namespace, name)]
        return json_response({
            "name": runtime.name, "platform": PLATFORM, "ready": not missing,
            "nodes": {name: {"routerType": node.router_type, "steps": [step.name for step in node.steps]}
                      for name, node in runtime.graph.nodes.items()},
            **({"missingServices": missing} if missing else {}),
        })

    # -- gRPC --------------------------------------------------------------------------------------
    async def grpc_infer(self, runtime: GraphRuntime, body: bytes, context: Any) -> bytes:
        """ModelInfer for a graph: the request as V2 JSON, the answer back as a ModelInferResponse."""
        import grpc

        from shipyard.protocol.grpc_codec import decode_grpc_request
        from shipyard.protocol.proto import inference_pb2 as pb

        metadata = dict(context.invocation_metadata() or ())
        try:
            message = pb.ModelInferRequest.FromString(body)
            request = grpc_request_json(message, decode_grpc_request(message))
        except InferenceError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        request_id = metadata.get(REQUEST_ID_HEADER) or logformat.REQUEST_ID.get() or str(uuid.uuid4())
        headers = {name: str(metadata[name]) for name in PASSED_HEADERS if name in metadata}
        headers[REQUEST_ID_HEADER] = request_id
        answer = await self.run(runtime, request, "v2", headers, request_id)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),
                                             (ROUTE_HEADER, route_text(answer.route))))
        if answer.status >= 400:
            error = answer.body.get("error") if isinstance(answer.body, dict) else None
            code = getattr(grpc.StatusCode, GRPC_CODES.get(answer.status, "INTERNAL" if answer.status >= 500
                                                           else "UNKNOWN"))
            await context.abort(code, str(error) if error is not None else json.dumps(answer.body)[:1000])
        try:
            response = grpc_response(runtime.name, answer.body, pb)
        except InferenceError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"inference graph '{runtime.name}': {exc.message}")
        return response.SerializeToString()


def _counter(counts: dict[tuple[str, str], list[int]]) -> Callable[[str, str, bool], None]:
    def count(node: str, step: str, ok: bool) -> None:
        value = counts.setdefault((node, step), [0, 0])
        value[0] += 1
        value[1] += not ok

    return count


def route_text(route: list[tuple[str, str]]) -> str:
    """``root=step-a,sub=step-b``: the steps a request took, in order."""
    return ",".join(f"{node}={step}" for node, step in route)


def _looks_v2(body: Any) -> bool:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(item, dict) and "datatype" in item
                                                              for item in inputs)


def _kept_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in ("x-shipyard-revision", "content-type")
            if name in response.headers}


def grpc_request_json(message: Any, request: Any) -> dict[str, Any]:
    """A decoded ModelInferRequest as a V2 JSON request body (names, datatypes, shapes and data kept)."""
    from shipyard.protocol.v2 import json_data

    datatypes = {tensor.name: tensor.datatype for tensor in message.inputs}
    inputs = []
    for name, array in request.inputs.items():
        datatype, data = json_data(name, array)
        inputs.append({"name": name, "datatype": datatypes.get(name) or datatype, "shape": list(array.shape),
                       "data": data})
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = {key: value for key, value in request.parameters.items() if value is not None}
    if request.outputs:
        body["outputs"] = [{"name": output.name} for output in request.outputs]
    return body


def answer_outputs(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A graph's V2 answer as (outputs, parameters): a V2 response's own outputs, or an Ensemble's
    ``{step: response}`` flattened to outputs named ``{step}.{output}`` (a failed Soft step's error in
    the parameter ``{step}.error``)."""
    if isinstance(body, dict) and isinstance(body.get("outputs"), list):
        return body["outputs"], dict(body.get("parameters") or {})
    if isinstance(body, dict) and body and all(isinstance(part, dict) for part in body.values()):
        outputs: list[dict[str, Any]] = []
        parameters: dict[str, Any] = {}
        for step, part in body.items():
            if isinstance(part.get("outputs"), list):
                outputs += [{**output, "name": f"{step}.{output.get('name')}"} for output in part["outputs"]
                            if isinstance(output, dict)]
            elif "error" in part:
                parameters[f"{step}.error"] = str(part["error"])
        if outputs or parameters:
            return outputs, parameters
    raise InvalidInput("its answer is not a V2 response (no 'outputs'), so it cannot be sent over gRPC: "
                       f"{json.dumps(body)[:300]}")


def grpc_response(name: str, body: Any, pb: Any) -> Any:
    """A ModelInferResponse (raw output contents) for a graph's V2 JSON answer."""
    from shipyard.protocol.binary import tensor_to_bytes
    from shipyard.protocol.grpc_codec import set_parameters
    from shipyard.protocol.v2 import tensor_from_json

    outputs, parameters = answer_outputs(body)
    response = pb.ModelInferResponse(model_name=name, id=str(body.get("id") or "") if isinstance(body, dict) else "")
    for output in outputs:
        output_name = str(output.get("name"))
        shape = output.get("shape") or []
        array = tensor_from_json(output_name, str(output.get("datatype")), list(shape), output.get("data"))
        datatype, raw = tensor_to_bytes(output_name, array)
        response.outputs.add(name=output_name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(raw)
    set_parameters(response.parameters, {key: value for key, value in parameters.items()
                                         if isinstance(value, (bool, int, float, str))})
    return response
