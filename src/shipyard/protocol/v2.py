"""Open Inference Protocol (V2) messages and the JSON tensor codec.

Requests are decoded by msgspec in one pass into typed structs, then each input's ``data`` is
turned into a numpy array of the declared datatype and shape. Every rejection raises
:class:`InvalidInput` with a message that names the input and what was expected.
"""

from __future__ import annotations

import uuid
from typing import Any

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
    data: Any
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
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_encode_extra)


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


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def _bytes_tensor(name: str, data: Any) -> np.ndarray:
    items: list[Any] = []
    _flatten(data, items)
    encoded = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInput(
                f"input '{name}': BYTES data must be JSON strings, element {index} is {type(item).__name__}"
            )
        encoded[index] = item.encode()
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
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"input '{name}': data is ragged (nested lists of different lengths); expected a flat or rectangular list"
        ) from None
    kind = raw.dtype.kind
    target = DATATYPE_TO_DTYPE[datatype]
    if raw.size == 0:
        return raw.astype(target).ravel()
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"input '{name}': BOOL data must be true/false, got {_describe(raw)}")
        return raw.ravel()
    if datatype in INTEGER_DATATYPES:
        if kind not in "iu":
            raise InvalidInput(f"input '{name}': {datatype} data must be integers, got {_describe(raw)}")
        info = np.iinfo(target)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(f"input '{name}': value {bad} is out of range for {datatype} [{info.min}, {info.max}]")
        return raw.astype(target, copy=False).ravel()
    if datatype in FLOAT_DATATYPES:
        if kind not in "iuf":
            raise InvalidInput(f"input '{name}': {datatype} data must be numbers, got {_describe(raw)}")
        return raw.astype(target, copy=False).ravel()
    raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'")  # pragma: no cover


def _describe(raw: np.ndarray) -> str:
    kinds = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings", "S": "strings"}
    return kinds.get(raw.dtype.kind, "mixed or non-numeric values")


def decode_inputs(request: InferenceRequest) -> dict[str, np.ndarray]:
    """Decode every input of a parsed request into numpy arrays, keyed by input name."""
    tensors: dict[str, np.ndarray] = {}
    for item in request.inputs:
        if item.name in tensors:
            raise InvalidInput(f"input '{item.name}' appears more than once")
        tensors[item.name] = tensor_from_json(item.name, item.datatype, item.shape, item.data)
    return tensors


def json_data(name: str, array: np.ndarray) -> tuple[str, list[Any]]:
    """Return ``(datatype, flat data list)`` for an output array, as the JSON encoding carries it."""
    datatype = datatype_of(array.dtype)
    if datatype in BINARY_ONLY:
        raise InvalidInput(
            f"output '{name}' is {datatype}, which JSON cannot carry; request it as binary data ('binary_data': true)"
        )
    if datatype == "BYTES":
        return datatype, [_to_text(item) for item in array.ravel()]
    return datatype, array.ravel().tolist()


def _to_text(item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError:
            raise InvalidInput("a BYTES output is not UTF-8 text; request it as binary data") from None
    if isinstance(item, str):
        return item
    return msgspec.json.encode(item).decode()


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    parameters: Parameters | None = None,
) -> bytes:
    """Encode a V2 inference response as JSON bytes."""
    encoded = []
    for name, array in outputs.items():
        datatype, data = json_data(name, array)
        encoded.append(ResponseOutput(name=name, datatype=datatype, shape=list(array.shape), data=data))
    response = InferenceResponse(
        model_name=model_name,
        model_version=model_version,
        id=request_id if request_id is not None else str(uuid.uuid4()),
        outputs=encoded,
        parameters=parameters or None,
    )
    return _encoder.encode(response)


def encode(obj: Any) -> bytes:
    """Encode any JSON-able object (metadata, errors, health) with the shared encoder."""
    return _encoder.encode(obj)
