"""Sample inputs for packaging: whatever the user trained with, as the tensors a request would carry.

A sample is a numpy array, a pandas DataFrame (its columns name the input's columns), a numpy
structured array (likewise), a list of rows, a list of strings (text models), a torch tensor, a
dict of those (one per named input) or a tuple of them (positional inputs, e.g. a torch module's
``forward(a, b)``). The first dimension of every tensor is the batch. Strings become BYTES tensors
(object arrays of UTF-8 ``bytes``), as the server hands them to a model.

:func:`read_sample` reads the same from a file for ``shipyard package --sample``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.package.config import PackageError
from shipyard.runtimes.base import TensorSpec, Tensors

SAMPLE_SUFFIXES = (".npy", ".csv", ".json", ".parquet")


@dataclass
class Sample:
    """A sample as tensors (named, or positional when ``names`` is None), with the user's original value."""

    tensors: list[np.ndarray]
    names: list[str] | None
    original: Any
    #: Column names of a single 2-D input (a DataFrame's or a structured array's fields).
    columns: list[str] | None = None
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        counts = {array.shape[0] for array in self.tensors}
        if len(counts) > 1:
            raise PackageError(f"sample_input: its tensors have different numbers of rows ({sorted(counts)}); "
                               "the first dimension of every input is the batch")
        self.rows = counts.pop()
        if self.rows == 0:
            raise PackageError("sample_input has no rows; give at least one row the model can predict")

    @classmethod
    def of(cls, value: Any, columns: list[str] | None = None) -> Sample:
        """Convert a user's sample; PackageError says what is accepted when it is none of those."""
        if isinstance(value, dict):
            if not value:
                raise PackageError("sample_input is an empty dict; give one array per model input")
            names = [str(key) for key in value]
            tensors = [_array(f"sample_input[{key!r}]", item)[0] for key, item in value.items()]
            return cls(tensors, names, value)
        if isinstance(value, tuple):
            tensors = [_array(f"sample_input[{index}]", item)[0] for index, item in enumerate(value)]
            return cls(tensors, None, value)
        array, found = _array("sample_input", value)
        return cls([array], None, value, columns=columns or found)

    def head(self, rows: int) -> Sample:
        """The first ``rows`` rows, both as tensors and in the user's original form."""
        return Sample([array[:rows] for array in self.tensors], self.names, _take(self.original, rows),
                      self.columns)

    def bind(self, specs: list[TensorSpec]) -> Tensors:
        """Name the tensors after the model's inputs (positional order, or by name for a dict sample)."""
        if self.names is not None:
            known = [spec.name for spec in specs]
            unknown = [name for name in self.names if known and name not in known]
            if unknown:
                raise PackageError(f"sample_input names an input '{unknown[0]}' the model does not have; "
                                   f"it takes: {', '.join(known)}")
            return dict(zip(self.names, self.tensors))
        if not specs:
            return {f"input-{index}": array for index, array in enumerate(self.tensors)}
        if len(specs) != len(self.tensors):
            raise PackageError(f"sample_input gives {len(self.tensors)} tensor(s), but the model takes "
                               f"{len(specs)}: {', '.join(spec.name for spec in specs)}")
        return {spec.name: array for spec, array in zip(specs, self.tensors)}


def _array(where: str, value: Any) -> tuple[np.ndarray, list[str] | None]:
    """A value as a numpy array with a batch dimension, and its column names if it has some."""
    columns = None
    if hasattr(value, "columns") and hasattr(value, "to_numpy"):  # a pandas DataFrame
        columns = [str(column) for column in value.columns]
        value = value.to_numpy()
    elif isinstance(value, np.ndarray) and value.dtype.names:  # a structured array: fields are columns
        columns = list(value.dtype.names)
        value = _unstructured(where, value)
    elif type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_numpy"):  # a pandas Series
        value = value.to_numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{where} is not an array: {exc}") from None
    if array.ndim == 0:
        raise PackageError(f"{where} is a single value; give a batch (its first dimension is the rows), "
                           "e.g. [[5.1, 3.5, 1.4, 0.2]] or ['some text']")
    if array.dtype.kind in "US" or (array.dtype == object and _all_text(array)):
        array = to_bytes(array)
    elif array.dtype == object:
        raise PackageError(f"{where} holds Python objects of mixed kinds ({_kinds(array)}); give numbers, "
                           "or strings for text")
    return array, columns


