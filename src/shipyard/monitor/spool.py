"""A durable first-in first-out spool of byte records on disk.

Layout of a spool directory::

    00000000000000000001.seg   segment files: records appended in order
    00000000000000000002.seg
    ack.json                   {"segment": 2, "offset": 4096, "dropped": 7}: everything before is done

A record is ``u32 length | u32 crc32(payload) | payload`` (big-endian). Records are appended to
the last segment; a new segment starts once the last one holds ``segment_bytes``. ``peek`` reads
from the acknowledged position; ``ack`` moves it forward (never back) and deletes segments wholly
behind it. The acknowledged position and the drop count are written to ``ack.json`` by writing a
temporary file, fsyncing it and renaming it over the old one.

Durability (``fsync=True``, the default): ``append_many`` fsyncs the segment once after writing
its records (group commit), ``append`` after its one record, and ``ack`` fsyncs ``ack.json``. So a
process crash loses nothing appended, and a machine crash loses nothing ``append``/``append_many``
returned for. With ``fsync=False`` records reach the OS's page cache only (a process crash still
loses nothing). After a crash a record may be delivered again if it was sent but its ``ack`` had
not been written: delivery is exactly once while the process lives, at least once across a crash.

Crash safety: at open every segment is scanned; the first record that is short or fails its
CRC ends the segment (the file is truncated there), so a torn last record is dropped and counted
in ``torn``.

Size cap: ``max_bytes`` bounds the bytes waiting (records not acknowledged, with their 8-byte
headers). A record that does not fit is handled by ``drop``: ``"newest"`` (the default) refuses
the new record, ``"oldest"`` discards the oldest waiting records until it fits (a record larger
than ``max_bytes`` is always refused). Either way ``dropped`` counts the records lost, and it is
kept in ``ack.json`` across restarts.

One thread at a time: the spool has no lock (the payload logger's sender thread owns it).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Iterable

HEADER = struct.Struct(">II")
SUFFIX = ".seg"
ACK_FILE = "ack.json"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
DROP_POLICIES = ("newest", "oldest")

Position = tuple[int, int]  # (segment number, byte offset in it)


class SpoolError(Exception):
    """The spool's directory cannot be used."""


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, drop: str = "newest",
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True) -> None:
        if drop not in DROP_POLICIES:
            raise ValueError(f"drop must be one of {', '.join(DROP_POLICIES)}, got {drop!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.drop = drop
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        #: Records lost to the size cap (kept across restarts).
        self.dropped = 0
        #: Torn or corrupt records cut off at open.
        self.torn = 0
        #: Records and bytes (with headers) waiting to be acknowledged.
        self.records = 0
        self.bytes = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ack: Position = (1, 0)
        self._sizes: dict[int, int] = {}  # segment -> file size
        self._writer = None
        self._dirty = False
        self._open()

    # -- opening -----------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            saved = json.loads((self.directory / ACK_FILE).read_text())
            self._ack = (int(saved["segment"]), int(saved["offset"]))
            self.dropped = int(saved.get("dropped", 0))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{self.directory / ACK_FILE} is unreadable ({exc}); move it away to start over") from exc
        segments = sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())
        for segment in segments:
            if segment < self._ack[0]:  # wholly acknowledged: a crash came before its deletion
                self._path(segment).unlink(missing_ok=True)
                continue
            size = self._scan(segment)
            self._sizes[segment] = size
        if not self._sizes:
            self._sizes[self._ack[0]] = 0
            self._path(self._ack[0]).touch()
        if self._ack[0] not in self._sizes:  # the acknowledged segment is gone: start at the first left
            self._ack = (min(self._sizes), 0)
        segment, offset = self._ack
        if offset > self._sizes[segment]:
            self._ack = (segment, self._sizes[segment])
        # count what waits, from the acknowledged position on
        for seg in sorted(self._sizes):
            start = self._ack[1] if seg == self._ack[0] else 0
            for _, size in self._records(seg, start):
                self.records += 1
                self.bytes += HEADER.size + size
        last = max(self._sizes)
        self._writer = open(self._path(last), "ab")

    def _scan(self, segment: int) -> int:
        """Size of the valid records of a segment; a torn or corrupt tail is cut off."""
        path = self._path(segment)
        end = 0
        with open(path, "rb") as f:
            data = f.read()
        while end < len(data):
            if end + HEADER.size > len(data):
                break
            length, crc = HEADER.unpack_from(data, end)
            payload = data[end + HEADER.size:end + HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            end += HEADER.size + length
        if end < len(data):
            self.torn += 1
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        return end

    def _records(self, segment: int, start: int) -> Iterable[tuple[int, int]]:
        """(offset, payload length) of each record of ``segment`` from ``start``."""
        end = self._sizes.get(segment, 0)
        with open(self._path(segment), "rb") as f:
            f.seek(start)
            offset = start
            while offset < end:
                length, _ = HEADER.unpack(f.read(HEADER.size))
                yield offset, length
                f.seek(length, os.SEEK_CUR)
                offset += HEADER.size + length

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:020d}{SUFFIX}"

    # -- writing -----------------------------------------------------------------------------------
    def append(self, record: bytes) -> bool:
        """Add one record (fsynced per the policy); False when the size cap dropped it."""
        return self.append_many([record]) == 1

    def append_many(self, records: Iterable[bytes]) -> int:
        """Add records in order, with one fsync at the end; returns how many were kept (the rest
        were dropped by the size cap, newest policy)."""
        kept = 0
        for record in records:
            need = HEADER.size + len(record)
            if self.bytes + need > self.max_bytes:
                if self.drop == "newest" or need > self.max_bytes:
                    self.dropped += 1
                    self._dirty = True
                    continue
                while self.bytes + need > self.max_bytes and self.records:
                    self._drop_oldest()
            last = max(self._sizes)
            if self._sizes[last] >= self.segment_bytes:
                last = self._roll()
            assert self._writer is not None
            self._writer.write(HEADER.pack(len(record), zlib.crc32(record)) + record)
            self._sizes[last] += need
            self.records += 1
            self.bytes += need
            kept += 1
        assert self._writer is not None
        self._writer.flush()
        if self.fsync and kept:
            os.fsync(self._writer.fileno())
        if self._dirty:
            self._save_ack()
        return kept

    def _roll(self) -> int:
        assert self._writer is not None
        self._writer.flush()
        if self.fsync:
            os.fsync(self._writer.fileno())
        self._writer.close()
        segment = max(self._sizes) + 1
        self._sizes[segment] = 0
        self._writer = open(self._path(segment), "ab")
        self._sync_dir()
        return segment

    def _drop_oldest(self) -> None:
        (position, record), = self.peek(1)
        self.dropped += 1
        self._advance(position, 1, HEADER.size + len(record))
        self._dirty = True

    # -- reading -----------------------------------------------------------------------------------
    def peek(self, limit: int) -> list[tuple[Position, bytes]]:
        """Up to ``limit`` waiting records, oldest first, each with the position just after it
        (give the last one's to ``ack`` once they are all done)."""
        out: list[tuple[Position, bytes]] = []
        segment, offset = self._ack
        if self._writer is not None:
            self._writer.flush()
        while len(out) < limit and segment in self._sizes:
            end = self._sizes[segment]
            if offset < end:
                with open(self._path(segment), "rb") as f:
                    f.seek(offset)
                    while offset < end and len(out) < limit:
                        length, _ = HEADER.unpack(f.read(HEADER.size))
                        record = f.read(length)
                        offset += HEADER.size + length
                        out.append(((segment, offset), record))
            if len(out) >= limit:
                break
            later = [s for s in self._sizes if s > segment]
            if not later:
                break
            segment, offset = min(later), 0
        return out

    def ack(self, position: Position, count: int | None = None) -> None:
        """Everything before ``position`` is done: forget it (a position already behind is ignored)."""
        if position <= self._ack:
            return
        done = 0
        size = 0
        for seg in sorted(self._sizes):
            if seg < self._ack[0] or seg > position[0]:
                continue
            start = self._ack[1] if seg == self._ack[0] else 0
            for offset, length in self._records(seg, start):
                if (seg, offset) >= position:
                    break
                done += 1
                size += HEADER.size + length
        self._advance(position, done, size)
        self._save_ack()

    def _advance(self, position: Position, records: int, size: int) -> None:
        self.records -= records
        self.bytes -= size
        self._ack = position
        last = max(self._sizes)
        for seg in [s for s in self._sizes if s < position[0]]:
            del self._sizes[seg]
            self._path(seg).unlink(missing_ok=True)
        if position[0] == last and position[1] >= self._sizes[last] >= self.segment_bytes:
            self._roll()  # everything done and the segment is full: start afresh, delete it
            del self._sizes[last]
            self._path(last).unlink(missing_ok=True)
            self._ack = (last + 1, 0)

    def _save_ack(self) -> None:
        self._dirty = False
        path = self.directory / ACK_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"segment": self._ack[0], "offset": self._ack[1], "dropped": self.dropped}, f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_dir()

    def _sync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stats(self) -> dict[str, int]:
        return {"records": self.records, "bytes": self.bytes, "dropped": self.dropped, "torn": self.torn,
                "max_bytes": self.max_bytes, "segments": len(self._sizes)}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync:
                os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None
        if self._dirty:
            self._save_ack()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
