"""DatasetCache: read a dataset's files through a local block cache.

Files are split into blocks of ``block_size``; each block is keyed by (url, version, index), fetched
once from the source with a range request (``fs.cat_file(url, start, end)``) and kept in the tiers of
the :class:`~shipyard.data.cache.blocks.BlockStore`. A file's size and version are cached in the index
for ``metadata_ttl_s``, so a warm read asks the source nothing. Counters and access times are buffered
(:class:`~shipyard.data.cache.index.Index`), so a warm read does not write SQLite either; a miss writes
its counters at once (a fetch costs far more than a transaction, and they then survive a killed worker).

Accounting: a block read served from the cache is a hit (also when another thread or process fetched it
while this one waited); a block this call fetched from the source, or read from a file bigger than the
cache, is a miss. Hit ratios are by bytes served, as Fluid's.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.data.cache.blocks import BlockRef, BlockStore, block_key
from shipyard.data.cache.index import WINDOW_S, FileRow, Index
from shipyard.data.cache.policy import make_policy
from shipyard.data.sources import FileEntry, SourceError, SourceFileNotFound, Sources
from shipyard.data.spec import DatasetConfig, normalize_dataset_path
from shipyard.quantity import format_bytes

__all__ = ["CacheStats", "CleanResult", "DatasetCache", "FileEntry", "LoadResult", "SourceError"]

# a few blocks read but not cached (rejected, or of a file bigger than the cache), kept so that a reader
# going through such a block in small chunks does not fetch it once per chunk
_RECENT_BYTES = 32 * 1024 * 1024
_RECENT_BLOCKS = 8


@dataclass
class CacheStats:
    """Capacity, usage and cumulative counters of one dataset's cache (all processes)."""

    capacity_bytes: int
    cached_bytes: int
    ufs_total_bytes: int | None
    file_num: int | None
    hit_bytes: int
    miss_bytes: int
    hits: int
    misses: int
    ufs_requests: int
    ufs_bytes: int
    evictions: int
    rejected: int
    corrupt_blocks: int
    hit_ratio: float | None
    window_hit_ratio: float | None
    window_s: int = WINDOW_S
    metadata_requests: int = 0          # info/list requests to the source (not counted in ufs_requests)
    low_watermark: float = 0.70
    high_watermark: float = 0.95
    tiers: list[dict[str, Any]] = field(default_factory=list)   # medium, path, quota, used, blocks

    def cache_states(self) -> dict[str, str | None]:
        """Fluid's ``status.cacheStates`` keys, formatted the way Fluid prints them."""
        if self.ufs_total_bytes is None:
            percentage = None
        elif self.ufs_total_bytes == 0:
            percentage = "0.0%"
        else:
            percentage = f"{min(100.0, 100.0 * self.cached_bytes / self.ufs_total_bytes):.1f}%"
        return {
            "cacheCapacity": format_bytes(self.capacity_bytes),
            "cached": format_bytes(self.cached_bytes),
            "cachedPercentage": percentage,
            "cacheHitRatio": None if self.hit_ratio is None else f"{100.0 * self.hit_ratio:.1f}%",
            "cacheHitRatioWindow": None if self.window_hit_ratio is None else f"{100.0 * self.window_hit_ratio:.1f}%",
            "lowWaterMark": f"{self.low_watermark:g}",
            "highWaterMark": f"{self.high_watermark:g}",
        }


@dataclass
class LoadResult:
    """What :meth:`DatasetCache.load` did."""

    files: int              # files loaded (or found already cached)
    bytes: int              # their total size
    fetched_bytes: int      # bytes fetched from the source by this load
    cached_already: int     # files that were already fully cached
    seconds: float
    skipped: list[str] = field(default_factory=list)   # "path: reason" for files that cannot be cached


@dataclass
class CleanResult:
    """What :meth:`DatasetCache.clean` removed."""

    files: int
    blocks: int
    bytes: int


