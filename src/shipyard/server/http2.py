"""HTTP/2 server connections (RFC 9113) for the model server's gRPC endpoint.

Why not grpcio's server: its asyncio server spends about 250 µs of CPU per unary call before any
of our code runs, and its threaded server about 125 µs plus a hop into the event loop; a tiny
model's whole predict costs 100 µs (docs/performance.md). This module is the HTTP/2 a gRPC server
needs, on the same event loop as the REST server: frames, HPACK (decoding by the ``hpack``
package, with a cache for the header blocks clients repeat on every call), flow control both
ways, stream limits, PING, GOAWAY and draining. It knows nothing of gRPC: ``grpc_server.py``
subclasses :class:`Http2Connection` and answers the streams.

Only cleartext HTTP/2 with prior knowledge is served (what ``grpc.insecure_channel`` speaks).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from enum import IntEnum
from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger("shipyard.server")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTING_HEADER_TABLE_SIZE = 1
SETTING_MAX_CONCURRENT_STREAMS = 3
SETTING_INITIAL_WINDOW_SIZE = 4
SETTING_MAX_FRAME_SIZE = 5
SETTING_MAX_HEADER_LIST_SIZE = 6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
#: What this server lets a client send before it must wait for a WINDOW_UPDATE.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 1024
MAX_HEADER_LIST = 64 * 1024
#: Header blocks remembered per connection (see Http2Connection._decode_headers).
HEADER_CACHE_SIZE = 256

_FRAME_HEADER = struct.Struct(">HBBBI")  # length (3 bytes as 2 + 1), type, flags, stream id


class ErrorCode(IntEnum):
    """HTTP/2 error codes (RST_STREAM, GOAWAY)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9


