"""The V2 binary tensor extension over plain HTTP (httpx, no tritonclient), byte by byte.

A binary request body is the JSON header followed by the tensors' bytes (little-endian, row-major;
BYTES elements each with a 4-byte little-endian length), with ``Inference-Header-Content-Length``
giving the header's length and no Content-Type. ``Inference-Header-Content-Length: 0`` means the
whole body is one raw input tensor. A binary response is parsed the same way.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import httpx
import joblib
import numpy as np
import pytest

from conftest import write_custom_model
from serverproc import running
from wire_models import ECHO, PAIR

pytestmark = pytest.mark.integration

HEADER = "Inference-Header-Content-Length"

#: V2 datatype -> little-endian numpy dtype (BYTES and BF16 are handled apart).
DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
ARRAYS = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 255, 7]], np.uint8),
    "UINT16": np.array([[0, 65535, 7]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7]], np.uint64),
    "INT8": np.array([[-128, 127, 0]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1, 0]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504]], np.float16),
    "FP32": np.array([[0.1, -1e30, 3.5]], np.float32),
    "FP64": np.array([[0.1, -1e300, 3.5]], np.float64),
}
WORDS = [b"abc", b"", b"\x00\xff\x00", "h\u00e9llo".encode()]


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("binary_rest")
    echo = write_custom_model(root / "alltypes", ECHO)
    pair = write_custom_model(root / "pair", PAIR)
    with running(artifacts["sk_logreg"], echo, pair, "--name", "iris") as process:
        yield process


@pytest.fixture(scope="module")
def http(server):
    # no automatic Accept-Encoding: each test says whether it wants a compressed answer
    with httpx.Client(base_url=server.url, timeout=30, headers={"Accept-Encoding": "identity"}) as client:
        yield client


@pytest.fixture(scope="module")
def estimator(artifacts):
    return joblib.load(artifacts["sk_logreg"])


@pytest.fixture(autouse=True)
def still_serving(server):
    """After every test (errors included) the server is up and answers a good binary request."""
    yield
    assert server.process.poll() is None, server.output
    body, length = binary_body({"inputs": [binary_input("input-0", "FP64", [1, 4], 32)]}, np.zeros(4).tobytes())
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", content=body, headers={HEADER: str(length)}, timeout=10)
    assert answer.status_code == 200, answer.text


# -- building and parsing binary messages -------------------------------------------------------


def binary_input(name: str, datatype: str, shape: list[int], size: int, **extra) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}, **extra}


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs), len(encoded)


def encode_bytes(items) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from("<I", blob, offset)
        items.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(blob)
    return items


def parse(response: httpx.Response) -> tuple[dict, dict[str, np.ndarray | list]]:
    """Split a (possibly binary) V2 response into its JSON header and its outputs' values."""
    assert response.status_code == 200, response.text
    body = response.content
    length = response.headers.get(HEADER)
    if length is None:
        header = json.loads(body)
        return header, {o["name"]: o["data"] for o in header["outputs"]}
    assert response.headers["content-type"] == "application/octet-stream"
    header, offset = json.loads(body[: int(length)]), int(length)
    values: dict[str, np.ndarray | list] = {}
    for output in header["outputs"]:
        if "data" in output:
            values[output["name"]] = output["data"]
            continue
        size = output["parameters"]["binary_data_size"]
        blob = body[offset : offset + size]
        assert len(blob) == size
        offset += size
        if output["datatype"] == "BYTES":
            items = decode_bytes(blob)
            values[output["name"]] = np.array(items, dtype=object).reshape(output["shape"])
        else:
            values[output["name"]] = np.frombuffer(blob, DTYPES[output["datatype"]]).reshape(output["shape"])
    assert offset == len(body), "bytes after the last binary output"
    return header, values


def post_binary(http: httpx.Client, model: str, header: dict, *blobs: bytes, headers=None) -> httpx.Response:
    body, length = binary_body(header, *blobs)
    return http.post(f"/v2/models/{model}/infer", content=body, headers={HEADER: str(length), **(headers or {})})


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


