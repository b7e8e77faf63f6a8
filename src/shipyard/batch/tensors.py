"""From a chunk's columns to a model's input tensors, and from its outputs back to columns.

The mapping follows how the server reads V1 records: a model whose inputs are named after columns
gets one tensor per column; a model with one 2-D input (a scikit-learn estimator, or a package that
declares its columns) gets the chosen columns stacked as ``[rows, columns]`` in their order; a 1-D
input gets one column; a model with no signature (a ``model.py`` without ``inputs``) gets one tensor
per column. Values that cannot become the input's datatype fail their row, not the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shipyard.batch.errors import BatchError, RowFailure
from shipyard.batch.frames import Frame
from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, NUMERIC_DATATYPES
from shipyard.runtimes.base import TensorSpec

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputPlan:
    """How a chunk becomes tensors: ``mode`` is matrix (columns stacked into ``input``), vector (one column
    as a 1-D ``input``) or columns (one tensor per column; ``specs`` by column, None when unknown)."""

    mode: str
    features: tuple[str, ...]
    input: TensorSpec | None = None
    specs: tuple[TensorSpec | None, ...] = ()

    def describe(self) -> str:
        shown = ", ".join(self.features)
        if self.mode == "columns":
            return f"one tensor per column ({shown})"
        assert self.input is not None
        return f"input '{self.input.name}' {self.input.describe()} from column(s) {shown}"


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def make_plan(specs: Sequence[TensorSpec], declared_columns: dict[str, list[str]], available: Sequence[str],
              carry: Sequence[str], requested: Sequence[str] | None) -> InputPlan:
    """Decide how the input's columns feed the model (BatchError('columns', ...) when they cannot)."""
    present = set(available)
    default = [name for name in available if name not in set(carry)]
    if requested is not None:
        missing = [name for name in requested if name not in present]
        if missing:
            raise BatchError("columns", f"no column '{missing[0]}' in the input; it has: {_listed(list(available))}")
    names = [spec.name for spec in specs]
    if len(specs) == 1 and declared_columns.get(specs[0].name):
        wanted = list(requested or declared_columns[specs[0].name])
        missing = [name for name in wanted if name not in present]
        if missing:
            raise BatchError("columns", f"the model's input '{specs[0].name}' takes columns "
                                        f"{_listed(declared_columns[specs[0].name])}; the input has no column "
                                        f"'{missing[0]}' (it has: {_listed(list(available))})")
        return InputPlan("matrix", tuple(wanted), specs[0])
    if specs and all(name in present for name in names) and (len(specs) > 1 or requested is None or
                                                              list(requested) == names):
        if requested is not None and set(requested) != set(names):
            raise BatchError("columns", f"the model takes inputs {_listed(names)} (one column each); "
                                        f"columns names {_listed(list(requested))}")
        return InputPlan("columns", tuple(names), specs=tuple(specs))
    if len(specs) == 1:
        spec = specs[0]
        wanted = list(requested or default)
        if not wanted:
            raise BatchError("columns", "no column is left to feed the model (every column is carried)")
        if len(spec.shape) == 1:
            if len(wanted) != 1:
                raise BatchError("columns", f"the model's input '{spec.name}' takes one value per row "
                                            f"({spec.describe()}); choose one column (the input has: "
                                            f"{_listed(wanted)})")
            return InputPlan("vector", tuple(wanted), spec)
        width = spec.shape[1] if len(spec.shape) == 2 and spec.shape[1] > 0 else None
        if width is not None and width != len(wanted) and len(wanted) != 1:
            raise BatchError("columns", f"the model's input '{spec.name}' takes {width} features per row "
                                        f"({spec.describe()}), but {len(wanted)} columns would be fed "
                                        f"({_listed(wanted)}); choose {width} with columns")
        return InputPlan("matrix", tuple(wanted), spec)
    if not specs:
        wanted = list(requested or default)
        if not wanted:
            raise BatchError("columns", "no column is left to feed the model (every column is carried)")
        return InputPlan("columns", tuple(wanted), specs=tuple(None for _ in wanted))
    missing = [name for name in names if name not in present]
    raise BatchError("columns", f"the model takes inputs {_listed(names)}; the input has no column "
                                f"'{missing[0]}' (it has: {_listed(list(available))})")


def _numeric(series: Any, column: str, dtype: np.dtype, bad: dict[int, str]) -> np.ndarray:
    """A column as ``dtype``: values that are not numbers (or not whole numbers, for an integer input) fail
    their row; NaN in a float input stays NaN for the model to judge."""
    kind = series.dtype.kind
    if kind in "biu" or (kind == "f" and dtype.kind == "f"):
        return series.to_numpy(dtype=dtype)
    if kind == "f":
        values = series.to_numpy()
    else:
        import pandas

        converted = pandas.to_numeric(series, errors="coerce")
        failed = series.notna().to_numpy() & converted.isna().to_numpy()
        for position in np.flatnonzero(failed):
            bad.setdefault(int(position), f"column '{column}': {series.iloc[position]!r} is not a number")
        values = converted.to_numpy(dtype=np.float64)
        if dtype.kind == "f":
            return values.astype(dtype, copy=False)
    with np.errstate(invalid="ignore"):
        wrong = ~np.isfinite(values) | (values != np.round(values))
    for position in np.flatnonzero(wrong):
        value = values[position]
        why = "is missing" if np.isnan(value) else f"{value!r} is not a whole number"
        bad.setdefault(int(position), f"column '{column}': {why} (the model takes {np.dtype(dtype).name})")
    return np.where(wrong, 0, values).astype(dtype)


