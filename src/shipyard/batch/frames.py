"""A chunk's columns behind one small interface, whether they are a pyarrow Table (Parquet: numeric columns
reach the model without a pandas copy) or a pandas DataFrame (CSV, JSON Lines)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _is_arrow(data: Any) -> bool:
    return hasattr(data, "num_rows") and hasattr(data, "column_names")


class Frame:
    """Rows of a chunk, by column name."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.arrow = _is_arrow(data)

    def __len__(self) -> int:
        return int(self.data.num_rows) if self.arrow else len(self.data)

    @property
    def columns(self) -> list[str]:
        return list(self.data.column_names) if self.arrow else [str(name) for name in self.data.columns]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def numbers(self, name: str) -> np.ndarray | None:
        """The column as a numpy array when it holds plain numbers (floats, or integers and booleans without
        missing values), without converting anything else; None otherwise."""
        if not self.arrow:
            series = self.data[name]
            return series.to_numpy() if series.dtype.kind in "biuf" else None
        import pyarrow as pa

        column = self.data.column(name)
        kind = column.type
        if pa.types.is_floating(kind) or ((pa.types.is_integer(kind) or pa.types.is_boolean(kind))
                                           and column.null_count == 0):
            return column.to_numpy()
        return None

    def series(self, name: str) -> Any:
        """The column as a pandas Series (for conversions that need pandas)."""
        if not self.arrow:
            return self.data[name]
        return self.data.column(name).to_pandas()

    def take(self, name: str, rows: np.ndarray | None) -> Any:
        """The column's values at ``rows`` (all of them for None), for the output: a pyarrow array or a pandas
        Series with a fresh index."""
        if self.arrow:
            column = self.data.column(name)
            return column if rows is None else column.take(rows)
        series = self.data[name]
        return (series if rows is None else series.iloc[rows]).reset_index(drop=True)

    def cell(self, name: str, row: int) -> Any:
        """One value as a Python object (for the errors file)."""
        if self.arrow:
            return self.data.column(name)[row].as_py()
        return self.data[name].iloc[row]


def rows_of(data: Any) -> int:
    return int(data.num_rows) if _is_arrow(data) else len(data)


def cut(data: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` (a zero-copy slice for Arrow)."""
    if _is_arrow(data):
        return data.slice(start, stop - start)
    return data.iloc[start:stop].reset_index(drop=True)


def join(parts: list[Any]) -> Any:
    """Rows of several pieces as one (their types promoted when files disagree)."""
    if _is_arrow(parts[0]):
        import pyarrow as pa

        return pa.concat_tables(parts, promote_options="permissive")
    import pandas

    return pandas.concat(parts, ignore_index=True)