class _SourceChanged(SourceError):
    """A block came back with an unexpected length: the file changed since its metadata was read."""


class _IndexNewer(_SourceChanged):
    """Another process (sync_metadata, write_file) recorded a newer version of the file."""


class DatasetCache:
    """One dataset: its sources, metadata and block cache. Thread-safe; many processes may open it."""

    def __init__(self, config: DatasetConfig, *, filesystems: dict[str, Any] | None = None) -> None:
        self.config = config
        self.root = Path(config.root)
        self.root.mkdir(parents=True, exist_ok=True)
        cache = config.cache
        self.block_size = cache.block_size
        self._index = Index(self.root / "index.db")
        self._store = BlockStore(self.root, cache.levels, self._index, make_policy(cache.eviction),
                                 cache.block_size, cache.verify_reads)
        self._sources = Sources(config.mounts, filesystems)
        self._meta: dict[str, tuple[FileEntry, float]] = {}
        self._preloaded: set[tuple[str, str]] = set()
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._lock = threading.Lock()
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._pid = os.getpid()
        _CACHES.add(self)
        self.swept = self._store.sweep()
        self._store.evict_if_needed()  # quotas may have shrunk since the last run

    @classmethod
    def open(cls, name: str, namespace: str = "default", home: Path | None = None) -> DatasetCache:
        """Open a dataset by name (reads ``$SHIPYARD_HOME/data/<namespace>/<name>/dataset.json``)."""
        return cls(DatasetConfig.load(name, namespace, home))

    def __enter__(self) -> DatasetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DatasetCache({self.config.namespace}/{self.config.name}, root={self.root})"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled (spawned DataLoader workers, process pools): the receiver opens its own connection
        return (_reopen, (self.config, self._sources.given or None))

    # -- metadata
    def _remember(self, entry: FileEntry, checked_at: float) -> None:
        self._meta[entry.path] = (entry, checked_at)

    def _record(self, entries: list[FileEntry], checked_at: float, replace_prefix: str | None = None) -> None:
        """Store fresh metadata; blocks of versions that changed (or files that are gone) are dropped."""
        rows = [FileRow(e.path, e.url, e.size, e.version, checked_at) for e in entries]
        changed = self._index.put_files(rows, replace_prefix)
        current = {(e.url, e.version) for e in entries}
        for entry in entries:
            self._remember(entry, checked_at)
        stale_urls = {row.url for row in changed}
        listed = {e.path for e in entries}
        for row in changed:
            if row.path not in listed:
                self._meta.pop(row.path, None)
        keys = [b.key for url in stale_urls for b in self._index.blocks_of(url) if (b.url, b.version) not in current]
        if keys:
            self._store.drop(keys)

    def _entry(self, path: str, refresh: bool = False) -> FileEntry:
        path = normalize_dataset_path(path, "path")
        now = time.time()
        ttl = self.config.cache.metadata_ttl_s
        if not refresh:
            known = self._meta.get(path)
            if known is not None and now - known[1] < ttl:
                return known[0]
            row = self._index.get_file(path)
            if row is not None and now - row.checked_at < ttl:
                entry = FileEntry(row.path, row.size, row.version, row.url)
                self._remember(entry, row.checked_at)
                return entry
        self._index.count(metadata_requests=1)
        try:
            entry = self._sources.info(path)
        except FileNotFoundError as error:  # missing at the source, or no mount holds the path
            self._meta.pop(path, None)
            raise SourceFileNotFound(f"{path}: not found in dataset '{self.config.namespace}/{self.config.name}' "
                                     f"({error})") from None
        self._record([entry], now)
        return entry

    def _listing_fresh(self, path: str) -> bool:
        now = time.time()
        parts = path.strip("/").split("/") if path != "/" else []
        for depth in range(len(parts), -1, -1):
            stamp = self._index.get_meta("listed:/" + "/".join(parts[:depth]))
            if stamp is not None and now - float(stamp) < self.config.cache.metadata_ttl_s:
                return True
        return False

    def list(self, path: str = "/", refresh: bool = False) -> list[FileEntry]:
        """Every file under a dataset path, recursively (from the index while its listing is fresh)."""
        path = normalize_dataset_path(path, "path")
        if not refresh and self._listing_fresh(path):
            return [FileEntry(r.path, r.size, r.version, r.url) for r in self._index.files(path)]
        now = time.time()
        self._index.count(metadata_requests=1)
        entries = self._sources.list(path)
        self._record(entries, now, replace_prefix=path)
        values = {f"listed:{path}": str(now)}
        if path == "/":
            values.update(ufs_total=str(sum(e.size for e in entries)), file_num=str(len(entries)))
        self._index.set_meta(**values)
        return entries

    def info(self, path: str, refresh: bool = False) -> FileEntry:
        """One file's entry; FileNotFoundError (a SourceError too) naming the path when it is missing."""
        return self._entry(path, refresh)

    def sync_metadata(self) -> tuple[int, int]:
        """Re-list every mount; drop blocks of versions that changed. Returns (ufs total bytes, file count)."""
        entries = self.list("/", refresh=True)
        orphans = [row.key for row in self._index.orphan_blocks()]
        if orphans:
            self._store.drop(orphans)
        return sum(e.size for e in entries), len(entries)

    def glob(self, pattern: str) -> list[FileEntry]:
        """Files matching a pattern: ``*`` and ``?`` within a segment, ``**`` across segments."""
        pattern = "/" + pattern.lstrip("/")
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        prefix = literal.rsplit("/", 1)[0] or "/" if re.search(r"[*?\[]", pattern) else literal
        try:
            entries = self.list(prefix)
        except FileNotFoundError:
            return []
        regex = glob_regex(pattern)
        return [e for e in entries if regex.fullmatch(e.path)]

    # -- reading
    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pools = {}
            self._recent = OrderedDict()
            self._recent_bytes = 0

    def _ref(self, entry: FileEntry, idx: int) -> BlockRef:
        start = idx * self.block_size
        size = min(self.block_size, entry.size - start)
        return BlockRef(entry.url, entry.version, idx, size, block_key(entry.url, entry.version, idx, self.block_size))

    def _fetch(self, entry: FileEntry, ref: BlockRef) -> bytes:
        start = ref.idx * self.block_size
        data = self._sources.cat_range(entry, start, start + ref.size)
        self._index.count(ufs_requests=1, ufs_bytes=len(data))
        if len(data) != ref.size:
            self._meta.pop(entry.path, None)
            self._index.put_files([FileRow(entry.path, entry.url, entry.size, entry.version, 0.0)])
            raise _SourceChanged(f"{entry.url} changed at the source while reading: block {ref.idx} has "
                                 f"{len(data)} bytes, expected {ref.size}")
        return data

    def _keep_recent(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._recent:
                return
            self._recent[key] = data
            self._recent_bytes += len(data)
            while len(self._recent) > 1 and (self._recent_bytes > _RECENT_BYTES or len(self._recent) > _RECENT_BLOCKS):
                _, old = self._recent.popitem(last=False)
                self._recent_bytes -= len(old)

    def _block_range(self, entry: FileEntry, idx: int, lo: int, hi: int, count_access: bool) -> bytes:
        ref = self._ref(entry, idx)
        oversize = entry.size > self._store.capacity
        if not oversize:
            if (entry.url, entry.version) not in self._preloaded:
                self._store.preload(entry.url, entry.version)
                self._preloaded.add((entry.url, entry.version))
            data = self._store.read(ref.key, lo, hi, count_access)
            if data is not None:
                self._index.count(hits=1, hit_bytes=len(data))
                return data
        recent = self._recent.get(ref.key)
        if recent is not None:
            self._index.count(misses=1, miss_bytes=hi - lo)
            if count_access and not oversize and self._store.offer(ref, recent):
                with self._lock:  # asked for often enough to be admitted now
                    if self._recent.pop(ref.key, None) is not None:
                        self._recent_bytes -= len(recent)
            return recent[lo:hi]
        if oversize:  # bigger than the whole cache: streamed, never cached
            data = self._fetch(entry, ref)
            self._index.count(misses=1, miss_bytes=hi - lo, rejected=1)
            self._index.flush()
            self._keep_recent(ref.key, data)
            return data[lo:hi]
        row = self._index.get_file(entry.path)   # a miss: is our metadata still the index's?
        if row is not None and row.version != entry.version and row.checked_at >= self._checked_at(entry):
            self._meta.pop(entry.path, None)
            raise _IndexNewer(f"{entry.url} has a newer version in the index")
        result = self._store.get(ref, lambda: self._fetch(entry, ref), count_access=count_access)
        if result.fetched:
            self._index.count(misses=1, miss_bytes=hi - lo, rejected=0 if result.admitted else 1)
            # a fetch costs far more than a transaction: its counters are written now, so they survive a
            # worker that is killed or exits with os._exit (only hits wait for the next flush)
            self._index.flush()
            if not result.admitted:
                self._keep_recent(ref.key, result.data)
        else:
            self._index.count(hits=1, hit_bytes=hi - lo)
        return result.data[lo:hi] if (lo, hi) != (0, len(result.data)) else result.data

    def _checked_at(self, entry: FileEntry) -> float:
        known = self._meta.get(entry.path)
        return known[1] if known is not None and known[0] == entry else 0.0

    def _reread(self, path: str, error: _SourceChanged) -> FileEntry:
        """The entry to retry a read with after the file changed under it."""
        return self._entry(path, refresh=not isinstance(error, _IndexNewer))

    def _read_entry(self, entry: FileEntry, start: int, end: int, uncounted_block: int | None = None) -> bytes:
        start, end = max(0, start), min(end, entry.size)
        if start >= end:
            return b""
        bs = self.block_size
        parts = []
        for idx in range(start // bs, (end - 1) // bs + 1):
            base = idx * bs
            parts.append(self._block_range(entry, idx, max(start, base) - base, min(end, base + bs) - base,
                                           count_access=idx != uncounted_block))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, clipped to its size, through the cache."""
        self._after_fork()
        entry = self._entry(path)
        try:
            data = self._read_entry(entry, start, end)
        except _SourceChanged as error:
            data = self._read_entry(self._reread(path, error), start, end)
        self._index.maybe_flush()
        return data

    def read(self, path: str) -> bytes:
        """A whole file through the cache."""
        entry = self._entry(path)
        return self.read_range(path, 0, entry.size)

    def open_file(self, path: str) -> CachedFile:
        """A seekable, read-only file object reading through the cache."""
        return CachedFile(self, self._entry(path))

    def _pool(self, size: int) -> ThreadPoolExecutor:
        self._after_fork()
        with self._lock:
            pool = self._pools.get(size)
            if pool is None:
                pool = self._pools[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="shipyard-data")
            return pool

    def read_ranges(self, ranges: list[tuple[str, int, int]], max_concurrency: int = 16) -> list[bytes]:
        """Many (path, start, end) reads at once, up to ``max_concurrency`` in flight; results in order."""
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: expected 1 or more, got {max_concurrency}")
        if len(ranges) <= 1 or max_concurrency == 1:
            return [self.read_range(p, s, e) for p, s, e in ranges]
        pool = self._pool(max_concurrency)
        futures = [pool.submit(self.read_range, p, s, e) for p, s, e in ranges]
        return [f.result() for f in futures]

    def is_cached(self, path: str) -> bool:
        """Whether every block of the file is in the cache."""
        entry = self._entry(path)
        if entry.size > self._store.capacity:
            return False
        count = -(-entry.size // self.block_size)
        have = {row.idx for row in self._index.blocks_of(entry.url, entry.version)}
        return all(i in have for i in range(count))

    # -- writing
    def _written(self, path: str, entry: FileEntry, old_url: str | None) -> FileEntry:
        keys = [b.key for url in {entry.url, old_url} if url for b in self._index.blocks_of(url)]
        if keys:
            self._store.drop(keys)
        self._record([entry], time.time())
        return entry

    def write_file(self, path: str, data: bytes) -> FileEntry:
        """Write a whole file to its mount (PermissionError when the mount is readOnly)."""
        path = normalize_dataset_path(path, "path")
        old = self._index.get_file(path)
        entry = self._sources.write(path, bytes(data))
        return self._written(path, entry, old.url if old else None)

    def put_file(self, local: Path, path: str) -> FileEntry:
        """Upload a local file to its mount (PermissionError when the mount is readOnly)."""
        path = normalize_dataset_path(path, "path")
        if not Path(local).is_file():
            raise FileNotFoundError(f"local: {local} is not a file")
        old = self._index.get_file(path)
        entry = self._sources.put(str(local), path)
        return self._written(path, entry, old.url if old else None)

    # -- operations
    def _targets(self, paths: list[str] | None) -> list[FileEntry]:
        if paths is None:
            return self.list("/")
        found: dict[str, FileEntry] = {}
        for target in paths:
            if re.search(r"[*?\[]", target):
                matches = self.glob(target)
            else:
                matches = self.list(target)
                if not matches:
                    matches = [self.info(target)]
            for entry in matches:
                found[entry.path] = entry
        return sorted(found.values(), key=lambda e: e.path)

    def load(self, paths: list[str] | None = None, *, parallelism: int = 8,
             progress: Callable[[int, int], None] | None = None) -> LoadResult:
        """Fetch files into the cache (None: everything; globs allowed). ``progress(done_bytes, total_bytes)``
        is called after each block. Files bigger than the whole quota are skipped with a reason."""
        if parallelism < 1:
            raise ValueError(f"parallelism: expected 1 or more, got {parallelism}")
        began = time.monotonic()
        entries = self._targets(paths)
        capacity = self._store.capacity
        skipped = [f"{e.path}: {format_bytes(e.size)} is more than the cache's whole quota "
                   f"({format_bytes(capacity)}); it is streamed from the source when read, never cached"
                   for e in entries if e.size > capacity]
        todo = [e for e in entries if e.size <= capacity]
        total = sum(e.size for e in todo)
        refs: list[tuple[FileEntry, BlockRef]] = []
        cached_already = 0
        done = 0
        for entry in todo:
            have = {row.key for row in self._index.blocks_of(entry.url, entry.version)}
            mine = [self._ref(entry, i) for i in range(-(-entry.size // self.block_size))]
            missing = [ref for ref in mine if ref.key not in have]
            cached_already += not missing
            done += sum(ref.size for ref in mine if ref.key in have)
            refs.extend((entry, ref) for ref in missing)
        fetched = 0
        lock = threading.Lock()
        if progress is not None:
            progress(done, total)

        def one(item: tuple[FileEntry, BlockRef]) -> None:
            nonlocal fetched, done
            entry, ref = item
            result = self._store.get(ref, lambda: self._fetch(entry, ref), force_admit=True, count_access=False)
            with lock:
                fetched += len(result.data) if result.fetched else 0
                done += ref.size
                if progress is not None:
                    progress(done, total)

        if refs:
            with ThreadPoolExecutor(max_workers=min(parallelism, len(refs)), thread_name_prefix="shipyard-load") as pool:
                for future in [pool.submit(one, item) for item in refs]:
                    future.result()
        self._index.flush()
        return LoadResult(files=len(todo), bytes=total, fetched_bytes=fetched, cached_already=cached_already,
                          seconds=time.monotonic() - began, skipped=skipped)

    def clean(self, paths: list[str] | None = None) -> CleanResult:
        """Evict cached blocks of files (None: everything; globs and folders allowed)."""
        if paths is None:
            rows = self._index.all_blocks()
            blocks, size = self._store.drop([row.key for row in rows])
            with self._lock:
                self._recent.clear()
                self._recent_bytes = 0
            return CleanResult(files=len({row.url for row in rows}), blocks=blocks, bytes=size)
        known = self._index.files()
        urls: set[str] = set()
        for target in paths:
            target_path = "/" + target.lstrip("/")
            if re.search(r"[*?\[]", target_path):
                regex = glob_regex(target_path)
                urls.update(r.url for r in known if regex.fullmatch(r.path))
            else:
                target_path = normalize_dataset_path(target_path, "paths")
                urls.update(r.url for r in known if r.path == target_path or target_path == "/"
                            or r.path.startswith(target_path + "/"))
        files = blocks = size = 0
        for url in sorted(urls):
            keys = [row.key for row in self._index.blocks_of(url)]
            count, removed = self._store.drop(keys)
            files += count > 0
            blocks += count
            size += removed
        return CleanResult(files=files, blocks=blocks, bytes=size)

    # -- observing
    def stats(self) -> CacheStats:
        """Counters of every process (this one's buffered ones flushed first), usage and capacity."""
        self._index.flush_siblings()
        counters = self._index.counters()
        usage = self._store.usage()
        hit, miss = counters.get("hit_bytes", 0), counters.get("miss_bytes", 0)
        window_hit, window_miss = self._index.window(WINDOW_S)
        ufs_total = self._index.get_meta("ufs_total")
        file_num = self._index.get_meta("file_num")
        last = self.config.cache.levels[-1]
        return CacheStats(
            capacity_bytes=self._store.capacity,
            cached_bytes=sum(used for _, used, _ in usage),
            ufs_total_bytes=int(ufs_total) if ufs_total is not None else None,
            file_num=int(file_num) if file_num is not None else None,
            hit_bytes=hit, miss_bytes=miss,
            hits=counters.get("hits", 0), misses=counters.get("misses", 0),
            ufs_requests=counters.get("ufs_requests", 0), ufs_bytes=counters.get("ufs_bytes", 0),
            evictions=counters.get("evictions", 0), rejected=counters.get("rejected", 0),
            corrupt_blocks=counters.get("corrupt_blocks", 0),
            hit_ratio=hit / (hit + miss) if hit + miss else None,
            window_hit_ratio=window_hit / (window_hit + window_miss) if window_hit + window_miss else None,
            metadata_requests=counters.get("metadata_requests", 0),
            low_watermark=last.low, high_watermark=last.high,
            tiers=[{"medium": t.medium, "path": str(t.path), "quota": t.quota, "used": used, "blocks": count}
                   for t, used, count in usage],
        )

    def reset_stats(self) -> None:
        """Zero the cumulative counters and the window."""
        self._index.reset_counters()

    def prometheus(self) -> str:
        """The stats in Prometheus text format (``shipyard_dataset_*``, labelled by namespace and dataset)."""
        s = self.stats()
        labels = f'namespace="{_escape(self.config.namespace)}",dataset="{_escape(self.config.name)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float | None]]) -> None:
            lines.append(f"# HELP shipyard_dataset_{name} {help_text}")
            lines.append(f"# TYPE shipyard_dataset_{name} {kind}")
            for extra, value in samples:
                if value is not None:
                    lines.append(f"shipyard_dataset_{name}{{{labels}{extra}}} {value}")

        metric("cache_capacity_bytes", "gauge", "Sum of the cache tiers' quotas.", [("", s.capacity_bytes)])
        metric("cached_bytes", "gauge", "Bytes of blocks in the cache.", [("", s.cached_bytes)])
        metric("tier_used_bytes", "gauge", "Bytes of blocks per cache tier.",
               [(f',tier="{i}",medium="{t["medium"]}"', t["used"]) for i, t in enumerate(s.tiers)])
        metric("ufs_total_bytes", "gauge", "Total size of the source files at the last listing.", [("", s.ufs_total_bytes)])
        metric("ufs_file_num", "gauge", "Number of source files at the last listing.", [("", s.file_num)])
        metric("read_bytes_total", "counter", "Bytes served to readers, by where they came from.",
               [(',source="cache"', s.hit_bytes), (',source="ufs"', s.miss_bytes)])
        metric("block_reads_total", "counter", "Block reads, by result.",
               [(',result="hit"', s.hits), (',result="miss"', s.misses)])
        metric("ufs_requests_total", "counter", "Range requests sent to the source.", [("", s.ufs_requests)])
        metric("ufs_bytes_total", "counter", "Bytes fetched from the source.", [("", s.ufs_bytes)])
        metric("metadata_requests_total", "counter", "Listing and stat requests sent to the source.",
               [("", s.metadata_requests)])
        metric("evictions_total", "counter", "Blocks evicted from the last tier.", [("", s.evictions)])
        metric("rejected_total", "counter", "Blocks read but not admitted to the cache.", [("", s.rejected)])
        metric("corrupt_blocks_total", "counter", "Blocks that failed their crc32 check.", [("", s.corrupt_blocks)])
        metric("cache_hit_ratio", "gauge", "Bytes served from the cache over bytes served (absent when idle).",
               [("", s.hit_ratio)])
        metric("cache_hit_ratio_window", "gauge", f"The hit ratio over the last {s.window_s} s (absent when idle).",
               [("", s.window_hit_ratio)])
        return "\n".join(lines) + "\n"

    def flush(self) -> None:
        """Write buffered counters and access times to the index."""
        self._index.flush()

    def close(self) -> None:
        """Flush and release the index connection and thread pools."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)
        self._index.close()


class CachedFile(io.RawIOBase):
    """A read-only, seekable file of a dataset, reading through its cache."""

    def __init__(self, cache: DatasetCache, entry: FileEntry) -> None:
        super().__init__()
        self._cache = cache
        self.entry = entry
        self.name = entry.path
        self.mode = "rb"
        self._pos = 0
        self._last_block: int | None = None   # one access per block for a sequential reader

    @property
    def size(self) -> int:
        return self.entry.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self.entry.size + offset
        else:
            raise ValueError(f"whence: expected 0, 1 or 2, got {whence}")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def _take(self, size: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self.entry.size if size is None or size < 0 else min(self.entry.size, self._pos + size)
        if end <= self._pos:
            return b""
        cache = self._cache
        try:
            data = cache._read_entry(self.entry, self._pos, end, uncounted_block=self._last_block)
        except _SourceChanged as error:
            self.entry = cache._reread(self.entry.path, error)
            end = min(end, self.entry.size)
            data = cache._read_entry(self.entry, self._pos, end)
        cache._index.maybe_flush()
        self._last_block = (end - 1) // cache.block_size
        self._pos += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._take(size)

    def readall(self) -> bytes:
        return self._take(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._take(len(view))
        view[:len(data)] = data
        return len(data)


_CACHES: weakref.WeakSet[DatasetCache] = weakref.WeakSet()


def _reopen(config: DatasetConfig, filesystems: dict[str, Any] | None) -> DatasetCache:
    return DatasetCache(config, filesystems=filesystems)


def _reset_after_fork() -> None:
    for cache in list(_CACHES):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A dataset glob as a regex: ``**/`` any folders (or none), ``**`` anything, ``*`` and ``?`` within a
    segment, ``[...]`` a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            close = pattern.find("]", i + 1)
            if close == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1:close]
                body = body.replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
