"""Tests for shipyard.protocol.datatypes: the V2 datatype <-> numpy dtype tables."""

import numpy as np
import pytest

from shipyard.protocol.datatypes import (
    BINARY_ONLY,
    DATATYPE_TO_DTYPE,
    DATATYPES,
    FLOAT_DATATYPES,
    INTEGER_DATATYPES,
    NUMERIC_DATATYPES,
    datatype_of,
    element_count,
)

ALL_V2_DATATYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
}

EXPECTED_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": np.uint16,
    "BYTES": object,
}


def test_table_covers_exactly_the_14_v2_datatypes():
    assert set(DATATYPE_TO_DTYPE) == ALL_V2_DATATYPES
    assert len(DATATYPE_TO_DTYPE) == 14
    assert set(DATATYPES) == ALL_V2_DATATYPES
    assert len(DATATYPES) == 14


@pytest.mark.parametrize("datatype", sorted(ALL_V2_DATATYPES))
def test_each_datatype_maps_to_its_numpy_dtype(datatype):
    dtype = DATATYPE_TO_DTYPE[datatype]
    assert isinstance(dtype, np.dtype)
    assert dtype == np.dtype(EXPECTED_DTYPES[datatype])


@pytest.mark.parametrize("datatype", sorted(ALL_V2_DATATYPES - {"BF16"}))
def test_datatype_of_maps_each_dtype_back(datatype):
    assert datatype_of(DATATYPE_TO_DTYPE[datatype]) == datatype


def test_bf16_is_carried_as_uint16_and_reads_back_as_uint16():
    assert DATATYPE_TO_DTYPE["BF16"] == np.dtype(np.uint16)
    assert datatype_of(DATATYPE_TO_DTYPE["BF16"]) == "UINT16"


@pytest.mark.parametrize(
    "dtype",
    [np.dtype("U1"), np.dtype("U7"), np.dtype("S1"), np.dtype("S9"), np.dtype(object)],
    ids=str,
)
def test_strings_bytes_and_objects_are_bytes(dtype):
    assert datatype_of(dtype) == "BYTES"


def test_datatype_of_real_arrays():
    assert datatype_of(np.array(["a", "bc"]).dtype) == "BYTES"
    assert datatype_of(np.array([b"a"]).dtype) == "BYTES"
    assert datatype_of(np.array([True, False]).dtype) == "BOOL"
    assert datatype_of(np.array([1.5], dtype=np.float32).dtype) == "FP32"
    assert datatype_of(np.arange(3, dtype=np.int16).dtype) == "INT16"


@pytest.mark.parametrize("dtype", [np.dtype(np.complex64), np.dtype("datetime64[s]"), np.dtype("timedelta64[ms]")], ids=str)
def test_datatype_of_rejects_dtypes_without_v2_equivalent(dtype):
    with pytest.raises(ValueError, match="no V2 datatype"):
        datatype_of(dtype)


def test_datatype_groups_are_consistent():
    assert BINARY_ONLY == {"FP16", "BF16"}
    assert INTEGER_DATATYPES == {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    assert FLOAT_DATATYPES == {"FP16", "FP32", "FP64", "BF16"}
    assert NUMERIC_DATATYPES == INTEGER_DATATYPES | FLOAT_DATATYPES
    assert "BOOL" not in NUMERIC_DATATYPES and "BYTES" not in NUMERIC_DATATYPES
    assert NUMERIC_DATATYPES | {"BOOL", "BYTES"} == ALL_V2_DATATYPES


@pytest.mark.parametrize(
    ("shape", "count"),
    [
        ([], 1),
        ((), 1),
        ([0], 0),
        ([5], 5),
        ([2, 3], 6),
        ((2, 3, 4), 24),
        ([3, 0, 7], 0),
        ([1, 1, 1, 1], 1),
    ],
)
def test_element_count(shape, count):
    assert element_count(shape) == count


@pytest.mark.parametrize("shape", [(), (0,), (4,), (2, 3), (2, 0, 5), (1, 2, 3, 2)])
def test_element_count_agrees_with_numpy(shape):
    assert element_count(shape) == np.zeros(shape).size
