"""The gateway's gRPC side: ``inference.GRPCInferenceService`` proxied to the replicas.

ModelInfer, ModelMetadata and ModelReady are routed by the model name in the request (the
namespace from metadata ``x-shipyard-namespace``, else ``default``; a revision or tag from
metadata ``x-shipyard-revision``) and forwarded as raw bytes over one channel per replica, so a
request is parsed once to read its name and the answer not at all. ServerLive, ServerReady and
ServerMetadata answer for the gateway. A call for a revision without a ready replica (scaled to
zero) is held by the activator until one is ready, as REST requests are (UNAVAILABLE when the
activator refuses it). ModelInfer calls of a service with a ``logger`` are payload-logged like REST
requests (rest.PayloadTap): the body is the serialized protobuf, content type
``application/grpc+proto``; a failed call's response event has the status message as its text
body and ``ce-statuscode`` the gRPC code's number. ModelStreamInfer, statistics and the repository API are
per replica and answer UNIMPLEMENTED with a message saying what to use instead. ModelInfer and
ModelReady for a name no service has may be an InferenceGraph's (graphs.py runs it as V2).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any, Callable

import grpc

from shipyard import __version__, logformat, tracing
from shipyard.control.gateway.activator import Activator
from shipyard.control.gateway.observe import Observer
from shipyard.control.gateway.rest import GATEWAY_NAME, REVISION_HEADER, PayloadTap, activate
from shipyard.control.gateway.routing import Backend, Replica, RouteTable, Router
from shipyard.control.gateway.shadow import Answer, Mirror, ShadowJob
from shipyard.monitor.cloudevents import GRPC_CONTENT_TYPE
from shipyard.protocol.errors import InferenceError, NotFound, NotReady
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.control.gateway.grpc_observed import STATUS_CODES, observed_handler

if TYPE_CHECKING:
    from shipyard.control.gateway.graphs import GraphTable

log = logging.getLogger("shipyard.gateway")

SERVICE = "inference.GRPCInferenceService"
NAMESPACE_METADATA = "x-shipyard-namespace"
#: A Host such as ``iris-predictor.default.example.com`` to route by (gRPC's :authority does not reach
#: the servicer); a transformer's or explainer's calls to its predictor carry it (server/upstream.py).
HOST_METADATA = "x-shipyard-host"
#: Codes that mean the revision failed (counted as errors); the rest are the caller's doing.
SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS}
#: Metadata a client sends that must not be forwarded (gRPC's own, and ours).
_DROP_METADATA = ("user-agent", REVISION_HEADER, NAMESPACE_METADATA, HOST_METADATA)


def _code_number(code: grpc.StatusCode) -> int:
    return code.value[0]


_CODES = {_code_number(code): code for code in grpc.StatusCode}


def _connect_failure(error: grpc.aio.AioRpcError) -> bool:
    """Did the call fail because no connection could be made (so the replica got nothing)?
    gRPC says so only in the message: UNAVAILABLE "failed to connect to all addresses"."""
    return error.code() is grpc.StatusCode.UNAVAILABLE and "failed to connect" in (error.details() or "").lower()


class GrpcProxy:
    """Routes and forwards V2 gRPC calls; one channel per replica address, shared by all calls."""

    def __init__(self, router: Router, observer: Observer, mirror: Mirror, activator: Activator | None = None,
                 tap: PayloadTap | None = None, graphs: GraphTable | None = None) -> None:
        self.router = router
        #: Inference graphs (graphs.py): ModelInfer for a name no service has runs the graph as V2.
        self.graphs = graphs
        self.tap = tap or PayloadTap()
        self.observer = observer
        self.mirror = mirror
        self.activator = activator or Activator()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._busy: dict[str, int] = {}

    # -- wiring ----------------------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        raw = {"request_deserializer": None, "response_serializer": None}  # bytes in, bytes out

        def local(behavior: Callable[..., Any], request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=request_type.FromString,
                                                       response_serializer=lambda m: m.SerializeToString())

        def unimplemented(what: str) -> grpc.RpcMethodHandler:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, what)
            return grpc.unary_unary_rpc_method_handler(refuse, **raw)

        per_replica = ("is kept by each replica; the gateway does not merge it. Ask a replica directly "
                       "(`shipyard describe isvc NAME` lists their addresses)")
        handlers = {
            "ServerLive": local(self.server_live, pb.ServerLiveRequest),
            "ServerReady": local(self.server_ready, pb.ServerReadyRequest),
            "ServerMetadata": local(self.server_metadata, pb.ServerMetadataRequest),
            "ModelReady": grpc.unary_unary_rpc_method_handler(self.model_ready, **raw),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(self.model_metadata, **raw),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer, **raw),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer, **raw),
            "ModelStatistics": unimplemented(f"ModelStatistics through the gateway: statistics {per_replica}"),
            "RepositoryIndex": unimplemented(f"RepositoryIndex through the gateway: the model repository {per_replica}"),
            "RepositoryModelLoad": unimplemented("RepositoryModelLoad through the gateway: InferenceServices "
                                                 "change with `shipyard apply`"),
            "RepositoryModelUnload": unimplemented("RepositoryModelUnload through the gateway: InferenceServices "
                                                   "change with `shipyard apply` / `shipyard delete`"),
        }
        if tracing.ACTIVE or logformat.ACTIVE:  # a server span per call, its request id bound
            handlers = {name: observed_handler(f"/{SERVICE}/{name}", h) for name, h in handlers.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self.channels.get(address)
        if channel is None:
            channel = self.channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ])
        return channel

    async def prune(self) -> None:
        """Close idle channels to replicas that no table names any more (checked every poll:
        a channel busy at a swap is closed once its calls are done)."""
        if not self.channels:
            return
        wanted = {replica.grpc for table in self.router.tables.values()
                  for backend in (*table.backends, table.shadow) if backend is not None
                  for replica in backend.pool.replicas}
        for address in [a for a in self.channels if a not in wanted and not self._busy.get(a)]:
            await self.channels.pop(address).close()

    async def close(self) -> None:
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            await channel.close()

    # -- the gateway's own answers ------------------------------------------------------------------
    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=GATEWAY_NAME, version=__version__, extensions=[])

    async def model_stream_infer(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "ModelStreamInfer is not proxied by the gateway yet; call ModelInfer once per request")
        yield b""  # pragma: no cover (abort raises); makes this an async generator

    # -- proxied calls -----------------------------------------------------------------------------
    async def model_ready(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = pb.ModelReadyRequest.FromString(body).name
        try:
            table, wanted, backend = self._route(name, context)
        except InferenceError:  # unknown, or no ready replica: not ready, as a server answers
            graph = self._graph(name, context)  # a graph is ready when every service it calls is routed
            ready = graph is not None and all(self.router.lookup(graph.namespace, service) is not None
                                              for service in graph.services())
            return pb.ModelReadyResponse(ready=ready).SerializeToString()
        return await self._forward("ModelReady", body, table, wanted, backend, context)

    async def model_metadata(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = pb.ModelMetadataRequest.FromString(body).name
        table, wanted, backend = await self._route_or_abort(name, context)
        return await self._forward("ModelMetadata", body, table, wanted, backend, context)

    async def model_infer(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = pb.ModelInferRequest.FromString(body).model_name
        try:
            table, wanted, backend = self._route(name, context)
        except NotFound as exc:  # no service of that name: a graph's, if any
            graph = self._graph(name, context)
            if graph is None:
                await context.abort(STATUS_CODES[exc.status], exc.message)
            return await self.graphs.grpc_infer(graph, body, context)  # type: ignore[union-attr]
        except NotReady as exc:
            await context.abort(STATUS_CODES[exc.status], exc.message)
        return await self._forward("ModelInfer", body, table, wanted, backend, context, mirror=True)

    def _graph(self, name: str, context: grpc.aio.ServicerContext) -> Any:
        if self.graphs is None or not self.graphs.graphs:
            return None
        metadata = dict(context.invocation_metadata() or ())
        return self.graphs.find(name, metadata.get(NAMESPACE_METADATA))

    def _route(self, name: str, context: grpc.aio.ServicerContext) -> tuple[RouteTable, str | None, Backend]:
        metadata = dict(context.invocation_metadata() or ())
        hit = self.router.by_host(metadata.get(HOST_METADATA))  # a transformer's call to its predictor
        table = hit[0] if hit is not None else self.router.find(name, metadata.get(NAMESPACE_METADATA))
        wanted = metadata.get(REVISION_HEADER)
        return table, wanted, table.choose(wanted)

    async def _route_or_abort(self, name: str,
                              context: grpc.aio.ServicerContext) -> tuple[RouteTable, str | None, Backend]:
        try:
            return self._route(name, context)
        except (NotFound, NotReady) as exc:
            await context.abort(STATUS_CODES[exc.status], exc.message)
        raise AssertionError("unreachable")  # context.abort always raises

    async def _forward(self, method: str, body: bytes, table: RouteTable, wanted: str | None, backend: Backend,
                       context: grpc.aio.ServicerContext, mirror: bool = False) -> bytes:
        metered = backend.key
        self.activator.begin(metered)  # held calls count as concurrency too
        try:
            while not len(backend.pool):  # scaled to zero or starting: wait for a replica
                try:
                    with tracing.child_span("activator", {"shipyard.revision": backend.revision}):
                        table, backend = await activate(self.activator, self.router, table, backend, wanted)
                except InferenceError as exc:
                    await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNAVAILABLE), exc.message)
            return await self._send_routed(method, body, table, backend, context, mirror)
        finally:
            self.activator.end(metered)

    async def _send_routed(self, method: str, body: bytes, table: RouteTable, backend: Backend,
                           context: grpc.aio.ServicerContext, mirror: bool) -> bytes:
        metadata = tuple((k, v) for k, v in (context.invocation_metadata() or ())
                         if k not in _DROP_METADATA and not k.startswith(("grpc-", ":")))
        remaining = context.time_remaining()
        timeout = min(table.timeout_s, remaining) if remaining is not None and math.isfinite(remaining) \
            else table.timeout_s
        if tracing.ACTIVE:  # the replica's span is a child of the gateway's
            tracing.annotate({"shipyard.service": f"{table.namespace}/{table.service}",
                              "shipyard.revision": backend.revision})
            carrier: dict[str, str] = {}
            tracing.inject_into(carrier)
            if carrier:
                metadata = (*((k, v) for k, v in metadata if k not in tracing.TRACE_HEADERS), *carrier.items())
        request_id = logformat.REQUEST_ID.get() if logformat.ACTIVE else None
        if request_id is not None and all(k != logformat.REQUEST_ID_HEADER for k, _ in metadata):
            metadata = (*metadata, (logformat.REQUEST_ID_HEADER, request_id))  # generated here: the replica logs it too
        live: asyncio.Future[Answer] | None = None
        logged: str | None = None
        if mirror and table.logger is not None:  # ModelInfer
            logged = self.tap.request(table, backend, dict(context.invocation_metadata() or ()), body,
                                      GRPC_CONTENT_TYPE)
        if mirror:
            shadow = table.mirror()
            if shadow is not None and shadow.revision != backend.revision:
                live = asyncio.get_running_loop().create_future()
                self._mirror(table, shadow, method, body, metadata, timeout, live)
        started = self.observer.begin(backend.key)  # same tick as the pick: drain sees it
        answer: Answer | None = None
        try:
            await context.send_initial_metadata(((REVISION_HEADER, backend.revision),))
            answer = await self.send(backend, method, body, metadata, timeout)
        finally:
            self.observer.end(backend.key, started, answer is not None and not answer.server_error)
            if live is not None:
                live.set_result(answer or Answer(0, failure="the live request was cancelled"))
        if logged is not None:
            if answer.status == 0:
                self.tap.response(table, backend, logged, answer.body, GRPC_CONTENT_TYPE, 0, True)
            else:
                self.tap.response(table, backend, logged, answer.failure.encode() if answer.failure else answer.body,
                                  "text/plain; charset=utf-8", answer.status, False)
        if answer.status != 0:
            code = _CODES.get(answer.status, grpc.StatusCode.UNKNOWN)
            await context.abort(code, answer.failure or answer.body.decode("utf-8", "replace"))
        return answer.body

    async def send(self, backend: Backend, method: str, body: bytes, metadata: tuple[tuple[str, str], ...],
                   timeout: float) -> Answer:
        """Call ``method`` on a replica of ``backend`` with raw bytes; a replica that cannot be
        connected to is marked down and the call goes once to another replica of the revision.
        A failed call is an Answer whose status is the gRPC code's number and body its message."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        replica: Replica | None = backend.pool.next("grpc")
        tried: list[str] = []
        while replica is not None:
            address = replica.grpc
            self._busy[address] = self._busy.get(address, 0) + 1
            if tracing.ACTIVE:  # the live call's span (a mirrored copy runs outside it)
                tracing.annotate({"shipyard.replica": address or ""})
            try:
                call = self.channel(address).unary_unary(f"/{SERVICE}/{method}")
                response = await call(body, metadata=metadata, timeout=timeout)
                return Answer(0, response, latency_ms=(loop.time() - started) * 1000.0)
            except grpc.aio.AioRpcError as error:
                if not _connect_failure(error):
                    return Answer(_code_number(error.code()), (error.details() or "").encode(),
                                  latency_ms=(loop.time() - started) * 1000.0,
                                  server_error=error.code() in SERVER_ERRORS)
                backend.pool.mark_down(replica)
                tried.append(f"{address} ({error.details()})")
                replica = None if len(tried) > 1 else backend.pool.next("grpc", exclude=replica)
            finally:
                self._busy[address] -= 1
        message = (f"revision '{backend.revision}' could not be reached: {'; '.join(tried)}" if tried
                   else f"revision '{backend.revision}' has no replica with a gRPC address")
        return Answer(_code_number(grpc.StatusCode.UNAVAILABLE), message.encode(),
                      latency_ms=(loop.time() - started) * 1000.0, failure=message, server_error=True)

    def _mirror(self, table: RouteTable, shadow: Backend, method: str, body: bytes,
                metadata: tuple[tuple[str, str], ...], timeout: float, live: "asyncio.Future[Answer]") -> None:
        async def send_copy() -> Answer:
            started = self.observer.begin(shadow.key)
            self.activator.begin(shadow.key)
            answer = None
            try:
                answer = await self.send(shadow, method, body, metadata, timeout)
                return answer
            finally:
                self.activator.end(shadow.key)
                self.observer.end(shadow.key, started, answer is not None and not answer.server_error)

        self.mirror.submit(ShadowJob(table.key, shadow.revision, "grpc", f"{SERVICE}/{method}", send_copy, live))

