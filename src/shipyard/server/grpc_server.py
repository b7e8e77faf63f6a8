"""gRPC over this package's HTTP/2 (``http2.py``): message framing, methods, status, deadlines.

What a gRPC client needs from a server: ``POST /package.Service/Method`` with
``content-type: application/grpc``, length-prefixed messages (gzip or deflate when the client
compresses them), answers with ``grpc-status`` / ``grpc-message`` trailers, ``grpc-timeout``
deadlines, cancellation by RST_STREAM, unary and bidirectional-streaming methods, metadata, and a
graceful stop (GOAWAY, then in-flight calls finish). Methods are plain coroutines:

    async def Method(request, call) -> response                     # unary
    async def Method(requests: AsyncIterator, call) -> AsyncIterator  # streaming

and fail by raising :class:`GrpcError` (or anything the ``errors`` hook maps to one).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

from shipyard import logformat, tracing
from shipyard.server.http2 import ErrorCode, Http2Connection, Stream, hpack_literal, hpack_status

log = logging.getLogger("shipyard.server")


class GrpcStatus(IntEnum):
    """gRPC status codes (the numbers every gRPC library uses)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: Codes that mean the server failed (a traced call's span is marked failed); the rest are the caller's.
SERVER_FAILURES = frozenset({GrpcStatus.UNKNOWN, GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.UNIMPLEMENTED,
                             GrpcStatus.INTERNAL, GrpcStatus.UNAVAILABLE, GrpcStatus.DATA_LOSS})


class GrpcError(Exception):
    """A call's failure: its status code and message, as the client will read them."""

    def __init__(self, code: GrpcStatus, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Call:
    """What a method knows of its call besides the request."""

    method: str
    metadata: dict[str, str]
    deadline: float | None = None  # loop.time() by which the answer is due


@dataclass
class Method:
    """One RPC: how to parse its requests and serialize its answers, and the coroutine that answers."""

    request_type: Any
    handler: Callable[..., Any]
    streaming: bool = False


@dataclass
class _Incoming:
    """A stream's state on the gRPC side."""

    path: str
    method: Method | None
    call: Call
    buffer: bytearray = field(default_factory=bytearray)
    messages: asyncio.Queue[bytes | None] | None = None  # streaming calls
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    headers_sent: bool = False
    answered: bool = False


_HEADERS_OK = hpack_status(200) + hpack_literal(b"content-type", b"application/grpc") \
    + hpack_literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
_TRAILERS_OK = hpack_literal(b"grpc-status", b"0")
_PREFIX = struct.Struct(">BI")
#: Requests a streaming call may have waiting for its method (a client that never reads is cut off).
MAX_QUEUED_MESSAGES = 1024
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: Metadata gRPC itself uses; methods see the rest.
_RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                       "user-agent", "grpc-message-type"})
ErrorMapper = Callable[[Exception], "GrpcError | None"]


def status_trailers(code: GrpcStatus, message: str) -> bytes:
    """``grpc-status`` and a percent-encoded ``grpc-message`` (as the gRPC HTTP/2 spec asks)."""
    block = hpack_literal(b"grpc-status", str(int(code)).encode())
    if message:
        block += hpack_literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    return block


def parse_timeout(value: str) -> float:
    """``grpc-timeout`` (``100m``, ``5S``...) in seconds."""
    digits = value[:-1]
    # isascii: str.isdigit() also accepts digits int() refuses ("²") or reads (Arabic-Indic "١")
    if len(value) < 2 or value[-1] not in _TIMEOUT_UNITS or not (digits.isascii() and digits.isdigit()) \
            or len(value) > 9:
        raise GrpcError(GrpcStatus.INVALID_ARGUMENT, f"bad grpc-timeout header {value!r}")
    return int(digits) * _TIMEOUT_UNITS[value[-1]]


