"""Tests for shipyard.protocol.v2 (the V2 JSON tensor codec) and runtimes.base.check_inputs.

check_inputs lives here because it is the second half of turning a V2 request into the tensors
a model sees.
"""

import uuid

import hypothesis.extra.numpy as hnp
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard.protocol import v2
from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES
from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import TensorSpec, check_inputs

SETTINGS = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

INT_DATATYPES = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
JSON_DATATYPES = ["BOOL", *INT_DATATYPES, "FP32", "FP64", "BYTES"]

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
NAMES = st.text(min_size=1, max_size=8)
TEXT = st.text(max_size=6)


def elements_for(datatype: str, request_side: bool):
    """Element strategy for one datatype.

    FP32 requests are sent as arbitrary (finite, in-range) float64 JSON numbers and compared after
    a float32 cast.
    """
    if datatype == "BYTES":
        return TEXT
    if datatype == "FP32" and request_side:
        return st.floats(min_value=-1e38, max_value=1e38, allow_nan=False, allow_infinity=False)
    if datatype in ("FP32", "FP64"):
        return hnp.from_dtype(DATATYPE_TO_DTYPE[datatype], allow_nan=False, allow_infinity=False)
    return hnp.from_dtype(DATATYPE_TO_DTYPE[datatype])


def array_dtype_for(datatype: str, request_side: bool):
    if datatype == "FP32" and request_side:
        return np.dtype(np.float64)
    return DATATYPE_TO_DTYPE[datatype]


def request_body(*inputs, **extra) -> bytes:
    return msgspec.json.encode({"inputs": list(inputs), **extra})


def json_input(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def decode(body: bytes) -> dict:
    return v2.decode_inputs(v2.decode_request(body))


def rejection(body: bytes) -> str:
    with pytest.raises(InvalidInput) as info:
        decode(body)
    assert info.value.status == 400
    return info.value.message


def expected_values(datatype: str, array: np.ndarray) -> np.ndarray:
    if datatype == "BYTES":
        out = np.empty(array.shape, dtype=object)
        for index in np.ndindex(array.shape):
            out[index] = array[index].encode()
        return out
    return array.astype(DATATYPE_TO_DTYPE[datatype])


def assert_tensor_equal(datatype: str, got: np.ndarray, original: np.ndarray) -> None:
    want = expected_values(datatype, original)
    assert got.dtype == DATATYPE_TO_DTYPE[datatype]
    assert got.shape == original.shape
    if datatype == "BYTES":
        assert got.ravel().tolist() == want.ravel().tolist()
        assert all(type(item) is bytes for item in got.ravel())
    else:
        np.testing.assert_array_equal(got, want)


# --- request decoding: property-based round trips ----------------------------------------------


@st.composite
def request_tensors(draw, datatype: str, elements=None):
    shape = draw(SHAPES)
    array = draw(
        hnp.arrays(
            array_dtype_for(datatype, True) if datatype != "BYTES" else object,
            shape,
            elements=elements if elements is not None else elements_for(datatype, True),
        )
    )
    return draw(NAMES), array


@pytest.mark.parametrize("layout", ["flat", "nested"])
@pytest.mark.parametrize("datatype", JSON_DATATYPES)
@SETTINGS
@given(data=st.data())
def test_decode_round_trip(datatype, layout, data):
    name, array = data.draw(request_tensors(datatype, None))
    payload = array.ravel().tolist() if layout == "flat" else array.tolist()
    body = request_body(json_input(name, list(array.shape), datatype, payload))

    tensors = decode(body)

    assert list(tensors) == [name]
    assert_tensor_equal(datatype, tensors[name], array)


@SETTINGS
@given(
    first=request_tensors("INT32"),
    second=request_tensors("BYTES"),
    third=request_tensors("FP64"),
)
def test_decode_several_inputs_keeps_order_and_values(first, second, third):
    names = ["a", "b", "c"]
    arrays = [first[1], second[1], third[1]]
    datatypes = ["INT32", "BYTES", "FP64"]
    body = request_body(
        *(json_input(n, list(a.shape), d, a.tolist()) for n, a, d in zip(names, arrays, datatypes)),
        id="req-1",
        parameters={"k": 1},
    )
    request = v2.decode_request(body)
    assert request.id == "req-1"
    assert request.parameters == {"k": 1}
    tensors = v2.decode_inputs(request)
    assert list(tensors) == names
    for name, array, datatype in zip(names, arrays, datatypes):
        assert_tensor_equal(datatype, tensors[name], array)


def test_decode_request_reads_optional_fields():
    body = request_body(
        json_input("x", [1], "INT32", [1]),
        id="abc",
        parameters={"p": "q"},
        outputs=[{"name": "proba"}, {"name": "label", "parameters": {"binary_data": False}}],
    )
    request = v2.decode_request(body)
    assert request.id == "abc"
    assert request.parameters == {"p": "q"}
    assert [o.name for o in request.outputs] == ["proba", "label"]
    assert request.outputs[1].parameters == {"binary_data": False}


def test_decode_request_optional_fields_default_to_none():
    request = v2.decode_request(request_body(json_input("x", [1], "INT32", [1])))
    assert request.id is None and request.parameters is None and request.outputs is None


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("INT32", 7, np.int32),
        ("FP64", 2.5, np.float64),
        ("BOOL", True, np.bool_),
        ("BYTES", "hi", object),
    ],
)
def test_scalar_tensor_with_empty_shape(datatype, data, dtype):
    tensor = decode(request_body(json_input("s", [], datatype, data)))["s"]
    assert tensor.shape == ()
    assert tensor.dtype == np.dtype(dtype)
    assert tensor.item() == (data.encode() if isinstance(data, str) else data)


