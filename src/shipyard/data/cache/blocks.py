"""BlockStore: cached blocks as files in tiers (MEM, then SSD/HDD folders), indexed in SQLite.

- Atomic writes: a block is written to ``<tier>/tmp/<pid>-<uuid>``, renamed into
  ``<tier>/blocks/<key[:2]>/<key>``, then indexed. A process killed at any point leaves a tmp file
  (swept when its pid is dead) or an unindexed block file (swept), never a half block under a key.
- Single-flight: threads asking for the same block share one future; processes serialise on
  ``flock`` of one of 1024 lock-file stripes and re-check the index after taking the lock.
- Tiers: above a tier's high watermark its least recently used blocks move down one tier until it is
  at its low watermark; the last tier evicts (remembering the block's frequency as a ghost).
- Integrity: each block's crc32 is in the index; it is checked the first time a process reads the
  block (``verify_reads``); a corrupt block is counted, dropped and fetched again.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import shutil
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.data.cache.index import BlockRow, Index
from shipyard.data.cache.policy import Policy
from shipyard.data.spec import Level
from shipyard.processes import alive

STRIPES = 1024
_KNOWN_MAX = 200_000


@functools.lru_cache(maxsize=65536)
def block_key(url: str, version: str, idx: int, block_size: int) -> str:
    """The key of block ``idx`` of one version of a file (the block size is part of it)."""
    return hashlib.sha256(f"{url}\n{version}\n{idx}\n{block_size}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class BlockRef:
    """One block of one version of a file."""

    url: str
    version: str
    idx: int
    size: int
    key: str


@dataclass(frozen=True)
class Tier:
    """One cache level as the store uses it."""

    index: int
    medium: str
    path: Path
    quota: int
    high: float
    low: float

    def block_path(self, key: str) -> Path:
        return self.path / "blocks" / key[:2] / key

    def block_file(self, key: str) -> str:
        """``block_path`` as a string, without pathlib's cost (the warm read path)."""
        return f"{self.path}/blocks/{key[:2]}/{key}"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"


@dataclass
class _Known:
    tier: int
    size: int
    crc32: int
    verified: bool = False


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class GetResult:
    """What :meth:`BlockStore.get` did: the block's bytes and where they came from."""

    data: bytes
    fetched: bool        # this call fetched the block from the source
    admitted: bool       # ... and stored it (False: rejected by admission or too big)