class GrpcConnection(Http2Connection):
    """One client connection of a :class:`GrpcServer`."""

    def __init__(self, server: "GrpcServer") -> None:
        super().__init__()
        self.server = server

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        if self.server.stopping:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.connections.discard(self)

    # -- streams in ------------------------------------------------------------------------
    def stream_opened(self, stream: Stream) -> None:
        headers = stream.headers
        path = headers.get(":path", "")
        method = self.server.methods.get(path)
        metadata = {k: v for k, v in headers.items() if k[:1] != ":" and k not in _RESERVED}  # k may be ""
        incoming = _Incoming(path, method, Call(path.lstrip("/"), metadata))
        stream.state = incoming
        problem = self._refusal(headers, method, path)
        if problem is not None:
            self._answer_error(stream, problem)
            return
        timeout = headers.get("grpc-timeout")
        if timeout is not None:
            try:
                seconds = parse_timeout(timeout)
            except GrpcError as exc:
                self._answer_error(stream, exc)
                return
            loop = asyncio.get_running_loop()
            incoming.call.deadline = loop.time() + seconds
            incoming.timer = loop.call_later(seconds, self._deadline_passed, stream)
        assert method is not None
        if method.streaming:
            incoming.messages = asyncio.Queue()
            stream.task = asyncio.get_running_loop().create_task(self._run_streaming(stream, incoming, method))

    def _refusal(self, headers: dict[str, str], method: Method | None, path: str) -> GrpcError | None:
        if headers.get(":method") != "POST":
            return GrpcError(GrpcStatus.UNIMPLEMENTED, f"gRPC calls are POST, not {headers.get(':method')}")
        if headers.get("content-type", "").split(";")[0].strip() not in ("application/grpc", "application/grpc+proto"):
            return GrpcError(GrpcStatus.INTERNAL, "content-type must be application/grpc (this port speaks gRPC; "
                             "use the HTTP port for REST)")
        encoding = headers.get("grpc-encoding", "identity")
        if encoding not in ("identity", "gzip", "deflate"):
            return GrpcError(GrpcStatus.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported "
                             "(identity, gzip and deflate are)")
        if method is None:
            return GrpcError(GrpcStatus.UNIMPLEMENTED, f"method {path!r} is not served here")
        return None

    def stream_data(self, stream: Stream, data: bytes) -> None:
        incoming: _Incoming = stream.state  # type: ignore[assignment]
        if incoming.answered:
            return
        incoming.buffer += data
        if len(incoming.buffer) > self.server.max_message + 5 and incoming.messages is None:
            self._answer_error(stream, self._too_large(len(incoming.buffer) - 5))
            return
        if incoming.messages is not None:
            try:
                for message in self._take_messages(stream, incoming):
                    incoming.messages.put_nowait(message)
                if incoming.messages.qsize() > MAX_QUEUED_MESSAGES:
                    raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, f"over {MAX_QUEUED_MESSAGES} requests of this "
                                    "stream wait for the model; send the next ones as answers arrive")
            except GrpcError as exc:
                self._answer_error(stream, exc)

    def stream_end(self, stream: Stream) -> None:
        incoming: _Incoming = stream.state  # type: ignore[assignment]
        if incoming.answered:
            return
        if incoming.messages is not None:
            if incoming.buffer:
                self._answer_error(stream, GrpcError(GrpcStatus.INTERNAL, "the stream ended inside a message"))
                return
            incoming.messages.put_nowait(None)
            return
        try:
            messages = self._take_messages(stream, incoming)
            if len(messages) != 1 or incoming.buffer:
                raise GrpcError(GrpcStatus.INTERNAL, f"a unary call carries one request message, not "
                                f"{len(messages)}{' and a partial one' if incoming.buffer else ''}")
        except GrpcError as exc:
            self._answer_error(stream, exc)
            return
        assert incoming.method is not None
        stream.task = asyncio.get_running_loop().create_task(
            self._run_unary(stream, incoming, incoming.method, messages[0]))

    def stream_reset(self, stream: Stream) -> None:
        incoming: _Incoming = stream.state  # type: ignore[assignment]
        if incoming.timer is not None:
            incoming.timer.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    def _take_messages(self, stream: Stream, incoming: _Incoming) -> list[bytes]:
        """Whole length-prefixed messages at the front of the buffer, decompressed."""
        buffer, messages = incoming.buffer, []
        while len(buffer) >= 5:
            compressed, size = _PREFIX.unpack_from(buffer)
            if size > self.server.max_message:
                raise self._too_large(size)
            if len(buffer) < 5 + size:
                break
            message = bytes(buffer[5:5 + size])
            del buffer[:5 + size]
            if compressed:
                message = self._decompress(stream, message)
            messages.append(message)
        return messages

    def _decompress(self, stream: Stream, message: bytes) -> bytes:
        encoding = stream.headers.get("grpc-encoding", "identity")
        if encoding == "identity":
            raise GrpcError(GrpcStatus.INTERNAL, "a compressed message without a grpc-encoding header")
        window = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(window)
        try:
            data = inflater.decompress(message, self.server.max_message + 1)
        except zlib.error as exc:
            raise GrpcError(GrpcStatus.INTERNAL, f"cannot decompress a {encoding} message: {exc}") from None
        if len(data) > self.server.max_message or inflater.unconsumed_tail:
            raise self._too_large(len(data))
        if not inflater.eof:  # a truncated stream would otherwise parse as a shorter message
            raise GrpcError(GrpcStatus.INTERNAL, f"cannot decompress a {encoding} message: it ends early")
        return data

    def _too_large(self, size: int) -> GrpcError:
        return GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, f"received message larger than max ({size} vs. "
                         f"{self.server.max_message}); raise it with --max-request-size")

    # -- calls -----------------------------------------------------------------------------
    async def _run_unary(self, stream: Stream, incoming: _Incoming, method: Method, payload: bytes) -> None:
        try:
            with self.server.observe(incoming.call) as observed:
                try:
                    request = method.request_type.FromString(payload)
                except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                    raise GrpcError(GrpcStatus.INTERNAL, f"cannot parse the request message: {exc}") from None
                try:
                    response = await method.handler(request, incoming.call)
                except (GrpcError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                    raise self.server.as_grpc_error(exc) from None
                body = response.SerializeToString()
                observed.code = GrpcStatus.OK
        except asyncio.CancelledError:
            if incoming.timed_out:
                self._answer_error(stream, GrpcError(GrpcStatus.DEADLINE_EXCEEDED, "deadline exceeded"))
            return
        except GrpcError as exc:
            self._answer_error(stream, exc)
            return
        self._answer(stream, incoming, body)

    async def _run_streaming(self, stream: Stream, incoming: _Incoming, method: Method) -> None:
        queue = incoming.messages
        assert queue is not None

        async def requests() -> AsyncIterator[Any]:
            while True:
                message = await queue.get()
                if message is None:
                    return
                try:
                    yield method.request_type.FromString(message)
                except Exception as exc:  # noqa: BLE001
                    raise GrpcError(GrpcStatus.INTERNAL, f"cannot parse a request message: {exc}") from None

        try:
            with self.server.observe(incoming.call) as observed:
                self.send_headers(stream, _HEADERS_OK)
                incoming.headers_sent = True
                try:
                    async for response in method.handler(requests(), incoming.call):
                        self.send_data(stream, _framed(response.SerializeToString()))
                except (GrpcError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise self.server.as_grpc_error(exc) from None
                observed.code = GrpcStatus.OK
        except asyncio.CancelledError:
            if incoming.timed_out:
                self._finish_call(stream, incoming, status_trailers(GrpcStatus.DEADLINE_EXCEEDED, "deadline exceeded"))
            return
        except GrpcError as error:
            self._finish_call(stream, incoming, status_trailers(error.code, error.message))
            return
        self._finish_call(stream, incoming, _TRAILERS_OK)

    def _answer(self, stream: Stream, incoming: _Incoming, body: bytes) -> None:
        """Headers, the one message and OK trailers: one write when the windows allow."""
        if stream.closed:
            return
        self.send_headers(stream, _HEADERS_OK)
        self.send_data(stream, _framed(body))
        self._finish_call(stream, incoming, _TRAILERS_OK)

    def _finish_call(self, stream: Stream, incoming: _Incoming, trailers: bytes) -> None:
        incoming.answered = True
        if incoming.timer is not None:
            incoming.timer.cancel()
        self.send_headers(stream, trailers, end_stream=True)

    def _answer_error(self, stream: Stream, error: GrpcError) -> None:
        """A trailers-only answer (or trailers after what a streaming call already sent); the call's
        task, if still running, is cancelled."""
        incoming: _Incoming = stream.state  # type: ignore[assignment]
        if incoming.answered:
            return
        if stream.task is not None and not stream.task.done() and stream.task is not asyncio.current_task():
            stream.task.cancel()
        headers = b"" if incoming.headers_sent else _HEADERS_OK
        self._finish_call(stream, incoming, headers + status_trailers(error.code, error.message))

    def _deadline_passed(self, stream: Stream) -> None:
        incoming: _Incoming = stream.state  # type: ignore[assignment]
        incoming.timed_out = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        else:
            self._answer_error(stream, GrpcError(GrpcStatus.DEADLINE_EXCEEDED, "deadline exceeded"))


def _framed(message: bytes) -> bytes:
    return _PREFIX.pack(0, len(message)) + message


class _Observed:
    """The status a call ended with, for its span."""

    __slots__ = ("code", "span")

    def __init__(self, span: Any = None) -> None:
        self.code: GrpcStatus | None = None
        self.span = span

    def __enter__(self) -> "_Observed":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


_UNOBSERVED = _Observed()


class GrpcServer:
    """Serves ``methods`` (``/package.Service/Method`` -> :class:`Method`) on host:port."""

    def __init__(self, methods: dict[str, Method], host: str, port: int, max_message: int,
                 errors: ErrorMapper | None = None) -> None:
        self.methods = methods
        self.host = host
        self.port = port
        self.max_message = max_message
        self.errors = errors
        self.connections: set[GrpcConnection] = set()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None

    async def start(self, reuse_port: bool = False) -> int:
        """Listen; return the bound port. Worker processes share one port with ``reuse_port``."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GrpcConnection(self), self.host, self.port, reuse_address=True, reuse_port=reuse_port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def as_grpc_error(self, exc: Exception) -> GrpcError:
        """The status a method's exception answers with."""
        if isinstance(exc, GrpcError):
            return exc
        mapped = self.errors(exc) if self.errors is not None else None
        if mapped is not None:
            return mapped
        log.error("gRPC call failed", exc_info=exc)
        return GrpcError(GrpcStatus.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}")

    def observe(self, call: Call) -> Any:
        """A context around one call: its server span and bound request id while tracing or JSON
        logs are on; nothing otherwise."""
        if not (tracing.ACTIVE or logformat.ACTIVE):
            return _UNOBSERVED
        return _observed_call(call)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls (GOAWAY), let in-flight ones finish for ``grace`` seconds, then cut them."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        deadline = time.monotonic() + (grace or 0)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.close_with(ErrorCode.NO_ERROR, "server stopping")


class _observed_call:
    """The span of one call (parent from its ``traceparent`` metadata), its ``x-request-id`` bound."""

    def __init__(self, call: Call) -> None:
        self.call = call
        service, _, rpc = call.method.rpartition("/")
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        self._span: Any = None
        self._observed = _Observed()

    def __enter__(self) -> _Observed:
        if logformat.ACTIVE:
            logformat.bind_request(self.call.metadata)
        self._span = tracing.server_span(self.call.method, self.call.metadata, self.attributes, record_errors=False)
        self._observed.span = self._span.__enter__()
        return self._observed

    def __exit__(self, kind: Any, exc: Any, traceback: Any) -> Any:
        span = self._observed.span
        code = self._observed.code
        if code is None:
            if isinstance(exc, GrpcError):
                code = exc.code
            elif isinstance(exc, asyncio.CancelledError):
                code = GrpcStatus.CANCELLED
            else:
                code = GrpcStatus.UNKNOWN if exc is not None else GrpcStatus.OK
        span.set_attribute("rpc.grpc.status_code", int(code))
        if code in SERVER_FAILURES:
            tracing.set_error(span, str(exc) if exc is not None else code.name)
        return self._span.__exit__(kind, exc, traceback)