def test_integral_ints_are_accepted_as_floats():
    tensor = decode(request_body(json_input("x", [3], "FP32", [1, 2.5, -3])))["x"]
    assert tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, np.array([1, 2.5, -3], dtype=np.float32))


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 0),
        ("UINT8", 255),
        ("INT8", -128),
        ("INT8", 127),
        ("UINT16", 65535),
        ("INT16", -32768),
        ("UINT32", 2**32 - 1),
        ("INT32", -(2**31)),
        ("INT64", -(2**63)),
        ("INT64", 2**63 - 1),
        ("UINT64", 2**64 - 1),
    ],
)
def test_integer_range_limits_are_accepted(datatype, value):
    tensor = decode(request_body(json_input("x", [1], datatype, [value])))["x"]
    assert tensor.dtype == DATATYPE_TO_DTYPE[datatype]
    assert int(tensor[0]) == value


def test_uint64_values_straddling_2_pow_63_are_accepted():
    values = [1, 2**64 - 1, 2**63]
    tensor = decode(request_body(json_input("big", [3], "UINT64", values)))["big"]
    assert tensor.dtype == np.uint64
    assert [int(v) for v in tensor] == values


# --- request decoding: rejections --------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b'{"inputs": [', b"not json", b'{"inputs": [{"name": "x",}]}'])
def test_malformed_json_is_rejected(body):
    assert rejection(body).startswith("malformed JSON")


def test_empty_body_is_rejected():
    message = rejection(b"")
    assert "empty" in message
    assert "'inputs'" in message


def test_missing_inputs_is_rejected():
    message = rejection(b'{"id": "1"}')
    assert "inputs" in message
    assert "missing" in message.lower()


def test_body_that_is_not_an_object_is_rejected():
    message = rejection(b"[]")
    assert "Expected `object`" in message


@pytest.mark.parametrize("shape", ["3", 3, {"a": 1}, [1.5], ["2"]])
def test_shape_not_a_list_of_ints_names_the_field_path(shape):
    message = rejection(request_body(json_input("x", shape, "INT32", [1, 2, 3])))
    assert "$.inputs[0].shape" in message
    assert "Expected" in message


def test_field_path_points_at_the_bad_input():
    body = request_body(json_input("a", [1], "INT32", [1]), json_input("b", [1], 5, [1]))
    message = rejection(body)
    assert "$.inputs[1].datatype" in message
    assert "Expected `str`" in message


