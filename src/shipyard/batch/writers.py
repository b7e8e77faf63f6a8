"""Writing a batch's output: one part per chunk (written to a temporary name, then renamed), and a single-file
output assembled from the parts in chunk order.

A single-file output is written as chunks finish (:class:`OrderedOutput`): each part is appended to a
temporary file as soon as every chunk before it is done, so an uninterrupted run needs no second pass,
and a resumed run rebuilds the prefix from the recorded parts first; the same parts in the same order
give the same bytes. Parts of a Parquet output are Arrow IPC files (cheap to write and to read back);
CSV (without a header; it is written once) and JSON Lines parts are already the output's bytes. When
chunks inferred different types for a column (integers in one, floats in another), the Parquet output
is written again at the end with the types unified (integers and floats -> float64, anything else ->
string).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shipyard.batch.errors import BatchError, missing_dependency

_encoder = msgspec.json.Encoder()
#: Part files' suffix by output format (a Parquet output's parts are Arrow IPC files).
PART_SUFFIX = {"parquet": ".arrow", "csv": ".csv", "jsonl": ".jsonl"}


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.csv  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise missing_dependency("pyarrow") from None
    return pyarrow


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _is_arrow(column: Any) -> bool:
    return hasattr(column, "to_pylist") and hasattr(column, "type")


def _values(column: Any) -> list[Any]:
    if _is_arrow(column):
        return [_json_value(v) for v in column.to_pylist()]
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    return [_json_value(v) for v in values] if column.dtype.kind in "Of" else values


def jsonl_bytes(columns: dict[str, Any]) -> bytes:
    """One JSON object per row (NaN -> null; numbers as the shortest text that reads back the same)."""
    names = list(columns)
    lines = [_encoder.encode(dict(zip(names, row))) for row in zip(*(_values(columns[n]) for n in names))]
    return b"\n".join(lines) + b"\n" if lines else b""


def _json_texts(values: list[Any]) -> Any:
    return np.array([None if v is None else msgspec.json.encode(_json_value(v)).decode() for v in values],
                    dtype=object)


def to_arrow(columns: dict[str, Any], for_csv: bool = False) -> Any:
    """A table of pyarrow arrays, pandas Series and numpy arrays; for CSV, nested cells become JSON text."""
    pa = _pyarrow()
    arrays = {}
    try:
        for name, column in columns.items():
            if _is_arrow(column):
                if for_csv and pa.types.is_nested(column.type):
                    column = pa.array(_json_texts(column.to_pylist()))
                arrays[name] = column
                continue
            if for_csv and column.dtype.kind == "O":
                sample = next((v for v in column if v is not None), None)
                if isinstance(sample, (list, dict, tuple, np.ndarray)):
                    column = _json_texts(list(column))
            arrays[name] = pa.Array.from_pandas(column) if hasattr(column, "array") else pa.array(column)
        return pa.table(arrays)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise BatchError("output", f"cannot write the predictions: {exc}") from None


def write_part(columns: dict[str, Any], fmt: str, path: Path, header: bool = True) -> Any:
    """Write one chunk's output columns to ``path`` atomically (temporary file, then rename). ``fmt``: the
    part's own format: parquet, arrow (IPC), csv or jsonl. Returns the Arrow table of an IPC part."""
    temporary = temporary_name(path)
    table = None
    if fmt == "jsonl":
        temporary.write_bytes(jsonl_bytes(columns))
    else:
        pa = _pyarrow()
        table = to_arrow(columns, for_csv=fmt == "csv")
        if fmt == "csv":
            pa.csv.write_csv(table, str(temporary), pa.csv.WriteOptions(include_header=header))
        elif fmt == "arrow":
            with pa.ipc.new_file(str(temporary), table.schema) as writer:
                writer.write_table(table)
        else:
            pa.parquet.write_table(table, str(temporary))
    os.replace(temporary, path)
    return table if fmt == "arrow" else None


def read_arrow(path: Path) -> Any:
    pa = _pyarrow()
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def csv_header(names: list[str]) -> bytes:
    """The header line pyarrow writes for these column names."""
    pa = _pyarrow()
    sink = io.BytesIO()
    table = pa.table({name: pa.array([], type=pa.string()) for name in names})
    pa.csv.write_csv(table, sink, pa.csv.WriteOptions(include_header=True))
    return sink.getvalue()


