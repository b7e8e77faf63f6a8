"""V2 gRPC messages <-> transport-neutral messages (typed ``contents`` and raw contents)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from shipyard.protocol.binary import tensor_from_bytes, tensor_to_bytes
from shipyard.protocol.datatypes import BINARY_ONLY, DATATYPE_TO_DTYPE, DATATYPES, element_count
from shipyard.protocol.errors import InvalidInput
from shipyard.protocol.infer import InferRequest, InferResult, RequestedOutput
from shipyard.protocol.proto import inference_pb2 as pb

#: Which ``InferTensorContents`` field carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_INT64_MAX = 2**63 - 1


def parameter_value(parameter: Any) -> Any:
    """The Python value of an ``InferParameter`` / ``ModelRepositoryParameter`` oneof."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def parameters_dict(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from Python values."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def decode_grpc_request(message: Any) -> InferRequest:
    """Decode a ``ModelInferRequest``; raw and typed contents may not be mixed."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(message.inputs)} inputs; "
            "send one entry per input, in the same order"
        )
    tensors = decode_tensors(message.inputs, raw, "raw_input_contents")
    outputs = [RequestedOutput(o.name, parameters_dict(o.parameters)) for o in message.outputs]
    return InferRequest(
        inputs=tensors,
        id=message.id or None,
        parameters=parameters_dict(message.parameters),
        outputs=outputs or None,
    )


def decode_tensors(tensors: Any, raw: Any, raw_field: str = "raw_input_contents") -> dict[str, np.ndarray]:
    """The arrays of a request's inputs or a response's outputs: from ``raw`` (one entry per tensor, in
    order) when it is given, else from each tensor's typed contents; the two forms may not be mixed."""
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        if tensor.name in arrays:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}' has typed contents but the request uses {raw_field}; "
                    "use one form for every input"
                )
            # copy into a bytearray so the array is writable, as JSON-decoded arrays are
            arrays[tensor.name] = tensor_from_bytes(tensor.name, tensor.datatype, list(tensor.shape),
                                                    bytearray(raw[index]))
        else:
            arrays[tensor.name] = _from_contents(tensor)
    return arrays


def _from_contents(tensor: Any) -> np.ndarray:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in DATATYPE_TO_DTYPE:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}")
    if datatype in BINARY_ONLY:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape {shape} has a negative dimension")
    field = CONTENTS_FIELD[datatype]
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} elements but contents.{field} has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(shape)
    except OverflowError:
        info = np.iinfo(DATATYPE_TO_DTYPE[datatype])
        raise InvalidInput(f"input '{name}': a value in contents.{field} is out of range for {datatype} "
                           f"[{info.min}, {info.max}]") from None


def encode_grpc_response(request: InferRequest, result: InferResult) -> Any:
    """Encode a result as a ``ModelInferResponse`` with raw output contents (as Triton does)."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version or "",
                                     id=result.id)
    for name, array in result.outputs.items():
        datatype, raw = tensor_to_bytes(name, array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(raw)
    set_parameters(response.parameters, result.parameters)
    return response