# -- binary requests ------------------------------------------------------------------------


def test_binary_request_has_no_content_type_and_answers_binary(http):
    array = np.array([[1.5, -2.0]], np.float32)
    body, length = binary_body({"inputs": [binary_input("x", "FP32", [1, 2], 8)],
                                "parameters": {"binary_data_output": True}}, array.tobytes())
    request = http.build_request("POST", "/v2/models/alltypes/infer", content=body, headers={HEADER: str(length)})
    assert "content-type" not in request.headers
    response = http.send(request)
    header, values = parse(response)
    assert int(response.headers[HEADER]) < len(response.content)
    assert header["outputs"] == [{"name": "out_x", "datatype": "FP32", "shape": [1, 2],
                                  "parameters": {"binary_data_size": 8}}]
    assert values["out_x"].tolist() == array.tolist()


def test_every_datatype_binary_in_and_out(http):
    inputs, blobs = [], []
    for datatype, array in ARRAYS.items():
        raw = array.astype(DTYPES[datatype]).tobytes()
        inputs.append(binary_input(datatype.lower(), datatype, list(array.shape), len(raw)))
        blobs.append(raw)
    words = encode_bytes(WORDS)
    inputs.append(binary_input("bytes", "BYTES", [2, 2], len(words)))
    blobs.append(words)
    bf16 = np.array([0x3F80, 0x4049, 0xC020, 0x0000], "<u2")  # 1.0, 3.140625, -2.5, 0.0
    inputs.append(binary_input("bf16", "BF16", [4], 8))
    blobs.append(bf16.tobytes())

    header, values = parse(post_binary(http, "alltypes", {"inputs": inputs, "parameters": {"binary_data_output": True}},
                                       *blobs))
    datatypes = {o["name"]: o["datatype"] for o in header["outputs"]}
    for datatype, array in ARRAYS.items():
        assert datatypes["out_" + datatype.lower()] == datatype
        assert values["out_" + datatype.lower()].tolist() == array.tolist()
    assert datatypes["out_bytes"] == "BYTES"
    assert values["out_bytes"].tolist() == [WORDS[:2], WORDS[2:]]
    assert datatypes["out_bf16"] == "FP32"  # BF16 widened to FP32 by the server
    assert values["out_bf16"].tolist() == [1.0, 3.140625, -2.5, 0.0]


def test_bytes_with_length_prefixes(http):
    items = [b"", b"a", b"\x00" * 5, bytes(range(256)), "\u65e5\u672c".encode()]
    blob = encode_bytes(items)
    header, values = parse(post_binary(http, "alltypes", {"inputs": [binary_input("s", "BYTES", [5], len(blob))],
                                                          "outputs": [{"name": "out_s",
                                                                       "parameters": {"binary_data": True}}]}, blob))
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(blob)
    assert values["out_s"].tolist() == items


def test_binary_and_json_inputs_in_one_request(http):
    a = np.array([[1.5, 2.5], [0.0, 1.0]], np.float32)
    header = {"inputs": [{"name": "b", "datatype": "INT32", "shape": [2, 2], "data": [3, 4, 5, 6]},
                         binary_input("a", "FP32", [2, 2], 16)]}
    _, values = parse(post_binary(http, "pair", header, a.tobytes()))
    assert values["sum"] == [4.5, 6.5, 5.0, 7.0] and values["product"] == [4.5, 10.0, 0.0, 6.0]


def test_header_length_equal_to_body_with_json_only_inputs(http):
    header = {"inputs": [{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, -1]}]}
    _, values = parse(post_binary(http, "alltypes", header))
    assert values["out_x"] == [1, -1]


# -- output encodings -------------------------------------------------------------------------


PAIR_INPUTS = [binary_input("a", "FP32", [1, 2], 8), binary_input("b", "INT32", [1, 2], 8)]
PAIR_BLOBS = (np.array([1.5, 2.0], "<f4").tobytes(), np.array([3, 4], "<i4").tobytes())