def test_unknown_datatype_is_rejected():
    message = rejection(request_body(json_input("feat", [1], "FLOAT32", [1.0])))
    assert "'feat'" in message
    assert "unknown datatype 'FLOAT32'" in message
    for datatype in DATATYPES:
        assert datatype in message


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_floats_cannot_be_sent_as_json(datatype):
    message = rejection(request_body(json_input("half", [2], datatype, [1.0, 2.0])))
    assert "'half'" in message
    assert datatype in message
    assert "binary" in message


@pytest.mark.parametrize(
    ("shape", "data", "needs", "has"),
    [
        ([3], [1, 2], 3, 2),
        ([2, 2], [1, 2, 3], 4, 3),
        ([1], [[1, 2]], 1, 2),
        ([0], [1], 0, 1),
        ([], [1, 2], 1, 2),
    ],
)
def test_data_length_must_match_shape(shape, data, needs, has):
    message = rejection(request_body(json_input("x", shape, "INT64", data)))
    assert "'x'" in message
    assert f"shape {shape} needs {needs} elements but data has {has}" in message


def test_bytes_data_length_must_match_shape():
    message = rejection(request_body(json_input("txt", [3], "BYTES", ["a", "b"])))
    assert "'txt'" in message
    assert "needs 3 elements but data has 2" in message


@pytest.mark.parametrize("data", [[[1, 2], [3]], [[1, 2], 3], [[[1], [2]], [3, 4]]])
def test_ragged_nested_data_is_rejected(data):
    message = rejection(request_body(json_input("rag", [3], "INT32", data)))
    assert "'rag'" in message
    assert "ragged" in message
    assert "rectangular" in message


def test_ragged_bytes_data_is_rejected():
    message = rejection(request_body(json_input("rag", [3], "BYTES", [["a", "b"], ["c"]])))
    assert "'rag'" in message
    assert "ragged" in message


@pytest.mark.parametrize("data", [[1.5, 2.0], [1, 2.5], [[1.0]]])
def test_floats_into_int32_are_rejected(data):
    shape = [len(data)]
    message = rejection(request_body(json_input("ids", shape, "INT32", data)))
    assert "'ids'" in message
    assert "INT32 data must be integers" in message
    assert "got floats" in message


@pytest.mark.parametrize("data", [["1.5"], [1.0, "a"]])
def test_strings_into_fp32_are_rejected(data):
    message = rejection(request_body(json_input("f", [len(data)], "FP32", data)))
    assert "'f'" in message
    assert "FP32 data must be numbers" in message
    assert "strings" in message


@pytest.mark.parametrize("data", [[None], [{"a": 1}]])
def test_non_numbers_into_fp64_are_rejected(data):
    message = rejection(request_body(json_input("f", [1], "FP64", data)))
    assert "'f'" in message
    assert "FP64 data must be numbers" in message


@pytest.mark.parametrize(
    ("datatype", "data", "bad"),
    [
        ("UINT8", [1, 256], 256),
        ("UINT8", [-1, 3], -1),
        ("INT8", [128], 128),
        ("INT8", [-129, 0], -129),
        ("UINT16", [65536], 65536),
        ("INT32", [2**31], 2**31),
        ("UINT64", [-1], -1),
        ("UINT64", [5, -3], -3),
        ("INT64", [2**63], 2**63),
    ],
)
def test_out_of_range_integers_are_rejected(datatype, data, bad):
    message = rejection(request_body(json_input("n", [len(data)], datatype, data)))
    assert "'n'" in message
    assert f"value {bad} is out of range for {datatype}" in message
    info = np.iinfo(DATATYPE_TO_DTYPE[datatype])
    assert f"[{info.min}, {info.max}]" in message


def test_out_of_range_int64_mixed_with_negative_says_out_of_range():
    message = rejection(request_body(json_input("n", [2], "INT64", [-1, 2**63])))
    assert "out of range for INT64" in message


