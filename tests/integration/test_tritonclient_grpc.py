"""NVIDIA's tritonclient.grpc (and its generated protobuf stubs) against a real `shipyard serve`.

Raw protocol checks use tritonclient's own ``service_pb2`` messages and stub. Shipyard's messages
live in the protobuf package ``shipyard.inference``, so both load in one process (see
``test_both_protobuf_packages_load_in_one_process``).

One server for the module serves:
- ``iris``: the session's scikit-learn LogisticRegression (input-0 FP64 [-1, 4]);
- ``alltypes``: a custom model echoing every input ``x`` as output ``out_x`` (no declared signature);
- ``pair``: a custom model with two declared inputs and two declared outputs;
- ``counted`` (statistics), ``spare`` (unload/load): copies of ``alltypes`` no other test touches;
- ``broken``: a custom model whose predict raises.
"""

from __future__ import annotations

import functools
import queue
import threading

import grpc
import joblib
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import write_custom_model
from serverproc import running
from wire_models import ARRAYS, ECHO, PAIR

pytestmark = pytest.mark.integration

BF16_SOURCE = np.array([[1.00390625, 3.14159265, -2.71828, 1e-3, 65504.0, 0.0]], np.float32)

#: Which typed ``InferTensorContents`` field carries each datatype (FP16/BF16 have none).
CONTENTS = {
    "BOOL": ("bool_contents", [True, False]),
    "UINT8": ("uint_contents", [0, 255]),
    "UINT16": ("uint_contents", [0, 65535]),
    "UINT32": ("uint_contents", [0, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1]),
    "INT8": ("int_contents", [-128, 127]),
    "INT16": ("int_contents", [-(2**15), 2**15 - 1]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1]),
    "FP32": ("fp32_contents", [0.5, -1.5]),
    "FP64": ("fp64_contents", [0.1, -1e300]),
    "BYTES": ("bytes_contents", [b"a", b"\x00\xff"]),
}
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("tritonclient_grpc")
    folders = [write_custom_model(root / name, ECHO) for name in ("alltypes", "counted", "spare")]
    folders.append(write_custom_model(root / "pair", PAIR))
    with running(artifacts["sk_logreg"], *folders, artifacts["broken"], "--name", "iris") as process:
        assert process.grpc_address, process.output
        yield process


@pytest.fixture(scope="module")
def client(server):
    triton = grpcclient.InferenceServerClient(server.grpc_address)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def estimator(artifacts):
    return joblib.load(artifacts["sk_logreg"])


@pytest.fixture(autouse=True)
def still_serving(server, client):
    """After every test (errors included) the server is up and answers a good request."""
    yield
    assert server.process.poll() is None, server.output
    assert client.infer("iris", [typed_input("input-0", np.zeros((1, 4)))]).as_numpy("predict").shape == (1,)


def typed_input(name: str, array: np.ndarray, datatype: str | None = None):
    datatype = datatype or grpcclient.np_to_triton_dtype(array.dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype or (expected.dtype == object and actual.dtype == object)
    assert actual.tolist() == expected.tolist()


def expect_error(call, status: str, *fragments: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    assert error.value.status() == status, (error.value.status(), error.value.message())
    for fragment in fragments:
        assert fragment in error.value.message(), error.value.message()
    return error.value


# -- health and metadata ---------------------------------------------------------------------


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("iris", "7")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client):
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "shipyard" and metadata["version"]
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(metadata["extensions"])
    message = client.get_server_metadata()
    assert message.name == "shipyard" and list(message.extensions) == metadata["extensions"]


def test_model_metadata(client):
    metadata = client.get_model_metadata("iris", as_json=True)
    assert metadata == {  # int64 shapes are strings in protobuf's JSON mapping, as with Triton
        "name": "iris",
        "versions": ["1"],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": ["-1"]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": ["-1", "3"]}],
    }
    message = client.get_model_metadata("pair", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("a", "FP32", [-1, 2]),
                                                                            ("b", "INT32", [-1, 2])]
    assert [t.name for t in message.outputs] == ["sum", "product"]
    expect_error(lambda: client.get_model_metadata("no-such-model"), "StatusCode.NOT_FOUND", "no-such-model")
    expect_error(lambda: client.get_model_metadata("iris", "7"), "StatusCode.NOT_FOUND", "'7'")


