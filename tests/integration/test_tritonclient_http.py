"""NVIDIA's tritonclient.http against a real `shipyard serve`: Shipyard must be wire-compatible with it.

One server for the module serves:
- ``iris``: the session's scikit-learn LogisticRegression (input-0 FP64 [-1, 4]);
- ``alltypes``: a custom model that echoes every input ``x`` back as output ``out_x`` (no declared
  signature, so any datatype and shape goes);
- ``pair``: a custom model with two declared inputs and two declared outputs;
- ``counted`` (statistics), ``spare`` (unload/load): copies of ``alltypes`` no other test touches;
- ``broken``: a custom model whose predict raises.
"""

from __future__ import annotations

import joblib
import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import write_custom_model
from serverproc import running
from wire_models import ARRAYS, ECHO, PAIR

pytestmark = pytest.mark.integration

#: JSON can carry neither FP16 (no JSON half floats, as in Triton) nor non-UTF-8 bytes.
JSON_ARRAYS = {
    **{dt: a for dt, a in ARRAYS.items() if dt != "FP16"},
    "BYTES": np.array([[b"abc", b"", "h\u00e9llo w\u00f6rld".encode()]], dtype=object),
}
#: Float values that bfloat16 cannot hold exactly, so the client rounds them.
BF16_SOURCE = np.array([[1.00390625, 3.14159265, -2.71828, 1e-3, 65504.0, 0.0]], np.float32)


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("tritonclient_http")
    folders = [write_custom_model(root / name, ECHO) for name in ("alltypes", "counted", "spare")]
    folders.append(write_custom_model(root / "pair", PAIR))
    with running(artifacts["sk_logreg"], *folders, artifacts["broken"], "--name", "iris") as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def estimator(artifacts):
    return joblib.load(artifacts["sk_logreg"])


@pytest.fixture(autouse=True)
def still_serving(server):
    """After every test (errors included) the server is up and answers a good request."""
    yield
    assert server.process.poll() is None, server.output
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.infer("iris", [typed_input("input-0", np.zeros((1, 4)))]).as_numpy("predict").shape == (1,)
    finally:
        client.close()


def typed_input(name: str, array: np.ndarray, datatype: str | None = None, binary: bool = True):
    datatype = datatype or httpclient.np_to_triton_dtype(array.dtype)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype or (expected.dtype == object and actual.dtype == object)
    assert actual.tolist() == expected.tolist()


# -- health and metadata ---------------------------------------------------------------------


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("iris", "7")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "shipyard"
    assert metadata["version"]
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(metadata["extensions"])


def test_model_metadata(client):
    expected = {
        "name": "iris",
        "versions": ["1"],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}],
    }
    assert client.get_model_metadata("iris") == expected
    assert client.get_model_metadata("iris", "1") == expected
    pair = client.get_model_metadata("pair")
    assert [(t["name"], t["datatype"], t["shape"]) for t in pair["inputs"]] == [("a", "FP32", [-1, 2]),
                                                                               ("b", "INT32", [-1, 2])]
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("no-such-model")
    assert error.value.status() == "404" and "no-such-model" in error.value.message()


# -- the datatype matrix -----------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_each_datatype_round_trips_binary(client, datatype):
    array = ARRAYS[datatype]
    result = client.infer("alltypes", [typed_input("x", array, datatype)])
    (output,) = result.get_response()["outputs"]
    assert output["name"] == "out_x" and output["datatype"] == datatype and output["shape"] == [1, 3]
    assert "data" not in output and output["parameters"]["binary_data_size"] > 0
    assert_same(result.as_numpy("out_x"), array)


@pytest.mark.parametrize("datatype", list(JSON_ARRAYS))
def test_each_datatype_round_trips_json(client, datatype):
    array = JSON_ARRAYS[datatype]
    result = client.infer("alltypes", [typed_input("x", array, datatype, binary=False)],
                          outputs=[httpclient.InferRequestedOutput("out_x", binary_data=False)])
    (output,) = result.get_response()["outputs"]
    assert output["datatype"] == datatype and output["shape"] == [1, 3] and "data" in output
    assert "parameters" not in output or "binary_data_size" not in output["parameters"]
    actual = result.as_numpy("out_x")
    if datatype == "BYTES":  # JSON carries text: tritonclient hands back str
        assert actual.tolist() == [[item.decode() for item in array.ravel()]]
    else:
        assert_same(actual, array)


