"""``examples.yaml``: a package's example requests and the answers it expects.

:func:`read_examples` parses the file into typed :class:`Example` values; every error names the
example (by name and position) and the key. :func:`request_tensors` fills in what the shorthand
form leaves out (datatype and shape) from the model's metadata, and :func:`first_mismatch`
compares a model's answer with the expected outputs, within the example's tolerance.

The format::

    - name: setosa                       # required, unique
      inputs:                            # tensor name -> data, or {datatype, shape, data}
        input-0: [[5.1, 3.5, 1.4, 0.2]]
      parameters: {}                     # optional V2 request parameters
      outputs:                           # optional: name -> data, or {datatype, shape, data}
        predict: [0]
      tolerance: {abs: 1.0e-6, rel: 1.0e-5}
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from shipyard.package.config import EXAMPLES_FILE, PackageError
from shipyard.protocol.datatypes import BINARY_ONLY, DATATYPES, INTEGER_DATATYPES, datatype_of

EXAMPLE_KEYS = ("name", "inputs", "parameters", "outputs", "tolerance")
TENSOR_KEYS = ("datatype", "shape", "data")
TOLERANCE_KEYS = ("abs", "rel")

#: What a package without ``examples.yaml`` is told.
HOW_TO_WRITE = f"""write {EXAMPLES_FILE} next to shipyard.yaml, a YAML list of examples:

  - name: first-row
    inputs:
      input-0: [[5.1, 3.5, 1.4, 0.2]]    # datatype and shape come from the model's metadata
    outputs:
      predict: [0]                       # optional; without it the request only has to succeed