@pytest.mark.parametrize("request_level, per_output, expected", [
    (None, {}, {"sum": "json", "product": "json"}),
    (True, {}, {"sum": "binary", "product": "binary"}),
    (True, {"product": False}, {"sum": "binary", "product": "json"}),
    (False, {"sum": True}, {"sum": "binary", "product": "json"}),
    (None, {"sum": True, "product": False}, {"sum": "binary", "product": "json"}),
])
def test_binary_data_output_and_per_output_override(http, request_level, per_output, expected):
    header: dict = {"inputs": PAIR_INPUTS,
                    "outputs": [{"name": name, **({"parameters": {"binary_data": per_output[name]}}
                                                  if name in per_output else {})} for name in ("sum", "product")]}
    if request_level is not None:
        header["parameters"] = {"binary_data_output": request_level}
    response = post_binary(http, "pair", header, *PAIR_BLOBS)
    parsed, values = parse(response)
    got = {o["name"]: "binary" if "binary_data_size" in o.get("parameters", {}) else "json" for o in parsed["outputs"]}
    assert got == expected
    assert (HEADER.lower() in response.headers) == ("binary" in expected.values())
    assert np.asarray(values["sum"]).ravel().tolist() == [4.5, 6.0]
    assert np.asarray(values["product"]).ravel().tolist() == [4.5, 8.0]


def test_binary_data_output_without_requested_outputs(http, estimator, iris):
    rows = iris[0][:6]
    header = {"inputs": [binary_input("input-0", "FP64", [6, 4], 6 * 32)], "parameters": {"binary_data_output": True}}
    parsed, values = parse(post_binary(http, "iris", header, rows.astype("<f8").tobytes()))
    assert parsed["outputs"][0]["name"] == "predict"
    assert values["predict"].tolist() == estimator.predict(rows).tolist()


# -- the raw single-input body ----------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 150])
def test_raw_body_to_iris(http, estimator, iris, count):
    rows = iris[0][:count]
    request = http.build_request("POST", "/v2/models/iris/infer", content=rows.astype("<f8").tobytes(),
                                 headers={HEADER: "0"})
    assert "content-type" not in request.headers
    response = http.send(request)
    header, values = parse(response)
    assert HEADER.lower() in response.headers  # every output comes back binary
    assert header["model_name"] == "iris"
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in header["outputs"])
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["predict"]["datatype"] == "INT64" and outputs["predict"]["shape"] == [count]
    assert values["predict"].tolist() == estimator.predict(rows).tolist()


# -- compression --------------------------------------------------------------------------------


def compress(data: bytes, encoding: str) -> bytes:
    return gzip.compress(data) if encoding == "gzip" else zlib.compress(data)