def test_every_datatype_in_one_request_binary(client):
    bf16 = BF16_SOURCE.astype(ml_dtypes.bfloat16)
    inputs = [typed_input(dt.lower(), a, dt) for dt, a in ARRAYS.items()] + [typed_input("bf16", bf16, "BF16")]
    result = client.infer("alltypes", inputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["out_" + i.name() for i in inputs]
    for datatype, array in ARRAYS.items():
        assert_same(result.as_numpy("out_" + datatype.lower()), array)
    # BF16 is widened to FP32 by the server: the value is the client's bfloat16 rounding, exactly
    bf16_output = next(o for o in response["outputs"] if o["name"] == "out_bf16")
    assert bf16_output["datatype"] == "FP32"
    expected = bf16.astype(np.float32)
    assert not np.array_equal(expected, BF16_SOURCE)  # the rounding is real
    assert_same(result.as_numpy("out_bf16"), expected)


def test_every_datatype_in_one_request_json(client):
    inputs = [typed_input(dt.lower(), a, dt, binary=False) for dt, a in JSON_ARRAYS.items()]
    outputs = [httpclient.InferRequestedOutput("out_" + i.name(), binary_data=False) for i in inputs]
    result = client.infer("alltypes", inputs, outputs=outputs)
    assert all("data" in o for o in result.get_response()["outputs"])
    for datatype, array in JSON_ARRAYS.items():
        if datatype != "BYTES":
            assert_same(result.as_numpy("out_" + datatype.lower()), array)


def test_bf16_alone(client):
    bf16 = BF16_SOURCE.astype(ml_dtypes.bfloat16)
    result = client.infer("alltypes", [typed_input("w", bf16, "BF16")])
    assert result.get_output("out_w")["datatype"] == "FP32"
    assert_same(result.as_numpy("out_w"), bf16.astype(np.float32))


def test_zero_sized_tensors(client):
    inputs = [typed_input("empty", np.zeros((2, 0), np.float32)),
              typed_input("nothing", np.zeros((0,), dtype=object), "BYTES")]
    result = client.infer("alltypes", inputs)
    assert result.as_numpy("out_empty").shape == (2, 0)
    assert result.as_numpy("out_nothing").shape == (0,)


# -- inputs, outputs and their encodings -------------------------------------------------------


def test_subset_of_outputs(client):
    inputs = [typed_input(dt.lower(), a, dt) for dt, a in ARRAYS.items()]
    wanted = ["out_int8", "out_bytes", "out_fp64"]
    result = client.infer("alltypes", inputs, outputs=[httpclient.InferRequestedOutput(n) for n in wanted])
    assert sorted(o["name"] for o in result.get_response()["outputs"]) == sorted(wanted)
    assert_same(result.as_numpy("out_bytes"), ARRAYS["BYTES"])
    assert result.as_numpy("out_int32") is None


def test_json_and_binary_outputs_in_one_request(client):
    inputs = [typed_input("a", np.array([[1.5, 2.0]], np.float32)), typed_input("b", np.array([[3, 4]], np.int32))]
    result = client.infer("pair", inputs, outputs=[httpclient.InferRequestedOutput("sum", binary_data=False),
                                                   httpclient.InferRequestedOutput("product")])
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert outputs["sum"]["data"] == [4.5, 6.0] and "parameters" not in outputs["sum"]
    assert outputs["product"]["parameters"] == {"binary_data_size": 8} and "data" not in outputs["product"]
    assert_same(result.as_numpy("sum"), np.array([[4.5, 6.0]], np.float32))
    assert_same(result.as_numpy("product"), np.array([[4.5, 8.0]], np.float32))


def test_json_inputs_with_binary_outputs(client):
    inputs = [typed_input("a", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), binary=False),
              typed_input("b", np.array([[1, 1], [2, 2]], np.int32), binary=False)]
    result = client.infer("pair", inputs)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert_same(result.as_numpy("sum"), np.array([[2, 3], [5, 6]], np.float32))


