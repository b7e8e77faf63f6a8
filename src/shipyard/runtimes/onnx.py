"""ONNX runtime: an ``.onnx`` file run by ONNX Runtime on the CPU.

Inputs and outputs, with their datatypes and dynamic axes, come from the graph. Only the
requested outputs are fetched. The package config key ``threads`` sets ONNX Runtime's
intra-op thread count; inter-op parallelism is off (one request at a time per model).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes.base import Model, ModelSource, TensorSpec, Tensors
from shipyard.runtimes.signature import check_request, thread_count

log = logging.getLogger("shipyard.runtimes.onnx")

#: ONNX Runtime's element type names -> V2 datatypes.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
#: "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from x.onnx failed:Protobuf parsing failed."
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .* failed:)?")
#: "/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...) Unsupported model IR version: 14, ..."
_SOURCE_LOCATION = re.compile(r"\S+\.(cc|cpp|h):\d+ .*?\)\S* ")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise RuntimeError("serving ONNX models needs onnxruntime: pip install 'shipyard[onnx]'") from None
    return onnxruntime


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's error message without its code prefix."""
    return _SOURCE_LOCATION.sub("", _ORT_PREFIX.sub("", str(exc).strip()).strip())


def _spec(node: Any) -> TensorSpec | None:
    """A graph input/output as a TensorSpec; None for non-tensor types (sequences, maps)."""
    datatype = ORT_TYPES.get(node.type)
    if datatype is None:
        return None
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape or ())
    return TensorSpec(node.name, datatype, shape)


def _to_ort(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES arrays (objects holding bytes) become str arrays; others are passed contiguous, uncopied."""
    if array.dtype.kind not in "OS":
        return array if array.flags.c_contiguous else np.ascontiguousarray(array)
    try:
        text = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}': the ONNX model takes text, but an element is not UTF-8 ({exc})") from None
    return np.array(text, dtype=object).reshape(array.shape)


def _from_ort(array: Any) -> np.ndarray:
    """String outputs become object arrays of bytes, like every BYTES tensor in Shipyard."""
    array = np.asarray(array)
    if array.dtype.kind not in "OU":
        return array
    encoded = np.empty(array.size, dtype=object)
    encoded[:] = [item.encode("utf-8") if isinstance(item, str) else item for item in array.ravel()]
    return encoded.reshape(array.shape)


class ONNXModel(Model):
    """Runs an ONNX graph with ONNX Runtime's CPU execution provider."""

    format = "onnx"
    batchable = True
    inline_when_fast = True

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.session: Any = None
        self._rejected: type[Exception] = Exception  # onnxruntime's InvalidArgument, once imported
        #: Inputs whose rank the graph leaves open (reported as shape []): any shape is accepted.
        self._any_shape: frozenset[str] = frozenset()

    def load(self) -> None:
        ort = import_onnxruntime()
        path = self.source.path
        if not path.is_file():
            raise ValueError(f"{path} is not a file; expected an .onnx model file")
        self._rejected = ort.capi.onnxruntime_pybind11_state.InvalidArgument
        options = ort.SessionOptions()
        threads = thread_count(self.source)
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph/... types
            raise ValueError(
                f"cannot load {path} as an ONNX model (onnxruntime {ort.__version__}): {ort_message(exc)}"
            ) from None
        self.inputs = []
        for node in self.session.get_inputs():
            spec = _spec(node)
            if spec is None:
                raise ValueError(
                    f"{path}: input '{node.name}' has type {node.type}; Shipyard serves ONNX models whose inputs "
                    f"are tensors of {', '.join(sorted(ORT_TYPES.values()))}"
                )
            self.inputs.append(spec)
        self._any_shape = frozenset(spec.name for spec in self.inputs if not spec.shape)
        self.outputs = []
        for node in self.session.get_outputs():
            spec = _spec(node)
            if spec is None:
                log.warning("%s: output '%s' has type %s, which is not a tensor; it is not served", path, node.name,
                            node.type)
            else:
                self.outputs.append(spec)
        if not self.outputs:
            raise ValueError(f"{path}: the graph has no tensor outputs to serve")
        self.default_outputs = [spec.name for spec in self.outputs]

    def check(self, inputs: Tensors) -> Tensors:
        return check_request(self.name, self.inputs, inputs, self._any_shape)

    def predict(self, inputs: Tensors, outputs: list[str], parameters: dict[str, Any]) -> Tensors:
        """Run the session and fetch just the requested ``outputs``.

        ONNX Runtime still executes the whole graph (it prunes to the fetched outputs only in
        training builds), but unrequested outputs are neither copied out nor encoded.
        """
        feed = {name: _to_ort(name, array) for name, array in inputs.items()}
        try:
            results = self.session.run(outputs, feed)
        except self._rejected as exc:  # the graph rejected the inputs' shapes or types
            raise InvalidInput(f"model '{self.name}' rejected the inputs: {ort_message(exc)}") from None
        except Exception as exc:  # a node failed: onnxruntime's Fail, RuntimeException, ...
            raise ModelFailed(f"model '{self.name}' raised {type(exc).__name__}: {ort_message(exc)}") from None
        return {name: _from_ort(result) for name, result in zip(outputs, results)}