# -- the datatype matrix -----------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_each_datatype_round_trips(client, datatype):
    array = ARRAYS[datatype]
    result = client.infer("alltypes", [typed_input("x", array, datatype)])
    output = result.get_output("out_x")
    assert output.datatype == datatype and list(output.shape) == [1, 3]
    assert_same(result.as_numpy("out_x"), array)


def test_every_datatype_in_one_request(client):
    bf16 = BF16_SOURCE.astype(ml_dtypes.bfloat16)
    inputs = [typed_input(dt.lower(), a, dt) for dt, a in ARRAYS.items()] + [typed_input("bf16", bf16, "BF16")]
    result = client.infer("alltypes", inputs, request_id="all")
    response = result.get_response()
    assert response.id == "all" and response.model_name == "alltypes" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["out_" + i.name() for i in inputs]
    assert len(response.raw_output_contents) == len(inputs)  # raw output contents, as Triton answers
    for datatype, array in ARRAYS.items():
        assert_same(result.as_numpy("out_" + datatype.lower()), array)
    # BF16 is widened to FP32 by the server: the value is the client's bfloat16 rounding, exactly
    assert result.get_output("out_bf16").datatype == "FP32"
    expected = bf16.astype(np.float32)
    assert not np.array_equal(expected, BF16_SOURCE)
    assert_same(result.as_numpy("out_bf16"), expected)


def test_zero_sized_tensors(client):
    inputs = [typed_input("empty", np.zeros((2, 0), np.float32)),
              typed_input("nothing", np.zeros((0,), dtype=object), "BYTES")]
    result = client.infer("alltypes", inputs)
    assert result.as_numpy("out_empty").shape == (2, 0)
    assert result.as_numpy("out_nothing").shape == (0,)


def test_several_inputs_and_outputs_and_a_subset(client):
    inputs = [typed_input("a", np.array([[1.5, 2.0], [0.0, -1.0]], np.float32)),
              typed_input("b", np.array([[3, 4], [5, 6]], np.int32))]
    both = client.infer("pair", inputs)
    assert [o.name for o in both.get_response().outputs] == ["sum", "product"]
    assert_same(both.as_numpy("sum"), np.array([[4.5, 6.0], [5.0, 5.0]], np.float32))
    assert_same(both.as_numpy("product"), np.array([[4.5, 8.0], [0.0, -6.0]], np.float32))
    only = client.infer("pair", inputs, outputs=[grpcclient.InferRequestedOutput("product")])
    assert [o.name for o in only.get_response().outputs] == ["product"]
    assert only.as_numpy("sum") is None

    echo_inputs = [typed_input(dt.lower(), a, dt) for dt, a in ARRAYS.items()]
    wanted = ["out_uint64", "out_bytes", "out_fp16"]
    subset = client.infer("alltypes", echo_inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in wanted])
    assert sorted(o.name for o in subset.get_response().outputs) == sorted(wanted)
    assert_same(subset.as_numpy("out_fp16"), ARRAYS["FP16"])


def test_parameters_version_and_any_single_input_name(client, estimator, iris):
    rows = iris[0][:5]
    result = client.infer("iris", [typed_input("features", rows)], model_version="1", request_id="r-7",
                          parameters={"flag": True, "count": 3, "ratio": 0.5, "label": "x"})
    assert result.get_response().id == "r-7"
    assert_same(result.as_numpy("predict"), estimator.predict(rows))


# -- the iris model, classification, compression, async ---------------------------------------


def test_iris_answers_equal_the_estimator(client, estimator, iris):
    features = iris[0]
    outputs = [grpcclient.InferRequestedOutput("predict"), grpcclient.InferRequestedOutput("predict_proba")]
    result = client.infer("iris", [typed_input("input-0", features)], outputs=outputs)
    assert_same(result.as_numpy("predict"), estimator.predict(features))
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), estimator.predict_proba(features))


def test_classification_top_two_of_predict_proba(client, estimator, iris):
    features = iris[0][::10]
    result = client.infer("iris", [typed_input("input-0", features)],
                          outputs=[grpcclient.InferRequestedOutput("predict_proba", class_count=2)])
    output = result.get_output("predict_proba")
    assert output.datatype == "BYTES" and list(output.shape) == [len(features), 2]
    for row, labels in zip(estimator.predict_proba(features), result.as_numpy("predict_proba")):
        top = np.argsort(-row, kind="stable")[:2]
        assert [label.decode() for label in labels] == [f"{row[index]:f}:{index}" for index in top]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression(client, estimator, iris, algorithm):
    features = iris[0]
    result = client.infer("iris", [typed_input("input-0", features)], compression_algorithm=algorithm)
    assert_same(result.as_numpy("predict"), estimator.predict(features))