def test_request_id_version_and_any_single_input_name(client, estimator, iris):
    rows = iris[0][:4]
    result = client.infer("iris", [typed_input("whatever", rows)], model_version="1", request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_name"] == "iris" and response["model_version"] == "1"
    assert_same(result.as_numpy("predict"), estimator.predict(rows))
    with pytest.raises(InferenceServerException) as error:
        client.infer("iris", [typed_input("x", rows)], model_version="7")
    assert error.value.status() == "404" and "'7'" in error.value.message()


def test_custom_parameters_reach_the_server(client):
    result = client.infer("alltypes", [typed_input("x", np.array([1], np.int32))], parameters={"anything": "goes"})
    assert_same(result.as_numpy("out_x"), np.array([1], np.int32))


# -- the iris model ---------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_answers_equal_the_estimator(client, estimator, iris, binary):
    features = iris[0]
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary),
               httpclient.InferRequestedOutput("predict_proba", binary_data=binary)]
    result = client.infer("iris", [typed_input("input-0", features, binary=binary)], outputs=outputs)
    assert_same(result.as_numpy("predict"), estimator.predict(features))
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), estimator.predict_proba(features))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_top_two_of_predict_proba(client, estimator, iris, binary):
    features = iris[0][::10]
    result = client.infer("iris", [typed_input("input-0", features)],
                          outputs=[httpclient.InferRequestedOutput("predict_proba", binary_data=binary, class_count=2)])
    output = result.get_output("predict_proba")
    assert output["datatype"] == "BYTES" and output["shape"] == [len(features), 2]
    labels = result.as_numpy("predict_proba")
    probabilities = estimator.predict_proba(features)
    for row, row_labels in zip(probabilities, labels):
        top = np.argsort(-row, kind="stable")[:2]
        decoded = [item.decode() if isinstance(item, bytes) else item for item in row_labels]
        assert [int(label.split(":")[1]) for label in decoded] == top.tolist()
        assert [float(label.split(":")[0]) for label in decoded] == pytest.approx(row[top].tolist(), abs=1e-6)
        assert decoded == [f"{row[index]:f}:{index}" for index in top]


def test_classification_of_signed_and_float_outputs(client):
    inputs = [typed_input("f", np.array([[0.25, 0.5, 0.125], [3.0, -1.0, 2.0]], np.float32)),
              typed_input("i", np.array([[-5, 9, 4]], np.int32))]
    outputs = [httpclient.InferRequestedOutput("out_f", class_count=2),
               httpclient.InferRequestedOutput("out_i", class_count=1)]
    result = client.infer("alltypes", inputs, outputs=outputs)
    assert result.as_numpy("out_f").tolist() == [[b"0.500000:1", b"0.250000:0"], [b"3.000000:0", b"2.000000:2"]]
    assert result.as_numpy("out_i").tolist() == [[b"9.000000:1"]]


@pytest.mark.parametrize("array", [np.array([[0, 5, 3]], np.uint8), np.array([[0, 9, 4]], np.uint16),
                                   np.array([[-128, 5, 3]], np.int8)], ids=["UINT8", "UINT16", "INT8-min"])
def test_classification_of_unsigned_and_extreme_integer_outputs(client, array):
    result = client.infer("alltypes", [typed_input("x", array)],
                          outputs=[httpclient.InferRequestedOutput("out_x", class_count=2)])
    values = sorted(array.ravel().tolist(), reverse=True)[:2]
    indices = [array.ravel().tolist().index(v) for v in values]
    assert result.as_numpy("out_x").tolist() == [[f"{v:f}:{i}".encode() for v, i in zip(values, indices)]]


def test_classification_of_bool_output_is_not_an_internal_error(client):
    flags = np.array([[False, True, False]])
    try:
        result = client.infer("alltypes", [typed_input("flag", flags)],
                              outputs=[httpclient.InferRequestedOutput("out_flag", class_count=1)])
    except InferenceServerException as error:  # refusing it is fine, as a client error naming the output
        assert error.status() == "400" and "out_flag" in error.message(), error.message()
    else:
        assert result.as_numpy("out_flag").tolist() == [[b"1.000000:1"]]


# -- compression and async --------------------------------------------------------------------


@pytest.mark.parametrize("request_algorithm", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_algorithm", [None, "gzip", "deflate"])
def test_compression(client, estimator, iris, request_algorithm, response_algorithm):
    features = iris[0][::3]
    inputs = [typed_input("input-0", features)]
    outputs = [httpclient.InferRequestedOutput("predict"),
               httpclient.InferRequestedOutput("predict_proba", binary_data=False)]
    result = client.infer("iris", inputs, outputs=outputs, request_compression_algorithm=request_algorithm,
                          response_compression_algorithm=response_algorithm)
    assert_same(result.as_numpy("predict"), estimator.predict(features))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), estimator.predict_proba(features), rtol=1e-12)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_error_message_is_readable_with_response_compression(client, algorithm):
    with pytest.raises(InferenceServerException) as error:
        client.infer("iris", [typed_input("input-0", np.zeros((1, 3)))], response_compression_algorithm=algorithm)
    assert error.value.status() == "400"
    assert "input-0" in error.value.message() and "[1, 3]" in error.value.message()


def test_async_infer(client, estimator, iris):
    features = iris[0]
    chunks = [features[i : i + 15] for i in range(0, len(features), 15)]
    pending = [client.async_infer("iris", [typed_input("input-0", chunk)], request_id=str(i))
               for i, chunk in enumerate(chunks)]
    for i, (request, chunk) in enumerate(zip(pending, chunks)):
        result = request.get_result()
        assert result.get_response()["id"] == str(i)
        assert_same(result.as_numpy("predict"), estimator.predict(chunk))
    failing = client.async_infer("iris", [typed_input("input-0", np.zeros((1, 2)))])
    with pytest.raises(InferenceServerException) as error:
        failing.get_result()
    assert error.value.status() == "400" and "input-0" in error.value.message()


