"""REST routes of the V2 and V1 protocols, mapped onto the DataPlane.

The app is a plain ``async (Request) -> Response`` callable: no framework, no per-request
validation layer. Every error becomes ``{"error": message}`` with the status its exception names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import msgspec

from shipyard import logformat, tracing
from shipyard.protocol.errors import InferenceError, InvalidInput, MethodNotAllowed, NotFound, Overloaded
from shipyard.protocol.http_codec import HEADER_LENGTH, decode_rest_request, encode_rest_response
from shipyard.protocol.infer import InferRequest
from shipyard.protocol.v2 import encode
from shipyard.runtimes.base import Model
from shipyard.server import compression
from shipyard.server.dataplane import DataPlane
from shipyard.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shipyard.server.openapi import openapi_document
from shipyard.server.peers import LOCAL_HEADER
from shipyard.server.upstream import with_passed_headers

log = logging.getLogger("shipyard.server")

JSON = "application/json"
#: Paths whose routes are remembered (the cache starts over when full).
ROUTE_CACHE_SIZE = 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    keep_alive: bool = True
    #: The raw query string (after ``?``), "" when there is none.
    query: str = ""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, encode(payload))


def error_response(status: int, message: str) -> Response:
    return Response(status, encode({"error": message}))


Handler = Callable[..., Awaitable[Response]]


_object_decoder = msgspec.json.Decoder(dict)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """An optional JSON object body (repository requests); empty means {}."""
    if not body.strip():
        return {}
    try:
        return _object_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidInput(f"{what} body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


class RestApp:
    """Routes V2 (``/v2/...``) and V1 (``/v1/...``) requests to the data plane."""

    def __init__(self, dataplane: DataPlane, max_body: int = 64 * 1024 * 1024) -> None:
        self.dataplane = dataplane
        self.max_body = max_body
        self._routes: dict[str, tuple[dict[str, Handler], tuple[Any, ...]]] = {}

    async def __call__(self, request: Request) -> Response:
        if tracing.ACTIVE or logformat.ACTIVE:
            return await self._observed(request)
        return self._finish(request, await self._dispatch(request))

    def _finish(self, request: Request, response: Response) -> Response:
        """Compress the answer when the client accepts it; echo its ``x-request-id``."""
        accepted = request.headers.get("accept-encoding")
        encoding = compression.pick_encoding(accepted) if accepted else None
        if encoding and response.body and response.status < 300:  # errors stay readable, as Triton's
            response.body = compression.compress(response.body, encoding)
            response.headers.append(("content-encoding", encoding))
        request_id = request.headers.get(logformat.REQUEST_ID_HEADER)
        if request_id is not None:
            response.headers.append((logformat.REQUEST_ID_HEADER, request_id))
        return response

    async def _observed(self, request: Request) -> Response:
        """A request while tracing or JSON logs are on: its id bound to the context (generated when
        absent, and echoed), and a server span (child of its ``traceparent``) around it."""
        if logformat.ACTIVE:
            logformat.bind_request(request.headers)
        if not tracing.ACTIVE or not tracing.wanted(request.path, request.headers):
            return self._finish(request, await self._dispatch(request))
        attributes = {"http.request.method": request.method, "url.path": request.path}
        with tracing.server_span(f"{request.method} {request.path}", request.headers, attributes) as span:
            response = self._finish(request, await self._dispatch(request))
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                tracing.set_error(span, f"HTTP {response.status}")
        return response

    async def _dispatch(self, request: Request) -> Response:
        try:
            if "content-encoding" in request.headers:
                request.body = compression.decompress(request.body, request.headers["content-encoding"], self.max_body)
            handlers, args = self.route(request.path)
            handler = handlers.get("GET" if request.method == "HEAD" else request.method)
            if handler is None:
                allowed = ", ".join(handlers)
                raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}")
            return await handler(request, *args)
        except InferenceError as exc:
            if exc.status == 500:
                log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
            response = error_response(exc.status, exc.message)
            if isinstance(exc, Overloaded):
                response.headers.append(("retry-after", str(exc.retry_after_seconds)))
            return response
        except Exception as exc:  # a bug of ours: say so, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    def route(self, path: str) -> tuple[dict[str, Handler], tuple[Any, ...]]:
        """Map a path to its handlers by method, and the arguments taken from the path (remembered:
        clients repeat the same few paths)."""
        found = self._routes.get(path)
        if found is None:
            found = self._match(path)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[path] = found
        return found

    def _match(self, path: str) -> tuple[dict[str, Handler], tuple[Any, ...]]:
        segments = path.strip("/").split("/")
        if "%" in path:
            segments = [unquote(part) for part in segments]
        match segments:
            case [""]:
                return {"GET": self.root}, ()
            case ["openapi.json"]:
                return {"GET": self.openapi}, ()
            case ["metrics"]:
                return {"GET": self.metrics}, ()
            case ["v2", "repository", "index"]:
                return {"POST": self.repository_index}, ()
            case ["v2", "repository", "models", name, "load"]:
                return {"POST": self.repository_load}, (name,)
            case ["v2", "repository", "models", name, "unload"]:
                return {"POST": self.repository_unload}, (name,)
            case ["v2", "models", "stats"]:
                return {"GET": self.statistics}, (None, None)
            case ["v2", "models", name, "stats"]:
                return {"GET": self.statistics}, (name, None)
            case ["v2", "models", name, "versions", version, "stats"]:
                return {"GET": self.statistics}, (name, version)
            case ["v2"]:
                return {"GET": self.server_metadata}, ()
            case ["v2", "health", "live"]:
                return {"GET": self.live}, ()
            case ["v2", "health", "ready"]:
                return {"GET": self.ready}, ()
            case ["v2", "models"]:
                return {"GET": self.model_list}, ()
            case ["v2", "models", name]:
                return {"GET": self.model_metadata}, (name, None)
            case ["v2", "models", name, "versions", version]:
                return {"GET": self.model_metadata}, (name, version)
            case ["v2", "models", name, "ready"]:
                return {"GET": self.model_ready}, (name, None)
            case ["v2", "models", name, "versions", version, "ready"]:
                return {"GET": self.model_ready}, (name, version)
            case ["v2", "models", name, "infer"]:
                return {"POST": self.infer}, (name, None)
            case ["v2", "models", name, "versions", version, "infer"]:
                return {"POST": self.infer}, (name, version)
            case ["v2", "models", name, "explain"]:
                return {"POST": self.explain}, (name, None)
            case ["v2", "models", name, "versions", version, "explain"]:
                return {"POST": self.explain}, (name, version)
            case ["v1", "models"]:
                return {"GET": self.model_list}, ()
            case ["v1", "models", target] if target.endswith(":predict"):
                return {"POST": self.predict_v1}, (target[: -len(":predict")],)
            case ["v1", "models", target] if target.endswith(":explain"):
                return {"POST": self.explain_v1}, (target[: -len(":explain")],)
            case ["v1", "models", name] if ":" not in name:
                return {"GET": self.v1_model}, (name,)
        raise NotFound(f"no route for {path}; see the V2 routes under /v2 and V1 routes under /v1/models")

    async def root(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.server_metadata())

    async def live(self, request: Request) -> Response:
        return json_response(self.dataplane.live())

    async def ready(self, request: Request) -> Response:
        return json_response(self.dataplane.ready())

    async def model_list(self, request: Request) -> Response:
        return json_response(self.dataplane.model_list())

    async def model_metadata(self, request: Request, name: str, version: str | None) -> Response:
        return json_response(self.dataplane.model_metadata(name, version))

    async def model_ready(self, request: Request, name: str, version: str | None) -> Response:
        return json_response(self.dataplane.model_ready(name, version))

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        answer, json_length = await self.dataplane.infer(name, version, _v2_decoder(request), encode_rest_response)
        if json_length is None:
            return Response(200, answer)
        return Response(200, answer, "application/octet-stream", [(HEADER_LENGTH, str(json_length))])

    async def metrics(self, request: Request) -> Response:
        exposition = await self.dataplane.metrics_exposition(LOCAL_HEADER in request.headers)
        return Response(200, exposition, METRICS_CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document(self.dataplane.repository.names()))

    async def statistics(self, request: Request, name: str | None, version: str | None) -> Response:
        return json_response(await self.dataplane.statistics(name, version, LOCAL_HEADER in request.headers))

    async def repository_index(self, request: Request) -> Response:
        ready = _json_object(request.body, "repository index").get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"'ready' must be true or false, got {ready!r}")
        return json_response(await self.dataplane.repository_index(ready, LOCAL_HEADER in request.headers))

    async def repository_load(self, request: Request, name: str) -> Response:
        parameters = _json_object(request.body, "load").get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        await self.dataplane.repository_load(name, parameters, LOCAL_HEADER in request.headers)
        return json_response({"name": name, "load": True})

    async def repository_unload(self, request: Request, name: str) -> Response:
        _json_object(request.body, "unload")
        await self.dataplane.repository_unload(name, LOCAL_HEADER in request.headers)
        return json_response({"name": name, "unload": True})

    async def predict_v1(self, request: Request, name: str) -> Response:
        return Response(200, await self.dataplane.predict_v1(name, request.body, request.headers))

    async def explain(self, request: Request, name: str, version: str | None) -> Response:
        """V2 explain: the body of an infer request; the answer is JSON (docs/monitoring.md, Explainers)."""
        return Response(200, await self.dataplane.explain(name, version, _v2_decoder(request)))

    async def explain_v1(self, request: Request, name: str) -> Response:
        return Response(200, await self.dataplane.explain_v1(name, request.body, request.headers))

    async def v1_model(self, request: Request, name: str) -> Response:
        return json_response(self.dataplane.v1_model(name))


def _v2_decoder(request: Request) -> Callable[[Model], InferRequest]:
    """Decodes a V2 REST body (JSON, or JSON + binary tensors) for a model; its passed headers added."""
    header_length = _header_length(request.headers.get(HEADER_LENGTH))

    def decode(model: Model) -> InferRequest:
        return with_passed_headers(model, decode_rest_request(request.body, header_length, model.signature_inputs),
                                   request.headers)

    return decode


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise InvalidInput(f"Inference-Header-Content-Length must be a non-negative integer, got '{value}'")
    return int(value)
