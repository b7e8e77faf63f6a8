"""The framing between the server and an isolated model's worker: every V2 datatype round-trips."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest

from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE
from shipyard.runtimes import tensor_pipe
from shipyard.runtimes.tensor_pipe import FramingError, PipeClosed

NUMERIC = [name for name in DATATYPE_TO_DTYPE if name not in ("BYTES", "BF16")]


def round_trip(tensors: dict[str, np.ndarray], header: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    stream = io.BytesIO()
    tensor_pipe.write(stream, header or {"op": "predict"}, tensors)
    stream.seek(0)
    reader = io.BufferedReader(stream)
    result = tensor_pipe.read(reader)
    assert reader.read() == b"", "one message is read exactly, nothing more"
    return result


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = DATATYPE_TO_DTYPE[datatype]
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.array([info.min, info.max, 0, 1, 7], dtype=dtype)
        return np.resize(values, count).reshape(shape)
    values = np.array([0.5, -1.25, np.inf, -0.0, 65504.0], dtype=dtype)
    return np.resize(values, count).reshape(shape)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("shape", [(5,), (2, 3), (0, 4), (2, 2, 2, 3), ()], ids=str)
def test_numeric_datatypes_round_trip_exactly(datatype, shape):
    array = sample(datatype, shape)
    header, tensors = round_trip({"x": array})
    out = tensors["x"]
    assert header == {"op": "predict"}
    assert out.dtype == array.dtype and out.shape == array.shape
    assert out.tobytes() == array.tobytes()  # bit-exact, including -0.0 and inf
    assert out.flags.writeable, "models may modify their inputs in place"


def test_nan_and_fp16_bits_survive():
    array = np.array([np.nan, 1e-7, 6.1e-5], dtype=np.float16)
    assert round_trip({"h": array})[1]["h"].view(np.uint16).tolist() == array.view(np.uint16).tolist()


def test_bf16_bit_patterns_travel_as_uint16():
    bits = np.array([[0x3F80, 0xC000], [0x7F80, 0x0001]], dtype=np.uint16)  # 1.0, -2.0, inf, denormal
    out = round_trip({"b": bits})[1]["b"]
    assert out.dtype == np.uint16 and out.tolist() == bits.tolist()


def test_big_endian_and_non_contiguous_arrays_arrive_little_endian_and_equal():
    big = np.arange(12, dtype=">i4").reshape(3, 4)
    strided = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    tensors = round_trip({"big": big, "strided": strided})[1]
    assert tensors["big"].tolist() == big.tolist() and tensors["big"].dtype == np.dtype("<i4")
    assert tensors["strided"].tolist() == strided.tolist()


def test_bytes_keep_bytes_and_str_keep_str():
    raw = np.array([[b"a", b"\x00\xff"], [b"", b"long" * 100]], dtype=object)
    text = np.array(["héllo", "", "日本", "\udcff"], dtype=object)  # a lone surrogate survives too
    mixed = np.array([b"raw", "text", 3, None], dtype=object)
    unicode = np.array(["ab", "c"])  # numpy <U2: BYTES, arrives as str objects
    tensors = round_trip({"raw": raw, "text": text, "mixed": mixed, "unicode": unicode})[1]
    assert tensors["raw"].shape == (2, 2) and tensors["raw"].tolist() == raw.tolist()
    assert all(type(item) is bytes for item in tensors["raw"].ravel())
    assert tensors["text"].tolist() == text.tolist()
    assert tensors["mixed"].tolist() == [b"raw", "text", "3", "None"]  # other objects as their text
    assert tensors["unicode"].dtype == object and tensors["unicode"].tolist() == ["ab", "c"]


@pytest.mark.parametrize("shape", [(0,), (0, 3), (1, 0, 2)], ids=str)
def test_empty_bytes_tensors(shape):
    out = round_trip({"e": np.empty(shape, dtype=object)})[1]["e"]
    assert out.shape == shape and out.dtype == object


def test_many_tensors_keep_their_order_names_and_header():
    tensors = {f"t{i}": np.full((i + 1, 2), i, dtype=np.int32) for i in range(5)}
    tensors["s"] = np.array([b"x"], dtype=object)
    header, out = round_trip(tensors, {"op": "predict", "outputs": ["a"], "parameters": {"k": 1.5, "flag": True}})
    assert header == {"op": "predict", "outputs": ["a"], "parameters": {"k": 1.5, "flag": True}}
    assert list(out) == list(tensors)
    for name, array in tensors.items():
        assert out[name].tolist() == array.tolist()


def test_messages_follow_each_other_on_one_stream():
    stream = io.BytesIO()
    for i in range(3):
        tensor_pipe.write(stream, {"n": i}, {"x": np.arange(i, dtype=np.float32)})
    stream.seek(0)
    reader = io.BufferedReader(stream)
    for i in range(3):
        header, tensors = tensor_pipe.read(reader)
        assert header == {"n": i} and tensors["x"].tolist() == list(range(i))
    with pytest.raises(PipeClosed, match="ended"):
        tensor_pipe.read(reader)


def test_over_a_real_os_pipe():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        tensor_pipe.write(writer, {"op": "load"})
        writer.close()
        assert tensor_pipe.read(reader) == ({"op": "load"}, {})


def test_an_array_without_a_v2_datatype_is_refused_before_anything_is_written():
    stream = io.BytesIO()
    with pytest.raises(ValueError, match="tensor 'c'.*complex128"):
        tensor_pipe.write(stream, {}, {"ok": np.zeros(2), "c": np.zeros(2, dtype=np.complex128)})
    assert stream.getvalue() == b""


def encoded(header: dict, tensors: dict | None = None) -> bytes:
    stream = io.BytesIO()
    tensor_pipe.write(stream, header, tensors)
    return stream.getvalue()


@pytest.mark.parametrize("cut", [2, 6, 12, -1], ids=["in-magic", "in-length", "in-header", "in-tensor"])
def test_a_stream_that_ends_inside_a_message_is_pipe_closed(cut):
    data = encoded({"op": "x"}, {"x": np.arange(4, dtype=np.int64)})
    with pytest.raises(PipeClosed):
        tensor_pipe.read(io.BufferedReader(io.BytesIO(data[:cut])))


def test_printed_text_on_the_stream_is_a_framing_error_quoting_it():
    with pytest.raises(FramingError, match="hello from a library"):
        tensor_pipe.read(io.BufferedReader(io.BytesIO(b"hello from a library\n")))


def frame(header: bytes, payload: bytes = b"") -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(tensor_pipe.MAGIC + struct.pack("<I", len(header)) + header + payload))


@pytest.mark.parametrize("header, match", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"tensors": [{"name": "x", "datatype": "FP99", "shape": [1], "nbytes": 4}]}', "malformed tensor"),
    (b'{"tensors": [{"name": "x", "datatype": "FP32", "shape": [-1], "nbytes": 4}]}', "malformed tensor"),
])
def test_malformed_headers_are_framing_errors(header, match):
    with pytest.raises(FramingError, match=match):
        tensor_pipe.read(frame(header, b"\x00" * 4))


def test_byte_counts_that_do_not_match_the_shape_are_framing_errors():
    header = b'{"tensors": [{"name": "x", "datatype": "FP32", "shape": [2], "nbytes": 4}]}'
    with pytest.raises(FramingError, match="do not hold FP32"):
        tensor_pipe.read(frame(header, b"\x00" * 4))
    lying = b'{"tensors": [{"name": "s", "datatype": "BYTES", "shape": [1], "nbytes": 6}]}'
    with pytest.raises(FramingError, match="do not add up"):
        tensor_pipe.read(frame(lying, struct.pack("<I", 9) + b"ab"))


def test_an_oversized_header_length_is_refused_without_reading_it():
    data = tensor_pipe.MAGIC + struct.pack("<I", tensor_pipe.MAX_HEADER_BYTES + 1)
    with pytest.raises(FramingError, match="over the"):
        tensor_pipe.read(io.BufferedReader(io.BytesIO(data)))
