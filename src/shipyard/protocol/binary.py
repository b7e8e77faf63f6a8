"""Binary tensor data, as the V2 binary extension and gRPC raw contents carry it.

Tensors are little-endian, row-major and unpadded; BOOL is one byte per element; BYTES elements
are each a 4-byte little-endian length followed by the bytes. BF16 arrives as raw 16-bit
patterns and is widened to FP32 (numpy has no bfloat16).
"""

from __future__ import annotations

import struct

import numpy as np

from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES, datatype_of, element_count
from shipyard.protocol.errors import InvalidInput

_LENGTH = struct.Struct("<I")
_LITTLE_ENDIAN = {
    name: dtype.newbyteorder("<") for name, dtype in DATATYPE_TO_DTYPE.items() if name not in ("BYTES", "BF16")
}


def split_bytes(name: str, buffer: bytes | memoryview) -> list[bytes]:
    """Split length-prefixed BYTES elements; a truncated buffer is an error naming the tensor."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"tensor '{name}': BYTES data ends inside a 4-byte length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"tensor '{name}': BYTES element {len(items)} says {length} bytes but only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def tensor_from_bytes(name: str, datatype: str, shape: list[int], buffer: bytes | memoryview) -> np.ndarray:
    """Decode one binary tensor, checking its size against datatype and shape."""
    if datatype not in DATATYPE_TO_DTYPE:
        raise InvalidInput(f"tensor '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"tensor '{name}': shape {list(shape)} has a negative dimension")
    count = element_count(shape)
    if datatype == "BYTES":
        items = split_bytes(name, buffer)
        if len(items) != count:
            raise InvalidInput(f"tensor '{name}': shape {list(shape)} needs {count} BYTES elements but data has {len(items)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    itemsize = 2 if datatype == "BF16" else _LITTLE_ENDIAN[datatype].itemsize
    expected = count * itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"tensor '{name}': binary data is {len(buffer)} bytes but {datatype} with shape {list(shape)} "
            f"needs {expected}"
        )
    if datatype == "BF16":
        bits = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(buffer, dtype=_LITTLE_ENDIAN[datatype]).reshape(shape)


def tensor_to_bytes(name: str, array: np.ndarray) -> tuple[str, bytes]:
    """Encode one output array: ``(datatype, bytes)``."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return datatype, b"".join(parts)
    return datatype, np.ascontiguousarray(array, dtype=_LITTLE_ENDIAN[datatype]).tobytes()


def raw_shape(name: str, datatype: str, spec_shape: tuple[int, ...], buffer: bytes | memoryview) -> list[int]:
    """The concrete shape of a raw single-input body from the model's declared shape (one -1 allowed)."""
    variable = [index for index, dim in enumerate(spec_shape) if dim < 0]
    if len(variable) > 1:
        raise InvalidInput(
            f"a raw binary body needs an input with at most one variable dimension; '{name}' has shape {list(spec_shape)}"
        )
    if datatype == "BYTES":
        total = len(split_bytes(name, buffer))
    elif datatype == "BF16":
        total = len(buffer) // 2
    else:
        itemsize = _LITTLE_ENDIAN[datatype].itemsize
        if len(buffer) % itemsize:
            raise InvalidInput(f"tensor '{name}': raw body of {len(buffer)} bytes is not a whole number of {datatype}")
        total = len(buffer) // itemsize
    fixed = element_count([dim for dim in spec_shape if dim >= 0])
    shape = list(spec_shape)
    if variable:
        if fixed == 0 or total % fixed:
            raise InvalidInput(f"tensor '{name}': {total} elements do not fill shape {list(spec_shape)}")
        shape[variable[0]] = total // fixed
    return shape
