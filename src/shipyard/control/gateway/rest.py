"""The gateway's REST side: a reverse proxy app for ``server/http.py``'s HttpServer.

A request finds its InferenceService by ``Host: [latest-|prev-]{isvc}.{namespace}.{domain}``
(every path is then forwarded, as KServe's ingress does) or by the model name in
``/v2/models/{name}/...`` and ``/v1/models/{name}[:verb]`` (namespace from the Host, else
``default``). A tag or revision in ``x-shipyard-revision`` (or the host's ``latest-``/``prev-``)
picks a revision; otherwise the weighted split does. Bodies and answers pass through byte for
byte (binary tensors and compressed bodies included). A revision without a ready replica (scaled
to zero) gets its requests held by the activator until one is ready (activator.py). A name or
host that no service has may be an InferenceGraph's (graphs.py runs it; a service of the same
name wins).

Payload logging: for a service whose table has a ``logger``, each V1 ``:predict`` / V2 ``/infer``
request and its response are handed to the service's PayloadLogger (shipyard.monitor) as
CloudEvents sharing one ``ce-id`` (``PayloadTap``); this never waits on the sink nor fails the
request.

The gateway's own ``GET /metrics`` (Prometheus text) has the activator's held requests, cold
starts and refusals, requests in flight per revision, and what the controller adds (desired and
ready replicas per revision).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import unquote

import httpx

from shipyard import __version__, logformat, tracing
from shipyard.control.gateway.activator import Activator
from shipyard.control.gateway.observe import Observer
from shipyard.control.components import PREDICTOR
from shipyard.control.gateway.routing import DEFAULT_NAMESPACE, Backend, Replica, RouteTable, Router
from shipyard.control.gateway.shadow import Answer, Mirror, ShadowJob
from shipyard.monitor.cloudevents import event_id, make_event
from shipyard.monitor.logger import PayloadLoggers
from shipyard.protocol.errors import InferenceError, NotFound
from shipyard.protocol.v2 import encode
from shipyard.server.rest import JSON, Request, Response, error_response, json_response

if TYPE_CHECKING:
    from shipyard.control.gateway.graphs import GraphTable

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("shipyard.gateway")

#: Request header (and gRPC metadata key) naming a revision or tag; also set on every answer.
REVISION_HEADER = "x-shipyard-revision"
GATEWAY_NAME = "shipyard-gateway"
#: Request headers a replica needs; the rest (hop-by-hop, host...) stay here.
FORWARD_REQUEST_HEADERS = ("content-type", "inference-header-content-length", "content-encoding",
                           "accept", "x-request-id", "traceparent", "tracestate", "authorization")
#: Answer headers passed back (content-type and content-length are rendered by the server).
FORWARD_RESPONSE_HEADERS = ("content-encoding", "inference-header-content-length", "retry-after", "x-request-id")
#: Seconds to wait for a TCP connection to a replica (it is on this machine).
CONNECT_TIMEOUT_S = 5.0


def new_client(max_connections: int = 512) -> httpx.AsyncClient:
    """One pooled HTTP/1.1 keep-alive client for every replica. No overall timeout here: each
    request gets its table's ``timeout_s``; no cookies, no redirects, no decompression."""
    return httpx.AsyncClient(
        http1=True,
        http2=False,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections // 2,
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,
    )


def is_inference(method: str, path: str) -> bool:
    """Requests that shadow traffic copies: V2 infer and V1 predict."""
    return method == "POST" and (path.endswith("/infer") or path.endswith(":predict"))


def is_explanation(method: str, path: str) -> bool:
    """A V1 ``:explain`` or V2 ``/explain`` request (the explainer's, when the service has one)."""
    return method == "POST" and (path.endswith("/explain") or path.endswith(":explain"))