def decompress(data: bytes, encoding: str) -> bytes:
    return gzip.decompress(data) if encoding == "gzip" else zlib.decompress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_binary_request(http, estimator, iris, encoding):
    rows = iris[0][::5]
    body, length = binary_body({"inputs": [binary_input("input-0", "FP64", list(rows.shape), rows.nbytes)],
                                "parameters": {"binary_data_output": True}}, rows.astype("<f8").tobytes())
    response = http.post("/v2/models/iris/infer", content=compress(body, encoding),
                         headers={HEADER: str(length), "Content-Encoding": encoding})
    _, values = parse(response)
    assert values["predict"].tolist() == estimator.predict(rows).tolist()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_raw_request(http, estimator, iris, encoding):
    rows = iris[0][:9]
    response = http.post("/v2/models/iris/infer", content=compress(rows.astype("<f8").tobytes(), encoding),
                         headers={HEADER: "0", "Content-Encoding": encoding})
    _, values = parse(response)
    assert values["predict"].tolist() == estimator.predict(rows).tolist()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compressed_response(server, estimator, iris, encoding, binary):
    rows = iris[0][:12]
    body, length = binary_body({"inputs": [binary_input("input-0", "FP64", [12, 4], rows.nbytes)],
                                "outputs": [{"name": "predict", "parameters": {"binary_data": binary}},
                                            {"name": "predict_proba", "parameters": {"binary_data": binary}}]},
                               rows.astype("<f8").tobytes())
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{server.url}/v2/models/iris/infer", content=body,
        headers={HEADER: str(length), "Accept-Encoding": encoding},
    ) as response:
        wire = b"".join(response.iter_raw())  # the bytes as sent, not decoded by httpx
        headers = response.headers
    assert response.status_code == 200
    assert headers["content-encoding"] == encoding
    plain = decompress(wire, encoding)
    assert len(wire) != len(plain)
    if binary:  # the header length counts the uncompressed JSON header
        header = json.loads(plain[: int(headers[HEADER])])
        offset = int(headers[HEADER])
        predict = np.frombuffer(plain[offset : offset + header["outputs"][0]["parameters"]["binary_data_size"]], "<i8")
    else:
        assert HEADER.lower() not in headers
        predict = np.array(json.loads(plain)["outputs"][0]["data"])
    assert predict.tolist() == estimator.predict(rows).tolist()


def test_identity_accept_encoding_is_not_compressed(http):
    response = post_binary(http, "alltypes", {"inputs": [binary_input("x", "UINT8", [3], 3)]}, b"\x01\x02\x03")
    assert "content-encoding" not in response.headers
    assert parse(response)[1]["out_x"] == [1, 2, 3]


