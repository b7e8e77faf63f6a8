"""The binary protocol between the R runtime and its worker process (``r_worker.R`` describes it).

Everything is little-endian and length-prefixed, so the R side needs nothing beyond base R and
numbers cross the pipe as exact doubles. This module only encodes requests and decodes replies;
``shipyard.runtimes.r`` runs the process.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Sequence

import numpy as np

MAGIC = b"SYR1"
OP_LOAD = 1
OP_PREDICT = 2
NUMBERS = 0
TEXT = 1
STATUS_OK = 0

_INT = struct.Struct("<i")


class WorkerGone(Exception):
    """The worker's stdout ended before a whole reply arrived: the process exited."""


class ProtocolError(Exception):
    """The worker wrote something that is not a reply (e.g. a library printed to stdout)."""


class RError(Exception):
    """R raised an error; the message is R's own."""


# -- encoding requests ---------------------------------------------------------------------------
def enc_int(value: int) -> bytes:
    return _INT.pack(value)


def enc_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return enc_int(len(data)) + data


def enc_strings(texts: Sequence[str | bytes]) -> bytes:
    data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(d) for d in data), dtype="<i4", count=len(data))
    return enc_int(len(data)) + lengths.tobytes() + b"".join(data)


def load_request(path: str, type_: str, packages: Sequence[str], columns: Sequence[str]) -> bytes:
    """LOAD: read the .rds at ``path`` and describe it."""
    return enc_int(OP_LOAD) + enc_string(path) + enc_string(type_) + enc_strings(packages) + enc_strings(columns)


def predict_request(columns: Sequence[np.ndarray | list[bytes]], rows: int) -> bytes:
    """PREDICT on ``columns``: float64 arrays are numbers, lists of UTF-8 bytes are text."""
    parts = [enc_int(OP_PREDICT), enc_int(rows), enc_int(len(columns))]
    for column in columns:
        if isinstance(column, np.ndarray):
            parts += [enc_int(NUMBERS), np.ascontiguousarray(column, dtype="<f8").tobytes()]
        else:
            parts += [enc_int(TEXT), enc_strings(column)]
    return b"".join(parts)


# -- decoding replies ----------------------------------------------------------------------------
class ReplyReader:
    """Reads one reply's fields from the worker's stdout."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def exactly(self, size: int) -> bytes:
        data = self.stream.read(size) if size else b""
        if len(data) < size:
            raise WorkerGone(f"the reply ended after {len(data)} of {size} bytes")
        return data

    def int(self) -> int:
        return _INT.unpack(self.exactly(4))[0]

    def ints(self, count: int) -> np.ndarray:
        return np.frombuffer(self.exactly(4 * count), dtype="<i4")

    def string(self) -> str:
        return self.exactly(self.int()).decode("utf-8", errors="replace")

    def strings(self) -> list[bytes]:
        count = self.int()
        lengths = self.ints(count)
        blob = memoryview(self.exactly(int(lengths.sum())))
        ends = np.cumsum(lengths)
        return [bytes(blob[end - length:end]) for end, length in zip(ends.tolist(), lengths.tolist())]

    def status(self) -> None:
        """Check the reply's header; an R error becomes :class:`RError`."""
        head = self.stream.read(len(MAGIC))
        if len(head) < len(MAGIC):
            raise WorkerGone("no reply")
        if head != MAGIC:
            rest = self.stream.read1(200) if hasattr(self.stream, "read1") else b""
            raise ProtocolError(f"expected a reply, got {(head + rest)[:200]!r}")
        if self.int() != STATUS_OK:
            raise RError(self.string())

    def outputs(self) -> dict[str, np.ndarray]:
        """Named prediction arrays: doubles as float64, text as object arrays of bytes."""
        result: dict[str, np.ndarray] = {}
        for _ in range(self.int()):
            name = self.string()
            kind = self.int()
            dims = tuple(int(d) for d in self.ints(self.int()))
            if kind == NUMBERS:
                values = np.frombuffer(self.exactly(8 * int(np.prod(dims))), dtype="<f8").astype(np.float64)
            else:
                values = np.empty(int(np.prod(dims)), dtype=object)
                values[:] = self.strings()
            result[name] = values.reshape(dims, order="F")
        return result


@dataclass
class Description:
    """What the worker tells about a model it loaded."""

    columns: list[str]
    classes: list[str]
    model_class: str
    probe_error: str
    probe: dict[str, np.ndarray]

    @classmethod
    def read(cls, reader: ReplyReader) -> "Description":
        columns = [c.decode("utf-8") for c in reader.strings()]
        classes = [c.decode("utf-8") for c in reader.strings()]
        return cls(columns, classes, reader.string(), reader.string(), reader.outputs())