def test_async_infer(client, estimator, iris):
    features = iris[0]
    chunks = [features[i : i + 30] for i in range(0, len(features), 30)]
    results: dict[str, tuple] = {}
    done = threading.Event()

    def callback(index, result, error):
        results[index] = (result, error)
        if len(results) == len(chunks) + 1:
            done.set()

    for index, chunk in enumerate(chunks):
        client.async_infer("iris", [typed_input("input-0", chunk)], functools.partial(callback, str(index)))
    client.async_infer("iris", [typed_input("input-0", np.zeros((1, 2)))], functools.partial(callback, "bad"))
    assert done.wait(30)
    for index, chunk in enumerate(chunks):
        result, error = results[str(index)]
        assert error is None
        assert_same(result.as_numpy("predict"), estimator.predict(chunk))
    result, error = results["bad"]
    assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT" and "input-0" in error.message()


# -- streaming ---------------------------------------------------------------------------------


def test_stream_answers_in_order_and_survives_a_bad_request(client, estimator, iris):
    features = iris[0]
    requests = [features[0:3], features[50:52], np.zeros((2, 3)), features[100:104], features[10:11]]
    collected: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: collected.put((result, error)))
    try:
        for index, rows in enumerate(requests):
            client.async_stream_infer("iris", [typed_input("input-0", rows)], request_id=f"s{index}")
        answers = [collected.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()
    assert collected.empty()
    for index, ((result, error), rows) in enumerate(zip(answers, requests)):
        if index == 2:
            assert result is None
            assert isinstance(error, InferenceServerException)
            assert "input-0" in error.message() and "[2, 3]" in error.message()
            continue
        assert error is None, error
        assert result.get_response().id == f"s{index}"
        assert_same(result.as_numpy("predict"), estimator.predict(rows))


def test_stream_with_several_models(client):
    collected: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: collected.put((result, error)))
    try:
        client.async_stream_infer("alltypes", [typed_input("x", ARRAYS["BYTES"], "BYTES")], request_id="a")
        client.async_stream_infer("no-such-model", [typed_input("x", ARRAYS["INT8"])], request_id="b")
        client.async_stream_infer("pair", [typed_input("a", np.ones((1, 2), np.float32)),
                                           typed_input("b", np.ones((1, 2), np.int32))], request_id="c")
        answers = [collected.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    assert answers[0][1] is None and answers[0][0].get_response().id == "a"
    assert_same(answers[0][0].as_numpy("out_x"), ARRAYS["BYTES"])
    assert answers[1][0] is None and "no-such-model" in answers[1][1].message()
    assert answers[2][1] is None and answers[2][0].as_numpy("sum").tolist() == [[2.0, 2.0]]


# -- statistics and the model repository ------------------------------------------------------


def test_inference_statistics(client):
    before = client.get_inference_statistics("counted").model_stats[0]
    assert before.inference_count == 0 and before.execution_count == 0 and len(before.batch_stats) == 0
    for rows in (4, 1, 4):
        client.infer("counted", [typed_input("x", np.ones((rows, 2), np.float32))])
    with pytest.raises(InferenceServerException):  # an output the model does not produce: a failed request
        client.infer("counted", [typed_input("x", np.ones((1, 2), np.float32))],
                     outputs=[grpcclient.InferRequestedOutput("nope")])

    responses = [client.get_inference_statistics("counted").model_stats[0],
                 client.get_inference_statistics("counted", "1").model_stats[0],
                 next(s for s in client.get_inference_statistics().model_stats if s.name == "counted")]
    for stats in responses:
        assert stats.name == "counted" and stats.version == "1"
        assert stats.inference_count == 9  # batch rows
        assert stats.execution_count == 3  # requests
        assert stats.last_inference > 0
        inference = stats.inference_stats
        assert inference.success.count == 3 and inference.success.ns > 0
        assert inference.fail.count == 1
        for duration in (inference.queue, inference.compute_input, inference.compute_infer, inference.compute_output):
            assert duration.count == 3
        batches = {b.batch_size: b for b in stats.batch_stats}
        assert sorted(batches) == [1, 4]
        assert batches[4].compute_infer.count == 2 and batches[1].compute_infer.count == 1
    as_json = client.get_inference_statistics("counted", as_json=True)["model_stats"][0]
    assert as_json["inference_count"] == "9" and as_json["execution_count"] == "3"
    expect_error(lambda: client.get_inference_statistics("no-such-model"), "StatusCode.NOT_FOUND", "no-such-model")


def test_repository_index_unload_and_load(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert {"iris", "alltypes", "pair", "counted", "spare", "broken"} <= set(index)
    assert index["spare"].state == "READY" and index["spare"].version == "1"
    x = typed_input("x", np.array([7], np.int32))
    assert client.infer("spare", [x]).as_numpy("out_x").tolist() == [7]

    client.unload_model("spare")
    try:
        rows = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert rows["spare"]["state"] == "UNAVAILABLE" and rows["spare"]["reason"] == "unloaded"
        assert not client.is_model_ready("spare")
        expect_error(lambda: client.infer("spare", [x]), "StatusCode.UNAVAILABLE", "spare", "unloaded")
    finally:
        client.load_model("spare")
    assert client.is_model_ready("spare")
    assert next(m for m in client.get_model_repository_index().models if m.name == "spare").state == "READY"
    assert client.infer("spare", [x]).as_numpy("out_x").tolist() == [7]
    expect_error(lambda: client.load_model("no-such-model"), "StatusCode.NOT_FOUND", "no-such-model")
    expect_error(lambda: client.unload_model("no-such-model"), "StatusCode.NOT_FOUND", "no-such-model")


def test_server_stays_ready_after_unloading_a_model(client):
    client.unload_model("spare")
    try:
        assert not client.is_model_ready("spare")
        assert client.is_server_ready()
    finally:
        client.load_model("spare")


# -- errors -----------------------------------------------------------------------------------


def test_errors_carry_status_codes_and_name_the_problem(client):
    rows = np.zeros((2, 4))
    expect_error(lambda: client.infer("no-such-model", [typed_input("x", rows)]), "StatusCode.NOT_FOUND",
                 "no-such-model", "iris")
    expect_error(lambda: client.infer("iris", [typed_input("x", rows)], model_version="7"), "StatusCode.NOT_FOUND",
                 "'7'")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", np.zeros((2, 3)))]),
                 "StatusCode.INVALID_ARGUMENT", "input-0", "[-1, 4]", "[2, 3]")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", np.array([[b"a"] * 4], dtype=object))]),
                 "StatusCode.INVALID_ARGUMENT", "input-0", "BYTES")
    expect_error(lambda: client.infer("pair", [typed_input("a", np.zeros((1, 2), np.float32))]),
                 "StatusCode.INVALID_ARGUMENT", "missing input 'b'")
    expect_error(lambda: client.infer("pair", [typed_input("a", np.zeros((1, 2), np.float32)),
                                               typed_input("b", np.zeros((1, 2), np.int32)),
                                               typed_input("c", np.zeros((1, 2), np.int32))]),
                 "StatusCode.INVALID_ARGUMENT", "unknown input 'c'")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", rows)],
                                      outputs=[grpcclient.InferRequestedOutput("logits")]),
                 "StatusCode.INVALID_ARGUMENT", "logits")
    expect_error(lambda: client.infer("broken", [typed_input("x", rows)]), "StatusCode.INTERNAL", "ZeroDivisionError")


