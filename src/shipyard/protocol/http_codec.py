"""V2 REST bodies <-> transport-neutral messages: JSON, the binary extension, and raw bodies."""

from __future__ import annotations

import itertools
import uuid
from typing import Protocol, Sequence

import numpy as np

from shipyard.protocol.binary import raw_shape, tensor_from_bytes, tensor_to_bytes
from shipyard.protocol.errors import InvalidInput
from shipyard.protocol.infer import InferRequest, InferResult, RequestedOutput
from shipyard.protocol.v2 import (
    InferenceResponse,
    ResponseOutput,
    decode_inputs,
    decode_request,
    encode,
    json_output,
    plain,
)

#: The header that marks a binary body and gives the JSON header's length.
HEADER_LENGTH = "inference-header-content-length"


class InputSpec(Protocol):
    """What the raw-body decoder needs to know about a model input (TensorSpec fits)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def decode_rest_request(body: bytes, header_length: int | None, specs: Sequence[InputSpec]) -> InferRequest:
    """Decode a V2 REST infer body: JSON, JSON header + binary tensors, or one raw tensor."""
    if header_length == 0:
        return _raw_request(body, specs)
    binary = None
    if header_length is not None:
        if header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
            )
        # one copy, so decoded arrays are writable like JSON-decoded ones
        binary = memoryview(bytearray(body[header_length:]))
        body = body[:header_length]
    parsed = decode_request(body)
    return InferRequest(
        inputs=decode_inputs(parsed, binary),
        id=parsed.id,
        parameters=parsed.parameters or {},
        outputs=[RequestedOutput(o.name, o.parameters or {}) for o in parsed.outputs] if parsed.outputs else None,
    )


def _raw_request(body: bytes, specs: Sequence[InputSpec]) -> InferRequest:
    if len(specs) != 1:
        raise InvalidInput(
            "a raw binary body (Inference-Header-Content-Length: 0) needs a model with exactly one declared input; "
            f"this model declares {len(specs)}"
        )
    spec = specs[0]
    buffer = memoryview(bytearray(body))
    shape = raw_shape(spec.name, spec.datatype, spec.shape, buffer)
    return InferRequest(inputs={spec.name: tensor_from_bytes(spec.name, spec.datatype, shape, buffer)}, raw=True)


def encode_rest_response(request: InferRequest, result: InferResult) -> tuple[bytes, int | None]:
    """Encode a result as JSON, with outputs the request wants in binary appended after the header.

    Returns the body and, when binary outputs are present, the JSON header's length.
    """
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for name, array in result.outputs.items():
        shape = list(array.shape)
        if request.wants_binary(name):
            datatype, raw = tensor_to_bytes(name, array)
            outputs.append(ResponseOutput(name, datatype, shape, parameters={"binary_data_size": len(raw)}))
            blobs.append(raw)
        else:
            outputs.append(json_output(name, array))
    header = encode(
        InferenceResponse(
            model_name=result.model_name,
            model_version=result.model_version,
            id=result.id,
            parameters=plain(result.parameters) if result.parameters else None,
            outputs=outputs,
        )
    )
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_request_id(request_id: str | None) -> str:
    """Echo the client's id, or make one unique to this process (KServe's clients expect an id)."""
    return request_id if request_id else f"{_ID_PREFIX}-{next(_id_counter)}"


def classify(name: str, array: np.ndarray, count: int) -> np.ndarray:
    """Triton's classification extension: the top ``count`` entries per batch row as "value:index"."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidInput(f"output '{name}': classification must be a positive integer, got {count!r}")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"output '{name}': classification needs a numeric output, it is {array.dtype}")
    rows = array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)
    # rank descending on a float copy: negating unsigned, bool or INT_MIN values would wrap
    order = np.argsort(rows.astype(np.float64), axis=1, kind="stable")[:, ::-1]
    top = order[:, : min(count, rows.shape[1])]
    labels = np.empty(top.shape, dtype=object)
    for row, indices in enumerate(top):
        labels[row] = [f"{rows[row, index]:f}:{index}".encode() for index in indices]
    return labels if array.ndim > 1 else labels.reshape(-1)