# -- statistics and the model repository ------------------------------------------------------


def test_inference_statistics(client):
    before = client.get_inference_statistics("counted")["model_stats"][0]
    assert before["inference_count"] == 0 and before["execution_count"] == 0 and before["batch_stats"] == []
    for rows in (3, 2, 3):
        client.infer("counted", [typed_input("x", np.ones((rows, 2), np.float32))])
    with pytest.raises(InferenceServerException):  # FP16 cannot travel as JSON: a failed request
        client.infer("counted", [typed_input("x", np.ones((1, 2), np.float16), binary=False)])

    for stats in (client.get_inference_statistics("counted")["model_stats"][0],
                  client.get_inference_statistics("counted", "1")["model_stats"][0],
                  next(s for s in client.get_inference_statistics()["model_stats"] if s["name"] == "counted")):
        assert stats["name"] == "counted" and stats["version"] == "1"
        assert stats["inference_count"] == 8  # batch rows
        assert stats["execution_count"] == 3  # requests
        assert stats["last_inference"] > 0
        inference = stats["inference_stats"]
        assert inference["success"]["count"] == 3 and inference["success"]["ns"] > 0
        assert inference["fail"]["count"] == 1
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert inference[key]["count"] == 3
        batches = {b["batch_size"]: b for b in stats["batch_stats"]}
        assert sorted(batches) == [2, 3]
        assert batches[3]["compute_infer"]["count"] == 2 and batches[2]["compute_infer"]["count"] == 1
    with pytest.raises(InferenceServerException) as error:
        client.get_inference_statistics("no-such-model")
    assert error.value.status() == "404"


def test_repository_index_unload_and_load(client):
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert {"iris", "alltypes", "pair", "counted", "spare", "broken"} <= set(index)
    assert index["spare"]["state"] == "READY" and index["spare"]["version"] == "1"
    x = typed_input("x", np.array([7], np.int32))
    assert client.infer("spare", [x]).as_numpy("out_x").tolist() == [7]

    client.unload_model("spare")
    try:
        row = next(r for r in client.get_model_repository_index() if r["name"] == "spare")
        assert row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded"
        assert not client.is_model_ready("spare")
        with pytest.raises(InferenceServerException) as error:
            client.infer("spare", [x])
        assert error.value.status() == "503" and "unloaded" in error.value.message()
    finally:
        client.load_model("spare")
    assert client.is_model_ready("spare")
    assert next(r for r in client.get_model_repository_index() if r["name"] == "spare")["state"] == "READY"
    assert client.infer("spare", [x]).as_numpy("out_x").tolist() == [7]

    with pytest.raises(InferenceServerException) as error:
        client.load_model("no-such-model")
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException) as error:
        client.unload_model("no-such-model")
    assert error.value.status() == "404"


def test_server_stays_ready_after_unloading_a_model(client):
    client.unload_model("spare")
    try:
        assert not client.is_model_ready("spare")
        assert client.is_server_ready()
    finally:
        client.load_model("spare")


# -- errors -----------------------------------------------------------------------------------


def expect_error(call, status: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call()
    assert error.value.status() == status, error.value.message()
    for fragment in fragments:
        assert fragment in error.value.message(), error.value.message()


def test_errors_name_the_problem(client):
    rows = np.zeros((2, 4))
    expect_error(lambda: client.infer("no-such-model", [typed_input("x", rows)]), "404", "no-such-model", "iris")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", np.zeros((2, 3)))]), "400",
                 "input-0", "[-1, 4]", "[2, 3]")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", np.array([[b"a"] * 4], dtype=object), "BYTES")]),
                 "400", "input-0", "BYTES")
    expect_error(lambda: client.infer("pair", [typed_input("a", np.zeros((1, 2), np.float32))]), "400",
                 "missing input 'b'")
    expect_error(lambda: client.infer("iris", [typed_input("input-0", rows)],
                                      outputs=[httpclient.InferRequestedOutput("logits")]), "400", "logits")
    expect_error(lambda: client.infer("alltypes", [typed_input("half", np.zeros(2, np.float16), binary=False)]),
                 "400", "half", "FP16")
    expect_error(lambda: client.infer("alltypes", [typed_input("half", np.zeros(2, np.float16))],
                                      outputs=[httpclient.InferRequestedOutput("out_half", binary_data=False)]),
                 "400", "out_half", "FP16")
    expect_error(lambda: client.infer("broken", [typed_input("x", rows)]), "500", "ZeroDivisionError")