@pytest.mark.parametrize(("data", "got"), [([1, 0], "integers"), ([1.0], "floats"), (["true"], "strings"), ([True, 1], "integers")])
def test_non_bool_into_bool_is_rejected(data, got):
    message = rejection(request_body(json_input("flag", [len(data)], "BOOL", data)))
    assert "'flag'" in message
    assert "BOOL data must be true/false" in message
    assert got in message


@pytest.mark.parametrize("datatype", ["INT32", "UINT8", "FP32"])
def test_all_bool_data_into_numbers_is_rejected(datatype):
    message = rejection(request_body(json_input("b", [2], datatype, [True, False])))
    assert "'b'" in message
    assert f"{datatype} data must be" in message
    assert "booleans" in message


def test_bool_mixed_with_ints_into_int32_is_rejected():
    rejection(request_body(json_input("b", [2], "INT32", [1, True])))


@pytest.mark.parametrize(
    ("data", "where", "got"),
    [([1], "data[0]", "integers"), (["a", 2.5], "data[1]", "floats"), ([["a", "b"], ["c", None]], "data[1][1]", "nulls"),
     ([True], "data[0]", "booleans")],
)
def test_non_strings_into_bytes_are_rejected(data, where, got):
    message = rejection(request_body(json_input("txt", [3], "BYTES", data)))
    assert "'txt'" in message
    assert "BYTES data must be JSON strings" in message
    assert f"got {got} at `{where}`" in message


@pytest.mark.parametrize("shape", [[-1], [2, -1], [-3, 0]])
def test_negative_shape_dims_are_rejected(shape):
    message = rejection(request_body(json_input("x", shape, "INT32", [1, 2])))
    assert "'x'" in message
    assert "negative dimension" in message
    assert str(shape) in message


def test_duplicate_input_names_are_rejected():
    body = request_body(json_input("x", [1], "INT32", [1]), json_input("x", [1], "INT32", [2]))
    message = rejection(body)
    assert "'x'" in message
    assert "more than once" in message


@pytest.mark.parametrize("with_null", [False, True])
def test_missing_data_is_rejected(with_null):
    item = {"name": "x", "shape": [1], "datatype": "INT32"}
    if with_null:
        item["data"] = None
    message = rejection(request_body(item))
    assert "'x'" in message
    assert "no 'data'" in message


def test_tensor_from_json_checks_datatype_before_data():
    with pytest.raises(InvalidInput, match="unknown datatype"):
        v2.tensor_from_json("x", "NOPE", [1], None)


# --- response encoding -------------------------------------------------------------------------


@st.composite
def output_arrays(draw, datatype: str):
    shape = draw(SHAPES)
    if datatype == "BYTES":
        kind = draw(st.sampled_from(["object-bytes", "object-str", "unicode"]))
        texts = draw(hnp.arrays(object, shape, elements=TEXT))
        if kind == "object-bytes":
            array = np.empty(shape, dtype=object)
            for index in np.ndindex(shape):
                array[index] = texts[index].encode()
        elif kind == "object-str":
            array = texts
        else:
            array = texts.astype(str)
            # numpy's fixed-width unicode drops trailing NULs: compare with what the array holds
            return array, array.astype(object)
        return array, texts
    array = draw(hnp.arrays(DATATYPE_TO_DTYPE[datatype], shape, elements=elements_for(datatype, False)))
    return array, array


def rebuild(output: dict) -> np.ndarray:
    datatype = output["datatype"]
    if datatype == "BYTES":
        flat = np.empty(len(output["data"]), dtype=object)
        for index, text in enumerate(output["data"]):
            flat[index] = text.encode()
        return flat.reshape(output["shape"])
    return np.array(output["data"], dtype=DATATYPE_TO_DTYPE[datatype]).reshape(output["shape"])


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
@SETTINGS
@given(data=st.data())
def test_encode_response_round_trip(datatype, data):
    array, originals = data.draw(output_arrays(datatype))
    body = v2.encode_response("model", "2", "req", {"out": array})
    payload = msgspec.json.decode(body)

    assert payload["model_name"] == "model"
    assert payload["model_version"] == "2"
    assert payload["id"] == "req"
    [output] = payload["outputs"]
    assert output["name"] == "out"
    assert output["datatype"] == datatype
    assert output["shape"] == list(array.shape)
    assert isinstance(output["data"], list)
    assert len(output["data"]) == array.size
    assert_tensor_equal(datatype, rebuild(output), originals)


