"""The model server's own HTTP/2 (server/http2.py) and gRPC framing (server/grpc_server.py).

Pure functions first: HPACK integers and literals checked against the ``hpack`` package's
decoder, ``_only_indexed``, ``parse_timeout``, ``status_trailers``, and the header-block cache of
``Http2Connection._decode_headers`` while the dynamic table changes between blocks.

Then a :class:`GrpcServer` with toy methods on a loopback port in a thread of this process,
driven by raw sockets speaking HTTP/2 frames (built here with ``struct`` and ``hpack.Encoder``)
for what grpcio never sends: tiny flow-control windows, SETTINGS changes mid-stream, padding,
PRIORITY and CONTINUATION, client trailers, the stream limit, non-ASCII grpc-timeout values,
truncated gzip messages, and trailers over the peer's frame size. One grpc.aio round trip checks
the toy server against a real client.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import string
import struct
import threading
import time
from urllib.parse import unquote

import hpack
import pytest
from google.protobuf.wrappers_pb2 import BytesValue
from hpack.hpack import decode_integer, encode_integer
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.server import http2
from shipyard.server.grpc_server import GrpcError, GrpcServer, GrpcStatus, Method, parse_timeout, status_trailers
from shipyard.server.http2 import (
    CONTINUATION, DATA, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, GOAWAY, HEADERS, PING,
    PREFACE, RST_STREAM, SETTINGS, WINDOW_UPDATE, ErrorCode, Http2Connection, _only_indexed, frame, hpack_int,
    hpack_literal, hpack_status,
)

# -- HPACK integers and literals ------------------------------------------------------------------


def _values_around(limit: int) -> list[int]:
    around = {0, 1, limit - 1, limit, limit + 1, limit + 126, limit + 127, limit + 128, limit + 129,
              limit + 16_383, limit + 16_384, 2**21 + 5, 2**31 - 1}
    return sorted(v for v in around if v >= 0)


@pytest.mark.parametrize("prefix_bits", range(1, 9))
def test_hpack_int_round_trips_through_hpack_around_the_prefix_limit(prefix_bits: int) -> None:
    limit = (1 << prefix_bits) - 1
    high_bits = (0xFF << prefix_bits) & 0xFF  # every bit above the prefix set: they must survive untouched
    for value in _values_around(limit):
        plain = hpack_int(value, prefix_bits)
        assert plain == bytes(encode_integer(value, prefix_bits)), value
        assert decode_integer(plain, prefix_bits) == (value, len(plain)), value
        marked = hpack_int(value, prefix_bits, high_bits)
        assert marked[0] & high_bits == high_bits
        assert marked[0] & limit == plain[0] & limit and marked[1:] == plain[1:]
        assert decode_integer(marked, prefix_bits) == (value, len(plain))
        assert len(plain) == 1 if value < limit else len(plain) >= 2


def test_hpack_int_sizes() -> None:
    assert hpack_int(30, 5) == b"\x1e"
    assert hpack_int(31, 5) == b"\x1f\x00"
    assert hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert hpack_int(127, 7, 0x80) == b"\xff\x00"


@pytest.mark.parametrize("name_size", [1, 126, 127, 128, 300])
@pytest.mark.parametrize("value_size", [0, 126, 127, 128, 5000])
def test_hpack_literal_decodes_and_leaves_the_table_alone(name_size: int, value_size: int) -> None:
    name = ("x" * name_size).encode()
    value = bytes(random.Random(value_size).choice(b"abc%\x7e ") for _ in range(value_size))
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    block = hpack_literal(name, value) + hpack_literal(b"te", b"trailers")
    assert decoder.decode(block) == [(name.decode(), value.decode()), ("te", "trailers")]
    assert len(decoder.header_table.dynamic_entries) == 0  # literal without indexing: no dynamic entry


@pytest.mark.parametrize("status", [200, 204, 400, 404, 415, 503])
def test_hpack_status(status: int) -> None:
    assert hpack.Decoder().decode(hpack_status(status)) == [(":status", str(status))]


def test_frame_header_carries_24_bit_lengths() -> None:
    payload = b"z" * 70_000
    data = frame(DATA, FLAG_END_STREAM, 0x7FFFFFFF, payload)
    assert data[:9] == (70_000).to_bytes(3, "big") + bytes([DATA, FLAG_END_STREAM]) + b"\x7f\xff\xff\xff"
    assert data[9:] == payload
    assert frame(PING, 1, 0) == b"\x00\x00\x00\x06\x01\x00\x00\x00\x00"


# -- _only_indexed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block, expected", [
    (b"", True),
    (b"\x82\x86\x84", True),  # :method GET, :scheme http, :path /
    (b"\xbe", True),  # the first dynamic entry
    (b"\xff\x01", True),  # index 128: a two-byte index
    (b"\xff\x80\x01\x82", True),  # index 255 (three bytes), then another index
    (b"\xff\x81\x01\xbe\xbf", True),
    (b"\x82\x40\x01a\x01b", False),  # then a literal with incremental indexing
    (b"\xff\x01\x40\x01a\x01b", False),  # a multi-byte index, then a literal
    (b"\x00\x01a\x01b", False),  # literal without indexing
    (b"\x10\x01a\x01b", False),  # literal never indexed
    (b"\x3f\xe1\x1f", False),  # dynamic table size update
    (b"\x20\x82", False),
    (b"\x82\x0f\x2b\x01x", False),  # literal without indexing, indexed name
])
def test_only_indexed(block: bytes, expected: bool) -> None:
    assert _only_indexed(block) is expected


def test_only_indexed_on_encoder_output() -> None:
    encoder = hpack.Encoder()
    headers = [(":method", "POST"), (":path", "/a.B/C"), ("content-type", "application/grpc"), ("x-id", "7")]
    first = encoder.encode(headers)
    assert not _only_indexed(first)  # adds the new fields to the table
    assert _only_indexed(encoder.encode(headers))  # the same fields again: indexes only


# -- the header-block cache -------------------------------------------------------------------------


def test_header_cache_follows_the_dynamic_table() -> None:
    """The same bytes (0xbe, "dynamic entry 62") mean different headers once the table changed."""
    connection = Http2Connection()
    encoder = hpack.Encoder()

    def check(headers: list[tuple[str, str]]) -> bytes:
        block = encoder.encode(headers)
        assert connection._decode_headers(block) == dict(headers)
        return block

    check([("x-a", "1")])
    first = check([("x-a", "1")])
    assert first == b"\xbe" and connection._header_cache[b"\xbe"] == {"x-a": "1"}
    check([("x-b", "2")])  # a new entry 62: x-a moves to 63
    again = check([("x-b", "2")])
    assert again == b"\xbe"
    assert connection._decode_headers(b"\xbf") == {"x-a": "1"}
    assert connection._decode_headers(b"\xbe") == {"x-b": "2"}
    # a table size update that evicts everything, then new entries under the old indexes
    encoder.header_table_size = 0
    check([("x-c", "3")])
    encoder.header_table_size = 4096
    check([("x-d", "4")])
    assert check([("x-d", "4")]) == b"\xbe"


def test_header_cache_over_its_size_stays_correct() -> None:
    connection = Http2Connection()
    encoder = hpack.Encoder()
    headers = [[(f"x-{i}", str(i))] for i in range(40)]  # 40 dynamic entries: indexes 62..101
    for fields in headers:
        assert connection._decode_headers(encoder.encode(fields)) == dict(fields)
    pairs = [(a, b) for a in range(40) for b in range(40) if a != b][:http2.HEADER_CACHE_SIZE + 50]
    for a, b in pairs:  # more indexed-only blocks than the cache holds
        fields = headers[a] + headers[b]
        block = encoder.encode(fields)
        assert _only_indexed(block)
        assert connection._decode_headers(block) == dict(fields)
    assert len(connection._header_cache) <= http2.HEADER_CACHE_SIZE


_NAMES = ["x-request-id", "authorization", "grpc-timeout", "x-a", "x-b", ":path", "content-type", "te"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(["1", "2", "3", "ab" * 40])),
                                   min_size=1, max_size=5),
                          st.booleans(), st.sampled_from([None, 0, 64, 256, 4096])),
                min_size=1, max_size=25))
def test_decoding_any_encoder_sequence_gives_what_was_encoded(blocks) -> None:
    connection = Http2Connection()
    encoder = hpack.Encoder()
    for fields, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = encoder.encode(fields, huffman=huffman)
        expected: dict[str, str] = {}
        for name, value in fields:
            expected[name] = expected[name] + "," + value if name in expected else value
        assert connection._decode_headers(block) == expected
        if _only_indexed(block):  # decoding changed nothing: again, from the cache, the same
            assert connection._decode_headers(block) == expected


def test_bad_header_block_is_a_compression_error() -> None:
    with pytest.raises(http2.ProtocolViolation) as error:
        Http2Connection()._decode_headers(b"\xbe")  # dynamic entry 62 of an empty table
    assert error.value.code == ErrorCode.COMPRESSION_ERROR


# -- grpc-timeout and status trailers ---------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("100m", 0.1), ("5S", 5.0), ("1H", 3600.0), ("2M", 120.0), ("250u", 250e-6), ("9n", 9e-9),
    ("0S", 0.0), ("12345678S", 12345678.0), ("00000001m", 0.001),
])
def test_parse_timeout(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "", "S", "m", "10", "10s", "10x", "-1S", "+1S", "1.5S", " 1S", "1S ", "123456789S", "1 S", "1e3m",
    "\u00b2S",  # superscript two: str.isdigit() is true, int() refuses it
    "\u0661S",  # ARABIC-INDIC DIGIT ONE: int() would read it as 1
    "\uff11S",  # FULLWIDTH DIGIT ONE
])
def test_parse_timeout_refuses_bad_values(value: str) -> None:
    with pytest.raises(GrpcError) as error:
        parse_timeout(value)
    assert error.value.code == GrpcStatus.INVALID_ARGUMENT
    assert repr(value) in error.value.message


def _decoded(block: bytes) -> dict[str, str]:
    return dict(hpack.Decoder().decode(block))


def test_status_trailers_percent_encode_the_message() -> None:
    message = "bad\nline ü 100% done\r\t€ ok: [a] {b} ~"
    trailers = _decoded(status_trailers(GrpcStatus.INVALID_ARGUMENT, message))
    assert trailers["grpc-status"] == "3"
    encoded = trailers["grpc-message"]
    assert encoded == "bad%0Aline %C3%BC 100%25 done%0D%09%E2%82%AC ok: [a] {b} ~"
    assert all(0x20 <= ord(char) <= 0x7E for char in encoded)
    assert unquote(encoded) == message


def test_status_trailers_without_message() -> None:
    assert _decoded(status_trailers(GrpcStatus.OK, "")) == {"grpc-status": "0"}
    assert _decoded(status_trailers(GrpcStatus.UNAUTHENTICATED, "x")) == {"grpc-status": "16", "grpc-message": "x"}


# -- a GrpcServer with toy methods, on a loopback port ----------------------------------------------

STARTED: list[str] = []
CANCELLED: list[str] = []


async def _echo(request: BytesValue, call) -> BytesValue:
    """``size:N`` answers N bytes; ``sleep:S:TAG`` sleeps (noting its cancellation); ``fail:N`` fails
    with an N-character message; anything else is echoed."""
    value = request.value
    if value.startswith(b"size:"):
        size = int(value[5:])
        return BytesValue(value=bytes(i % 251 for i in range(size)))
    if value.startswith(b"sleep:"):
        _, seconds, tag = value.decode().split(":")
        STARTED.append(tag)
        try:
            await asyncio.sleep(float(seconds))
        except asyncio.CancelledError:
            CANCELLED.append(tag)
            raise
        return BytesValue(value=tag.encode())
    if value.startswith(b"fail:"):
        raise GrpcError(GrpcStatus.FAILED_PRECONDITION, "é" + "x" * (int(value[5:]) - 1))
    if value == b"metadata":
        return BytesValue(value=repr(sorted(call.metadata.items())).encode())
    return BytesValue(value=value)


async def _stream(requests, call):
    async for request in requests:
        yield BytesValue(value=request.value[::-1])


METHODS = {"/toy.Service/Echo": Method(BytesValue, _echo),
           "/toy.Service/Stream": Method(BytesValue, _stream, streaming=True)}
MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module")
def toy() -> str:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = GrpcServer(METHODS, "127.0.0.1", 0, MAX_MESSAGE)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _message(value: bytes, compressed: bool = False) -> bytes:
    body = BytesValue(value=value).SerializeToString()
    return struct.pack(">BI", int(compressed), len(body)) + body


class RawH2:
    """A hand-made HTTP/2 client: frames in and out, one HPACK encoder and decoder."""

    def __init__(self, address: str, settings: dict[int, int] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        payload = b"".join(struct.pack(">HI", key, value) for key, value in (settings or {}).items())
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, payload))

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.sock.sendall(frame(kind, flags, stream_id, payload))

    def block(self, path: str = "/toy.Service/Echo", **extra: str) -> bytes:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "toy"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        given = {name.replace("_", "-"): value for name, value in extra.items()}
        headers = [(name, given.pop(name, value)) for name, value in headers] + list(given.items())
        return self.encoder.encode(headers)

    def request(self, stream_id: int, body: bytes, path: str = "/toy.Service/Echo", **extra: str) -> None:
        self.send(HEADERS, FLAG_END_HEADERS, stream_id, self.block(path, **extra))
        self.send(DATA, FLAG_END_STREAM, stream_id, body)

    def read_frame(self, timeout: float = 5) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None when the server closed the connection."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload, self.buffer = self.buffer[9:9 + length], self.buffer[9 + length:]
                    return kind, flags, stream_id, payload
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk

    def answer(self, stream_id: int, timeout: float = 5) -> "Answer":
        """Read until ``stream_id`` ends (END_STREAM or RST_STREAM); decode its header blocks."""
        answer = Answer()
        pending = b""
        while True:
            got = self.read_frame(timeout)
            assert got is not None, f"connection closed before stream {stream_id} ended: {answer}"
            kind, flags, sid, payload = got
            answer.frames.append((kind, flags, sid, len(payload)))
            if kind == GOAWAY:
                answer.goaway = payload
                continue
            if sid != stream_id:
                continue
            if kind in (HEADERS, CONTINUATION):
                pending += payload
                if flags & FLAG_END_HEADERS:
                    answer.blocks.append(dict(self.decoder.decode(pending)))
                    pending = b""
                    if answer.ended:
                        return answer
                if kind == HEADERS and flags & FLAG_END_STREAM:
                    answer.ended = True
                    if flags & FLAG_END_HEADERS:
                        return answer
            elif kind == DATA:
                answer.data += payload
                if flags & FLAG_END_STREAM:
                    return answer
            elif kind == RST_STREAM:
                answer.reset = struct.unpack(">I", payload)[0]
                return answer

    def frames_on(self, stream_id: int, data_bytes: int) -> list[tuple[int, bytes]]:
        """The frames of ``stream_id`` (kind, payload) until ``data_bytes`` of DATA came."""
        got: list[tuple[int, bytes]] = []
        while sum(len(payload) for kind, payload in got if kind == DATA) < data_bytes:
            frame_ = self.read_frame()
            assert frame_ is not None, got
            if frame_[2] == stream_id:
                assert frame_[0] in (HEADERS, DATA), frame_
                got.append((frame_[0], frame_[3]))
        return got

    def goaway(self, timeout: float = 5) -> tuple[int, bytes]:
        """Read to the GOAWAY; return its error code and debug data (and check the close follows)."""
        while True:
            got = self.read_frame(timeout)
            assert got is not None, "closed without GOAWAY"
            if got[0] == GOAWAY:
                last, code = struct.unpack(">II", got[3][:8])
                assert self.read_frame(timeout) is None, "the connection stayed open after GOAWAY"
                return code, got[3][8:]


class Answer:
    def __init__(self) -> None:
        self.blocks: list[dict[str, str]] = []
        self.data = b""
        self.ended = False
        self.reset: int | None = None
        self.goaway: bytes | None = None
        self.frames: list[tuple[int, int, int, int]] = []

    @property
    def trailers(self) -> dict[str, str]:
        return self.blocks[-1]

    def message(self) -> bytes:
        compressed, size = struct.unpack(">BI", self.data[:5])
        assert compressed == 0 and len(self.data) == 5 + size
        return BytesValue.FromString(self.data[5:]).value

    def __repr__(self) -> str:
        return f"Answer(blocks={self.blocks}, data={len(self.data)}B, reset={self.reset}, frames={self.frames})"


def _data_frames(answer: Answer) -> list[int]:
    return [size for kind, _flags, _sid, size in answer.frames if kind == DATA]


def test_toy_server_answers_grpcio(toy: str) -> None:
    grpc = pytest.importorskip("grpc")

    async def main() -> None:
        options = [("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(toy, options=options) as channel:
            echo = channel.unary_unary("/toy.Service/Echo", BytesValue.SerializeToString, BytesValue.FromString)
            stream = channel.stream_stream("/toy.Service/Stream", BytesValue.SerializeToString, BytesValue.FromString)
            assert (await echo(BytesValue(value=b"hi"), timeout=5)).value == b"hi"
            big = await echo(BytesValue(value=b"size:900000"), timeout=10)
            assert big.value == bytes(i % 251 for i in range(900_000))
            zipped = await echo(BytesValue(value=b"z" * 500_000), compression=grpc.Compression.Gzip, timeout=10)
            assert zipped.value == b"z" * 500_000
            metadata = [("x-request-id", "r-1"), ("x-two", "a"), ("x-two", "b"), ("x-data-bin", b"\x00\x01")]
            seen = await echo(BytesValue(value=b"metadata"), metadata=metadata, timeout=5)
            # repeated keys join with a comma; binary values stay base64 (unpadded, as grpcio sends them)
            assert seen.value == repr([("x-data-bin", "AAE"), ("x-request-id", "r-1"), ("x-two", "a,b")]).encode()
            replies = [r.value async for r in stream(iter([BytesValue(value=f"m{i}".encode()) for i in range(20)]))]
            assert replies == [f"m{i}".encode()[::-1] for i in range(20)]
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await echo(BytesValue(value=b"fail:40"), timeout=5)
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error.value.details() == "é" + "x" * 39

    asyncio.run(main())


def test_stream_window_holds_data_and_trailers_until_window_update(toy: str) -> None:
    client = RawH2(toy, {http2.SETTING_INITIAL_WINDOW_SIZE: 10})
    try:
        client.request(1, _message(b"size:1000"))
        first = client.frames_on(1, data_bytes=10)
        assert [(kind, len(payload)) for kind, payload in first] == [(HEADERS, len(first[0][1])), (DATA, 10)]
        with pytest.raises(socket.timeout):  # nothing more (no trailers) while the window is shut
            client.read_frame(timeout=0.3)
        client.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100))
        second = client.frames_on(1, data_bytes=100)
        assert [(kind, len(payload)) for kind, payload in second] == [(DATA, 100)]  # exactly the increment
        with pytest.raises(socket.timeout):
            client.read_frame(timeout=0.2)
        client.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 5000))
        rest = client.answer(1)
        data = first[1][1] + second[0][1] + rest.data
        assert len(data) == 5 + len(BytesValue(value=bytes(1000)).SerializeToString())
        assert BytesValue.FromString(data[5:]).value == bytes(i % 251 for i in range(1000))
        assert rest.trailers == {"grpc-status": "0"}
        assert rest.frames[-1][0] == HEADERS  # trailers after all data
    finally:
        client.close()


def test_connection_window_and_settings_change_mid_stream(toy: str) -> None:
    """The connection window (65,535 until the client raises it) and a SETTINGS change of the initial
    window (RFC 9113 §6.9.2: applies to open streams) both hold and release data."""
    size = 200_000
    client = RawH2(toy, {http2.SETTING_INITIAL_WINDOW_SIZE: 1000})
    try:
        client.request(1, _message(f"size:{size}".encode()))
        received = sum(len(payload) for kind, payload in client.frames_on(1, data_bytes=1000) if kind == DATA)
        assert received == 1000
        with pytest.raises(socket.timeout):
            client.read_frame(timeout=0.2)
        # raising the initial window by SETTINGS opens the stream window to 1,000,000: now the
        # connection window (65,535) is the limit
        client.send(SETTINGS, 0, 0, struct.pack(">HI", http2.SETTING_INITIAL_WINDOW_SIZE, 1_000_000))
        received += sum(len(payload) for kind, payload in client.frames_on(1, data_bytes=65_535 - 1000))
        assert received == 65_535
        with pytest.raises(socket.timeout):
            client.read_frame(timeout=0.3)
        client.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1_000_000))
        answer = client.answer(1)
        message = BytesValue(value=bytes(size)).SerializeToString()
        assert received + len(answer.data) == 5 + len(message)
        assert answer.trailers == {"grpc-status": "0"}
        assert max(_data_frames(answer)) <= http2.DEFAULT_MAX_FRAME
    finally:
        client.close()


def test_larger_peer_frame_size_is_used(toy: str) -> None:
    client = RawH2(toy, {http2.SETTING_MAX_FRAME_SIZE: 100_000, http2.SETTING_INITIAL_WINDOW_SIZE: 1 << 24})
    try:
        client.send(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24))
        time.sleep(0.05)
        client.request(1, _message(b"size:300000"))
        answer = client.answer(1)
        assert max(_data_frames(answer)) == 100_000
        assert answer.message() == bytes(i % 251 for i in range(300_000))
    finally:
        client.close()


def test_padding_priority_and_continuation_in_a_request(toy: str) -> None:
    client = RawH2(toy)
    try:
        block = client.block(x_request_id="padded")
        pieces = [block[:3], block[3:7], block[7:]]
        priority = struct.pack(">IB", 0, 15)
        pad = 7
        client.send(HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, bytes([pad]) + priority + pieces[0] + b"\0" * pad)
        client.send(CONTINUATION, 0, 1, pieces[1])
        client.send(CONTINUATION, FLAG_END_HEADERS, 1, pieces[2])
        body = _message(b"metadata")
        client.send(DATA, FLAG_PADDED, 1, bytes([200]) + body[:4] + b"\0" * 200)
        client.send(DATA, FLAG_PADDED | FLAG_END_STREAM, 1, bytes([0]) + body[4:])
        answer = client.answer(1)
        assert answer.trailers == {"grpc-status": "0"}
        assert answer.message() == repr([("x-request-id", "padded")]).encode()
        assert answer.blocks[0] == {":status": "200", "content-type": "application/grpc",
                                    "grpc-accept-encoding": "identity,deflate,gzip"}
    finally:
        client.close()


def test_client_trailers_end_the_request_and_ping_is_acked(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.send(PING, 0, 0, b"12345678")
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block())
        client.send(DATA, 0, 1, _message(b"trailing"))
        client.send(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, client.encoder.encode([("x-end", "1")]))
        answer = client.answer(1)
        assert answer.message() == b"trailing" and answer.trailers == {"grpc-status": "0"}
        pings = [f for f in answer.frames if f[0] == PING]
        assert pings == [(PING, 1, 0, 8)]
    finally:
        client.close()


def test_stream_limit_refuses_the_stream_over_it(toy: str) -> None:
    client = RawH2(toy)
    try:
        limit = http2.MAX_CONCURRENT_STREAMS
        frames = b"".join(frame(HEADERS, FLAG_END_HEADERS, 2 * i + 1, client.block()) for i in range(limit + 1))
        client.sock.sendall(frames)
        over = 2 * limit + 1
        answer = client.answer(over)
        assert answer.reset == ErrorCode.REFUSED_STREAM and answer.blocks == []
        # the first stream is still open and answers once its request arrives
        client.send(DATA, FLAG_END_STREAM, 1, _message(b"first"))
        assert client.answer(1).message() == b"first"
    finally:
        client.close()


@pytest.mark.parametrize("timeout", ["\u00b2S", "\u0661S", "1.5S"])
def test_bad_grpc_timeout_is_invalid_argument_and_the_connection_lives(toy: str, timeout: str) -> None:
    client = RawH2(toy)
    try:
        client.request(1, _message(b"x"), grpc_timeout=timeout)
        answer = client.answer(1)
        assert answer.trailers["grpc-status"] == str(GrpcStatus.INVALID_ARGUMENT.value), answer
        assert "grpc-timeout" in unquote(answer.trailers["grpc-message"])
        client.request(3, _message(b"after"))
        assert client.answer(3).message() == b"after"
    finally:
        client.close()


def test_deadline_before_the_request_is_complete(toy: str) -> None:
    client = RawH2(toy)
    try:
        started = time.monotonic()
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block(grpc_timeout="100m"))
        answer = client.answer(1)
        elapsed = time.monotonic() - started
        assert answer.trailers == {":status": "200", "content-type": "application/grpc",
                                   "grpc-accept-encoding": "identity,deflate,gzip", "grpc-status": "4",
                                   "grpc-message": "deadline exceeded"}
        assert 0.09 < elapsed < 1.5
        tail = client.read_frame()  # we had not ended our side: the server says it wants no more
        assert tail[:3] == (RST_STREAM, 0, 1) and struct.unpack(">I", tail[3])[0] == ErrorCode.NO_ERROR
    finally:
        client.close()


def test_rst_stream_cancels_the_handler(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.request(1, _message(b"sleep:5:rst-1"))
        deadline = time.monotonic() + 5
        while "rst-1" not in STARTED and time.monotonic() < deadline:
            time.sleep(0.01)
        client.send(RST_STREAM, 0, 1, struct.pack(">I", ErrorCode.CANCEL))
        while "rst-1" not in CANCELLED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "rst-1" in CANCELLED
        client.request(3, _message(b"still here"))
        answer = client.answer(3)
        assert answer.message() == b"still here"
        assert all(sid != 1 for _k, _f, sid, _n in answer.frames)  # nothing more on the reset stream
    finally:
        client.close()


def test_gzip_messages_and_their_failures(toy: str) -> None:
    client = RawH2(toy)
    try:
        payload = BytesValue(value=b"zipped" * 1000).SerializeToString()
        packed = gzip.compress(payload)
        client.request(1, struct.pack(">BI", 1, len(packed)) + packed, grpc_encoding="gzip")
        assert client.answer(1).message() == b"zipped" * 1000
        truncated = packed[:len(packed) // 2]
        client.request(3, struct.pack(">BI", 1, len(truncated)) + truncated, grpc_encoding="gzip")
        answer = client.answer(3)
        assert answer.trailers["grpc-status"] == str(GrpcStatus.INTERNAL.value), answer
        assert unquote(answer.trailers["grpc-message"]) == "cannot decompress a gzip message: it ends early"
        client.request(5, _message(b"x", compressed=True))  # compressed flag, no grpc-encoding
        answer = client.answer(5)
        assert answer.trailers["grpc-status"] == "13"
        assert unquote(answer.trailers["grpc-message"]) == "a compressed message without a grpc-encoding header"
        bomb = gzip.compress(BytesValue(value=bytes(MAX_MESSAGE + 10)).SerializeToString())
        client.request(7, struct.pack(">BI", 1, len(bomb)) + bomb, grpc_encoding="gzip")
        answer = client.answer(7)
        assert answer.trailers["grpc-status"] == "8"
        assert "--max-request-size" in unquote(answer.trailers["grpc-message"])
    finally:
        client.close()


def test_unary_with_two_messages_is_internal(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.request(1, _message(b"a") + _message(b"b"))
        answer = client.answer(1)
        assert answer.trailers["grpc-status"] == "13"
        assert unquote(answer.trailers["grpc-message"]) == "a unary call carries one request message, not 2"
        client.request(3, _message(b"a")[:-1])
        answer = client.answer(3)
        assert unquote(answer.trailers["grpc-message"]) == \
            "a unary call carries one request message, not 0 and a partial one"
    finally:
        client.close()


def test_trailers_over_the_frame_size_use_continuation(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.request(1, _message(b"fail:20000"))
        answer = client.answer(1)
        kinds = [(k, f & FLAG_END_HEADERS) for k, f, sid, _n in answer.frames if sid == 1]
        assert kinds[0] == (HEADERS, 0) and kinds[-1] == (CONTINUATION, FLAG_END_HEADERS)
        assert all(n <= http2.DEFAULT_MAX_FRAME for _k, _f, _s, n in answer.frames)
        assert answer.trailers["grpc-status"] == "9"
        assert unquote(answer.trailers["grpc-message"]) == "é" + "x" * 19_999
    finally:
        client.close()


@pytest.mark.parametrize("bad, code, fragment", [
    (frame(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR, b"DATA on idle stream 0"),
    (frame(DATA, 0, 9, b"x"), ErrorCode.PROTOCOL_ERROR, b"DATA on idle stream 9"),
    (frame(PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR, b"PING"),
    (frame(HEADERS, FLAG_END_HEADERS, 2, b"\x82"), ErrorCode.PROTOCOL_ERROR, b"odd"),
    (frame(HEADERS, FLAG_END_HEADERS, 1, b"\xbe"), ErrorCode.COMPRESSION_ERROR, b"bad header block"),
    (frame(HEADERS, 0, 1, b"\x82") + frame(PING, 0, 0, bytes(8)), ErrorCode.PROTOCOL_ERROR, b"CONTINUATION"),
    (frame(CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"), ErrorCode.PROTOCOL_ERROR, b"CONTINUATION without"),
    (frame(SETTINGS, 0, 0, b"\x00\x04\x00"), ErrorCode.FRAME_SIZE_ERROR, b"multiple of 6"),
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100)), ErrorCode.PROTOCOL_ERROR, b"MAX_FRAME_SIZE"),
    (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31)), ErrorCode.FLOW_CONTROL_ERROR, b"initial window"),
    (frame(WINDOW_UPDATE, 0, 0, b"\x00\x01"), ErrorCode.FRAME_SIZE_ERROR, b"WINDOW_UPDATE"),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), ErrorCode.PROTOCOL_ERROR, b"WINDOW_UPDATE of 0"),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), ErrorCode.FLOW_CONTROL_ERROR, b"over 2^31-1"),
    (frame(DATA, 0, 1, b"x" * (http2.DEFAULT_MAX_FRAME + 1)), ErrorCode.FRAME_SIZE_ERROR, b"16384"),
    (frame(http2.PUSH_PROMISE, 0, 1, bytes(4)), ErrorCode.PROTOCOL_ERROR, b"push"),
    (frame(HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, b"\x09\x82"), ErrorCode.PROTOCOL_ERROR, b"padding"),
])
def test_protocol_errors_end_the_connection_with_goaway(toy: str, bad: bytes, code: int, fragment: bytes) -> None:
    client = RawH2(toy)
    try:
        client.sock.sendall(bad)
        got_code, debug = client.goaway()
        assert (got_code, fragment in debug) == (code, True), debug
    finally:
        client.close()


def test_unknown_frame_types_and_priority_are_ignored(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.send(0x2A, 0xFF, 0, b"whatever")
        client.send(http2.PRIORITY, 0, 5, struct.pack(">IB", 0, 3))
        client.request(1, _message(b"fine"))
        assert client.answer(1).message() == b"fine"
    finally:
        client.close()


def test_settings_are_acked_and_the_server_announces_its_own(toy: str) -> None:
    client = RawH2(toy)
    try:
        first = client.read_frame()
        assert first[0] == SETTINGS and first[1] == 0
        announced = dict(struct.unpack(">HI", first[3][i:i + 6]) for i in range(0, len(first[3]), 6))
        assert announced == {http2.SETTING_MAX_CONCURRENT_STREAMS: http2.MAX_CONCURRENT_STREAMS,
                             http2.SETTING_INITIAL_WINDOW_SIZE: http2.STREAM_WINDOW,
                             http2.SETTING_MAX_HEADER_LIST_SIZE: http2.MAX_HEADER_LIST}
        update = client.read_frame()
        assert update[:3] == (WINDOW_UPDATE, 0, 0)
        assert struct.unpack(">I", update[3])[0] == http2.CONNECTION_WINDOW - http2.DEFAULT_WINDOW
        ack = client.read_frame()
        assert ack == (SETTINGS, 1, 0, b"")
    finally:
        client.close()


def test_not_an_http2_preface(toy: str) -> None:
    host, port = toy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    frames = []
    while received:
        length = int.from_bytes(received[:3], "big")
        frames.append((received[3], received[9:9 + length]))
        received = received[9 + length:]
    assert [kind for kind, _ in frames] == [SETTINGS, WINDOW_UPDATE, GOAWAY]
    goaway = frames[-1][1]
    assert struct.unpack(">II", goaway[:8]) == (0, ErrorCode.PROTOCOL_ERROR)
    assert b"this port speaks gRPC" in goaway[8:]


def test_random_garbage_never_kills_the_server(toy: str) -> None:
    """Random bytes after the preface: each connection ends (or idles), the server keeps answering."""
    rng = random.Random(7)
    for _ in range(30):
        client = RawH2(toy)
        try:
            client.sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(9, 200))))
            client.sock.settimeout(0.2)
            try:
                while client.sock.recv(65536):
                    pass
            except (socket.timeout, ConnectionResetError):
                pass
        finally:
            client.close()
    client = RawH2(toy)
    try:
        client.request(1, _message(string.ascii_letters.encode()))
        assert client.answer(1).message() == string.ascii_letters.encode()
    finally:
        client.close()


def test_empty_header_name_does_not_break_the_connection(toy: str) -> None:
    """A literal field with an empty name used to raise IndexError inside data_received, which
    aborted the whole connection without a GOAWAY."""
    client = RawH2(toy)
    try:
        block = client.block() + b"\x00\x00\x01x"  # literal without indexing: name "", value "x"
        client.send(HEADERS, FLAG_END_HEADERS, 1, block)
        client.send(DATA, FLAG_END_STREAM, 1, _message(b"hi"))
        answer = client.answer(1)
        assert answer.message() == b"hi" and answer.trailers == {"grpc-status": "0"}
        client.request(3, _message(b"again"))
        assert client.answer(3).message() == b"again"
    finally:
        client.close()


def test_streaming_deadline_after_some_answers(toy: str) -> None:
    client = RawH2(toy)
    try:
        started = time.monotonic()
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block("/toy.Service/Stream", grpc_timeout="200m"))
        client.send(DATA, 0, 1, _message(b"abc") + _message(b"de"))
        answer = client.answer(1)  # we never end our side: the deadline ends the call
        elapsed = time.monotonic() - started
        assert 0.19 < elapsed < 1.5
        assert answer.blocks[0][":status"] == "200"
        assert answer.trailers == {"grpc-status": "4", "grpc-message": "deadline exceeded"}
        assert answer.data == _message(b"cba") + _message(b"ed")
        tail = client.read_frame()
        assert tail[:3] == (RST_STREAM, 0, 1) and struct.unpack(">I", tail[3])[0] == ErrorCode.NO_ERROR
    finally:
        client.close()


def test_streaming_message_split_across_frames(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block("/toy.Service/Stream"))
        body = b"".join(_message(f"part{i}".encode()) for i in range(5))
        for offset in range(0, len(body), 3):  # 3-byte DATA frames: prefixes split too
            client.send(DATA, 0, 1, body[offset:offset + 3])
        client.send(DATA, FLAG_END_STREAM, 1, b"")
        answer = client.answer(1)
        assert answer.data == b"".join(_message(f"part{i}".encode()[::-1]) for i in range(5))
        assert answer.trailers == {"grpc-status": "0"}
        client.send(HEADERS, FLAG_END_HEADERS, 3, client.block("/toy.Service/Stream"))
        client.send(DATA, FLAG_END_STREAM, 3, _message(b"whole")[:-2])  # ends inside a message
        answer = client.answer(3)
        assert answer.trailers["grpc-status"] == "13"
        assert unquote(answer.trailers["grpc-message"]) == "the stream ended inside a message"
    finally:
        client.close()


def test_content_types_other_than_grpc_proto_are_refused(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.request(1, _message(b"hi"), content_type="application/grpc+json")
        answer = client.answer(1)
        assert answer.trailers["grpc-status"] == "13"
        assert "content-type must be application/grpc" in unquote(answer.trailers["grpc-message"])
        client.request(3, _message(b"hi"), content_type="application/grpc+proto")
        assert client.answer(3).trailers["grpc-status"] == "0"
    finally:
        client.close()


def test_a_stream_whose_requests_pile_up_is_cut_off(toy: str) -> None:
    """A client that sends far more requests on one stream than the method has taken is told so
    (the server does not queue without bound)."""
    from shipyard.server.grpc_server import MAX_QUEUED_MESSAGES

    client = RawH2(toy)
    try:
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block("/toy.Service/Stream"))
        burst = _message(b"x") * (MAX_QUEUED_MESSAGES + 50)
        for offset in range(0, len(burst), http2.DEFAULT_MAX_FRAME):
            client.send(DATA, 0, 1, burst[offset:offset + http2.DEFAULT_MAX_FRAME])
        answer = client.answer(1)
        assert answer.trailers["grpc-status"] == "8"
        assert f"over {MAX_QUEUED_MESSAGES} requests" in unquote(answer.trailers["grpc-message"])
    finally:
        client.close()


def test_zero_stream_window_update_resets_only_that_stream(toy: str) -> None:
    client = RawH2(toy)
    try:
        client.send(HEADERS, FLAG_END_HEADERS, 1, client.block("/toy.Service/Stream"))
        client.send(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0))
        kinds = []
        while True:
            got = client.read_frame()
            assert got is not None
            kinds.append(got[0])
            if got[0] == http2.RST_STREAM and got[2] == 1:
                assert struct.unpack(">I", got[3])[0] == ErrorCode.PROTOCOL_ERROR
                break
        client.request(3, _message(b"still here"))
        assert client.answer(3).message() == b"still here"
    finally:
        client.close()