# -- raw protocol checks with tritonclient's generated messages ---------------------------------


def raw_call(stub, request):
    try:
        return stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        return error


def assert_rpc_error(answer, code: grpc.StatusCode, *fragments: str) -> None:
    assert isinstance(answer, grpc.RpcError), answer
    assert answer.code() == code, (answer.code(), answer.details())
    for fragment in fragments:
        assert fragment in answer.details(), answer.details()


def pair_request(*, typed_a: bool = False, raw: int = 2) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="pair")
    a = request.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    request.inputs.add(name="b", datatype="INT32", shape=[1, 2])
    if typed_a:
        a.contents.fp32_contents.extend([1.0, 2.0])
    blobs = [np.array([1, 2], np.float32).tobytes(), np.array([3, 4], np.int32).tobytes(), b"extra"]
    request.raw_input_contents.extend(blobs[:raw])
    return request


def test_raw_contents_request(stub):
    answer = raw_call(stub, pair_request())
    assert not isinstance(answer, grpc.RpcError), answer
    assert [o.name for o in answer.outputs] == ["sum", "product"]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [4.0, 6.0]


def test_mixing_raw_and_typed_contents_is_invalid(stub):
    assert_rpc_error(raw_call(stub, pair_request(typed_a=True)), grpc.StatusCode.INVALID_ARGUMENT,
                     "'a'", "typed contents", "raw_input_contents")