@SETTINGS
@given(
    ints=hnp.arrays(np.int64, SHAPES),
    floats=hnp.arrays(np.float32, SHAPES, elements=hnp.from_dtype(np.dtype(np.float32), allow_nan=False, allow_infinity=False)),
    texts=hnp.arrays(object, SHAPES, elements=TEXT),
)
def test_encode_response_response_round_trips_through_request_decoder(ints, floats, texts):
    """An encoded response's outputs, sent back as request inputs, decode to the same tensors."""
    body = v2.encode_response("m", None, None, {"i": ints, "f": floats, "t": texts})
    outputs = msgspec.json.decode(body)["outputs"]
    assert [o["name"] for o in outputs] == ["i", "f", "t"]
    tensors = decode(request_body(*({k: o[k] for k in ("name", "shape", "datatype", "data")} for o in outputs)))
    assert_tensor_equal("INT64", tensors["i"], ints)
    assert_tensor_equal("FP32", tensors["f"], floats)
    assert_tensor_equal("BYTES", tensors["t"], texts)


def test_encode_response_echoes_request_id():
    payload = msgspec.json.decode(v2.encode_response("m", "1", "my-id-42", {"y": np.array([1])}))
    assert payload["id"] == "my-id-42"


def test_encode_response_echoes_empty_string_id():
    payload = msgspec.json.decode(v2.encode_response("m", "1", "", {"y": np.array([1])}))
    assert payload["id"] == ""


def test_encode_response_generates_uuid_when_id_is_none():
    first = msgspec.json.decode(v2.encode_response("m", "1", None, {"y": np.array([1])}))["id"]
    second = msgspec.json.decode(v2.encode_response("m", "1", None, {"y": np.array([1])}))["id"]
    assert isinstance(first, str) and first
    assert str(uuid.UUID(first)) == first
    assert first != second


def test_encode_response_model_version():
    with_version = msgspec.json.decode(v2.encode_response("m", "7", "i", {}))
    assert with_version["model_version"] == "7"
    assert with_version["model_name"] == "m"
    assert with_version["outputs"] == []
    without = msgspec.json.decode(v2.encode_response("m", None, "i", {}))
    assert without.get("model_version") is None


def test_encode_response_parameters_accept_numpy_values():
    params = {"n": np.int64(3), "scores": np.array([0.5, 1.5]), "flag": np.bool_(True)}
    payload = msgspec.json.decode(v2.encode_response("m", None, "i", {}, parameters=params))
    assert payload["parameters"] == {"n": 3, "scores": [0.5, 1.5], "flag": True}
    assert "parameters" not in msgspec.json.decode(v2.encode_response("m", None, "i", {}, parameters={}))


def test_encode_response_bytes_parameters_are_text():
    payload = msgspec.json.decode(v2.encode_response("m", None, "i", {}, parameters={"raw": b"ab"}))
    assert payload["parameters"] == {"raw": "ab"}


def test_encode_response_keeps_output_order():
    outputs = {"z": np.array([1]), "a": np.array([2.5]), "m": np.array([True])}
    payload = msgspec.json.decode(v2.encode_response("m", None, "i", outputs))
    assert [(o["name"], o["datatype"], o["data"]) for o in payload["outputs"]] == [
        ("z", "INT64", [1]),
        ("a", "FP64", [2.5]),
        ("m", "BOOL", [True]),
    ]


# --- json_data ---------------------------------------------------------------------------------


def test_json_data_flattens_row_major():
    datatype, data = v2.json_data("o", np.arange(6, dtype=np.int16).reshape(2, 3))
    assert datatype == "INT16"
    assert data == [0, 1, 2, 3, 4, 5]


def test_json_data_bytes_are_text():
    datatype, data = v2.json_data("o", np.array([b"a", "\u00e9".encode(), b""], dtype=object))
    assert datatype == "BYTES"
    assert data == ["a", "\u00e9", ""]


