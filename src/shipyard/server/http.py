"""A small HTTP/1.1 server on asyncio + httptools for the data plane.

Why not uvicorn: its ASGI layer costs more per request than the whole V2 decode-predict-encode
path of a small model (see docs/performance.md). This server keeps HTTP/1.1 semantics that
clients rely on: keep-alive, pipelining (answered in order), chunked request bodies,
``Expect: 100-continue``, a request-size limit (413), and graceful draining on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import AsyncIterator, Awaitable, Callable

import httptools

from shipyard.server.rest import Request, Response, error_response

log = logging.getLogger("shipyard.server")

App = Callable[[Request], Awaitable[Response]]

#: Pipelined requests buffered per connection before we stop reading from it.
MAX_PENDING = 64
KEEP_ALIVE_SECONDS = 65.0
#: After a 413 we keep reading (and dropping) for this long so the client sees the answer.
LINGER_SECONDS = 2.0
#: A streamed answer ends when this much of it waits in the send buffer (a client that stopped reading).
MAX_STREAM_BUFFER = 1024 * 1024


@dataclass
class StreamResponse(Response):
    """An answer written as ``chunks`` yields them (chunked encoding; server-sent events): ``body`` is
    unused. The stream ends when the iterator does, the client leaves or the server shuts down (then
    the iterator is cancelled, so its ``finally`` runs); the connection closes after it."""

    chunks: AsyncIterator[bytes] | None = None


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


@lru_cache(maxsize=256)
def _start(status: int, content_type: str) -> bytes:
    """Status line, content type and the ``content-length:`` name, made once per pair."""
    return b"".join([_STATUS_LINES.get(status) or _status_line(status), b"content-type: ",
                     content_type.encode(), b"\r\ncontent-length: "])


def render(response: Response, keep_alive: bool, head: bool = False) -> bytes:
    """Serialise a response: status line, headers, body."""
    start = _start(response.status, response.content_type)
    body = response.body
    if keep_alive and not response.headers and not head:
        return b"%s%d\r\n\r\n%s" % (start, len(body), body)
    parts = [start, str(len(body)).encode(), b"\r\n"]
    for name, value in response.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, run the app for each in order, write answers."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request | Response] = deque()
        self.busy = False
        self.discarding = False
        #: The task writing a StreamResponse (cancelled when the client leaves or the server stops).
        self.streaming: asyncio.Task[None] | None = None
        #: loop.time() of the last byte received or answer sent (the server's sweeper closes idle ones)
        self.last_active = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.rejected = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.last_active = self.server.now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.last_active = self.server.now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(error_response(400, "protocol upgrades are not supported; use HTTP/1.1 requests"))
        except httptools.HttpParserError as exc:
            self._refuse(error_response(400, f"malformed HTTP request: {exc}"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.server.max_body:
            self._reject_too_large(int(length))
        elif self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.rejected:
            return
        self.body_size += len(body)
        if self.body_size > self.server.max_body:
            self._reject_too_large(self.body_size)
            return
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.rejected:
            return
        parsed = httptools.parse_url(self.url)
        request = Request(
            method=self.parser.get_method().decode(),
            path=parsed.path.decode("latin-1"),
            headers=self.headers,
            body=b"".join(self.body_parts),
            keep_alive=self.parser.should_keep_alive(),
            query=parsed.query.decode("latin-1") if parsed.query else "",
        )
        self.pending.append(request)
        if len(self.pending) > MAX_PENDING and self.transport is not None:
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # -- request processing ----------------------------------------------------------------
    def _next(self) -> None:
        if not self.pending:
            if self.transport is not None:
                self.transport.resume_reading()
                self.last_active = self.server.now()
            return
        item = self.pending.popleft()
        if isinstance(item, Response):  # a request refused while parsing: answer and close
            self._write(item, keep_alive=False)
            self._linger_close()
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle(item))

    async def _handle(self, request: Request) -> None:
        try:
            response = await self.server.app(request)
        except Exception as exc:  # the app already maps errors; this is a last resort
            log.exception("request failed")
            response = error_response(500, f"internal server error: {type(exc).__name__}")
        if isinstance(response, StreamResponse):
            await self._stream(response, head=request.method == "HEAD")
            return
        keep_alive = request.keep_alive and not self.server.stopping
        self._write(response, keep_alive, head=request.method == "HEAD")
        self.busy = False
        if not keep_alive:
            self._close()
        else:
            self._next()

    def _write(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(render(response, keep_alive, head))

    async def _stream(self, response: StreamResponse, head: bool) -> None:
        """Write a streamed answer chunk by chunk, then close the connection."""
        self.streaming = asyncio.current_task()
        chunks = response.chunks
        try:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            head_lines = [_STATUS_LINES.get(response.status) or _status_line(response.status),
                          f"content-type: {response.content_type}\r\n".encode("latin-1"),
                          b"transfer-encoding: chunked\r\n", b"connection: close\r\n"]
            head_lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in response.headers]
            transport.write(b"".join(head_lines) + b"\r\n")
            if head or chunks is None:
                return
            async for chunk in chunks:
                transport = self.transport
                if transport is None or transport.is_closing():
                    break
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.last_active = self.server.now()
                if transport.get_write_buffer_size() > MAX_STREAM_BUFFER:
                    log.warning("ending a streamed answer: the client does not read it")
                    break
            else:
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            pass  # the client left, or the server stops
        except Exception:
            log.exception("a streamed answer failed")
        finally:
            self.streaming = None
            self.busy = False
            self._close()
            if chunks is not None and hasattr(chunks, "aclose"):
                try:
                    await chunks.aclose()  # type: ignore[attr-defined]  # its finally runs (unsubscribe...)
                except BaseException:  # noqa: BLE001 - already ending; a second cancel must not escape
                    pass

    def _refuse(self, response: Response) -> None:
        """Answer a request that cannot be parsed or accepted, after those already queued."""
        self.discarding = True
        self.rejected = True
        self.pending.append(response)
        if not self.busy:
            self._next()

    def _reject_too_large(self, size: int) -> None:
        limit = self.server.max_body
        self._refuse(
            error_response(413, f"request body of {size} bytes is over this server's limit of {limit} bytes "
                           "(raise it with --max-request-size)")
        )

    def _linger_close(self) -> None:
        """Half-close, then drop what the client still sends, so it can read our answer."""
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- idle and shutdown -----------------------------------------------------------------
    def is_idle(self) -> bool:
        return not self.busy and not self.pending

    def shutdown(self) -> None:
        """Close now if idle; a busy connection closes after its in-flight answer (a stream ends now)."""
        if self.streaming is not None:
            self.streaming.cancel()
        elif self.is_idle():
            self._close()


class HttpServer:
    """Listens on one address and tracks its connections for draining."""

    def __init__(self, app: App, host: str, port: int, max_body: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.max_body = max_body
        self.connections: set[HttpProtocol] = set()
        self.stopping = False
        self.now: Callable[[], float] = time.monotonic
        self._extra: list[asyncio.base_events.Server] = []  # unix-socket listeners (workers)
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.base_events.Server | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on host:port, or on an already bound socket (a worker's SO_REUSEPORT socket)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=2048)
        else:
            self._server = await loop.create_server(
                lambda: HttpProtocol(self), self.host, self.port, reuse_address=True, backlog=2048
            )
        self.port = self._server.sockets[0].getsockname()[1]
        self.now = loop.time
        self._sweeper = loop.create_task(self._close_idle_connections())

    async def _close_idle_connections(self) -> None:
        """Close keep-alive connections idle for KEEP_ALIVE_SECONDS (one sweep for all, not a timer each)."""
        while not self.stopping:
            await asyncio.sleep(min(5.0, KEEP_ALIVE_SECONDS))
            cutoff = self.now() - KEEP_ALIVE_SECONDS
            for connection in list(self.connections):
                if connection.is_idle() and connection.last_active < cutoff:
                    connection.shutdown()

    async def start_unix(self, path: str) -> None:
        """Also serve the same app on a unix socket (sibling workers reach each other there)."""
        loop = asyncio.get_running_loop()
        self._extra.append(await loop.create_unix_server(lambda: HttpProtocol(self), path))

    async def shutdown(self, timeout: float) -> int:
        """Stop accepting, let in-flight requests finish (up to ``timeout``); return connections cut."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for extra in self._extra:
            extra.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            for connection in list(self.connections):
                connection.shutdown()
            await asyncio.sleep(0.02)
        cut = len(self.connections)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        return cut