(`shipyard package` writes one for you from a sample input)"""


class ExamplesError(PackageError):
    """``examples.yaml`` is missing or invalid; the message names the example and the key."""


@dataclass(frozen=True)
class Tolerance:
    """How far a numeric output may be from the expected value (``numpy.isclose``'s atol and rtol)."""

    abs: float = 1e-6
    rel: float = 1e-5


@dataclass(frozen=True)
class Tensor:
    """One tensor of an example. ``values`` has its final shape; ``datatype`` and ``shape`` are
    set only when the example gives the full form."""

    name: str
    values: np.ndarray
    datatype: str | None = None
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Example:
    name: str
    inputs: dict[str, Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    #: None when the example only has to succeed.
    outputs: dict[str, Tensor] | None = None
    tolerance: Tolerance = Tolerance()


@dataclass(frozen=True)
class RequestTensor:
    """One input as it goes on the wire: datatype, shape and the flat list of values."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


def read_examples(folder: Path) -> list[Example]:
    """Parse ``folder/examples.yaml``; raise ExamplesError saying how to write one when it is missing."""
    path = folder / EXAMPLES_FILE
    if not path.is_file():
        raise ExamplesError(f"{folder} has no {EXAMPLES_FILE}; {HOW_TO_WRITE}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExamplesError(f"{path} is not valid YAML: {exc}") from None
    return parse_examples(raw, str(path))


def parse_examples(raw: Any, where: str) -> list[Example]:
    """Validate the parsed YAML of an examples file; ``where`` starts every error message."""
    if not isinstance(raw, list) or not raw:
        got = "an empty file" if raw is None or raw == [] else f"a {type(raw).__name__}"
        raise ExamplesError(f"{where}: expected a list of examples (each with name and inputs), got {got}")
    examples: list[Example] = []
    for index, item in enumerate(raw):
        example = _parse_example(item, index, where)
        if any(other.name == example.name for other in examples):
            raise ExamplesError(f"{where}: example #{index + 1}: name '{example.name}' is used twice; "
                                "names must be unique")
        examples.append(example)
    return examples


def _parse_example(item: Any, index: int, where: str) -> Example:
    label = f"{where}: example #{index + 1}"
    if not isinstance(item, dict):
        raise ExamplesError(f"{label}: expected a mapping with name and inputs, got {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        found = "no name" if name is None else f"name = {name!r}"
        raise ExamplesError(f"{label}: has {found}; every example needs a name (text)")
    label = f"{where}: example '{name}'"
    _no_unknown_keys(item, EXAMPLE_KEYS, label, "")
    if "inputs" not in item:
        raise ExamplesError(f"{label}: inputs: missing; give a mapping of input name to data")
    inputs = _tensors(item["inputs"], label, "inputs")
    if not inputs:
        raise ExamplesError(f"{label}: inputs: is empty; give at least one input")
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ExamplesError(f"{label}: parameters: expected a mapping of V2 request parameters, "
                            f"got {_kind(parameters)}")
    outputs = _tensors(item["outputs"], label, "outputs") if item.get("outputs") is not None else None
    return Example(name, inputs, parameters, outputs, _tolerance(item.get("tolerance"), label))


def _no_unknown_keys(mapping: Mapping[Any, Any], known: Sequence[str], label: str, prefix: str) -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; expected {', '.join(known)}"
            raise ExamplesError(f"{label}: {prefix}{key}: unknown key{hint}")


def _tensors(raw: Any, label: str, group: str) -> dict[str, Tensor]:
    if not isinstance(raw, dict):
        raise ExamplesError(f"{label}: {group}: expected a mapping of tensor name to data, got {_kind(raw)}")
    tensors = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise ExamplesError(f"{label}: {group}: tensor names must be text, got {name!r} (quote it)")
        tensors[name] = _tensor(name, value, label, f"{group}.{name}", group == "inputs")
    return tensors


def _tensor(name: str, raw: Any, label: str, key: str, is_input: bool) -> Tensor:
    if not isinstance(raw, dict):  # shorthand: the data alone
        return Tensor(name, _values(raw, label, key))
    _no_unknown_keys(raw, TENSOR_KEYS, label, f"{key}.")
    missing = [k for k in TENSOR_KEYS if k not in raw]
    if missing:
        raise ExamplesError(f"{label}: {key}: the full form needs datatype, shape and data; "
                            f"missing {', '.join(missing)}")
    datatype = raw["datatype"]
    if datatype not in DATATYPES:
        raise ExamplesError(f"{label}: {key}.datatype = {datatype!r}: expected one of {', '.join(DATATYPES)}")
    if is_input and datatype in BINARY_ONLY:
        raise ExamplesError(f"{label}: {key}.datatype = {datatype}: JSON and gRPC typed contents cannot carry "
                            f"{datatype}; give FP32 values (the server casts them)")
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ExamplesError(f"{label}: {key}.shape = {shape!r}: expected a list of non-negative integers, e.g. [1, 4]")
    values = _values(raw["data"], label, f"{key}.data")
    if values.size != math.prod(shape):
        raise ExamplesError(f"{label}: {key}: shape {shape} needs {math.prod(shape)} values but data has {values.size}")
    _check_kind(values, datatype, label, f"{key}.data")
    return Tensor(name, values.reshape(shape), datatype, tuple(shape))


_KINDS = {bool: "booleans", int: "numbers", float: "numbers", str: "strings"}


def _leaves(data: Any, at: str) -> Iterator[tuple[str, Any]]:
    if isinstance(data, list):
        for index, item in enumerate(data):
            yield from _leaves(item, f"{at}[{index}]")
    else:
        yield at, data


def _values(data: Any, label: str, key: str) -> np.ndarray:
    """The data of one tensor as an array: numbers, booleans or strings, rectangular."""
    kinds = set()
    for at, leaf in _leaves(data, ""):
        kind = _KINDS.get(type(leaf))
        if kind is None:
            raise ExamplesError(f"{label}: {key}{at} = {leaf!r}: expected numbers, booleans or strings, "
                                f"got {_kind(leaf)}")
        kinds.add(kind)
    if len(kinds) > 1:
        raise ExamplesError(f"{label}: {key}: mixes {' and '.join(sorted(kinds))}; a tensor holds one kind of value")
    try:
        values = np.array(data)
    except (ValueError, OverflowError):
        values = np.array(None, dtype=object)
    if values.dtype == object:  # ragged lists, or integers beyond 64 bits
        raise ExamplesError(f"{label}: {key}: data must be a rectangular list (every row the same length) of "
                            "values that fit 64 bits")
    return values


def _check_kind(values: np.ndarray, datatype: str, label: str, key: str) -> None:
    kind = values.dtype.kind
    if datatype == "BYTES":
        ok, needs = kind == "U", "strings"
    elif datatype == "BOOL":
        ok, needs = kind == "b", "booleans (true/false)"
    elif datatype in INTEGER_DATATYPES:
        ok, needs = kind in "iu", "integers"
    else:
        ok, needs = kind in "iuf", "numbers"
    if not ok and values.size:
        raise ExamplesError(f"{label}: {key}: datatype {datatype} needs {needs}, got {_describe(values)}")


def _tolerance(raw: Any, label: str) -> Tolerance:
    if raw is None:
        return Tolerance()
    if not isinstance(raw, dict):
        raise ExamplesError(f"{label}: tolerance: expected a mapping like {{abs: 1.0e-6, rel: 1.0e-5}}, "
                            f"got {_kind(raw)}")
    _no_unknown_keys(raw, TOLERANCE_KEYS, label, "tolerance.")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ExamplesError(f"{label}: tolerance.{key} = {value!r}: expected a number of at least 0")
    return Tolerance(**{key: float(value) for key, value in raw.items()})


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", type(None): "nothing (null)"}
    return names.get(type(value), f"a {type(value).__name__}")


def _describe(values: np.ndarray) -> str:
    kind = values.dtype.kind
    names = {"U": "strings", "b": "booleans", "f": "fractional numbers", "i": "integers", "u": "integers"}
    return names.get(kind, str(values.dtype))


# -- requests ------------------------------------------------------------------------------


def request_tensors(example: Example, signature: Sequence[Mapping[str, Any]]) -> list[RequestTensor]:
    """The example's inputs as wire tensors. The shorthand form takes its datatype from the model's
    metadata ``inputs`` (``signature``) and its shape from the data, fitted to the signature's
    rank (``[5.1, 3.5, 1.4, 0.2]`` for a ``[-1, 4]`` input is one row, ``[1, 4]``)."""
    specs = {spec["name"]: spec for spec in signature}
    lone = signature[0] if len(signature) == 1 and len(example.inputs) == 1 else None
    tensors = []
    for name, tensor in example.inputs.items():
        values = tensor.values
        if tensor.datatype is not None and tensor.shape is not None:
            datatype, shape = tensor.datatype, list(tensor.shape)
        else:
            spec = specs.get(name) or lone
            datatype = spec["datatype"] if spec else datatype_of(values.dtype)
            shape = fit_shape(values, spec["shape"] if spec else None)
        tensors.append(RequestTensor(name, datatype, shape, values.ravel().tolist()))
    return tensors


def fit_shape(values: np.ndarray, declared: Sequence[int] | None) -> list[int]:
    """The data's shape, or the declared shape with its one variable dimension filled in when the
    data is given with another rank (flat rows)."""
    if declared is None or len(declared) == values.ndim:
        return list(values.shape)
    fixed = math.prod(dim for dim in declared if dim >= 0)
    variable = sum(1 for dim in declared if dim < 0)
    if variable == 0 and fixed == values.size:
        return list(declared)
    if variable == 1 and fixed and values.size % fixed == 0:
        return [values.size // fixed if dim < 0 else dim for dim in declared]
    return list(values.shape)


# -- comparing answers ---------------------------------------------------------------------


def first_mismatch(example: Example, got: Mapping[str, np.ndarray]) -> str | None:
    """The first way ``got`` differs from the example's expected outputs (output name, index, got vs
    expected), or None when it matches (or the example expects nothing)."""
    for name, expected in (example.outputs or {}).items():
        if name not in got:
            return f"no output '{name}'; the model returned: {', '.join(got) or 'nothing'}"
        problem = compare(got[name], expected, example.tolerance)
        if problem is not None:
            return f"output '{name}'{problem}"
    return None


def compare(got: np.ndarray, expected: Tensor, tolerance: Tolerance) -> str | None:
    """How one output differs from the expected tensor (``[index]: got x, expected y``), or None."""
    if expected.datatype is not None and datatype_of(got.dtype) != expected.datatype:
        return f": datatype {datatype_of(got.dtype)}, expected {expected.datatype}"
    want = expected.values
    if got.shape != want.shape:
        return f": shape {list(got.shape)}, expected {list(want.shape)}"
    if not want.size:
        return None
    got_text, want_text = got.dtype.kind in "OSU", want.dtype.kind == "U"
    if got_text != want_text:
        return f": got {'strings' if got_text else 'numbers'} ({_sample(got)}), expected {_describe(want)}"
    if got_text:
        same = np.vectorize(_text, otypes=[object])(got) == want.astype(object)
    elif got.dtype.kind in "biu" and want.dtype.kind in "biu":
        same = got == want
    else:
        same = np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=tolerance.rel,
                          atol=tolerance.abs, equal_nan=True)
    if bool(np.all(same)):
        return None
    index = tuple(int(i) for i in np.argwhere(~same)[0])
    where = ", ".join(map(str, index))
    return f"[{where}]: got {_show(got[index])}, expected {_show(want[index])}"


def _text(item: Any) -> str:
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def _show(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return repr(_text(value)) if isinstance(value, (str, bytes)) else repr(value)


def _sample(array: np.ndarray) -> str:
    return _show(array.reshape(-1)[0]) if array.size else "empty"