def test_json_data_refuses_fp16():
    with pytest.raises(InvalidInput) as info:
        v2.json_data("half_out", np.array([1.0, 2.0], dtype=np.float16))
    assert "'half_out'" in info.value.message
    assert "FP16" in info.value.message
    assert "binary" in info.value.message


def test_encode_response_refuses_fp16_outputs():
    with pytest.raises(InvalidInput, match="binary"):
        v2.encode_response("m", None, None, {"h": np.zeros(2, dtype=np.float16)})


@pytest.mark.parametrize("raw", [b"\xff", b"ok\x80", b"\xc3"])
def test_json_data_refuses_non_utf8_bytes(raw):
    with pytest.raises(InvalidInput) as info:
        v2.json_data("blob", np.array([b"fine", raw], dtype=object))
    assert "UTF-8" in info.value.message
    assert "binary" in info.value.message


def test_encode_response_refuses_non_utf8_bytes():
    with pytest.raises(InvalidInput, match="UTF-8"):
        v2.encode_response("m", None, None, {"blob": np.array([b"\xfe\xff"], dtype=object)})


def test_non_utf8_bytes_error_names_the_output():
    with pytest.raises(InvalidInput) as info:
        v2.json_data("blob", np.array([b"\xff"], dtype=object))
    assert "'blob'" in info.value.message


def test_json_data_object_array_with_numpy_int():
    assert v2.json_data("o", np.array([np.int64(1), 2], dtype=object)) == ("BYTES", ["1", "2"])


# --- runtimes.base.check_inputs ----------------------------------------------------------------


def test_check_inputs_without_specs_passes_tensors_through():
    tensors = {"anything": np.array([1])}
    assert check_inputs("m", [], tensors) is tensors


def test_single_input_model_accepts_differently_named_tensor():
    spec = TensorSpec("input-0", "FP64", (-1, 3))
    array = np.ones((2, 3))
    checked = check_inputs("m", [spec], {"features": array})
    assert list(checked) == ["input-0"]
    np.testing.assert_array_equal(checked["input-0"], array)


def test_numeric_tensor_is_cast_to_spec_dtype():
    spec = TensorSpec("x", "FP64", (-1, 2))
    checked = check_inputs("m", [spec], {"x": np.array([[1, 2], [3, 4]], dtype=np.int64)})
    assert checked["x"].dtype == np.float64
    np.testing.assert_array_equal(checked["x"], [[1.0, 2.0], [3.0, 4.0]])


def test_float_tensor_is_refused_for_an_integer_spec():
    spec = TensorSpec("x", "INT32", (-1,))
    with pytest.raises(InvalidInput, match="expected INT32, got FP32 .fractional values would be truncated"):
        check_inputs("m", [spec], {"x": np.array([1.5, 2.0], dtype=np.float32)})


def test_integer_tensor_is_cast_to_a_narrower_integer_spec():
    spec = TensorSpec("x", "INT32", (-1,))
    checked = check_inputs("m", [spec], {"x": np.array([1, 2], dtype=np.int64)})
    assert checked["x"].dtype == np.int32


def test_matching_dtype_is_not_copied():
    spec = TensorSpec("x", "FP32", (-1, 2))
    array = np.zeros((1, 2), dtype=np.float32)
    assert check_inputs("m", [spec], {"x": array})["x"] is array


def test_bytes_into_numeric_spec_is_rejected():
    spec = TensorSpec("feats", "FP64", (-1, 2))
    array = np.array([[b"a", b"b"]], dtype=object)
    with pytest.raises(InvalidInput) as info:
        check_inputs("m", [spec], {"feats": array})
    assert "'feats'" in info.value.message
    assert "expected FP64, got BYTES" in info.value.message


@pytest.mark.parametrize(("spec_type", "array"), [("FP32", np.array([True])), ("BYTES", np.array([1.0]))])
def test_bool_and_numbers_are_not_cast_across_kinds(spec_type, array):
    spec = TensorSpec("x", spec_type, (-1,))
    with pytest.raises(InvalidInput, match=f"input 'x': expected {spec_type}, got"):
        check_inputs("m", [spec], {"x": array})


