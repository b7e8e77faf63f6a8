"""The model server's own HTTP/2 + gRPC transport (server/http2.py, server/grpc_server.py) against
a real ``shipyard serve`` process, with real clients: grpcio (sync and grpc.aio), tritonclient.grpc,
and raw sockets speaking HTTP/2 frames built with ``struct`` and ``hpack.Encoder``.

One server for the module (``--max-request-size 24MiB``) serves custom models:
- ``identity``: returns its input ``input-0`` as ``output-0``;
- ``plus``: an async predict returning ``input-0 + 1``;
- ``slow``: an async predict sleeping ``parameters["seconds"]`` (default 2 s), noting in a file
  which calls started, finished or were cancelled (by their ``tag`` parameter).
Graceful stop has its own server. Wire-compatibility of messages is test_tritonclient_grpc.py's
job; metadata passing into a transformer is test_transformer_serve.py's
(``test_grpc_into_the_transformer``).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import signal
import socket
import struct
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import write_custom_model
from serverproc import ServerProcess, running
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

pytestmark = pytest.mark.integration

MAX_REQUEST = 24 * 1024 * 1024
SERVICE = "/inference.GRPCInferenceService"
BIG = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

IDENTITY = '''
    class Model:
        def load(self):
            pass

        def predict(self, inputs):
            return {"output-0": inputs["input-0"]}
'''

PLUS = '''
    class Model:
        def load(self):
            pass

        async def predict(self, inputs):
            return {"output-0": inputs["input-0"] + 1}
'''

SLOW = '''
    import asyncio

    class Model:
        def load(self):
            pass

        async def predict(self, inputs, parameters):
            tag = str(parameters.get("tag", "-"))
            note(f"started {tag}")
            try:
                await asyncio.sleep(float(parameters.get("seconds", 2.0)))
            except asyncio.CancelledError:
                note(f"cancelled {tag}")
                raise
            note(f"finished {tag}")
            return {"output-0": inputs["input-0"]}
'''


def _slow_source(journal: Path) -> str:
    return (f"JOURNAL = {str(journal)!r}\n\n"
            "def note(line):\n    with open(JOURNAL, 'a') as f:\n        f.write(line + '\\n')\n"
            + textwrap.dedent(SLOW))


@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("grpc_transport_journal") / "slow.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory, journal):
    root = tmp_path_factory.mktemp("grpc_transport")
    folders = [write_custom_model(root / "identity", IDENTITY), write_custom_model(root / "plus", PLUS),
               write_custom_model(root / "slow", _slow_source(journal))]
    with running(*folders, "--max-request-size", "24MiB") as process:
        assert process.grpc_address, process.output
        yield process


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_address, options=BIG) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return Stub(channel)


@pytest.fixture(autouse=True)
def still_serving(server, stub):
    """After every test the server process is up and answers on a long-lived channel."""
    yield
    assert server.process.poll() is None, server.output
    assert output(stub.ModelInfer(request("plus", np.array([[1.5, -2]], np.float32)), timeout=10)).tolist() \
        == [[2.5, -1.0]]


def request(model: str, array: np.ndarray, request_id: str = "", **parameters) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, id=request_id)
    message.inputs.add(name="input-0", datatype="FP32", shape=list(array.shape))
    message.raw_input_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
    for name, value in parameters.items():
        if isinstance(value, str):
            message.parameters[name].string_param = value
        else:
            message.parameters[name].double_param = value
    return message


def output(response: pb.ModelInferResponse) -> np.ndarray:
    assert [(o.name, o.datatype) for o in response.outputs] == [("output-0", "FP32")]
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- deadlines and cancellation ------------------------------------------------------------------


def test_deadline_exceeded_quickly_and_the_call_is_cancelled_on_the_server(stub, journal) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request("slow", np.ones((1, 2)), tag="deadline", seconds=2.0), timeout=0.3)
    elapsed = time.monotonic() - started
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5  # the model would take 2 s
    assert wait_for(lambda: "cancelled deadline" in journal_lines(journal)), journal_lines(journal)
    assert "finished deadline" not in journal_lines(journal)
    # the server answers the next call at once
    started = time.monotonic()
    assert output(stub.ModelInfer(request("identity", np.full((2, 2), 3.0)), timeout=5)).tolist() == [[3, 3], [3, 3]]
    assert time.monotonic() - started < 1.0


def test_the_server_itself_enforces_grpc_timeout(server) -> None:
    """grpcio also times out on its own: a raw client shows the DEADLINE_EXCEEDED comes from the server."""
    client = RawH2(server.grpc_address)
    try:
        started = time.monotonic()
        client.request(1, framed(request("slow", np.ones((1, 1)), tag="raw-deadline", seconds=2.0)),
                       grpc_timeout="300m")
        answer = client.answer(1)
        elapsed = time.monotonic() - started
        assert answer.trailers["grpc-status"] == "4" and answer.trailers["grpc-message"] == "deadline exceeded"
        assert 0.25 < elapsed < 1.8  # the model would take 2 s
    finally:
        client.close()


def test_client_cancellation_stops_the_call_and_the_server_stays_healthy(server, journal) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            stub = Stub(channel)
            call = stub.ModelInfer(request("slow", np.ones((1, 1)), tag="cancel-me", seconds=1.5), timeout=10)
            assert await asyncio.to_thread(wait_for, lambda: "started cancel-me" in journal_lines(journal))
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.to_thread(wait_for, lambda: "cancelled cancel-me" in journal_lines(journal))
            # the same channel (the same HTTP/2 connection) goes on
            answer = await stub.ModelInfer(request("plus", np.array([[7.0]])), timeout=5)
            assert output(answer).tolist() == [[8.0]]

    asyncio.run(main())
    time.sleep(1.6)
    assert "finished cancel-me" not in journal_lines(journal)


# -- compression and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(server, compression) -> None:
    array = np.tile(np.arange(1000, dtype=np.float32), (300, 1))  # 1.2 MB that compresses well
    with grpc.insecure_channel(server.grpc_address, options=BIG, compression=compression) as channel:
        answer = Stub(channel).ModelInfer(request("identity", array), timeout=20)
        assert output(answer).tobytes() == array.tobytes()
        # and per call, over the channel's choice
        answer = Stub(channel).ModelInfer(request("plus", array[:2]), timeout=20, compression=grpc.Compression.Gzip)
        assert np.array_equal(output(answer), array[:2] + 1)


TOO_LARGE = re.compile(r"received message larger than max \((\d+) vs\. 25165824\); raise it with --max-request-size")


def test_request_over_max_request_size_is_resource_exhausted(stub) -> None:
    big = np.zeros(MAX_REQUEST // 4 + 1000, np.float32)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request("identity", big), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    match = TOO_LARGE.fullmatch(error.value.details())
    assert match and int(match.group(1)) > MAX_REQUEST, error.value.details()
    # just under the limit is served
    fits = np.arange(MAX_REQUEST // 4 - 10_000, dtype=np.float32)
    assert output(stub.ModelInfer(request("identity", fits), timeout=30)).tobytes() == fits.tobytes()


def test_compressed_request_inflating_over_the_limit_is_resource_exhausted(stub) -> None:
    """A gzip bomb: 25 KB on the wire, 25 MB inflated; the server stops inflating at the limit."""
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request("identity", np.zeros(MAX_REQUEST // 4 + 1000, np.float32)), timeout=30,
                        compression=grpc.Compression.Gzip)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.details() == ("received message larger than max (25165825 vs. 25165824); "
                                     "raise it with --max-request-size")


def test_stream_message_over_the_limit_is_resource_exhausted(stub) -> None:
    big = request("identity", np.zeros(MAX_REQUEST // 4 + 1000, np.float32))
    size = big.ByteSize()
    with pytest.raises(grpc.RpcError) as error:
        list(stub.ModelStreamInfer(iter([request("plus", np.zeros((1, 1))), big]), timeout=30))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.details() == (f"received message larger than max ({size} vs. 25165824); "
                                     "raise it with --max-request-size")


def test_large_tensors_both_ways(stub) -> None:
    """20 MB each way: far past the stream (4 MiB) and connection windows and grpcio's own."""
    array = np.random.default_rng(1).standard_normal(5_000_000).astype(np.float32)
    answer = stub.ModelInfer(request("identity", array.reshape(1000, 5000)), timeout=60)
    assert answer.outputs[0].shape == [1000, 5000]
    assert answer.raw_output_contents[0] == array.tobytes()