class BlockStore:
    """Blocks of one dataset's cache: tiers, atomic writes, single-flight fetches, eviction."""

    def __init__(self, root: Path, levels: list[Level], index: Index, policy: Policy, block_size: int,
                 verify_reads: bool = True) -> None:
        self.root = Path(root)
        self.tiers = [Tier(i, lv.medium, Path(lv.path), lv.quota, lv.high, lv.low) for i, lv in enumerate(levels)]
        self.index = index
        self.policy = policy
        self.block_size = block_size
        self.verify_reads = verify_reads
        self.capacity = sum(t.quota for t in self.tiers)
        capacity_blocks = max(1, self.capacity // block_size)
        index.aging_sample = policy.aging_sample(capacity_blocks)
        index.max_ghosts = max(4096, 4 * capacity_blocks)
        self.locks = self.root / "locks"
        self.locks.mkdir(parents=True, exist_ok=True)
        for tier in self.tiers:
            (tier.path / "blocks").mkdir(parents=True, exist_ok=True)
            tier.tmp.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, _Known] = {}
        self._inflight: dict[str, Future] = {}
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        _STORES.add(self)

    # -- locks
    @contextmanager
    def _flock(self, name: str, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.locks / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _stripe(self, key: str, blocking: bool = True):
        return self._flock(f"{int(key[:8], 16) % STRIPES:04d}.lock", blocking)

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._mutex = threading.Lock()
            self._inflight = {}

    # -- lookups
    def _remember(self, key: str, known: _Known) -> None:
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[key] = known

    def _lookup(self, key: str) -> _Known | None:
        known = self._known.get(key)
        if known is not None:
            return known
        row = self.index.block(key)
        if row is None or row.tier >= len(self.tiers):
            return None
        known = _Known(row.tier, row.size, row.crc32)
        self._remember(key, known)
        return known

    def preload(self, url: str, version: str) -> None:
        """Learn every cached block of one file version with one query (so warm reads skip SQLite)."""
        for row in self.index.blocks_of(url, version):
            if row.tier < len(self.tiers) and row.key not in self._known:
                self._remember(row.key, _Known(row.tier, row.size, row.crc32))

    def contains(self, key: str) -> bool:
        """Whether the index has this block (asks SQLite, not this process's memory)."""
        row = self.index.block(key)
        return row is not None and row.tier < len(self.tiers)

    # -- reading
    def _read_file(self, key: str, known: _Known, start: int, end: int) -> bytes:
        fd = os.open(self.tiers[known.tier].block_file(key), os.O_RDONLY)
        try:
            if self.verify_reads and not known.verified:
                data = _pread_all(fd, known.size)
                if len(data) != known.size or zlib.crc32(data) != known.crc32:
                    raise _Corrupt(key)
                known.verified = True
                return data[start:end] if (start, end) != (0, known.size) else data
            data = os.pread(fd, end - start, start)
            if len(data) != end - start:
                raise _Corrupt(key)
            return data
        finally:
            os.close(fd)

    def read(self, key: str, start: int = 0, end: int | None = None, count_access: bool = True,
             _locked: bool = False) -> bytes | None:
        """Bytes [start, end) of a cached block, or None when it is not cached (or was corrupt)."""
        for _ in range(3):
            known = self._lookup(key)
            if known is None:
                return None
            stop = known.size if end is None else min(end, known.size)
            try:
                data = self._read_file(key, known, start, stop)
            except FileNotFoundError:
                self._known.pop(key, None)  # moved to another tier or evicted by someone: ask the index again
                continue
            except _Corrupt:
                self._drop_corrupt(key, known, locked=_locked)
                return None
            self.index.touch(key, count_access)
            return data
        return None

    def _drop_corrupt(self, key: str, known: _Known, locked: bool) -> None:
        self.index.count(corrupt_blocks=1)
        self._known.pop(key, None)
        if locked:
            self._drop_locked(key)
        else:
            with self._stripe(key):
                self._drop_locked(key)

    # -- fetching
    def get(self, ref: BlockRef, fetch: Callable[[], bytes], *, force_admit: bool = False,
            count_access: bool = True) -> GetResult:
        """The whole block: from the cache, or fetched once (across threads and processes) and offered to
        the cache. ``force_admit`` skips the admission filter (explicit loads)."""
        self._after_fork()
        data = self.read(ref.key, count_access=count_access)
        if data is not None:
            return GetResult(data, False, True)
        with self._mutex:
            future = self._inflight.get(ref.key)
            leader = future is None
            if leader:
                future = Future()
                self._inflight[ref.key] = future
        if not leader:
            return GetResult(future.result(), False, True)
        admitted = False
        try:
            with self._stripe(ref.key):
                self._known.pop(ref.key, None)
                data = self.read(ref.key, count_access=count_access, _locked=True)  # another process may have it
                fetched = data is None
                if fetched:
                    data = fetch()
                    if len(data) != ref.size:
                        raise OSError(f"{ref.url}: the source returned {len(data)} bytes for block {ref.idx}, "
                                      f"expected {ref.size}; the file changed at the source")
                    admitted = self._admit(ref, data, force_admit)
                else:
                    admitted = True
            future.set_result(data)
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._mutex:
                self._inflight.pop(ref.key, None)
        if fetched and admitted:
            self.evict_if_needed()
        return GetResult(data, fetched, admitted)

    def offer(self, ref: BlockRef, data: bytes) -> bool:
        """Another access to a block this process holds but did not cache: admit it if the policy now
        agrees (counts as an access either way). Returns whether the block is cached now."""
        self._after_fork()
        with self._stripe(ref.key):
            if self.index.block(ref.key) is not None:
                return True
            admitted = self._admit(ref, data, False)
        if admitted:
            self.evict_if_needed()
        return admitted

    def _admit(self, ref: BlockRef, data: bytes, force: bool) -> bool:
        size = len(data)
        tier = next((t for t in self.tiers if t.quota >= size), None)
        candidate = self.index.candidate_frequency(ref.key) + 1
        if tier is None:
            self.index.bump_ghost(ref.key)
            return False
        if not force and self._full(size):
            victim = self._victim()
            victim_freq = self.index.block_frequency(victim) if victim is not None else None
            if not self.policy.admit(candidate, victim_freq):
                self.index.bump_ghost(ref.key)
                return False
        crc = zlib.crc32(data)
        self._write(tier, ref.key, data)
        self.index.insert_block(BlockRow(ref.key, ref.url, ref.version, ref.idx, tier.index, size, crc,
                                         time.time(), candidate))
        self._remember(ref.key, _Known(tier.index, size, crc, verified=True))
        return True

    def _full(self, size: int) -> bool:
        used = sum(u for u, _ in self.index.usage().values())
        return used + size > sum(t.high * t.quota for t in self.tiers)

    def _victim(self) -> BlockRow | None:
        for tier in reversed(self.tiers):
            rows = self.index.coldest(tier.index, 1)
            if rows:
                return rows[0]
        return None

    def _write(self, tier: Tier, key: str, data: bytes) -> None:
        """Write a block file atomically: tmp file, then rename into place."""
        final = tier.block_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        _place(tier.tmp, final, lambda tmp: self._write_tmp(tmp, data))

    @staticmethod
    def _write_tmp(tmp: Path, data: bytes) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    # -- eviction
    def over_high(self) -> bool:
        usage = self.index.usage()
        return any(usage.get(t.index, (0, 0))[0] > t.high * t.quota for t in self.tiers)

    def evict_if_needed(self) -> int:
        """Demote/evict down to the low watermark in every tier past its high one; returns blocks evicted."""
        if not self.over_high():
            return 0
        evicted = 0
        with self._flock("evict.lock"):
            self.index.flush()  # this process's access times decide what is coldest
            for tier in self.tiers:
                used = self.index.usage().get(tier.index, (0, 0))[0]
                if used <= tier.high * tier.quota:
                    continue
                target = tier.low * tier.quota
                below = self.tiers[tier.index + 1] if tier.index + 1 < len(self.tiers) else None
                while used > target:
                    victims = self.index.coldest(tier.index, 64)
                    progressed = False
                    for victim in victims:
                        if used <= target:
                            break
                        with self._stripe(victim.key, blocking=False) as locked:
                            if not locked:
                                continue  # being fetched or read under lock: not the coldest anyway
                            if below is not None and below.quota >= victim.size:
                                moved = self._demote(victim, below)
                            else:
                                moved = self._evict(victim)
                                evicted += moved
                        if moved:
                            used -= victim.size
                            progressed = True
                    if not progressed:
                        break
        return evicted

    def _demote(self, row: BlockRow, below: Tier) -> bool:
        source = self.tiers[row.tier].block_path(row.key)
        target = below.block_path(row.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                os.link(source, target)  # same filesystem: no copy
            except FileExistsError:
                os.unlink(target)
                os.link(source, target)
        except FileNotFoundError:
            self.index.remove_block(row.key, row.tier)
            return True
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            _place(below.tmp, target, lambda tmp: shutil.copyfile(source, tmp))
        if not self.index.move_block(row.key, row.tier, below.index):
            target.unlink(missing_ok=True)
            return False
        source.unlink(missing_ok=True)
        known = self._known.get(row.key)
        if known is not None:
            known.tier = below.index
        return True

    def _evict(self, row: BlockRow) -> bool:
        removed = self.index.remove_block(row.key, row.tier, ghost=True)
        self._known.pop(row.key, None)
        if removed is None:
            return False
        self.tiers[row.tier].block_path(row.key).unlink(missing_ok=True)
        self.index.count(evictions=1)
        return True

    # -- dropping
    def _drop_locked(self, key: str) -> BlockRow | None:
        row = self.index.remove_block(key)
        self._known.pop(key, None)
        if row is not None and row.tier < len(self.tiers):
            self.tiers[row.tier].block_path(key).unlink(missing_ok=True)
        return row

    def drop(self, keys: list[str]) -> tuple[int, int]:
        """Remove blocks (stale versions, clean); returns (blocks, bytes) removed."""
        blocks = size = 0
        for key in keys:
            with self._stripe(key):
                row = self._drop_locked(key)
            if row is not None:
                blocks += 1
                size += row.size
        return blocks, size

    # -- recovery
    def sweep(self) -> dict[str, int]:
        """Remove tmp files of dead processes, block files the index does not have, and index rows whose
        file is gone; returns what was removed."""
        removed = {"tmp": 0, "files": 0, "rows": 0}
        for tier in self.tiers:
            for entry in _scandir(tier.tmp):
                pid = entry.name.split("-", 1)[0]
                if not pid.isdigit() or not alive(int(pid)):
                    _unlink(entry.path)
                    removed["tmp"] += 1
        indexed = self.index.block_keys()
        for tier in self.tiers:
            for bucket in _scandir(tier.path / "blocks"):
                for entry in _scandir(bucket.path):
                    if indexed.get(entry.name) == tier.index:
                        continue
                    with self._stripe(entry.name, blocking=False) as locked:
                        if not locked:
                            continue  # a writer is between rename and index: it is not an orphan
                        row = self.index.block(entry.name)
                        if row is None or row.tier != tier.index:
                            _unlink(entry.path)
                            removed["files"] += 1
        for key, tier_index in indexed.items():
            if tier_index < len(self.tiers) and self.tiers[tier_index].block_path(key).exists():
                continue
            with self._stripe(key, blocking=False) as locked:
                if not locked:
                    continue
                row = self.index.block(key)
                if row is not None and (row.tier >= len(self.tiers) or
                                        not self.tiers[row.tier].block_path(key).exists()):
                    self.index.remove_block(key, row.tier)
                    removed["rows"] += 1
        return removed

    def usage(self) -> list[tuple[Tier, int, int]]:
        """(tier, bytes used, blocks) per tier."""
        usage = self.index.usage()
        return [(t, *usage.get(t.index, (0, 0))) for t in self.tiers]


_STORES: weakref.WeakSet[BlockStore] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _place(tmp_dir: Path, final: Path, fill: Callable[[Path], Any]) -> None:
    """``fill`` a temporary file in ``tmp_dir``, then rename it to ``final``: a half-written block is never seen."""
    tmp = tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
    try:
        fill(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pread_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    extra = os.pread(fd, 1, offset)
    return b"".join(chunks) + extra


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
