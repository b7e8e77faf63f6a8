"""Reading a batch input: a file, a folder of files or a glob, in Parquet, CSV or JSON Lines, as chunks of
exactly ``batch_size`` rows (the last one shorter) numbered from 0 across the files, in order.

Memory is bounded by a chunk: Parquet is read by record batches (row groups before the first wanted
row are skipped through the footer), CSV through pandas' chunked parser, JSON Lines line by line.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import msgspec

from shipyard.batch.errors import BatchError, missing_dependency
from shipyard.batch.frames import Frame, cut, join, rows_of
from shipyard.batch.spec import SUFFIXES, format_from_name, normalise_format

_GLOB = set("*?[")
_decode = msgspec.json.Decoder()


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise missing_dependency("pandas") from None
    return pandas


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise missing_dependency("pyarrow") from None
    return pyarrow


@dataclass(frozen=True)
class InputFile:
    """One file of the input: its path on the filesystem and what identifies its content."""

    path: str
    size: int | None
    version: str


@dataclass
class Chunk:
    """Rows ``start`` .. ``start + rows`` of the input, and rows already known to be bad (position -> reason)."""

    index: int
    start: int
    data: Any  # a pyarrow Table (Parquet) or a pandas DataFrame with a RangeIndex from 0 (CSV, JSON Lines)
    bad: dict[int, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return rows_of(self.data)

    @property
    def frame(self) -> Frame:
        return Frame(self.data)


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5", "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


class InputSet:
    """The files of a batch input and their format."""

    def __init__(self, url: str, fmt: str | None = None) -> None:
        self.url = url
        try:
            self.fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise BatchError("input", f"cannot open '{url}': {exc}") from None
        self.local = is_local(self.fs)
        paths = self._list(path)
        if fmt is None:
            found = sorted({format_from_name(p) for p in paths} - {None})
            if len(found) != 1:
                what = "files of several formats" if found else "no .parquet, .csv or .jsonl name"
                raise BatchError("input_format", f"cannot tell the format of '{url}' ({what}); give the format "
                                                 "(parquet, csv or jsonl)")
            fmt = found[0]
            paths = [p for p in paths if format_from_name(p) == fmt]
        self.format = normalise_format(fmt) or fmt
        self.files = [self._file(p) for p in paths]

    def _list(self, path: str) -> list[str]:
        fs = self.fs
        try:
            if _GLOB & set(path):
                paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
                if not paths:
                    raise BatchError("input", f"no file matches '{self.url}'")
                return paths
            if fs.isdir(path):
                root = path.rstrip("/")
                paths = sorted(
                    p for p in fs.find(root)
                    if not any(part.startswith(("_", ".")) for part in p[len(root):].strip("/").split("/"))
                    and (format_from_name(p) is not None)
                )
                if not paths:
                    known = ", ".join(sorted(SUFFIXES))
                    raise BatchError("input", f"folder '{self.url}' holds no input file (names ending in {known})")
                return paths
            if fs.isfile(path):
                return [path]
        except BatchError:
            raise
        except (OSError, ValueError) as exc:
            raise BatchError("input", f"cannot read '{self.url}': {type(exc).__name__}: {exc}") from None
        raise BatchError("input", f"'{self.url}' does not exist")

    def _file(self, path: str) -> InputFile:
        try:
            info = self.fs.info(path)
        except (OSError, ValueError) as exc:
            raise BatchError("input", f"cannot read '{path}': {exc}") from None
        return InputFile(path, info.get("size"), _version(info))

    def _source(self, item: InputFile) -> Any:
        """What pyarrow / pandas open: the local path, or an fsspec file."""
        return item.path if self.local else self.fs.open(item.path, "rb")

    # -- schema and size ----------------------------------------------------------------------
    def columns(self) -> list[str]:
        """The column names of the first file (JSON Lines: the keys of its first 100 records)."""
        first = self.files[0]
        try:
            if self.format == "parquet":
                pq = _pyarrow().parquet
                with _opened(self._source(first)) as source:
                    return list(pq.ParquetFile(source).schema_arrow.names)
            if self.format == "csv":
                with self.fs.open(first.path, "rb") as handle:
                    return [str(c) for c in _pandas().read_csv(handle, nrows=0).columns]
            names: dict[str, None] = {}
            with self.fs.open(first.path, "rb") as handle:
                for line in itertools.islice((raw for raw in handle if raw.strip()), 100):
                    try:
                        record = _decode.decode(line)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(record, dict):
                        names.update(dict.fromkeys(record))
            return list(names)
        except BatchError:
            raise
        except Exception as exc:
            raise BatchError("input", f"cannot read '{first.path}' as {self.format}: "
                                      f"{type(exc).__name__}: {exc}") from None

    def count_rows(self) -> int | None:
        """Rows in the input: Parquet from the footers; CSV and JSON Lines by counting non-blank lines of
        local files (a CSV field with a line break makes it an over-estimate); None when not cheap to know."""
        if self.format == "parquet":
            pq = _pyarrow().parquet
            total = 0
            for item in self.files:
                with _opened(self._source(item)) as source:
                    total += pq.ParquetFile(source).metadata.num_rows
            return total
        if not self.local:
            return None
        total = 0
        for item in self.files:
            with open(item.path, "rb") as handle:
                lines = sum(1 for line in handle if line.strip())
            total += max(0, lines - 1) if self.format == "csv" else lines
        return total

    # -- chunks ---------------------------------------------------------------------------------
    def chunks(self, batch_size: int, skip_chunks: int = 0, columns: list[str] | None = None,
               limit: int | None = None) -> Iterator[Chunk]:
        """Chunks ``skip_chunks``, ``skip_chunks + 1``... of ``batch_size`` rows (``columns`` only, when given)."""
        skip_rows = skip_chunks * batch_size
        if limit is not None and skip_rows >= limit:
            return
        pieces = self._pieces(batch_size, skip_rows, columns)
        yield from _rechunk(pieces, batch_size, skip_chunks, limit)

    def _pieces(self, batch_size: int, skip_rows: int,
                columns: list[str] | None) -> Iterator[tuple[Any, dict[int, str]]]:
        """(Arrow table or pandas frame, bad rows) pieces in input order, from row ``skip_rows`` on."""
        reader = {"parquet": self._parquet, "csv": self._csv, "jsonl": self._jsonl}[self.format]
        for item in self.files:
            for frame, bad, skipped in reader(item, batch_size, skip_rows, columns):
                skip_rows -= skipped
                if frame is not None:
                    yield frame, bad

    def _parquet(self, item: InputFile, batch_size: int, skip: int, columns: list[str] | None) -> Iterator[Any]:
        pa = _pyarrow()
        pq = pa.parquet
        with _opened(self._source(item)) as source:
            parquet = pq.ParquetFile(source)
            meta = parquet.metadata
            if skip >= meta.num_rows:
                yield None, {}, meta.num_rows
                return
            groups, skipped = [], 0
            for index in range(meta.num_row_groups):
                rows = meta.row_group(index).num_rows
                if not groups and skipped + rows <= skip:
                    skipped += rows
                    continue
                groups.append(index)
            yield None, {}, skipped
            remaining = skip - skipped
            for batch in parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns,
                                              use_threads=True):
                if remaining:
                    cut = min(remaining, batch.num_rows)
                    remaining -= cut
                    yield None, {}, cut
                    batch = batch.slice(cut)
                    if not batch.num_rows:
                        continue
                yield pa.Table.from_batches([batch]), {}, 0

    def _csv(self, item: InputFile, batch_size: int, skip: int, columns: list[str] | None) -> Iterator[Any]:
        pandas = _pandas()
        with self.fs.open(item.path, "rb") as handle:
            try:
                reader = pandas.read_csv(handle, chunksize=batch_size, usecols=columns)
                for frame in reader:
                    frame = frame.reset_index(drop=True)
                    if skip:
                        cut = min(skip, len(frame))
                        skip -= cut
                        yield None, {}, cut
                        frame = frame.iloc[cut:].reset_index(drop=True)
                        if not len(frame):
                            continue
                    yield frame, {}, 0
            except pandas.errors.ParserError as exc:
                raise BatchError("input", f"'{item.path}' is not valid CSV: {exc}") from None

    def _jsonl(self, item: InputFile, batch_size: int, skip: int, columns: list[str] | None) -> Iterator[Any]:
        pandas = _pandas()
        records: list[dict[str, Any]] = []
        bad: dict[int, str] = {}
        with self.fs.open(item.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if skip:
                    skip -= 1
                    yield None, {}, 1
                    continue
                try:
                    record = _decode.decode(line)
                except msgspec.DecodeError as exc:
                    record, why = {}, f"line {number} is not valid JSON: {exc}"
                else:
                    kind = type(record).__name__
                    why = "" if isinstance(record, dict) else f"line {number} is a JSON {kind}, not an object"
                if why:
                    bad[len(records)] = why
                    record = {}
                records.append(record)
                if len(records) == batch_size:
                    yield pandas.DataFrame.from_records(records, columns=columns), bad, 0
                    records, bad = [], {}
        if records:
            yield pandas.DataFrame.from_records(records, columns=columns), bad, 0


class _opened:
    """Close an fsspec file after use; a local path needs nothing."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __enter__(self) -> Any:
        return self.source

    def __exit__(self, *exc: Any) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def _rechunk(pieces: Iterator[tuple[Any, dict[int, str]]], batch_size: int, first_index: int,
             limit: int | None) -> Iterator[Chunk]:
    """Cut and join pieces into chunks of exactly ``batch_size`` rows (a piece that is one already is kept)."""
    index, start = first_index, first_index * batch_size
    held: list[tuple[Any, dict[int, str]]] = []
    held_rows = 0

    def emit(parts: list[tuple[Any, dict[int, str]]]) -> Chunk:
        if len(parts) == 1:
            return Chunk(index, start, parts[0][0], parts[0][1])
        bad, offset = {}, 0
        for part, part_bad in parts:
            bad.update({offset + k: v for k, v in part_bad.items()})
            offset += rows_of(part)
        return Chunk(index, start, join([part for part, _ in parts]), bad)

    try:
        for data, bad in pieces:
            size = rows_of(data)
            if limit is not None:
                room = limit - start - held_rows
                if room <= 0:
                    break
                if size > room:
                    data, size = cut(data, 0, room), room
                    bad = {k: v for k, v in bad.items() if k < room}
            while size:
                need = batch_size - held_rows
                if size < need:
                    held.append((data, bad))
                    held_rows += size
                    break
                if size == need:
                    head, data, head_bad, bad = data, None, bad, {}
                else:
                    head, data = cut(data, 0, need), cut(data, need, size)
                    head_bad = {k: v for k, v in bad.items() if k < need}
                    bad = {k - need: v for k, v in bad.items() if k >= need}
                size -= need
                yield emit([*held, (head, head_bad)])
                index, start = index + 1, start + batch_size
                held, held_rows = [], 0
        if held:
            yield emit(held)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
