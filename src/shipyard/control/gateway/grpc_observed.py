"""The gateway's gRPC calls (grpcio) in server spans, and HTTP statuses as grpcio status codes."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator

import grpc

from shipyard import logformat, tracing

#: HTTP status of an InferenceError -> gRPC status code (KServe's mapping).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}

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
