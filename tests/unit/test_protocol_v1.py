"""Tests for shipyard.protocol.v1: KServe V1 ``instances`` in, ``predictions`` out."""

import json

import numpy as np
import pytest

from shipyard.protocol import v1
from shipyard.protocol.errors import InvalidInput


def rejection(body: bytes) -> str:
    with pytest.raises(InvalidInput) as info:
        v1.decode_instances(body)
    assert info.value.status == 400
    return info.value.message


# --- decode_instances -------------------------------------------------------------------------


def test_decode_instances_reads_instances():
    assert v1.decode_instances(b'{"instances": [[1, 2], [3, 4]]}') == [[1, 2], [3, 4]]


def test_decode_instances_reads_inputs():
    assert v1.decode_instances(b'{"inputs": [{"a": 1}, "x"]}') == [{"a": 1}, "x"]


def test_decode_instances_prefers_instances_over_inputs():
    assert v1.decode_instances(b'{"inputs": [9], "instances": [1]}') == [1]


def test_decode_instances_ignores_other_keys():
    assert v1.decode_instances(b'{"signature_name": "s", "instances": []}') == []


@pytest.mark.parametrize(
    ("body", "got"),
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"3", "int"), (b"null", "NoneType")],
)
def test_decode_instances_rejects_non_object(body, got):
    message = rejection(body)
    assert "expected a JSON object with 'instances'" in message
    assert got in message


def test_decode_instances_rejects_missing_key():
    message = rejection(b'{"data": [1, 2]}')
    assert "missing 'instances'" in message
    assert "(a list)" in message


@pytest.mark.parametrize(
    ("body", "key", "got"),
    [
        (b'{"instances": 3}', "instances", "int"),
        (b'{"instances": {"a": 1}}', "instances", "dict"),
        (b'{"inputs": "abc"}', "inputs", "str"),
    ],
)
def test_decode_instances_rejects_non_list(body, key, got):
    message = rejection(body)
    assert f"'{key}' must be a list" in message
    assert got in message


@pytest.mark.parametrize("body", [b"{", b'{"instances": [1, 2', b"{instances: []}", b"nope"])
def test_decode_instances_rejects_malformed_json(body):
    assert rejection(body).startswith("malformed JSON")


def test_decode_instances_rejects_empty_body():
    message = rejection(b"")
    assert "empty" in message
    assert "'instances'" in message


# --- instances_to_array -----------------------------------------------------------------------


def test_rectangular_ints_become_int_matrix():
    array = v1.instances_to_array([[1, 2, 3], [4, 5, 6]])
    assert array.dtype.kind == "i"
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


def test_rectangular_floats_become_float_array():
    array = v1.instances_to_array([[1.5, 2], [3, 4.25]])
    assert array.dtype == np.float64
    assert array.shape == (2, 2)
    np.testing.assert_array_equal(array, [[1.5, 2.0], [3.0, 4.25]])


def test_flat_numbers_and_bools():
    ints = v1.instances_to_array([1, 2, 3])
    assert ints.dtype.kind == "i" and ints.shape == (3,)
    bools = v1.instances_to_array([True, False])
    assert bools.dtype == np.bool_
    np.testing.assert_array_equal(bools, [True, False])


def test_ragged_lists_become_1d_object_array():
    array = v1.instances_to_array([[1, 2], [3]])
    assert array.dtype == object
    assert array.shape == (2,)
    assert array[0] == [1, 2]
    assert array[1] == [3]


def test_dicts_become_1d_object_array():
    instances = [{"a": 1, "b": [1, 2]}, {"a": 2}]
    array = v1.instances_to_array(instances)
    assert array.dtype == object
    assert array.shape == (2,)
    assert array.tolist() == instances


def test_strings_become_object_array_of_str():
    array = v1.instances_to_array(["a", "bc"])
    assert array.dtype == object
    assert array.tolist() == ["a", "bc"]
    assert all(type(item) is str for item in array)


def test_none_and_numbers_become_object_array():
    array = v1.instances_to_array([None, 1])
    assert array.dtype == object
    assert array.tolist() == [None, 1]


def test_mixed_numbers_and_strings_keep_their_types():
    array = v1.instances_to_array([1, "a"])
    assert array.dtype == object
    assert array.shape == (2,)
    assert array[0] == 1 and type(array[0]) is int
    assert array[1] == "a"


# --- encode_predictions -----------------------------------------------------------------------


def predictions(array: np.ndarray):
    payload = json.loads(v1.encode_predictions(array))
    assert list(payload) == ["predictions"]
    return payload["predictions"]


def test_encode_int_predictions():
    result = predictions(np.array([0, 1, -7], dtype=np.int64))
    assert result == [0, 1, -7]
    assert all(type(item) is int for item in result)


def test_encode_float_predictions():
    result = predictions(np.array([0.5, -1.25, 3.0]))
    assert result == [0.5, -1.25, 3.0]


def test_encode_float32_predictions_round_trip_through_float32():
    array = np.array([0.1, 1 / 3, 1e-20], dtype=np.float32)
    np.testing.assert_array_equal(np.array(predictions(array), dtype=np.float32), array)


def test_encode_2d_predictions():
    assert predictions(np.array([[0.1, 0.9], [0.7, 0.3]])) == [[0.1, 0.9], [0.7, 0.3]]


def test_encode_bool_predictions():
    assert predictions(np.array([True, False])) == [True, False]


def test_encode_object_bytes_as_text():
    array = np.array([b"cat", "d\u00f6g".encode()], dtype=object)
    assert predictions(array) == ["cat", "d\u00f6g"]


def test_encode_2d_object_bytes_as_text():
    array = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    assert predictions(array) == [["a", "b"], ["c", "d"]]


def test_encode_fixed_width_bytes_and_unicode_as_text():
    assert predictions(np.array([b"x", b"yz"])) == ["x", "yz"]
    assert predictions(np.array(["x", "yz"])) == ["x", "yz"]


def test_encode_object_dicts():
    array = np.empty(2, dtype=object)
    array[0] = {"label": "a"}
    array[1] = {"label": "b"}
    assert predictions(array) == [{"label": "a"}, {"label": "b"}]