def test_accept_encoding_with_q_zero_is_refused(http):
    response = post_binary(http, "alltypes", {"inputs": [binary_input("x", "UINT8", [3], 3)]}, b"\x01\x02\x03",
                           headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers


# -- bad input: 400, naming the tensor, and the server keeps serving --------------------------

FP64_ROWS = np.arange(8, dtype="<f8").tobytes()  # two iris rows
IRIS_INPUT = binary_input("input-0", "FP64", [2, 4], 64)


def bad_case(header: dict | bytes, body: bytes, length=None, model: str = "iris", **headers) -> dict:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return {"model": model, "body": encoded + body,
            "headers": {HEADER: str(len(encoded) if length is None else length), **headers}}


BAD = {
    "truncated binary section": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS[:-5]), ["'input-0'", "binary_data_size is 64", "truncated"]),
    "binary_data_size disagrees with shape": (
        bad_case({"inputs": [binary_input("input-0", "FP64", [2, 4], 56)]}, FP64_ROWS[:56]),
        ["'input-0'", "56 bytes", "needs 64"]),
    "unknown datatype": (
        bad_case({"inputs": [binary_input("weird", "FP8", [2], 2)]}, b"\x01\x02", model="alltypes"),
        ["'weird'", "unknown datatype 'FP8'"]),
    "header length larger than the body": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS, length=10_000), ["Inference-Header-Content-Length", "10000"]),
    "bytes no input claims": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS + b"\x00\x00\x00"), ["3 bytes", "no input claims"]),
    "BYTES element running past the end": (
        bad_case({"inputs": [binary_input("words", "BYTES", [2], 13)]},
                 encode_bytes([b"abc"]) + struct.pack("<I", 50) + b"xy", model="alltypes"),
        ["'words'", "BYTES element 1", "50 bytes"]),
    "BYTES ending inside a length prefix": (
        bad_case({"inputs": [binary_input("words", "BYTES", [2], 9)]}, encode_bytes([b"abc"]) + b"\x01\x00",
                 model="alltypes"), ["'words'", "length prefix"]),
    "BYTES count disagrees with shape": (
        bad_case({"inputs": [binary_input("words", "BYTES", [3], 13)]}, encode_bytes([b"abc", b"de"]),
                 model="alltypes"), ["'words'", "needs 3", "has 2"]),
    "binary tensor with too few bytes for BOOL": (
        bad_case({"inputs": [binary_input("flags", "BOOL", [4], 3)]}, b"\x01\x00\x01", model="alltypes"),
        ["'flags'", "needs 4"]),
    "non-integer header length": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS, length="twelve"), ["Inference-Header-Content-Length", "twelve"]),
    "negative header length": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS, length="-3"), ["Inference-Header-Content-Length", "-3"]),
    "header length cutting the JSON": (
        bad_case({"inputs": [IRIS_INPUT]}, FP64_ROWS, length=20), ["JSON"]),
    "binary_data_size without the header": (
        {"model": "iris", "body": json.dumps({"inputs": [IRIS_INPUT]}).encode(), "headers": {}},
        ["'input-0'", "Inference-Header-Content-Length"]),
    "binary_data_size and data together": (
        bad_case({"inputs": [{**IRIS_INPUT, "data": [0] * 8}]}, FP64_ROWS), ["'input-0'", "both"]),
    "negative binary_data_size": (
        bad_case({"inputs": [binary_input("input-0", "FP64", [2, 4], -8)]}, FP64_ROWS),
        ["'input-0'", "non-negative integer"]),
    "binary datatype the model does not take": (
        bad_case({"inputs": [binary_input("input-0", "BYTES", [2], 10)]}, encode_bytes([b"a", b"b"])),
        ["'input-0'", "expected FP64", "BYTES"]),
    "corrupt gzip body": (
        bad_case({"inputs": [IRIS_INPUT]}, b"", **{"Content-Encoding": "gzip"}) | {"body": b"\x1f\x8b\x08 not gzip"},
        ["gzip"]),
    "corrupt deflate body": (
        bad_case({"inputs": [IRIS_INPUT]}, b"", **{"Content-Encoding": "deflate"}) | {"body": b"not deflate"},
        ["deflate"]),
    "raw body to a model with two inputs": (
        {"model": "pair", "body": np.zeros(4, "<f4").tobytes(), "headers": {HEADER: "0"}},
        ["exactly one declared input", "declares 2"]),
    "raw body to a model with no declared input": (
        {"model": "alltypes", "body": np.zeros(4, "<f4").tobytes(), "headers": {HEADER: "0"}},
        ["exactly one declared input", "declares 0"]),
    "raw body not a whole number of FP64": (
        {"model": "iris", "body": b"\x00" * 13, "headers": {HEADER: "0"}}, ["'input-0'", "13 bytes", "FP64"]),
    "raw body not a whole number of rows": (
        {"model": "iris", "body": np.zeros(6, "<f8").tobytes(), "headers": {HEADER: "0"}},
        ["'input-0'", "6 elements", "[-1, 4]"]),
}


@pytest.mark.parametrize("case, fragments", list(BAD.values()), ids=list(BAD))
def test_bad_binary_requests_are_400(http, case, fragments):
    response = http.post(f"/v2/models/{case['model']}/infer", content=case["body"], headers=case["headers"])
    assert response.headers["content-type"] == "application/json"
    assert_error(response, 400, *fragments)


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9"], ids=["superscript-two", "one-superscript-one"])
def test_non_ascii_digit_header_length_is_400(http, value):
    body, _ = binary_body({"inputs": [IRIS_INPUT]}, FP64_ROWS)
    response = http.post("/v2/models/iris/infer", content=body, headers=[(HEADER.encode(), value)])
    assert_error(response, 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize("encoding, cut", [("gzip", 8), ("gzip", 4), ("deflate", 4)])
def test_truncated_compressed_body_is_400(http, encoding, cut):
    body, length = binary_body({"inputs": [IRIS_INPUT]}, FP64_ROWS)
    packed = compress(body, encoding)[:-cut]  # the data is all there; the integrity trailer is not
    response = http.post("/v2/models/iris/infer", content=packed,
                         headers={HEADER: str(length), "Content-Encoding": encoding})
    assert_error(response, 400, encoding)
