"""V2 datatypes and their numpy equivalents."""

from __future__ import annotations

import numpy as np

#: V2 datatype name -> numpy dtype. BYTES tensors are object arrays of ``bytes``.
#: BF16 has no numpy dtype; it is carried as raw ``uint16`` bit patterns.
DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}

DATATYPES: tuple[str, ...] = tuple(DATATYPE_TO_DTYPE)

#: Datatypes the JSON encoding cannot carry (no JSON number is a half float).
BINARY_ONLY: frozenset[str] = frozenset({"FP16", "BF16"})

INTEGER_DATATYPES: frozenset[str] = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
)
FLOAT_DATATYPES: frozenset[str] = frozenset({"FP16", "FP32", "FP64", "BF16"})
NUMERIC_DATATYPES: frozenset[str] = INTEGER_DATATYPES | FLOAT_DATATYPES

_KIND_TO_DATATYPE = {"U": "BYTES", "S": "BYTES", "O": "BYTES", "b": "BOOL"}


_BY_DTYPE: dict[np.dtype, str] = {}


def datatype_of(dtype: np.dtype) -> str:
    """Return the V2 datatype name for a numpy dtype (strings and objects are BYTES)."""
    known = _BY_DTYPE.get(dtype)
    if known is not None:
        return known
    if dtype.kind in _KIND_TO_DATATYPE:
        name = _KIND_TO_DATATYPE[dtype.kind]
    else:
        matches = [n for n, candidate in DATATYPE_TO_DTYPE.items() if candidate == dtype and n != "BF16"]
        if not matches:
            raise ValueError(f"numpy dtype {dtype} has no V2 datatype")
        name = matches[0]
    _BY_DTYPE[dtype] = name
    return name


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    """Number of elements a tensor of ``shape`` holds."""
    count = 1
    for dim in shape:
        count *= dim
    return count