async def send(client: httpx.AsyncClient, backend: Backend, method: str, path: str, headers: dict[str, str],
               body: bytes, timeout_s: float) -> Answer:
    """Send one request to a replica of ``backend``. A replica that refuses the connection (so
    nothing was sent) is marked down and the request goes once to another replica of the same
    revision. Failures become answers: 502 (unreachable, broken answer), 504 (timeout)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    replica: Replica | None = backend.pool.next("http")
    if replica is None:
        return _failed(503, f"revision '{backend.revision}' has no replica with an HTTP address", started, loop)
    tried: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if tracing.ACTIVE:  # the live request's span (a mirrored copy runs outside it)
                    tracing.annotate({"shipyard.replica": replica.http or ""})
                try:
                    status, answer_headers, answer_body = await _exchange(client, method, replica.http + path,
                                                                          headers, body)
                    return Answer(status, answer_body, answer_headers, (loop.time() - started) * 1000.0,
                                  server_error=status >= 500)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    backend.pool.mark_down(replica)
                    tried.append(f"{replica.http} ({str(exc) or type(exc).__name__})")
                    other = backend.pool.next("http", exclude=replica)
                    if len(tried) > 1 or other is None:
                        return _failed(502, f"revision '{backend.revision}' could not be reached: "
                                       f"{'; '.join(tried)}", started, loop)
                    replica = other
    except TimeoutError:
        return _failed(504, f"revision '{backend.revision}' did not answer within {timeout_s:g}s "
                       f"(the route's timeout)", started, loop)
    except httpx.HTTPError as exc:
        return _failed(502, f"revision '{backend.revision}' replica {replica.http} failed: "
                       f"{type(exc).__name__}: {exc}", started, loop)


async def _exchange(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str],
                    body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = client.build_request(method, url, content=body, headers=headers)
    response = await client.send(request, stream=True)
    try:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])  # still encoded: passed as is
    finally:
        await response.aclose()
    kept = {name: response.headers[name] for name in (*FORWARD_RESPONSE_HEADERS, "content-type")
            if name in response.headers}
    return response.status_code, kept, raw


def _failed(status: int, message: str, started: float, loop: asyncio.AbstractEventLoop) -> Answer:
    return Answer(status, encode({"error": message}), {"content-type": JSON},
                  (loop.time() - started) * 1000.0, failure=message, server_error=True)


class PayloadTap:
    """Hands inference requests and responses of services with a ``logger`` to their PayloadLogger.
    Never raises: a logging problem is logged here and inference goes on."""

    def __init__(self, loggers: PayloadLoggers | None = None) -> None:
        self.loggers = loggers

    def request(self, table: RouteTable, backend: Backend, headers: Mapping[str, str], body: bytes,
                content_type: str, content_encoding: str | None = None) -> str | None:
        """Log the request (mode all|request); returns the id its response will share, None when
        the service logs nothing."""
        config = table.logger
        if config is None or self.loggers is None:
            return None
        try:
            logger = self.loggers.get(table.namespace, table.isvc, config.url)
            if logger is None:
                return None
            id = event_id(headers)
            if config.requests:
                logger.log(make_event("request", id, body, content_type, namespace=table.namespace,
                                      isvc=table.service, endpoint=backend.revision, component=config.component,
                                      content_encoding=content_encoding))
            return id
        except Exception:
            log.exception("payload logging of a request to %s/%s failed", table.namespace, table.isvc)
            return None

    def response(self, table: RouteTable, backend: Backend, id: str | None, body: bytes, content_type: str,
                 status: int, ok: bool, content_encoding: str | None = None) -> None:
        """Log the response (mode all|response); a failed one (not ``ok``) only when the table's
        ``logger.errors`` is true."""
        config = table.logger
        if id is None or config is None or self.loggers is None or not config.responses:
            return
        if not ok and not config.errors:
            return
        try:
            logger = self.loggers.get(table.namespace, table.isvc, config.url)
            if logger is not None:
                logger.log(make_event("response", id, body, content_type, namespace=table.namespace,
                                      isvc=table.service, endpoint=backend.revision, component=config.component,
                                      status=status, content_encoding=content_encoding))
        except Exception:
            log.exception("payload logging of a response of %s/%s failed", table.namespace, table.isvc)


class RestProxy:
    """The ``App`` (Request -> Response) of the gateway's HTTP listener."""

    def __init__(self, router: Router, observer: Observer, mirror: Mirror, client: httpx.AsyncClient,
                 shadow_client: httpx.AsyncClient, activator: Activator | None = None,
                 metrics: Callable[[], list[str]] | None = None, tap: PayloadTap | None = None,
                 graphs: GraphTable | None = None) -> None:
        self.router = router
        #: Inference graphs (graphs.py), reached at their names when no service has that name.
        self.graphs = graphs
        self.tap = tap or PayloadTap()
        self.observer = observer
        self.mirror = mirror
        self.client = client
        self.shadow_client = shadow_client
        self.activator = activator or Activator()
        self.metrics = metrics

    async def __call__(self, request: Request) -> Response:
        if tracing.ACTIVE or logformat.ACTIVE:
            return await self._observed(request)
        return await self._answer(request)

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except Exception as exc:  # a bug of ours: say so, keep serving
            log.exception("gateway failed on %s %s", request.method, request.path)
            return error_response(500, f"gateway error: {type(exc).__name__}: {exc}")

    async def _observed(self, request: Request) -> Response:
        """While tracing or JSON logs are on: the request id bound (generated when absent: it is then
        forwarded to the replica and echoed), and a server span; ``_forward`` adds the service, revision
        and replica to it and sends its ``traceparent`` on."""
        request_id = logformat.bind_request(request.headers) if logformat.ACTIVE else None
        if not tracing.ACTIVE or not tracing.wanted(request.path, request.headers):
            response = await self._answer(request)
        else:
            attributes = {"http.request.method": request.method, "url.path": request.path}
            with tracing.server_span(f"{request.method} {request.path}", request.headers, attributes) as span:
                response = await self._answer(request)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    tracing.set_error(span, f"HTTP {response.status}")
        if request_id is not None and not any(name == logformat.REQUEST_ID_HEADER for name, _ in response.headers):
            response.headers.append((logformat.REQUEST_ID_HEADER, request_id))
        return response

    async def _dispatch(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except InferenceError as exc:
            response = error_response(exc.status, exc.message)
            if exc.status == 503:
                response.headers.append(("retry-after", "1"))
            return response

    async def _route(self, request: Request) -> Response:
        host = request.headers.get("host")
        explain = is_explanation(request.method, request.path)
        hit = self.router.by_host(host, explain)
        if hit is not None:
            table, tag = hit
            return await self._proxy(request, table, request.headers.get(REVISION_HEADER) or tag)
        if self.graphs is not None and self.graphs.graphs:  # a graph's host (a service's won above)
            graph = self.graphs.by_host(host)
            if graph is not None:
                return await self.graphs.rest(request, graph, by_host=True)
        segments = [unquote(part) for part in request.path.strip("/").split("/")]
        namespace = self.router.namespace_of(host)
        match segments:
            case [""]:
                return json_response({"status": "alive"})
            case ["v2"]:
                return json_response({"name": GATEWAY_NAME, "version": __version__, "extensions": []})
            case ["v2", "health", "live"]:
                return json_response({"live": True})
            case ["v2", "health", "ready"]:
                return json_response({"ready": True})
            case ["metrics"] if self.metrics is not None:
                return Response(200, ("\n".join(self.metrics()) + "\n").encode(), PROMETHEUS)
            case ["v2", "models"] | ["v1", "models"]:
                return self._service_list(namespace)
            case ["v2", "models", "stats"]:
                raise NotFound("the gateway keeps no statistics of all models; ask for one model's at "
                               "/v2/models/{name}/stats (answered by one of its replicas)")
            case ["v2", "models", name, *_]:
                return await self._by_name(request, name, namespace, explain)
            case ["v1", "models", target, *_]:
                return await self._by_name(request, target.split(":", 1)[0], namespace, explain)
            case ["v2", "repository", *_]:
                raise NotFound("the gateway has no model repository API; InferenceServices change with "
                               "`shipyard apply`")
            case _:
                raise NotFound(f"no route for {request.path}; the gateway serves /v2/models/{{name}}/... and "
                               "/v1/models/{name}[:predict], or any path with Host: {isvc}.{namespace}.{domain}")

    async def _by_name(self, request: Request, name: str, namespace: str | None, explain: bool) -> Response:
        """A request for the model ``name``: its service (the entry component), else a graph of that name."""
        try:
            table = self.router.find(name, namespace, explain)
        except NotFound:
            graph = self.graphs.find(name, namespace) if self.graphs is not None else None
            if graph is None:
                raise
            return await self.graphs.rest(request, graph)  # type: ignore[union-attr]
        return await self._proxy(request, table, request.headers.get(REVISION_HEADER))

    def _service_list(self, namespace: str | None) -> Response:
        if not namespace or not self.router.has_namespace(namespace):
            namespace = DEFAULT_NAMESPACE
        tables = sorted(self.router.tables.values(), key=lambda t: t.key)
        return json_response({
            "models": [t.isvc for t in tables if t.namespace == namespace and t.component == PREDICTOR],
            "services": [t.summary() for t in tables],
        })

    async def _proxy(self, request: Request, table: RouteTable, wanted: str | None) -> Response:
        backend = table.choose(wanted)
        metered = backend.key
        self.activator.begin(metered)  # held requests count as concurrency too
        try:
            while not len(backend.pool):  # scaled to zero or starting: wait for a replica
                with tracing.child_span("activator", {"shipyard.revision": backend.revision}):
                    table, backend = await activate(self.activator, self.router, table, backend, wanted)
            return await self._forward(request, table, backend)
        finally:
            self.activator.end(metered)

    async def _forward(self, request: Request, table: RouteTable, backend: Backend) -> Response:
        headers = {name: request.headers[name] for name in FORWARD_REQUEST_HEADERS if name in request.headers}
        # CloudEvents' binary-mode attributes (a payload logger's events to a detector service)
        headers.update((name, value) for name, value in request.headers.items() if name.startswith("ce-"))
        # without it httpx would ask for gzip; the client's own wish goes to the replica unchanged
        headers["accept-encoding"] = request.headers.get("accept-encoding", "identity")
        if tracing.ACTIVE:
            tracing.annotate({"shipyard.service": f"{table.namespace}/{table.service}",
                              "shipyard.revision": backend.revision})
            tracing.inject_into(headers)  # the replica's span is a child of the gateway's
        live: asyncio.Future[Answer] | None = None
        logged: str | None = None
        if is_inference(request.method, request.path):
            if table.logger is not None:
                logged = self.tap.request(table, backend, request.headers, request.body,
                                          request.headers.get("content-type", JSON),
                                          request.headers.get("content-encoding"))
            shadow = table.mirror()
            if shadow is not None and shadow.revision != backend.revision:
                live = asyncio.get_running_loop().create_future()
                self._mirror(table, shadow, request, headers, live)
        started = self.observer.begin(backend.key)  # same tick as the pick: drain sees it
        answer: Answer | None = None
        try:
            target = request.path + (f"?{request.query}" if request.query else "")
            answer = await send(self.client, backend, request.method, target, headers, request.body,
                                table.timeout_s)
        finally:
            self.observer.end(backend.key, started, answer is not None and not answer.server_error)
            if live is not None:
                live.set_result(answer or Answer(0, failure="the live request was cancelled"))
        if answer.failure:
            log.warning("%s %s -> %s: %s", request.method, request.path, answer.status, answer.failure)
        content_type = answer.headers.get("content-type", JSON)
        if logged is not None:
            self.tap.response(table, backend, logged, answer.body, content_type, answer.status, answer.status == 200,
                              answer.headers.get("content-encoding"))
        headers_out = [(name, answer.headers[name]) for name in FORWARD_RESPONSE_HEADERS if name in answer.headers]
        headers_out.append((REVISION_HEADER, backend.revision))
        return Response(answer.status, answer.body, content_type, headers_out)

    def _mirror(self, table: RouteTable, shadow: Backend, request: Request, headers: dict[str, str],
                live: "asyncio.Future[Answer]") -> None:
        shadow_headers = {**headers, "accept-encoding": "identity"}
        method, path, body, timeout = request.method, request.path, request.body, table.timeout_s

        async def send_copy() -> Answer:
            started = self.observer.begin(shadow.key)
            self.activator.begin(shadow.key)
            answer = None
            try:
                answer = await send(self.shadow_client, shadow, method, path, shadow_headers, body, timeout)
                return answer
            finally:
                self.activator.end(shadow.key)
                self.observer.end(shadow.key, started, answer is not None and not answer.server_error)

        self.mirror.submit(ShadowJob(table.key, shadow.revision, "rest", path, send_copy, live))


async def activate(activator: Activator, router: Router, table: RouteTable, backend: Backend,
                   wanted: str | None) -> tuple[RouteTable, Backend]:
    """Hold a request for ``backend`` (no replica yet) until it has one; when its revision left the
    routes meanwhile, route the request again by the table loaded now (NotFound if the service went)."""
    released = await activator.hold(table, backend)
    current = router.lookup(table.namespace, table.isvc)
    if released is not None:
        return current or table, released
    if current is None:
        raise NotFound(f"inference service '{table.namespace}/{table.isvc}' was removed while the request waited "
                       "for a replica")
    return current, current.choose(wanted)
