"""Transport-neutral inference messages: what every codec (JSON, binary, gRPC) decodes into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass
class RequestedOutput:
    """An output the client asked for, with its parameters (``binary_data``, ``classification``)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InferRequest:
    """A decoded inference request: named input arrays plus what to return."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    #: True for a raw binary body (``Inference-Header-Content-Length: 0``): answer in binary.
    raw: bool = False

    def output_names(self) -> list[str] | None:
        return [output.name for output in self.outputs] if self.outputs else None

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data (per-output ``binary_data`` wins)."""
        if self.raw:
            return True
        for output in self.outputs or ():
            if output.name == name and "binary_data" in output.parameters:
                return bool(output.parameters["binary_data"])
        return bool(self.parameters.get("binary_data_output", False))

    def batch_size(self) -> int:
        first = next(iter(self.inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1


@dataclass
class InferResult:
    """A model's answer to one request."""

    model_name: str
    model_version: str | None
    id: str
    outputs: dict[str, np.ndarray]
    parameters: Parameters = field(default_factory=dict)
