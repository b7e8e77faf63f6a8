"""The framing between the server and an isolated model's worker process (stdin/stdout pipes).

One message is ``MAGIC``, a little-endian ``uint32`` header length, the header (a JSON object,
standard library ``json``), then the tensors' buffers in the order the header lists them under
``"tensors"`` (name, V2 datatype, shape, byte count). Numeric tensors are raw little-endian
row-major bytes (BOOL one byte each). BYTES tensors are a table of ``uint32`` lengths followed by
the items; str items travel as UTF-8 and come back as str, bytes as bytes (``"items"`` says which,
with a one-byte-per-item mask when a tensor mixes them; other objects travel as ``str(item)``).

No pickle: the two sides may run different numpy major versions, whose pickles do not mix. This
module imports only the standard library and numpy, as the worker must.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any, Union

import numpy as np

from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, datatype_of, element_count

MAGIC = b"SYW1"
#: Changes whenever the messages change; part of the environment cache key (a worker from an
#: older Shipyard never talks to a newer server).
WORKER_PROTOCOL = 1
#: A header larger than this means the stream is not ours (or is corrupt).
MAX_HEADER_BYTES = 64 * 1024 * 1024

_LENGTH = struct.Struct("<I")
_LITTLE_ENDIAN = {name: dtype.newbyteorder("<") for name, dtype in DATATYPE_TO_DTYPE.items() if name != "BYTES"}

Tensors = dict[str, np.ndarray]
Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


class PipeClosed(Exception):
    """The other side's stream ended: before a message (it exited) or inside one (it died)."""


class FramingError(Exception):
    """The stream holds something that is not a message (e.g. a library wrote to it)."""


# -- writing ---------------------------------------------------------------------------------------
def _bytes_tensor(array: np.ndarray) -> tuple[dict[str, Any], list[Buffer]]:
    items = array.ravel().tolist()
    datas: list[bytes] = []
    text = np.zeros(len(items), dtype=np.uint8)
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            datas.append(item)
        else:
            datas.append((item if isinstance(item, str) else str(item)).encode("utf-8", "surrogatepass"))
            text[index] = 1
    lengths = np.fromiter((len(d) for d in datas), dtype="<u4", count=len(datas))
    parts: list[Buffer] = [lengths, *datas]
    kind = "str" if len(items) and text.all() else "bytes" if not text.any() else "mixed"
    if kind == "mixed":
        parts.insert(0, text)
    return {"items": kind, "nbytes": sum(_size(part) for part in parts)}, parts


def _size(part: Buffer) -> int:
    return part.nbytes if isinstance(part, (np.ndarray, memoryview)) else len(part)


def encode(header: dict[str, Any], tensors: Tensors | None = None) -> list[Buffer]:
    """A whole message as a list of buffers; raises ValueError (naming the tensor) for an array
    with no V2 datatype, before anything is written."""
    described: list[dict[str, Any]] = []
    payload: list[Buffer] = []
    for name, value in (tensors or {}).items():
        array = np.asarray(value)
        try:
            datatype = datatype_of(array.dtype if array.dtype.isnative else array.dtype.newbyteorder("="))
        except ValueError as exc:
            raise ValueError(f"tensor '{name}': {exc}") from None
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if datatype == "BYTES":
            meta, parts = _bytes_tensor(array)
            entry.update(meta)
            payload.extend(parts)
        else:
            data = np.ascontiguousarray(array, dtype=_LITTLE_ENDIAN[datatype]).reshape(-1).view(np.uint8)
            entry["nbytes"] = data.nbytes
            payload.append(data)
        described.append(entry)
    head = json.dumps({**header, "tensors": described}, default=str).encode("utf-8")
    return [MAGIC, _LENGTH.pack(len(head)), head, *payload]


def send(stream: IO[bytes], parts: list[Buffer]) -> None:
    """Write an encoded message and flush it."""
    for part in parts:
        if _size(part):
            stream.write(part.data if isinstance(part, np.ndarray) else part)
    stream.flush()