@pytest.mark.parametrize("count", [1, 3])
def test_wrong_raw_input_contents_count_is_invalid(stub, count):
    assert_rpc_error(raw_call(stub, pair_request(raw=count)), grpc.StatusCode.INVALID_ARGUMENT,
                     "raw_input_contents", str(count), "2 inputs")


def test_raw_contents_size_must_match_shape(stub):
    request = service_pb2.ModelInferRequest(model_name="alltypes")
    request.inputs.add(name="short", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"abc")
    assert_rpc_error(raw_call(stub, request), grpc.StatusCode.INVALID_ARGUMENT, "'short'", "3 bytes", "needs 8")


def test_raw_bytes_element_running_past_the_end(stub):
    request = service_pb2.ModelInferRequest(model_name="alltypes")
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a\x09\x00\x00\x00bc")
    assert_rpc_error(raw_call(stub, request), grpc.StatusCode.INVALID_ARGUMENT, "'s'", "BYTES element 1")


def test_typed_contents_for_every_datatype(stub):
    request = service_pb2.ModelInferRequest(model_name="alltypes")
    for datatype, (field, values) in CONTENTS.items():
        tensor = request.inputs.add(name=datatype.lower(), datatype=datatype, shape=[2])
        getattr(tensor.contents, field).extend(values)
    answer = raw_call(stub, request)
    assert not isinstance(answer, grpc.RpcError), answer
    outputs = {o.name: (o, raw) for o, raw in zip(answer.outputs, answer.raw_output_contents)}
    for datatype, (_, values) in CONTENTS.items():
        output, raw = outputs["out_" + datatype.lower()]
        assert output.datatype == datatype and list(output.shape) == [2]
        if datatype == "BYTES":
            assert raw == b"".join(len(v).to_bytes(4, "little") + v for v in values)
        else:
            assert np.frombuffer(raw, np.dtype(NUMPY[datatype]).newbyteorder("<")).tolist() == values


@pytest.mark.parametrize("datatype, field, values, fragments", [
    ("FP16", "fp32_contents", [1.0], ["'h'", "FP16", "raw_input_contents"]),
    ("UINT8", "uint_contents", [300], ["'h'", "out of range", "UINT8"]),
    ("INT8", "int_contents", [-129], ["'h'", "out of range", "INT8"]),
    ("INT64", "int_contents", [1], ["'h'", "int64_contents"]),
    ("FP8", "fp32_contents", [1.0], ["'h'", "unknown datatype 'FP8'"]),
])
def test_bad_typed_contents(stub, datatype, field, values, fragments):
    request = service_pb2.ModelInferRequest(model_name="alltypes")
    getattr(request.inputs.add(name="h", datatype=datatype, shape=[1]).contents, field).extend(values)
    assert_rpc_error(raw_call(stub, request), grpc.StatusCode.INVALID_ARGUMENT, *fragments)


def test_raw_bf16_is_widened_to_fp32(stub):
    request = service_pb2.ModelInferRequest(model_name="alltypes")
    request.inputs.add(name="w", datatype="BF16", shape=[3])
    request.raw_input_contents.append(np.array([0x3F80, 0x4049, 0xC020], "<u2").tobytes())
    answer = raw_call(stub, request)
    assert answer.outputs[0].datatype == "FP32"
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [1.0, 3.140625, -2.5]


def test_both_protobuf_packages_load_in_one_process(server, client):
    """tritonclient's ``inference`` messages and Shipyard's ``shipyard.inference`` ones coexist, and
    Shipyard's own stub reaches the server under Triton's service name."""
    from shipyard.protocol.proto import inference_pb2 as pb
    from shipyard.protocol.proto.service import Stub

    assert pb.DESCRIPTOR.package == "shipyard.inference" and service_pb2.DESCRIPTOR.package == "inference"
    assert client.is_server_live()
    with grpc.insecure_channel(server.grpc_address) as channel:
        assert Stub(channel).ServerLive(pb.ServerLiveRequest()).live