def test_wrong_rank_1d_input_gets_one_row_hint():
    spec = TensorSpec("x", "FP64", (-1, 4))
    with pytest.raises(InvalidInput) as info:
        check_inputs("m", [spec], {"x": np.zeros(4)})
    message = info.value.message
    assert "'x'" in message
    assert "expected shape [-1, 4], got [4]" in message
    assert "for one row send shape [1, 4]" in message


def test_one_row_hint_with_variable_feature_dim():
    spec = TensorSpec("x", "FP64", (-1, -1))
    with pytest.raises(InvalidInput, match=r"for one row send shape \[1, 5\]"):
        check_inputs("m", [spec], {"x": np.zeros(5)})


def test_no_hint_when_1d_length_does_not_fit_row():
    spec = TensorSpec("x", "FP64", (-1, 4))
    with pytest.raises(InvalidInput) as info:
        check_inputs("m", [spec], {"x": np.zeros(3)})
    assert "expected shape [-1, 4], got [3]" in info.value.message
    assert "one row" not in info.value.message


@pytest.mark.parametrize(
    ("spec_shape", "shape"),
    [((-1, 3), (2, 4)), ((-1, 3), (1, 3, 1)), ((2, 3), (3, 3)), ((-1,), (2, 2)), ((-1, 3), ())],
)
def test_wrong_dims_are_rejected_with_expected_shape(spec_shape, shape):
    spec = TensorSpec("x", "FP64", spec_shape)
    with pytest.raises(InvalidInput) as info:
        check_inputs("m", [spec], {"x": np.zeros(shape)})
    message = info.value.message
    assert "'x'" in message
    assert f"expected shape {list(spec_shape)}, got {list(shape)}" in message
    assert "one row" not in message


def test_variable_dims_accept_any_size():
    spec = TensorSpec("x", "INT64", (-1, 3))
    for rows in (0, 1, 5):
        assert check_inputs("m", [spec], {"x": np.zeros((rows, 3), dtype=np.int64)})["x"].shape == (rows, 3)


MULTI = [TensorSpec("age", "FP64", (-1, 1)), TensorSpec("city", "BYTES", (-1, 1))]


def test_multi_input_model_checks_each_input():
    checked = check_inputs(
        "m", MULTI, {"city": np.array([[b"x"]], dtype=object), "age": np.array([[3]], dtype=np.int32)}
    )
    assert list(checked) == ["age", "city"]
    assert checked["age"].dtype == np.float64


def test_multi_input_model_reports_missing_input():
    with pytest.raises(InvalidInput) as info:
        check_inputs("mymodel", MULTI, {"age": np.zeros((1, 1))})
    message = info.value.message
    assert "missing input 'city'" in message
    assert "BYTES with shape [-1, 1]" in message
    assert "'mymodel'" in message


def test_multi_input_model_reports_unknown_input():
    tensors = {
        "age": np.zeros((1, 1)),
        "city": np.array([[b"x"]], dtype=object),
        "zip": np.zeros((1, 1)),
    }
    with pytest.raises(InvalidInput) as info:
        check_inputs("mymodel", MULTI, tensors)
    message = info.value.message
    assert "unknown input 'zip'" in message
    assert "'mymodel'" in message
    assert "it takes: age, city" in message


def test_single_input_model_with_two_tensors_is_not_renamed():
    spec = TensorSpec("x", "FP64", (-1,))
    with pytest.raises(InvalidInput, match="unknown input 'y'"):
        check_inputs("m", [spec], {"x": np.zeros(2), "y": np.zeros(2)})
    with pytest.raises(InvalidInput, match="missing input 'x'"):
        check_inputs("m", [spec], {"a": np.zeros(2), "b": np.zeros(2)})


def test_integer_narrowing_that_would_wrap_is_refused():
    spec = TensorSpec("x", "INT8", (-1,))
    with pytest.raises(InvalidInput, match="'x': values do not fit INT8"):
        check_inputs("m", [spec], {"x": np.array([1, 300], dtype=np.int64)})
