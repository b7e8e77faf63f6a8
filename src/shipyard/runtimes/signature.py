"""Package-config settings shared by the ONNX and PyTorch runtimes: ``threads``, ``inputs``, ``outputs``.

Also input checking for tensors whose rank the artifact does not say (an ONNX input without a
shape, a TorchScript input nobody declared): those take whatever shape the request sends.
"""

from __future__ import annotations

from typing import Any

from shipyard.protocol.datatypes import DATATYPES
from shipyard.runtimes.base import ModelSource, TensorSpec, Tensors, check_inputs

EXAMPLE_SPEC = "{name: x, datatype: FP32, shape: [-1, 4]}"


def package_config(source: ModelSource) -> dict[str, Any]:
    """The raw ``shipyard.yaml`` mapping of the model's package, or ``{}`` for a bare artifact."""
    config = source.options.get("config") or {}
    return config if isinstance(config, dict) else {}


def thread_count(source: ModelSource) -> int | None:
    """The package's ``threads`` setting (a positive integer), or None to keep the library's default."""
    value = package_config(source).get("threads")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"model '{source.name}': shipyard.yaml key 'threads' must be a positive integer, got {value!r}"
        )
    return value


def declared_specs(source: ModelSource, key: str) -> list[TensorSpec] | None:
    """Tensor specs listed under ``key`` (``inputs`` or ``outputs``) in shipyard.yaml, or None if absent."""
    declared = package_config(source).get(key)
    if declared is None:
        return None
    where = f"model '{source.name}': shipyard.yaml key '{key}'"
    if not isinstance(declared, list) or not declared:
        raise ValueError(f"{where} must be a non-empty list of tensors like {EXAMPLE_SPEC}, got {declared!r}")
    specs = [_spec(item, f"{where}, item {index}") for index, item in enumerate(declared)]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{where} names '{duplicates[0]}' twice; tensor names must be unique")
    return specs


def _spec(item: Any, where: str) -> TensorSpec:
    if not isinstance(item, dict) or not {"name", "datatype", "shape"} <= set(item):
        raise ValueError(f"{where} must be a mapping with name, datatype and shape, like {EXAMPLE_SPEC}; got {item!r}")
    name, datatype, shape = item["name"], str(item["datatype"]).upper(), item["shape"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    if datatype not in DATATYPES:
        raise ValueError(f"{where} ('{name}'): datatype {item['datatype']!r} is not one of {', '.join(DATATYPES)}")
    valid = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)
    if not valid:
        raise ValueError(f"{where} ('{name}'): shape must be a list of sizes (-1 for variable), got {shape!r}")
    return TensorSpec(name, datatype, tuple(shape))


def check_request(model: str, specs: list[TensorSpec], tensors: Tensors, any_shape: frozenset[str]) -> Tensors:
    """:func:`check_inputs`, except that inputs named in ``any_shape`` accept a tensor of any shape."""
    if any_shape:
        named = tensors
        if len(specs) == 1 and len(tensors) == 1:
            named = {specs[0].name: next(iter(tensors.values()))}
        specs = [
            TensorSpec(spec.name, spec.datatype, tuple(named[spec.name].shape))
            if spec.name in any_shape and spec.name in named
            else spec
            for spec in specs
        ]
    return check_inputs(model, specs, tensors)