def to_bytes(array: np.ndarray) -> np.ndarray:
    """Strings as a BYTES tensor: an object array of UTF-8 bytes of the same shape."""
    encoded = np.empty(array.size, dtype=object)
    encoded[:] = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.ravel().tolist()]
    return encoded.reshape(array.shape)


def _all_text(array: np.ndarray) -> bool:
    return all(isinstance(item, (str, bytes)) for item in array.ravel().tolist())


def _kinds(array: np.ndarray) -> str:
    return ", ".join(sorted({type(item).__name__ for item in array.ravel().tolist()}))


def _unstructured(where: str, value: np.ndarray) -> np.ndarray:
    from numpy.lib import recfunctions

    kinds = {value.dtype.fields[name][0].kind for name in value.dtype.names}
    if not kinds <= set("biuf"):
        text = [name for name in value.dtype.names if value.dtype.fields[name][0].kind not in "biuf"]
        raise PackageError(f"{where}: column '{text[0]}' is not numeric; a table is one numeric tensor "
                           "(encode categories as numbers first)")
    return recfunctions.structured_to_unstructured(value)


def _take(value: Any, rows: int) -> Any:
    if isinstance(value, dict):
        return {key: _take(item, rows) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_take(item, rows) for item in value)
    if hasattr(value, "iloc"):  # pandas
        return value.iloc[:rows]
    return value[:rows]


def read_sample(path: Path) -> Any:
    """Read a sample file: ``.npy``, ``.csv`` (a header row names the columns), ``.json`` or ``.parquet``.

    JSON holds a list of rows (lists of numbers), a list of strings, a list of objects (their keys
    are the columns), or an object mapping input names to such lists.
    """
    if not path.is_file():
        raise PackageError(f"sample file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise PackageError(f"{path} is not a readable .npy file of plain numbers or strings: {exc}") from None
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{path} is not valid JSON: {exc}") from None
        return _from_json(path, data)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise PackageError(f"cannot read sample file '{path}': expected one of {', '.join(SAMPLE_SUFFIXES)}")


def _read_csv(path: Path) -> Any:
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if len(rows) < 2:
        raise PackageError(f"{path}: expected a header row naming the columns, then at least one row of values")
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise PackageError(f"{path}: line {number} has {len(row)} values, the header names {len(header)} columns")
    columns = list(zip(*body))
    if len(header) == 1 and not all(_is_number(cell) for cell in columns[0]):
        return list(columns[0])  # one column of text
    for name, cells in zip(header, columns):
        bad = next((cell for cell in cells if not _is_number(cell)), None)
        if bad is not None:
            raise PackageError(f"{path}: column '{name}' holds '{bad}', which is not a number; a CSV sample is a "
                               "table of numbers (or a single column of text)")
    return _table(header, [np.array([float(cell) for cell in cells]) for cells in columns])


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _table(names: list[str], columns: list[np.ndarray]) -> np.ndarray:
    """Columns as a numpy structured array, whose field names survive into the package's ``columns``."""
    return np.rec.fromarrays(columns, names=names).view(np.ndarray)


def _from_json(path: Path, data: Any) -> Any:
    if isinstance(data, dict):
        if not data:
            raise PackageError(f"{path}: the object is empty; map each input name to a list of rows")
        return {str(key): _from_json(path, value) for key, value in data.items()}
    if not isinstance(data, list) or not data:
        raise PackageError(f"{path}: expected a non-empty list of rows (or an object of input name -> rows), "
                           f"got {type(data).__name__}")
    if all(isinstance(row, dict) for row in data):
        names = list(data[0])
        missing = next((index for index, row in enumerate(data) if list(row) != names), None)
        if missing is not None:
            raise PackageError(f"{path}: row {missing} has the keys {list(data[missing])}, row 0 has {names}")
        return _table(names, [np.array([row[name] for row in data]) for name in names])
    return data


def _read_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as parquet
    except ModuleNotFoundError:
        raise PackageError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise PackageError(f"{path} is not a readable Parquet file: {exc}") from None
    columns = [np.asarray(table.column(name).to_numpy(zero_copy_only=False)) for name in table.column_names]
    if len(columns) == 1 and columns[0].dtype == object:
        return columns[0].tolist()  # one column of text
    return _table(table.column_names, columns)