def write(stream: IO[bytes], header: dict[str, Any], tensors: Tensors | None = None) -> None:
    """Encode a message, then write and flush it (nothing is written if encoding fails)."""
    send(stream, encode(header, tensors))


# -- reading ---------------------------------------------------------------------------------------
def _exactly(stream: IO[bytes], size: int, what: str) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            raise PipeClosed(f"the stream ended after {got} of {size} bytes of {what}")
        got += count
    return buffer


def _bytes_items(entry: dict[str, Any], data: memoryview, count: int) -> np.ndarray:
    kind = entry.get("items", "bytes")
    offset = 0
    mask = None
    if len(data) < (count if kind == "mixed" else 0) + 4 * count:
        raise FramingError(f"tensor '{entry['name']}': {len(data)} bytes cannot hold {count} BYTES items")
    if kind == "mixed":
        mask, offset = np.frombuffer(data[:count], dtype=np.uint8), count
    lengths = np.frombuffer(data[offset:offset + 4 * count], dtype="<u4").astype(np.int64)
    offset += 4 * count
    if offset + int(lengths.sum()) != len(data):
        raise FramingError(f"tensor '{entry['name']}': its BYTES items do not add up to {len(data)} bytes")
    ends = (np.cumsum(lengths) + offset).tolist()
    items: list[Any] = [bytes(data[end - length:end]) for end, length in zip(ends, lengths.tolist())]
    if kind == "str":
        items = [item.decode("utf-8", "surrogatepass") for item in items]
    elif mask is not None:
        items = [item.decode("utf-8", "surrogatepass") if flag else item for item, flag in zip(items, mask.tolist())]
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _tensor(entry: dict[str, Any], data: memoryview) -> np.ndarray:
    datatype, shape = entry["datatype"], entry["shape"]
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_items(entry, data, count).reshape(shape)
    dtype = _LITTLE_ENDIAN[datatype]
    if len(data) != count * dtype.itemsize:
        raise FramingError(f"tensor '{entry['name']}': {len(data)} bytes do not hold {datatype} {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _check_entry(entry: Any) -> dict[str, Any]:
    valid = (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and entry.get("datatype") in DATATYPE_TO_DTYPE
        and isinstance(entry.get("shape"), list)
        and all(isinstance(dim, int) and dim >= 0 for dim in entry["shape"])
        and isinstance(entry.get("nbytes"), int)
        and entry["nbytes"] >= 0
    )
    if not valid:
        raise FramingError(f"malformed tensor description {str(entry)[:200]}")
    return entry


def read(stream: IO[bytes]) -> tuple[dict[str, Any], Tensors]:
    """Read one message: its header (without ``"tensors"``) and its tensors, which are writable.

    Raises :class:`PipeClosed` when the stream ends (before or inside a message) and
    :class:`FramingError` when it holds something else.
    """
    head = stream.read(len(MAGIC))
    if not head:
        raise PipeClosed("the stream ended")
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise PipeClosed("the stream ended inside a message")
    if head != MAGIC:
        rest = stream.read1(200) if hasattr(stream, "read1") else b""  # type: ignore[attr-defined]
        raise FramingError(f"expected a message, got {(head + rest)[:200]!r}")
    (size,) = _LENGTH.unpack(_exactly(stream, 4, "a header length"))
    if size > MAX_HEADER_BYTES:
        raise FramingError(f"a header of {size} bytes is over the {MAX_HEADER_BYTES} byte limit")
    try:
        header = json.loads(_exactly(stream, size, "a header"))
    except ValueError as exc:
        raise FramingError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors", []), list):
        raise FramingError("the header is not a JSON object with a list of tensors")
    entries = [_check_entry(entry) for entry in header.pop("tensors", [])]
    payload = memoryview(_exactly(stream, sum(e["nbytes"] for e in entries), "the tensors"))
    tensors: Tensors = {}
    offset = 0
    for entry in entries:
        tensors[entry["name"]] = _tensor(entry, payload[offset:offset + entry["nbytes"]])
        offset += entry["nbytes"]
    return header, tensors