class ProtocolViolation(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header, then ``payload``."""
    size = len(payload)
    return _FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 §5.1); ``first`` holds the bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman coding (RFC 7541 §6.2.2).
    The server's answers are few and short: not indexing keeps no state to get wrong."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def hpack_status(status: int) -> bytes:
    """``:status``: the static table's entry for 200, else its name with a literal value."""
    if status == 200:
        return b"\x88"
    value = str(status).encode()
    return hpack_int(8, 4) + hpack_int(len(value), 7) + value


def _only_indexed(block: bytes) -> bool:
    """True when every field of a header block is an indexed reference, so decoding it changes no
    decoder state and its result depends only on the dynamic table as it stands."""
    position, size = 0, len(block)
    while position < size:
        byte = block[position]
        if not byte & 0x80:
            return False
        position += 1
        if byte & 0x7F == 0x7F:  # a multi-byte index
            while position < size and block[position] & 0x80:
                position += 1
            position += 1
    return True


class Stream:
    """One HTTP/2 stream: what the client sent so far and what waits for send window."""

    __slots__ = ("id", "headers", "ended", "closed", "send_window", "pending", "pending_end", "recv_unacked",
                 "task", "state")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.headers: dict[str, str] = {}
        self.ended = False  # the client closed its side
        self.closed = False  # we sent END_STREAM or RST_STREAM
        self.send_window = send_window
        self.pending = bytearray()  # DATA payload waiting for window
        self.pending_end: bytes | None = None  # the trailers HEADERS frame(s) to send after it
        self.recv_unacked = 0
        self.task: asyncio.Task[None] | None = None
        self.state: object = None  # the application's own per-stream record


class Http2Connection(asyncio.Protocol):
    """One client connection. Subclasses answer streams by overriding the ``stream_*`` hooks and
    calling :meth:`send_headers`, :meth:`send_data` and :meth:`reset`."""

    def __init__(self, max_frame_in: int = DEFAULT_MAX_FRAME) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_seen = False
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.decoder = Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self._header_cache: dict[bytes, dict[str, str]] = {}
        self._continuing: tuple[int, int, bytearray] | None = None  # stream id, flags, block so far
        self.max_frame_in = max_frame_in
        # the peer's settings
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.recv_unacked = 0
        self.blocked: dict[int, Stream] = {}  # streams with data waiting for window, in order
        self.going_away = False
        self._out: list[bytes] = []
        self._flush_scheduled = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HIHIHI", SETTING_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS,
                               SETTING_INITIAL_WINDOW_SIZE, STREAM_WINDOW,
                               SETTING_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST)
        self.write(frame(SETTINGS, 0, 0, settings)
                   + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for stream in list(self.streams.values()):
            self._forget(stream)
            self.stream_reset(stream)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        try:
            if not self.preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client preface "
                                                "(this port speaks gRPC; use the HTTP port for REST)")
                    return
                if not buffer.startswith(PREFACE):
                    raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client preface "
                                            "(this port speaks gRPC; use the HTTP port for REST)")
                del buffer[:len(PREFACE)]
                self.preface_seen = True
            position, size = 0, len(buffer)
            unpack = _FRAME_HEADER.unpack_from
            while size - position >= 9:
                high, low, kind, flags, stream_id = unpack(buffer, position)
                length = (high << 8) | low
                if length > self.max_frame_in:
                    raise ProtocolViolation(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes is over "
                                            f"the {self.max_frame_in} this server allows")
                end = position + 9 + length
                if end > size:
                    break
                try:
                    self._frame(kind, flags, stream_id & 0x7FFFFFFF, bytes(buffer[position + 9:end]))
                except ProtocolViolation:
                    raise
                except Exception as exc:  # a bug of ours: end this connection cleanly, keep serving others
                    log.exception("HTTP/2 frame handling failed")
                    raise ProtocolViolation(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}") from None
                position = end
                if self.transport is None:
                    return
            del buffer[:position]
        except ProtocolViolation as exc:
            self.close_with(exc.code, str(exc))
        self._flush()

    # -- frames in -------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise ProtocolViolation(ErrorCode.FRAME_SIZE_ERROR, "a PING frame carries 8 bytes on stream 0")
            if not flags & FLAG_ACK:
                self.write(frame(PING, FLAG_ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._forget(stream)
                self.stream_reset(stream)
        elif kind == GOAWAY:
            self.going_away = True
            self._maybe_done()
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        if flags & FLAG_PADDED:
            payload = _strip_padding(payload)
        self.recv_unacked += size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            if stream_id == 0 or stream_id > self.last_stream_id:
                raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already answered or reset: the bytes are dropped
        end = bool(flags & FLAG_END_STREAM)
        if not end:
            stream.recv_unacked += size
            if stream.recv_unacked >= STREAM_WINDOW // 2:
                self.write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.recv_unacked)))
                stream.recv_unacked = 0
        if payload:
            self.stream_data(stream, payload)
        if end and not stream.ended:
            stream.ended = True
            self.stream_end(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & FLAG_PADDED:
            payload = _strip_padding(payload)
        if flags & FLAG_PRIORITY:
            payload = payload[5:]
        if not flags & FLAG_END_HEADERS:
            self._continuing = (stream_id, flags, bytearray(payload))
            return
        self._header_block(stream_id, flags, payload)

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[2]
        block += payload
        if len(block) > MAX_HEADER_LIST:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, f"header block over {MAX_HEADER_LIST} bytes")
        if flags & FLAG_END_HEADERS:
            first_flags = self._continuing[1]
            self._continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode_headers(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: only their END_STREAM matters to gRPC
            if flags & FLAG_END_STREAM and not stream.ended:
                stream.ended = True
                self.stream_end(stream)
            return
        if stream_id <= self.last_stream_id or not stream_id & 1:
            if stream_id % 2 == 0:
                raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, f"client stream ids are odd, not {stream_id}")
            return  # a late frame for a stream already finished
        self.last_stream_id = stream_id
        if self.going_away:
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCode.REFUSED_STREAM)))
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCode.REFUSED_STREAM)))
            return
        stream = Stream(stream_id, self.peer_initial_window)
        stream.headers = headers
        self.streams[stream_id] = stream
        self.stream_opened(stream)
        if flags & FLAG_END_STREAM and not stream.closed:
            stream.ended = True
            self.stream_end(stream)

    def _decode_headers(self, block: bytes) -> dict[str, str]:
        """Decode a header block. Clients send the same block on every call once its fields sit in
        the dynamic table; such a block (indexed references only) is looked up in a cache that is
        emptied whenever a block changes the table."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        try:
            fields = self.decoder.decode(block)
        except HPACKError as exc:
            raise ProtocolViolation(ErrorCode.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        headers: dict[str, str] = {}
        for name, value in fields:
            if name in headers:  # repeated fields join with a comma (RFC 9110 §5.3)
                headers[name] += "," + value
            else:
                headers[name] = value
        if _only_indexed(block):
            if len(self._header_cache) >= HEADER_CACHE_SIZE:
                self._header_cache.clear()
            self._header_cache[block] = headers
        else:
            self._header_cache.clear()
        return headers

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            return
        if len(payload) % 6:
            raise ProtocolViolation(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTING_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(ErrorCode.FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == SETTING_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
        self.write(frame(SETTINGS, FLAG_ACK, 0))
        self._send_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(ErrorCode.FRAME_SIZE_ERROR, "a WINDOW_UPDATE carries 4 bytes")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if increment == 0 or stream.send_window > MAX_WINDOW:
                self.reset(stream, ErrorCode.PROTOCOL_ERROR if increment == 0 else ErrorCode.FLOW_CONTROL_ERROR)
                self.stream_reset(stream)
                return
        self._send_blocked()

    # -- frames out ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes; they go out in one write at the end of this loop tick."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def header_frames(self, stream: Stream, block: bytes, end_stream: bool) -> bytes:
        """HEADERS (and CONTINUATION frames when the block is over the peer's frame size)."""
        end = FLAG_END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            return frame(HEADERS, FLAG_END_HEADERS | end, stream.id, block)
        parts = [frame(HEADERS, end, stream.id, block[:limit])]
        rest = block[limit:]
        while rest:
            piece, rest = rest[:limit], rest[limit:]
            parts.append(frame(CONTINUATION, 0 if rest else FLAG_END_HEADERS, stream.id, piece))
        return b"".join(parts)

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool = False) -> None:
        """Send a header block. Trailers (``end_stream``) wait behind data still held by flow control."""
        if stream.closed:
            return
        frames = self.header_frames(stream, block, end_stream)
        if end_stream and stream.pending:
            stream.pending_end = frames
            return
        self.write(frames)
        if end_stream:
            self._finish(stream)

    def send_data(self, stream: Stream, data: bytes) -> None:
        """Send DATA as far as the windows allow; the rest follows WINDOW_UPDATEs, in order."""
        if stream.closed or not data:
            return
        if stream.pending:
            stream.pending += data
            return
        sent = self._send_now(stream, data)
        if sent < len(data):
            stream.pending += data[sent:]
            self.blocked[stream.id] = stream

    def _send_now(self, stream: Stream, data: bytes | bytearray) -> int:
        allowed = min(len(data), stream.send_window, self.send_window)
        if allowed <= 0:
            return 0
        limit = self.peer_max_frame
        if allowed <= limit:
            self.write(frame(DATA, 0, stream.id, bytes(data[:allowed])))
        else:
            self.write(b"".join(frame(DATA, 0, stream.id, bytes(data[offset:min(offset + limit, allowed)]))
                                for offset in range(0, allowed, limit)))
        stream.send_window -= allowed
        self.send_window -= allowed
        return allowed

    def _send_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            sent = self._send_now(stream, stream.pending)
            del stream.pending[:sent]
            if not stream.pending:
                del self.blocked[stream.id]
                if stream.pending_end is not None:
                    self.write(stream.pending_end)
                    stream.pending_end = None
                    self._finish(stream)

    def reset(self, stream: Stream, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """End a stream abruptly (RST_STREAM)."""
        if stream.closed:
            return
        self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
        self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        stream.closed = True
        if not stream.ended:  # the client may still send: say we need none of it
            self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", ErrorCode.NO_ERROR)))
        self._forget(stream)
        self._maybe_done()

    def _forget(self, stream: Stream) -> None:
        stream.closed = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)

    # -- ending ----------------------------------------------------------------------------
    def go_away(self) -> None:
        """Refuse new streams (GOAWAY) and close once the open ones are answered."""
        if self.transport is None:
            return
        if not self.going_away:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, ErrorCode.NO_ERROR)))
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def close_with(self, code: ErrorCode, message: str) -> None:
        """End the connection on a protocol error, telling the client why."""
        log.info("closing an HTTP/2 connection: %s", message)
        debug = message.encode()[:512]
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + debug))
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # -- for subclasses --------------------------------------------------------------------
    def stream_opened(self, stream: Stream) -> None:
        """A request's headers arrived (``stream.headers``)."""

    def stream_data(self, stream: Stream, data: bytes) -> None:
        """Some of a request's body arrived."""

    def stream_end(self, stream: Stream) -> None:
        """The client finished sending on ``stream``."""

    def stream_reset(self, stream: Stream) -> None:
        """The client reset ``stream`` or the connection was lost: stop working on it."""


def _strip_padding(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolViolation(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]
