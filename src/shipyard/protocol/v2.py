"""Open Inference Protocol (V2) messages and the JSON tensor codec.

Requests are decoded by msgspec in one pass into typed structs, then each input's ``data`` is
turned into a numpy array of the declared datatype and shape. Every rejection raises
:class:`InvalidInput` with a message that names the input and what was expected.
"""

from __future__ import annotations

import re
import uuid
import warnings
from typing import Any, Mapping

import msgspec
import numpy as np

from shipyard.protocol.datatypes import (
    BINARY_ONLY,
    DATATYPE_TO_DTYPE,
    DATATYPES,
    FLOAT_DATATYPES,
    INTEGER_DATATYPES,
    datatype_of,
    element_count,
)
from shipyard.protocol.binary import tensor_from_bytes
from shipyard.protocol.errors import InvalidInput

Parameters = dict[str, Any]


class RequestInput(msgspec.Struct, omit_defaults=True):
    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: Parameters | None = None


class RequestOutput(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(msgspec.Struct, omit_defaults=True):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[RequestOutput] | None = None


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    parameters: Parameters | None = None


class InferenceResponse(msgspec.Struct, omit_defaults=True, kw_only=True):
    model_name: str
    model_version: str | None = None
    id: str
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


_request_decoder = msgspec.json.Decoder(InferenceRequest)


def _encode_extra(value: Any) -> Any:
    """Let numpy scalars and arrays inside parameters or custom outputs reach JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def plain(value: Any) -> Any:
    """Bytes anywhere inside become text (msgspec would otherwise base64 them)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


_encoder = msgspec.json.Encoder(enc_hook=_encode_extra)
# An FP32 value beyond float32's range becomes inf and is refused below; numpy's warning about the
# cast would only be noise (and np.errstate per request costs more than the check itself).
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)


def decode_request(body: bytes) -> InferenceRequest:
    """Parse a V2 JSON inference request body, naming the field path on error."""
    if not body:
        raise InvalidInput("request body is empty; expected a V2 inference request (JSON object with 'inputs')")
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid V2 inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


_ELEMENT_TYPES: dict[str, type] = {"BOOL": bool, "BYTES": str}
_ELEMENT_TYPES.update({name: int for name in INTEGER_DATATYPES})
_ELEMENT_TYPES.update({name: float for name in FLOAT_DATATYPES})
_EXPECTED = {bool: "true/false", int: "integers", float: "numbers", str: "JSON strings"}
_GOT = {"bool": "booleans", "int": "integers", "float": "floats", "str": "strings", "null": "nulls",
        "object": "objects"}
_GOT_PATTERN = re.compile(r"got `(\w+)`")
_TYPED_LISTS: dict[tuple[type, int], Any] = {}


def _depth(data: Any) -> int:
    depth = 0
    while isinstance(data, list):
        depth += 1
        data = data[0] if data else None
    return depth


def _typed_list(element: type, depth: int) -> Any:
    """``list[list[...element]]`` nested ``depth`` times (cached)."""
    key = (element, depth)
    if key not in _TYPED_LISTS:
        typed: Any = element
        for _ in range(depth):
            typed = list[typed]
        _TYPED_LISTS[key] = typed
    return _TYPED_LISTS[key]


def _checked_values(name: str, datatype: str, data: Any) -> Any:
    """Check every element has the JSON type the datatype needs (msgspec, in C), or say which does not."""
    element = _ELEMENT_TYPES[datatype]
    if not isinstance(data, list):
        data = [data]
    try:
        return msgspec.convert(data, _typed_list(element, _depth(data)))
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Expected `array`" in text or "got `array`" in text:
            raise InvalidInput(
                f"input '{name}': data is ragged (nested lists of different depths); expected a flat or rectangular list"
            ) from None
        found = _GOT_PATTERN.search(text)
        got = _GOT.get(found.group(1), found.group(1)) if found else "other values"
        where = text.rsplit(" - at ", 1)[1].replace("$", "data", 1) if " - at " in text else "data"
        raise InvalidInput(f"input '{name}': {datatype} data must be {_EXPECTED[element]}, got {got} at {where}") from None


def _rectangular(name: str, values: Any, dtype: Any) -> np.ndarray:
    try:
        array = np.array(values, dtype=dtype)
        # an object array of ragged lists does not raise: it holds the lists themselves
        if array.dtype == object and array.ndim < _depth(values):
            raise ValueError
        return array
    except ValueError:
        raise InvalidInput(
            f"input '{name}': data is ragged (nested lists of different lengths); expected a flat or rectangular list"
        ) from None


def _bytes_tensor(name: str, data: Any) -> np.ndarray:
    strings = _rectangular(name, _checked_values(name, "BYTES", data), object).ravel()
    encoded = np.empty(strings.size, dtype=object)
    encoded[:] = [item.encode() for item in strings]
    return encoded


def _check_shape(name: str, shape: list[int]) -> int:
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape {shape} has a negative dimension; shapes are concrete in requests")
    return element_count(shape)


def tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """Build the numpy array for one V2 JSON input, validating datatype, values and shape."""
    if datatype not in DATATYPE_TO_DTYPE:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}")
    if datatype in BINARY_ONLY:
        raise InvalidInput(
            f"input '{name}': {datatype} cannot be sent as JSON numbers; send it as binary tensor data "
            "(the 'binary_data_size' parameter with the Inference-Header-Content-Length header)"
        )
    expected = _check_shape(name, shape)
    if data is None:
        raise InvalidInput(f"input '{name}' has no 'data'")
    if datatype == "BYTES":
        array = _bytes_tensor(name, data)
    else:
        array = _numeric_tensor(name, datatype, data)
    if array.size != expected:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {expected} elements but data has {array.size}"
        )
    return array.reshape(shape)


def _numeric_tensor(name: str, datatype: str, data: Any) -> np.ndarray:
    values = _checked_values(name, datatype, data)
    target = DATATYPE_TO_DTYPE[datatype]
    if datatype in INTEGER_DATATYPES:
        try:
            return _rectangular(name, values, target).ravel()
        except OverflowError:
            info = np.iinfo(target)
            bad = next(v for v in _flat(values) if not info.min <= v <= info.max)
            raise InvalidInput(
                f"input '{name}': value {bad} is out of range for {datatype} [{info.min}, {info.max}]"
            ) from None
    array = _rectangular(name, values, target).ravel()
    # JSON has no inf or NaN, so a non-finite value here overflowed the datatype
    if datatype == "FP32" and array.size and not np.isfinite(array).all():
        raise InvalidInput(f"input '{name}': a value is out of range for FP32 (largest is about 3.4e38)")
    return array


def _flat(values: Any) -> Any:
    for item in values:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def decode_inputs(request: InferenceRequest, binary: memoryview | None = None) -> dict[str, np.ndarray]:
    """Decode every input of a parsed request into numpy arrays, keyed by input name.

    Inputs whose parameters carry ``binary_data_size`` are read, in order, from ``binary`` (the
    body after the JSON header); the sizes must account for every byte of it.
    """
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in request.inputs:
        if item.name in tensors:
            raise InvalidInput(f"input '{item.name}' appears more than once")
        size = item.parameters.get("binary_data_size") if item.parameters else None
        if size is None:
            tensors[item.name] = tensor_from_json(item.name, item.datatype, item.shape, item.data)
            continue
        if binary is None:
            raise InvalidInput(
                f"input '{item.name}' has binary_data_size but the request has no binary part; "
                "send the Inference-Header-Content-Length header with the JSON header's length"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{item.name}': binary_data_size must be a non-negative integer, got {size!r}")
        if item.data is not None:
            raise InvalidInput(f"input '{item.name}' has both 'data' and binary_data_size; send one of them")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{item.name}': binary_data_size is {size} but only {len(binary) - offset} bytes of binary "
                "data remain (truncated body?)"
            )
        tensors[item.name] = tensor_from_bytes(item.name, item.datatype, item.shape, binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims "
            f"(binary_data_size values add up to {offset} of {len(binary)})"
        )
    return tensors


def json_data(name: str, array: np.ndarray) -> tuple[str, list[Any]]:
    """Return ``(datatype, flat data list)`` for an output array, as the JSON encoding carries it."""
    datatype = datatype_of(array.dtype)
    if datatype in BINARY_ONLY:
        raise InvalidInput(
            f"output '{name}' is {datatype}, which JSON cannot carry; request it as binary data ('binary_data': true)"
        )
    if datatype == "BYTES":
        return datatype, [_to_text(name, item) for item in array.ravel()]
    return datatype, array.ravel().tolist()


def request_json(inputs: Mapping[str, Any], outputs: list[str] | None = None,
                 parameters: Mapping[str, Any] | None = None, request_id: str | None = None) -> dict[str, Any]:
    """A V2 infer request body (as a JSON-ready dict) for named arrays (anything ``numpy.asarray`` takes)."""
    body: dict[str, Any] = {"inputs": []}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in "US":
            array = array.astype(object)
        datatype, data = json_data(name, array)
        body["inputs"].append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": data})
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    if parameters:
        body["parameters"] = dict(parameters)
    if request_id is not None:
        body["id"] = request_id
    return body


def json_output(name: str, array: np.ndarray) -> ResponseOutput:
    """One response output carrying its data as JSON."""
    datatype, data = json_data(name, array)
    return ResponseOutput(name=name, datatype=datatype, shape=list(array.shape), data=data)


def _to_text(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"output '{name}' holds bytes that are not UTF-8 text; request it as binary data") from None
    if isinstance(item, str):
        return item
    return _encoder.encode(plain(item)).decode()


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    parameters: Parameters | None = None,
) -> bytes:
    """Encode a V2 inference response as JSON bytes (every output as JSON data)."""
    encoded = [json_output(name, array) for name, array in outputs.items()]
    response = InferenceResponse(
        model_name=model_name,
        model_version=model_version,
        id=request_id if request_id is not None else str(uuid.uuid4()),
        outputs=encoded,
        parameters=plain(parameters) if parameters else None,
    )
    return _encoder.encode(response)


def encode(obj: Any) -> bytes:
    """Encode any JSON-able object (metadata, errors, health) with the shared encoder."""
    return _encoder.encode(obj)
