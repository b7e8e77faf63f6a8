"""The V2 gRPC service (``inference.GRPCInferenceService``) over the shared data plane."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, AsyncIterator, Awaitable, Iterator, TypeVar

import grpc

from shipyard import logformat, tracing
from shipyard.protocol.errors import InferenceError, NotFound, NotReady
from shipyard.protocol.grpc_codec import decode_grpc_request, encode_grpc_response, parameters_dict
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import add_servicer
from shipyard.protocol.infer import InferRequest
from shipyard.runtimes.base import Model
from shipyard.server.dataplane import DataPlane
from shipyard.server.upstream import with_passed_headers

log = logging.getLogger("shipyard.server")
Result = TypeVar("Result")

#: HTTP status of an InferenceError -> gRPC status code (KServe's mapping).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


class InferenceServicer:
    """Each RPC calls the same DataPlane as REST; errors keep REST's messages."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def _guard(self, context: grpc.aio.ServicerContext, call: Awaitable[Result]) -> Result:
        try:
            return await call
        except InferenceError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception as exc:
            log.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # context.abort always raises

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        try:
            self.dataplane.ready()
        except NotReady:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.dataplane.model_ready(request.name, request.version or None)
        except (NotReady, NotFound):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            return pb.ModelMetadataResponse(**self.dataplane.model_metadata(request.name, request.version or None))

        return await self._guard(context, metadata())

    def _infer(self, request: Any, context: Any = None) -> Awaitable[Any]:
        def decode(model: Model) -> InferRequest:
            decoded = decode_grpc_request(request)
            if context is None:
                return decoded
            return with_passed_headers(model, decoded, dict(context.invocation_metadata() or ()))

        return self.dataplane.infer(request.model_name, request.model_version or None, decode,
                                    encode_grpc_response, protocol="grpc")

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._guard(context, self._infer(request, context))

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """One response per request, in order; an error answers that request and the stream goes on."""
        async for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except InferenceError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
            except Exception as exc:
                log.exception("stream request failed")
                yield pb.ModelStreamInferResponse(error_message=f"internal server error: {type(exc).__name__}: {exc}")

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def statistics() -> Any:
            stats = await self.dataplane.statistics(request.name or None, request.version or None)
            return pb.ModelStatisticsResponse(**stats)

        return await self._guard(context, statistics())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        rows = await self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        parameters = parameters_dict(request.parameters)
        await self._guard(context, self.dataplane.repository_load(request.model_name, parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._guard(context, self.dataplane.repository_unload(request.model_name))
        return pb.RepositoryModelUnloadResponse()


#: gRPC codes that mean the server failed (the span is marked failed); the rest are the caller's doing.
_SERVER_FAILURES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}


@contextmanager
def _call_span(name: str, attributes: dict[str, Any], context: grpc.aio.ServicerContext) -> Iterator[Any]:
    """A call's server span (parent from its ``traceparent`` metadata), its ``x-request-id`` bound."""
    metadata = context.invocation_metadata() or ()
    if logformat.ACTIVE:
        logformat.bind_request(dict(metadata))
    with tracing.server_span(name, metadata, attributes, record_errors=False) as span:
        try:
            yield span
        except BaseException as exc:
            code = context.code() if isinstance(exc, Exception) else grpc.StatusCode.CANCELLED  # client went
            code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAILURES:
                tracing.set_error(span, context.details() or f"{type(exc).__name__}: {exc}")
            raise
        span.set_attribute("rpc.grpc.status_code", 0)


def observed_handler(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with each call of ``method`` (``/package.Service/Method``) in a server span and its
    request id bound (unary-unary and stream-stream calls; others are returned as they are)."""
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _call_span(name, attributes, context):
                return await unary(request, context)

        return handler._replace(unary_unary=unary_unary)  # type: ignore[attr-defined,no-any-return]
    if handler.stream_stream is not None:
        streaming = handler.stream_stream

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with _call_span(name, attributes, context):
                async for response in streaming(requests, context):
                    yield response

        return handler._replace(stream_stream=stream_stream)  # type: ignore[attr-defined,no-any-return]
    return handler


class ObservedCalls(grpc.aio.ServerInterceptor):
    """Installed only while tracing or JSON logs are on: every call through ``observed_handler``."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = observed_handler(method, handler)
        return wrapped


async def start_grpc_server(dataplane: DataPlane, host: str, port: int, max_message: int,
                            reuse_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running loop; return it and its bound port. Worker processes
    share one port with ``reuse_port``."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ], interceptors=[ObservedCalls()] if tracing.ACTIVE or logformat.ACTIVE else None)
    add_servicer(InferenceServicer(dataplane), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port} (in use?)")
    await server.start()
    return server, bound