def test_large_tensors_concurrently_on_one_connection(server) -> None:
    arrays = [np.full((2_000_000,), i + 0.5, np.float32) for i in range(4)]  # 8 MB each, 32 MB in flight

    async def main() -> list[bytes]:
        async with grpc.aio.insecure_channel(server.grpc_address, options=BIG) as channel:
            stub = Stub(channel)
            answers = await asyncio.gather(*(stub.ModelInfer(request("identity", a), timeout=60) for a in arrays))
            return [answer.raw_output_contents[0] for answer in answers]

    assert asyncio.run(main()) == [a.tobytes() for a in arrays]


def test_large_tensor_with_tritonclient(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        array = np.arange(2_500_000, dtype=np.float32).reshape(2500, 1000)  # 10 MB
        tensor = grpcclient.InferInput("input-0", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        result = client.infer("identity", [tensor], client_timeout=60)
        assert np.array_equal(result.as_numpy("output-0"), array)
    finally:
        client.close()


# -- unknown methods -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{SERVICE}/Nope", "/grpc.health.v1.Health/Check",
                                  "/inference.GRPCInferenceService", f"{SERVICE}/ModelInfer/extra"])
def test_unknown_methods_are_unimplemented(channel, path: str) -> None:
    call = channel.unary_unary(path)  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as error:
        call(b"", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.value.details() == f"method '{path}' is not served here"


# -- concurrency ----------------------------------------------------------------------------------


def test_300_concurrent_calls_on_one_channel_and_on_several(server) -> None:
    async def calls(stub, count: int, offset: int) -> list[bool]:
        arrays = [np.array([[offset + i, -(offset + i)]], np.float32) for i in range(count)]
        answers = await asyncio.gather(*(stub.ModelInfer(request("plus", a, request_id=f"r{offset + i}"), timeout=30)
                                         for i, a in enumerate(arrays)))
        return [answer.id == f"r{offset + i}" and np.array_equal(output(answer), arrays[i] + 1)
                for i, answer in enumerate(answers)]

    async def main() -> tuple[list[bool], list[bool]]:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            one = await calls(Stub(channel), 300, 0)
        channels = [grpc.aio.insecure_channel(server.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]
        try:
            several = await asyncio.gather(*(calls(Stub(c), 75, 1000 * (k + 1)) for k, c in enumerate(channels)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        return one, [ok for group in several for ok in group]

    one, several = asyncio.run(main())
    assert one == [True] * 300
    assert several == [True] * 300


def test_more_calls_in_flight_than_the_stream_limit(server, journal) -> None:
    """1,100 calls that each take 0.5 s on one channel: over the server's 1,024 concurrent streams,
    so grpcio must queue (or retry refused streams); every call still succeeds."""
    count = 1100

    async def main() -> list[tuple[str, int]]:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            stub = Stub(channel)
            answers = await asyncio.gather(*(
                stub.ModelInfer(request("slow", np.array([[i]], np.float32), request_id=str(i), seconds=0.5,
                                        tag=f"many-{i}"), timeout=30)
                for i in range(count)))
            return [(answer.id, int(output(answer)[0][0])) for answer in answers]

    started = time.monotonic()
    assert asyncio.run(main()) == [(str(i), i) for i in range(count)]
    assert time.monotonic() - started < 10
    finished = {line for line in journal_lines(journal) if line.startswith("finished many-")}
    assert len(finished) == count


# -- streaming ------------------------------------------------------------------------------------


def test_stream_of_50_in_order_with_an_error_in_the_middle(stub) -> None:
    requests = [request("plus", np.array([[i]], np.float32), request_id=f"s{i}") for i in range(50)]
    requests[25] = request("missing", np.array([[25]], np.float32), request_id="s25")
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert len(responses) == 50
    for i, response in enumerate(responses):
        if i == 25:
            assert response.error_message == ("model 'missing' not found; this server has: "
                                              "identity, plus, slow")
            assert not response.HasField("infer_response")
        else:
            assert response.error_message == ""
            assert response.infer_response.id == f"s{i}"
            assert output(response.infer_response).tolist() == [[i + 1.0]]


def test_stream_answers_as_requests_come(server) -> None:
    """Bidirectional: each answer arrives before the next request is sent."""
    async def main() -> list[float]:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            call = Stub(channel).ModelStreamInfer(timeout=30)
            seen = []
            for i in range(10):
                await call.write(request("plus", np.array([[i * 10]], np.float32)))
                response = await asyncio.wait_for(call.read(), 5)
                seen.append(output(response.infer_response)[0][0])
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            return seen

    assert asyncio.run(main()) == [i * 10 + 1.0 for i in range(10)]


# -- protocol abuse over raw sockets -------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, END_HEADERS = 0x1, 0x4


def h2frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def framed(message) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


class RawH2:
    """A hand-made HTTP/2 client (prior knowledge, cleartext)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + h2frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self.sock.close()

    def request(self, stream_id: int, body: bytes, path: str = f"{SERVICE}/ModelInfer",
                content_type: str = "application/grpc", **extra: str) -> None:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
                   ("content-type", content_type), ("te", "trailers")]
        headers += [(name.replace("_", "-"), value) for name, value in extra.items()]
        self.sock.sendall(h2frame(HEADERS, END_HEADERS, stream_id, self.encoder.encode(headers))
                          + h2frame(DATA, END_STREAM, stream_id, body))

    def read_frame(self, timeout: float = 5):
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    head, self.buffer = self.buffer[:9 + length], self.buffer[9 + length:]
                    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, head[9:]
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk

    def answer(self, stream_id: int) -> "Answer":
        answer = Answer()
        while True:
            got = self.read_frame()
            assert got is not None, f"closed before stream {stream_id} ended: {answer.__dict__}"
            kind, flags, sid, payload = got
            if sid != stream_id:
                continue
            if kind == HEADERS:
                assert flags & END_HEADERS  # this server's answers fit one frame here
                answer.blocks.append(dict(self.decoder.decode(payload)))
            elif kind == DATA:
                answer.data += payload
            elif kind == RST_STREAM:
                answer.reset = struct.unpack(">I", payload)[0]
                return answer
            if flags & END_STREAM:
                return answer

    def goaway(self) -> tuple[int, bytes]:
        """The GOAWAY's error code and debug data; the connection must close after it."""
        while True:
            got = self.read_frame()
            assert got is not None, "closed without GOAWAY"
            if got[0] == GOAWAY:
                assert self.read_frame() is None, "the connection stayed open after GOAWAY"
                return struct.unpack(">I", got[3][4:8])[0], got[3][8:]


class Answer:
    def __init__(self) -> None:
        self.blocks: list[dict[str, str]] = []
        self.data = b""
        self.reset: int | None = None

    @property
    def trailers(self) -> dict[str, str]:
        return self.blocks[-1]


def test_http1_request_on_the_grpc_port_gets_goaway(server, stub) -> None:
    host, port = server.grpc_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/plus/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        received = b""
        while chunk := sock.recv(65536):  # read to the close
            received += chunk
    goaway = received[received.index(bytes([GOAWAY, 0, 0, 0, 0, 0])) - 3:]
    length = int.from_bytes(goaway[:3], "big")
    payload = goaway[9:9 + length]
    assert struct.unpack(">II", payload[:8]) == (0, 1)  # no stream processed, PROTOCOL_ERROR
    assert payload[8:] == b"not an HTTP/2 client preface (this port speaks gRPC; use the HTTP port for REST)"
    assert output(stub.ModelInfer(request("identity", np.array([[4.0]])), timeout=5)).tolist() == [[4.0]]


@pytest.mark.parametrize("bad, code, debug", [
    (h2frame(DATA, 0, 0, b"hello"), 1, b"DATA on idle stream 0"),
    (h2frame(PING, 0, 0, b"1234567"), 6, b"a PING frame carries 8 bytes on stream 0"),
    (h2frame(PING, 0, 3, b"12345678"), 6, b"a PING frame carries 8 bytes on stream 0"),
    (h2frame(HEADERS, END_HEADERS, 0, b"\x82"), 1, b"HEADERS on stream 0"),
    (h2frame(SETTINGS, 0, 1, b""), 1, b"SETTINGS on a stream"),
])
def test_bad_frames_get_goaway_and_close(server, stub, bad: bytes, code: int, debug: bytes) -> None:
    client = RawH2(server.grpc_address)
    try:
        client.sock.sendall(bad)
        assert client.goaway() == (code, debug)
    finally:
        client.close()


def test_ping_is_answered_on_a_working_connection(server) -> None:
    client = RawH2(server.grpc_address)
    try:
        client.sock.sendall(h2frame(PING, 0, 0, b"pingpong"))
        while (got := client.read_frame()) is not None and got[0] != PING:
            pass
        assert got == (PING, 1, 0, b"pingpong")
        client.request(1, framed(request("identity", np.array([[9.0]]))))
        answer = client.answer(1)
        assert answer.trailers == {"grpc-status": "0"}
        assert output(pb.ModelInferResponse.FromString(answer.data[5:])).tolist() == [[9.0]]
    finally:
        client.close()


def test_text_plain_content_type_is_internal(server) -> None:
    client = RawH2(server.grpc_address)
    try:
        client.request(1, b"{}", content_type="text/plain")
        answer = client.answer(1)
        assert answer.data == b"" and len(answer.blocks) == 1  # trailers only
        trailers = answer.trailers
        assert trailers[":status"] == "200" and trailers["grpc-status"] == "13"
        assert unquote(trailers["grpc-message"]) == ("content-type must be application/grpc (this port speaks "
                                                     "gRPC; use the HTTP port for REST)")
        # the connection is still good for a real call
        client.request(3, framed(request("plus", np.array([[1.0]]))))
        assert client.answer(3).trailers == {"grpc-status": "0"}
    finally:
        client.close()


def test_unsupported_grpc_encoding_is_unimplemented(server) -> None:
    client = RawH2(server.grpc_address)
    try:
        client.request(1, framed(request("plus", np.array([[1.0]]))), grpc_encoding="snappy")
        trailers = client.answer(1).trailers
        assert trailers["grpc-status"] == "12"
        assert unquote(trailers["grpc-message"]) == ("grpc-encoding 'snappy' is not supported "
                                                     "(identity, gzip and deflate are)")
    finally:
        client.close()


def test_garbage_message_is_internal(server) -> None:
    client = RawH2(server.grpc_address)
    try:
        client.request(1, struct.pack(">BI", 0, 4) + b"\xff\xff\xff\xff")
        trailers = client.answer(1).trailers
        assert trailers["grpc-status"] == "13"
        assert unquote(trailers["grpc-message"]).startswith("cannot parse the request message")
        body = gzip.compress(pb.ServerLiveRequest().SerializeToString() + b"")
        client.request(3, struct.pack(">BI", 1, len(body)) + body, path=f"{SERVICE}/ServerLive",
                       grpc_encoding="gzip")
        answer = client.answer(3)
        assert answer.trailers == {"grpc-status": "0"}
        assert pb.ServerLiveResponse.FromString(answer.data[5:]).live is True
    finally:
        client.close()


# -- graceful stop --------------------------------------------------------------------------------


def test_sigterm_lets_the_call_in_flight_finish(tmp_path: Path, start_server) -> None:
    journal = tmp_path / "slow.log"
    folder = write_custom_model(tmp_path / "slow", _slow_source(journal))
    process: ServerProcess = start_server(folder)
    address = process.grpc_address
    result: dict[str, object] = {}

    def call() -> None:
        with grpc.insecure_channel(address) as channel:
            try:
                response = Stub(channel).ModelInfer(request("slow", np.array([[6.0, 7.0]]), tag="drain",
                                                            seconds=1.5), timeout=20)
                result["values"] = output(response).tolist()
            except grpc.RpcError as exc:  # pragma: no cover - the failure is reported below
                result["error"] = (exc.code(), exc.details())

    thread = threading.Thread(target=call)
    thread.start()
    assert wait_for(lambda: "started drain" in journal_lines(journal)), process.output
    sent = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    host, port = address.rsplit(":", 1)
    # while it drains, the gRPC port takes no new connections
    assert wait_for(lambda: _refused(host, int(port)), timeout=1.0), "the gRPC listener stayed open"
    assert process.process.poll() is None  # still finishing the call
    thread.join(20)
    assert result == {"values": [[6.0, 7.0]]}
    assert time.monotonic() - sent < 3.0
    assert process.wait_exit(20) == 0, process.output
    assert journal_lines(journal) == ["started drain", "finished drain"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
