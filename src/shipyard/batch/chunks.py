"""One chunk, start to end: its columns become tensors, the predictor answers (bad rows isolated), the
carried columns and the outputs become the chunk's part, the failed rows its errors part."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shipyard.batch.errors import BatchError
from shipyard.batch.frames import Frame
from shipyard.batch.manifest import ChunkRecord
from shipyard.batch.predictors import Predictor
from shipyard.batch.readers import Chunk
from shipyard.batch.spec import ERROR_KEYS, SUFFIX_OF, BatchSpec
from shipyard.batch.tensors import InputPlan, make_plan, output_columns, take, to_tensors
from shipyard.batch.writers import write_part

_encoder = msgspec.json.Encoder(enc_hook=str)
PART_SUFFIXES = {**SUFFIX_OF, "arrow": ".arrow"}
#: Longer reasons (a library's whole error text) are cut in the errors file.
MAX_REASON = 1000


def part_name(index: int, fmt: str) -> str:
    """``part-000007.parquet`` (``fmt`` may be ``arrow``: the IPC parts of a single Parquet file)."""
    return f"part-{index:06d}{PART_SUFFIXES[fmt]}"


def errors_name(index: int) -> str:
    return f"errors-{index:06d}.jsonl"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class ChunkProcessor:
    """Processes chunks for one predictor; writes parts (in ``part_format``: parquet, arrow, csv or jsonl) into
    ``parts_dir`` and errors parts into ``errors_dir``; CSV parts with a ``header`` or not."""

    def __init__(self, predictor: Predictor, spec: BatchSpec, part_format: str, parts_dir: Path,
                 errors_dir: Path, header: bool) -> None:
        self.predictor = predictor
        self.spec = spec
        self.part_format = part_format
        self.parts_dir = parts_dir
        self.errors_dir = errors_dir
        self.header = header
        self.plan: InputPlan | None = None
        #: The Arrow table of the last chunk's IPC part (a single Parquet output appends it without reading it back).
        self.last_table: Any = None
        self._plan_columns: tuple[str, ...] = ()

    def plan_for(self, columns: list[str]) -> InputPlan:
        if self.plan is None or tuple(columns) != self._plan_columns:
            specs, declared = self.predictor.signature()
            self.plan = make_plan(specs, declared, columns, self.spec.carry, self.spec.columns)
            self._plan_columns = tuple(columns)
        return self.plan

    def process(self, chunk: Chunk) -> tuple[ChunkRecord, str]:
        """Predict one chunk and write its parts; the record for the manifest and the first error's text."""
        started = time.perf_counter()
        self.last_table = None
        frame = chunk.frame
        plan = self.plan_for(frame.columns)
        bad = dict(chunk.bad)
        tensors = to_tensors(plan, frame, bad)
        if bad:
            keep = np.ones(len(frame), dtype=bool)
            keep[list(bad)] = False
            positions = np.flatnonzero(keep)
            tensors = take(tensors, positions)
        else:
            positions = np.arange(len(frame))
        prediction = self.predictor.predict(tensors, positions) if len(positions) else None
        if prediction is not None:
            ok, outputs = prediction.merged()
            failures = sorted([*bad.items(), *prediction.errors])
        else:
            ok, outputs, failures = np.empty(0, dtype=np.int64), {}, sorted(bad.items())
        part, names = None, None
        if len(ok):
            part = part_name(chunk.index, self.part_format)
            output = self._output_columns(frame, ok, outputs)
            names = list(output)
            self.last_table = write_part(output, self.part_format, self.parts_dir / part, self.header)
        errors_part = None
        if failures:
            errors_part = errors_name(chunk.index)
            lines = [self._error_line(frame, chunk.start, position, reason) for position, reason in failures]
            temporary = self.errors_dir / f".{errors_part}.tmp"
            temporary.write_bytes(b"".join(lines))
            temporary.replace(self.errors_dir / errors_part)
        record = ChunkRecord(chunk=chunk.index, start=chunk.start, rows=len(frame), written=int(len(ok)),
                             errors=len(failures), part=part, errors_part=errors_part,
                             seconds=round(time.perf_counter() - started, 6), columns=names)
        first = f"row {chunk.start + failures[0][0]}: {failures[0][1]}" if failures else ""
        return record, first

    def _output_columns(self, frame: Frame, ok: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """The carried columns (rows ``ok``) then the model's outputs."""
        columns: dict[str, Any] = {}
        rows = None if len(ok) == len(frame) else ok
        for name in self.spec.carry:
            columns[name] = frame.take(name, rows)
        for name, values in output_columns(outputs, self.spec.output_columns).items():
            if name in columns:
                raise BatchError("output_columns", f"the model's output column '{name}' has the name of a carried "
                                                   "column; rename it with output_columns")
            columns[name] = values
        return columns

    def _error_line(self, frame: Frame, start: int, position: int, reason: str) -> bytes:
        line: dict[str, Any] = {"row": start + position}
        for name in self.spec.carry:
            key = name if name not in ERROR_KEYS else f"carry.{name}"
            line[key] = _jsonable(frame.cell(name, position)) if name in frame else None
        line["reason"] = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
        return _encoder.encode(line) + b"\n"