def unified_schema(schemas: list[Any]) -> Any:
    """One schema for every part: the first's, with a column's differing types promoted."""
    pa = _pyarrow()
    first = schemas[0]
    if all(schema.equals(first) for schema in schemas[1:]):
        return first
    fields = []
    for field in first:
        types = [schema.field(field.name).type for schema in schemas if field.name in schema.names]
        known = [t for t in types if not pa.types.is_null(t)]
        if not known:
            chosen = pa.null()
        elif all(t == known[0] for t in known):
            chosen = known[0]
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in known):
            chosen = pa.float64() if any(pa.types.is_floating(t) for t in known) else pa.int64()
        else:
            chosen = pa.string()
        fields.append(pa.field(field.name, chosen))
    return pa.schema(fields)


class OrderedOutput:
    """A single-file output written in chunk order into a temporary file: ``add(index, part)`` as chunks
    finish (in any order); a part is appended once every earlier chunk's is (``None``: a chunk that wrote
    no row). ``finish(names)`` completes the file and returns its path."""

    def __init__(self, fmt: str, path: Path, next_index: int = 0) -> None:
        self.format = fmt
        self.path = path
        self.next = next_index
        self.waiting: dict[int, tuple[Path | None, list[str] | None, Any]] = {}
        self.parts: list[Path] = []
        self.handle: Any = None
        self.writer: Any = None
        self.mixed = False  # Parquet parts whose schemas differ: written again at the end

    def add(self, index: int, part: Path | None, names: list[str] | None = None, table: Any = None) -> None:
        """Chunk ``index`` is done: its part, its column names (for a CSV header) and, when it is at hand,
        the part's Arrow table (saves reading it back)."""
        self.waiting[index] = (part, names, table)
        while self.next in self.waiting:
            ready, columns, held = self.waiting.pop(self.next)
            if ready is not None:
                self._append(ready, columns or [], held)
            self.next += 1

    def _append(self, part: Path, names: list[str], table: Any = None) -> None:
        self.parts.append(part)
        if self.format == "parquet":
            if self.mixed:
                return
            table = table if table is not None else read_arrow(part)
            if self.writer is None:
                self.writer = _pyarrow().parquet.ParquetWriter(str(self.path), table.schema)
            elif not table.schema.equals(self.writer.schema):
                self.mixed = True
                return
            self.writer.write_table(table)
            return
        if self.handle is None:
            self.handle = open(self.path, "wb")
            if self.format == "csv":
                self.handle.write(csv_header(names))
        with open(part, "rb") as source:
            shutil.copyfileobj(source, self.handle, 4 * 1024 * 1024)

    def finish(self, names: list[str]) -> Path:
        """Close the file (the CSV header first; an empty output when no row was written)."""
        pa = _pyarrow()
        if self.format == "parquet":
            if self.writer is not None:
                self.writer.close()
            if self.mixed:
                schema = unified_schema([pa.ipc.open_file(pa.memory_map(str(p))).schema for p in self.parts])
                with pa.parquet.ParquetWriter(str(self.path), schema) as writer:
                    for part in self.parts:
                        writer.write_table(read_arrow(part).select(schema.names).cast(schema))
            elif self.writer is None:
                pa.parquet.write_table(pa.table({name: pa.array([], type=pa.null()) for name in names}), str(self.path))
            return self.path
        if self.handle is not None:
            self.handle.close()
        else:
            self.path.write_bytes(csv_header(names) if self.format == "csv" and names else b"")
        return self.path

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.handle is not None:
            self.handle.close()


def concatenate(parts: list[Path], destination: Any) -> None:
    """Append files to an open binary file (the errors file's parts)."""
    for part in parts:
        with open(part, "rb") as handle:
            shutil.copyfileobj(handle, destination, 4 * 1024 * 1024)


def publish(local: Path, path: str, fs: Any, is_local: bool) -> None:
    """Move a finished local file to the output: a rename on the same filesystem, a copy then a rename on
    another, an upload to a remote one."""
    if not is_local:
        fs.put_file(str(local), path)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(local, target)
    except OSError:  # another device
        temporary = temporary_name(target)
        shutil.copyfile(local, temporary)
        os.replace(temporary, target)
        local.unlink()
