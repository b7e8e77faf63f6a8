"""The cache's SQLite index (WAL): files, blocks, ghosts (frequencies of blocks not cached), counters and a
per-second window of hit/miss bytes.

Every process opens its own connection (guarded by a lock, reopened after a fork). Readers do not write
per read: access times, frequencies, counters and window buckets are buffered in memory and written at
most every ``flush_interval`` seconds (by a daemon thread), on :meth:`Index.flush` and at exit.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

COUNTERS = ("hits", "misses", "hit_bytes", "miss_bytes", "ufs_requests", "ufs_bytes", "metadata_requests",
            "evictions", "rejected", "corrupt_blocks")
WINDOW_S = 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, url TEXT NOT NULL, size INTEGER NOT NULL, version TEXT NOT NULL,
    checked_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_url ON files (url, version);
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL, idx INTEGER NOT NULL,
    tier INTEGER NOT NULL, size INTEGER NOT NULL, crc32 INTEGER NOT NULL,
    last_access REAL NOT NULL, freq INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS blocks_by_url ON blocks (url, version);
CREATE INDEX IF NOT EXISTS blocks_by_age ON blocks (tier, last_access);
CREATE TABLE IF NOT EXISTS ghosts (key TEXT PRIMARY KEY, freq INTEGER NOT NULL, seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ghosts_by_age ON ghosts (seen);
CREATE TABLE IF NOT EXISTS tiers (tier INTEGER PRIMARY KEY, used INTEGER NOT NULL, blocks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS window (second INTEGER PRIMARY KEY, hit_bytes INTEGER NOT NULL,
    miss_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FileRow:
    path: str
    url: str
    size: int
    version: str
    checked_at: float


@dataclass(frozen=True)
class BlockRow:
    key: str
    url: str
    version: str
    idx: int
    tier: int
    size: int
    crc32: int
    last_access: float
    freq: int


_BLOCK_COLUMNS = "key, url, version, idx, tier, size, crc32, last_access, freq"


class Index:
    """One dataset's index.db; thread-safe; safe to use from many processes at once."""

    def __init__(self, path: Path, flush_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.aging_sample = 10_000     # accesses between halvings of every frequency (set by the store)
        self.max_ghosts = 10_000       # ghosts kept for admission decisions (set by the store)
        self._lock = threading.RLock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._reset_buffers()
        self._connect()
        _OPEN.add(self)

    # -- connections
    def _reset_buffers(self) -> None:
        self._touches: dict[str, list[float]] = {}   # key -> [accesses, last access]
        self._ghost_bumps: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._window: dict[int, list[int]] = {}
        self._accesses = 0
        self._last_flush = time.monotonic()
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._pid != -1 and self._pid != os.getpid():
            # a forked child: the parent's connection and buffers are the parent's to use and flush
            self._lock = threading.RLock()
            self._reset_buffers()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with _immediate(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(c,) for c in COUNTERS])
        self._conn = conn
        self._pid = os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE) under the process lock."""
        with self._lock:
            conn = self._connect()
            with _immediate(conn):
                yield conn

    def _read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._connect().execute(sql, tuple(args)).fetchall()

    # -- files
    def get_file(self, path: str) -> FileRow | None:
        rows = self._read("SELECT path, url, size, version, checked_at FROM files WHERE path = ?", (path,))
        return FileRow(*rows[0]) if rows else None

    def files(self, prefix: str = "/") -> list[FileRow]:
        """Every known file at or under a dataset path."""
        if prefix in ("", "/"):
            rows = self._read("SELECT path, url, size, version, checked_at FROM files ORDER BY path")
        else:
            rows = self._read("SELECT path, url, size, version, checked_at FROM files WHERE path = ? OR "
                              "substr(path, 1, ?) = ? ORDER BY path", (prefix, len(prefix) + 1, prefix + "/"))
        return [FileRow(*row) for row in rows]

    def put_files(self, rows: list[FileRow], replace_prefix: str | None = None) -> list[FileRow]:
        """Upsert file rows; with ``replace_prefix``, rows under it that are not given are deleted.
        Returns the rows that were deleted or whose version changed (their old values)."""
        with self._tx() as conn:
            if replace_prefix is None:
                old = {}
                for row in rows:
                    found = conn.execute("SELECT path, url, size, version, checked_at FROM files WHERE path = ?",
                                         (row.path,)).fetchone()
                    if found:
                        old[row.path] = FileRow(*found)
            else:
                if replace_prefix in ("", "/"):
                    found = conn.execute("SELECT path, url, size, version, checked_at FROM files").fetchall()
                else:
                    found = conn.execute("SELECT path, url, size, version, checked_at FROM files WHERE path = ? OR "
                                         "substr(path, 1, ?) = ?",
                                         (replace_prefix, len(replace_prefix) + 1, replace_prefix + "/")).fetchall()
                old = {r[0]: FileRow(*r) for r in found}
            given = {row.path for row in rows}
            stale = [row for path, row in old.items() if path not in given and replace_prefix is not None]
            conn.executemany("DELETE FROM files WHERE path = ?", [(row.path,) for row in stale])
            conn.executemany("INSERT OR REPLACE INTO files (path, url, size, version, checked_at) VALUES (?,?,?,?,?)",
                             [(r.path, r.url, r.size, r.version, r.checked_at) for r in rows])
            changed = [old[r.path] for r in rows if r.path in old and
                       (old[r.path].version != r.version or old[r.path].url != r.url)]
        return stale + changed

    def delete_files(self, paths: list[str]) -> None:
        with self._tx() as conn:
            conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    # -- blocks
    def block(self, key: str) -> BlockRow | None:
        rows = self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE key = ?", (key,))
        return BlockRow(*rows[0]) if rows else None

    def blocks_of(self, url: str, version: str | None = None) -> list[BlockRow]:
        if version is None:
            rows = self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE url = ?", (url,))
        else:
            rows = self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE url = ? AND version = ?", (url, version))
        return [BlockRow(*row) for row in rows]

    def all_blocks(self) -> list[BlockRow]:
        return [BlockRow(*row) for row in self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks")]

    def orphan_blocks(self) -> list[BlockRow]:
        """Blocks whose (url, version) is no file's current one."""
        rows = self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks b WHERE NOT EXISTS "
                          f"(SELECT 1 FROM files f WHERE f.url = b.url AND f.version = b.version)")
        return [BlockRow(*row) for row in rows]

    def insert_block(self, row: BlockRow) -> None:
        """Add a block (its file is already in place); replaces a row of the same key."""
        with self._tx() as conn:
            self._remove(conn, row.key)
            conn.execute(f"INSERT INTO blocks ({_BLOCK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                         (row.key, row.url, row.version, row.idx, row.tier, row.size, row.crc32, row.last_access,
                          row.freq))
            conn.execute("DELETE FROM ghosts WHERE key = ?", (row.key,))
            _add_usage(conn, row.tier, row.size, 1)
        with self._lock:
            self._ghost_bumps.pop(row.key, None)

    def remove_block(self, key: str, tier: int | None = None, ghost: bool = False) -> BlockRow | None:
        """Delete a block's row (only if it is in ``tier`` when given); with ``ghost``, remember its frequency."""
        with self._tx() as conn:
            found = conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE key = ?", (key,)).fetchone()
            if found is None or (tier is not None and found[4] != tier):
                return None
            row = BlockRow(*found)
            self._remove(conn, key)
            if ghost:
                freq = row.freq + int(self._touches.get(key, [0])[0])
                conn.execute("INSERT OR REPLACE INTO ghosts (key, freq, seen) VALUES (?,?,?)", (key, freq, time.time()))
        with self._lock:
            self._touches.pop(key, None)
        return row

    @staticmethod
    def _remove(conn: sqlite3.Connection, key: str) -> None:
        found = conn.execute("SELECT tier, size FROM blocks WHERE key = ?", (key,)).fetchone()
        if found is not None:
            conn.execute("DELETE FROM blocks WHERE key = ?", (key,))
            _add_usage(conn, found[0], -found[1], -1)

    def move_block(self, key: str, from_tier: int, to_tier: int) -> bool:
        """Record a block's move to another tier (its file already copied there)."""
        with self._tx() as conn:
            found = conn.execute("SELECT tier, size FROM blocks WHERE key = ?", (key,)).fetchone()
            if found is None or found[0] != from_tier:
                return False
            conn.execute("UPDATE blocks SET tier = ? WHERE key = ?", (to_tier, key))
            _add_usage(conn, from_tier, -found[1], -1)
            _add_usage(conn, to_tier, found[1], 1)
            return True

    def coldest(self, tier: int, limit: int) -> list[BlockRow]:
        """The least recently used blocks of a tier."""
        rows = self._read(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE tier = ? ORDER BY last_access, key LIMIT ?",
                          (tier, limit))
        return [BlockRow(*row) for row in rows]

    def usage(self) -> dict[int, tuple[int, int]]:
        """tier -> (bytes, blocks)."""
        return {tier: (used, count) for tier, used, count in self._read("SELECT tier, used, blocks FROM tiers")}

    def block_keys(self) -> dict[str, int]:
        """key -> tier of every indexed block."""
        return dict(self._read("SELECT key, tier FROM blocks"))

    # -- frequencies
    def touch(self, key: str, count_access: bool = True) -> None:
        """Buffer an access to a cached block (last access time; frequency + 1)."""
        with self._lock:
            entry = self._touches.get(key)
            if entry is None:
                self._touches[key] = [1.0 if count_access else 0.0, time.time()]
            else:
                entry[0] += 1 if count_access else 0
                entry[1] = time.time()
            self._accesses += 1 if count_access else 0
        self._schedule()

    def bump_ghost(self, key: str) -> None:
        """Buffer an access to a block that is not cached."""
        with self._lock:
            self._ghost_bumps[key] += 1
            self._accesses += 1
        self._schedule()

    def candidate_frequency(self, key: str) -> int:
        """How often a block not cached was asked for (its ghost plus buffered accesses)."""
        rows = self._read("SELECT freq FROM ghosts WHERE key = ?", (key,))
        with self._lock:
            return (rows[0][0] if rows else 0) + self._ghost_bumps.get(key, 0)

    def block_frequency(self, row: BlockRow) -> int:
        """A cached block's frequency including buffered accesses."""
        with self._lock:
            return row.freq + int(self._touches.get(row.key, [0])[0])

    def last_access(self, row: BlockRow) -> float:
        with self._lock:
            entry = self._touches.get(row.key)
        return max(row.last_access, entry[1]) if entry else row.last_access

    # -- counters
    def count(self, **amounts: int) -> None:
        """Buffer counter increments: ``count(hits=1, hit_bytes=4096)``."""
        with self._lock:
            for name, amount in amounts.items():
                if amount:
                    self._counts[name] += amount
            hit, miss = amounts.get("hit_bytes", 0), amounts.get("miss_bytes", 0)
            if hit or miss:
                bucket = self._window.setdefault(int(time.time()), [0, 0])
                bucket[0] += hit
                bucket[1] += miss
        self._schedule()

    def counters(self) -> dict[str, int]:
        """Cumulative counters (flushed values of every process)."""
        return dict(self._read("SELECT name, value FROM counters"))

    def window(self, seconds: int = WINDOW_S) -> tuple[int, int]:
        """(hit bytes, miss bytes) over the last ``seconds``."""
        rows = self._read("SELECT COALESCE(SUM(hit_bytes), 0), COALESCE(SUM(miss_bytes), 0) FROM window "
                          "WHERE second > ?", (int(time.time()) - seconds,))
        return int(rows[0][0]), int(rows[0][1])

    def reset_counters(self) -> None:
        with self._lock:
            self._counts.clear()
            self._window.clear()
        with self._tx() as conn:
            conn.execute("UPDATE counters SET value = 0")
            conn.execute("DELETE FROM window")

    # -- meta
    def get_meta(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_meta(self, **values: str) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", list(values.items()))

    # -- buffering
    def _schedule(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()
            return
        if self._flusher is None or not self._flusher.is_alive() or self._pid != os.getpid():
            with self._lock:
                if self._flusher is None or not self._flusher.is_alive():
                    self._flusher = threading.Thread(target=self._flush_loop, name="shipyard-index-flush",
                                                     args=(weakref.ref(self),), daemon=True)
                    self._flusher.start()

    @staticmethod
    def _flush_loop(ref: weakref.ref) -> None:
        while True:
            index = ref()
            if index is None or index._closed:
                return
            wake, interval = index._wake, index.flush_interval
            del index
            wake.wait(interval)
            index = ref()
            if index is None or index._closed:
                return
            if not index._dirty():
                return  # the next buffered write starts a new flusher
            try:
                index.flush()
            except sqlite3.Error:
                pass  # retried on the next round
            del index

    def maybe_flush(self) -> None:
        """Flush when the last flush is older than ``flush_interval`` (cheap otherwise)."""
        if time.monotonic() - self._last_flush >= self.flush_interval and self._dirty():
            self.flush()

    def _dirty(self) -> bool:
        return bool(self._touches or self._ghost_bumps or self._counts or self._window)

    def flush(self) -> None:
        """Write buffered access times, frequencies, counters and window buckets."""
        with self._lock:
            if self._pid != os.getpid():
                self._connect()
            self._last_flush = time.monotonic()
            if not self._dirty():
                return
            touches, ghosts, counts, window = self._touches, self._ghost_bumps, self._counts, self._window
            accesses = self._accesses
            self._touches, self._ghost_bumps, self._counts, self._window = {}, Counter(), Counter(), {}
            self._accesses = 0
            now = time.time()
            try:
                with self._tx() as conn:
                    conn.executemany("UPDATE blocks SET last_access = MAX(last_access, ?), freq = freq + ? "
                                     "WHERE key = ?", [(last, int(n), key) for key, (n, last) in touches.items()])
                    conn.executemany("INSERT INTO ghosts (key, freq, seen) VALUES (?, ?, ?) ON CONFLICT(key) DO "
                                     "UPDATE SET freq = freq + excluded.freq, seen = excluded.seen",
                                     [(key, n, now) for key, n in ghosts.items()])
                    conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO "
                                     "UPDATE SET value = value + excluded.value", list(counts.items()))
                    conn.executemany("INSERT INTO window (second, hit_bytes, miss_bytes) VALUES (?, ?, ?) "
                                     "ON CONFLICT(second) DO UPDATE SET hit_bytes = hit_bytes + excluded.hit_bytes, "
                                     "miss_bytes = miss_bytes + excluded.miss_bytes",
                                     [(second, h, m) for second, (h, m) in window.items()])
                    conn.execute("DELETE FROM window WHERE second <= ?", (int(now) - WINDOW_S,))
                    if ghosts:
                        excess = conn.execute("SELECT COUNT(*) FROM ghosts").fetchone()[0] - self.max_ghosts
                        if excess > 0:
                            conn.execute("DELETE FROM ghosts WHERE key IN (SELECT key FROM ghosts ORDER BY seen "
                                         "LIMIT ?)", (excess,))
                    self._age(conn, accesses)
            except BaseException:
                # keep what could not be written for the next flush
                for key, (n, last) in touches.items():
                    entry = self._touches.setdefault(key, [0.0, last])
                    entry[0] += n
                self._ghost_bumps.update(ghosts)
                self._counts.update(counts)
                for second, (h, m) in window.items():
                    bucket = self._window.setdefault(second, [0, 0])
                    bucket[0] += h
                    bucket[1] += m
                self._accesses += accesses
                raise

    def flush_siblings(self) -> None:
        """Flush every open index of the same file in this process (other DatasetCache instances)."""
        for index in list(_OPEN):
            if index.path == self.path and not index._closed and index._pid == os.getpid():
                index.flush()

    def _age(self, conn: sqlite3.Connection, accesses: int) -> None:
        """Halve every frequency once ``aging_sample`` accesses were counted (TinyLFU's reset)."""
        if not accesses:
            return
        row = conn.execute("SELECT value FROM meta WHERE name = 'accesses'").fetchone()
        total = (int(row[0]) if row else 0) + accesses
        if total >= self.aging_sample:
            conn.execute("UPDATE blocks SET freq = freq / 2")
            conn.execute("UPDATE ghosts SET freq = freq / 2")
            conn.execute("DELETE FROM ghosts WHERE freq = 0")
            total = 0
        conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('accesses', ?)", (str(total),))

    def close(self) -> None:
        """Flush and close this process's connection."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
            with self._lock:
                if self._conn is not None and self._pid == os.getpid():
                    self._conn.close()
                self._conn = None
            _OPEN.discard(self)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _add_usage(conn: sqlite3.Connection, tier: int, size: int, blocks: int) -> None:
    conn.execute("INSERT INTO tiers (tier, used, blocks) VALUES (?, ?, ?) ON CONFLICT(tier) DO UPDATE SET "
                 "used = used + excluded.used, blocks = blocks + excluded.blocks", (tier, size, blocks))


_OPEN: weakref.WeakSet[Index] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # a lock held by another thread (the flusher) at fork time would never be released in the child;
    # the parent's connection and buffers stay the parent's
    for index in list(_OPEN):
        index._lock = threading.RLock()
        index._conn = None
        index._pid = -1
        index._reset_buffers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_all() -> None:
    for index in list(_OPEN):
        try:
            if index._pid == os.getpid():
                index.flush()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