def _column(frame: Frame, column: str, spec: TensorSpec | None, bad: dict[int, str]) -> np.ndarray:
    numbers = frame.numbers(column)
    if spec is not None and spec.datatype in NUMERIC_DATATYPES:
        dtype = DATATYPE_TO_DTYPE[spec.datatype]
        if numbers is not None and (numbers.dtype.kind != "f" or dtype.kind == "f"):
            return numbers.astype(dtype, copy=False)
        return _numeric(frame.series(column), column, dtype, bad)
    if numbers is not None and (spec is None or spec.datatype != "BYTES"):
        return numbers
    values = frame.series(column).to_numpy(dtype=object)
    return values if spec is not None else _cells(values)


def _cells(values: np.ndarray) -> np.ndarray:
    """A column whose cells are lists or arrays (Parquet lists, JSON arrays) as one stacked array."""
    first = next((item for item in values if item is not None), None)
    if isinstance(first, (list, tuple, np.ndarray)):
        try:
            return np.stack([np.asarray(item) for item in values])
        except ValueError:
            return values
    return values


def to_tensors(plan: InputPlan, frame: Frame, bad: dict[int, str]) -> Tensors:
    """The chunk's tensors; rows whose values cannot be converted are added to ``bad``."""
    if plan.mode == "columns":
        return {name: _column(frame, name, spec, bad) for name, spec in zip(plan.features, plan.specs)}
    spec = plan.input
    assert spec is not None
    if plan.mode == "vector":
        return {spec.name: _column(frame, plan.features[0], spec, bad)}
    dtype = DATATYPE_TO_DTYPE.get(spec.datatype, np.dtype(np.float64))
    if len(plan.features) == 1 and frame.numbers(plan.features[0]) is None:
        values = _column(frame, plan.features[0], None, bad)
        if values.ndim >= 2:  # a column of lists or arrays
            return {spec.name: values.astype(dtype, copy=False) if spec.datatype in NUMERIC_DATATYPES else values}
    if spec.datatype not in NUMERIC_DATATYPES:
        return {spec.name: np.column_stack([frame.series(name).to_numpy(dtype=object) for name in plan.features])}
    table = np.empty((len(frame), len(plan.features)), dtype=dtype)
    for index, name in enumerate(plan.features):
        numbers = frame.numbers(name)
        if numbers is not None and (numbers.dtype.kind != "f" or dtype.kind == "f"):
            table[:, index] = numbers
        else:
            table[:, index] = _numeric(frame.series(name), name, dtype, bad)
    return {spec.name: table}


def take(tensors: Tensors, rows: np.ndarray | slice) -> Tensors:
    return {name: array[rows] for name, array in tensors.items()}


def check_rows(outputs: Tensors, rows: int) -> Tensors:
    """Outputs as arrays with one entry per input row (RowFailure otherwise)."""
    checked: Tensors = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != rows:
            got = "a single value" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise RowFailure(f"the model's output '{name}' has {got} for {rows} input rows")
        checked[name] = array
    return checked


def _plain(array: np.ndarray) -> Any:
    """BYTES as text; cells of more than one value as lists."""
    if array.dtype.kind == "O":
        return np.array([item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in array],
                        dtype=object)
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8", "replace").astype(object)
    if array.dtype.kind == "U":
        return array.astype(object)
    return array


def output_columns(outputs: Tensors, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """Output arrays as columns: 1-D as is, [rows, k] as ``name_0`` .. ``name_{k-1}`` (``name`` when k is 1),
    more dimensions as one column of nested lists. ``renames`` maps an output or a column name to another."""
    renames = renames or {}
    columns: dict[str, Any] = {}
    for name, array in outputs.items():
        if array.ndim == 1:
            columns[renames.get(name, name)] = _plain(array)
        elif array.ndim == 2 and array.shape[1] == 1:
            columns[renames.get(name, name)] = _plain(array[:, 0])
        elif array.ndim == 2:
            base = renames.get(name, name)
            for j in range(array.shape[1]):
                key = f"{name}_{j}"
                columns[renames.get(key, f"{base}_{j}")] = _plain(array[:, j])
        else:
            column = np.empty(array.shape[0], dtype=object)
            column[:] = [item.tolist() for item in array]
            columns[renames.get(name, name)] = column
    return columns
