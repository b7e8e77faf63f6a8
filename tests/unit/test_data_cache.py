"""The block cache in one process: admission policies, tiers, buffering, integrity, recovery, single-flight."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from shipyard.data.cache.index import Index
from shipyard.data.engine import DatasetCache, glob_regex
from shipyard.data.spec import CacheConfig, DatasetConfig, Level, Mount

KIB = 1024
BLOCK = 16 * KIB


def memory_source(files: dict[str, bytes]) -> str:
    """A fresh memory:// folder holding ``files``; returns its URL."""
    base = f"/src-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for name, data in files.items():
        fs.pipe_file(f"{base}/{name}", data)
    return f"memory://{base}"


def make_config(tmp_path: Path, mount_point: str, *, quota: int = 4 * 1024 * KIB, levels: list[Level] | None = None,
                eviction: str = "scan-resistant", ttl: float = 300.0) -> DatasetConfig:
    root = tmp_path / "home" / "data" / "default" / "ds"
    levels = levels or [Level("SSD", str(root / "cache"), quota)]
    return DatasetConfig("default", "ds", [Mount(mount_point, name="src", path="/")],
                         CacheConfig(levels=levels, block_size=BLOCK, eviction=eviction, metadata_ttl_s=ttl), root)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def epoch(cache: DatasetCache, names: list[str]) -> float | None:
    cache.reset_stats()
    for name in names:
        cache.read(name)
    return cache.stats().hit_ratio


@pytest.mark.parametrize("eviction, low, high", [("lru", 0.0, 0.05), ("scan-resistant", 0.45, 1.0)])
def test_loop_over_twice_the_cache(tmp_path, eviction, low, high):
    """Cache = 50% of the data, read in order twice: LRU thrashes, scan-resistant keeps about half."""
    files = {f"part-{i:02d}.bin": payload(4 * BLOCK, i) for i in range(16)}          # 64 blocks
    config = make_config(tmp_path, memory_source(files), quota=32 * BLOCK, eviction=eviction)
    with DatasetCache(config) as cache:
        names = sorted(f"/{name}" for name in files)
        assert epoch(cache, names) == 0.0
        second = epoch(cache, names)
        assert low <= second <= high, f"{eviction}: epoch-2 hit ratio {second}"
        stats = cache.stats()
        assert stats.cached_bytes <= stats.capacity_bytes
        if eviction == "lru":
            assert stats.evictions > 0 and stats.rejected == 0
        else:
            assert stats.rejected > 0 and stats.evictions == 0
        assert all(cache.read(n) == files[n[1:]] for n in names)


def test_scan_resistant_admits_blocks_that_are_asked_for_again(tmp_path):
    files = {f"f{i}.bin": payload(BLOCK, i) for i in range(12)}
    config = make_config(tmp_path, memory_source(files), quota=8 * BLOCK)
    with DatasetCache(config) as cache:
        for i in range(12):                   # fills the cache, then rejects f7.. (seen once, like the victims)
            cache.read(f"/f{i}.bin")
        assert not cache.is_cached("/f10.bin")
        for _ in range(3):                    # f10 becomes popular: it displaces a block read once
            cache.read("/f10.bin")
        assert cache.is_cached("/f10.bin")


def test_hit_ratio_is_none_when_idle_then_cold_then_warm(tmp_path):
    config = make_config(tmp_path, memory_source({"a.bin": payload(3 * BLOCK + 5)}))
    with DatasetCache(config) as cache:
        stats = cache.stats()
        assert stats.hit_ratio is None and stats.window_hit_ratio is None
        assert stats.cache_states()["cacheHitRatio"] is None
        cache.read("/a.bin")
        stats = cache.stats()
        assert (stats.hit_ratio, stats.window_hit_ratio, stats.misses, stats.ufs_requests) == (0.0, 0.0, 4, 4)
        cache.reset_stats()
        assert cache.read("/a.bin") == payload(3 * BLOCK + 5)
        stats = cache.stats()
        assert (stats.hit_ratio, stats.hits, stats.ufs_requests, stats.metadata_requests) == (1.0, 4, 0, 0)
        states = stats.cache_states()
        assert states["cacheHitRatio"] == "100.0%" and states["cacheCapacity"] == "4.00MiB"


def test_warm_reads_do_not_write_sqlite_until_flushed(tmp_path):
    config = make_config(tmp_path, memory_source({"a.bin": payload(8 * BLOCK)}))
    with DatasetCache(config) as cache:
        cache.read("/a.bin")
        cache.flush()
        index = cache._index
        index.flush_interval = 3600.0
        statements: list[str] = []
        index._connect().set_trace_callback(statements.append)
        for offset in range(0, 8 * BLOCK, 4 * KIB):
            cache.read_range("/a.bin", offset, offset + 4 * KIB)
        assert statements == []                   # 32 warm reads: no SQL at all
        cache.flush()
        assert any(s.startswith("UPDATE blocks SET last_access") for s in statements)
        assert cache.stats().hits == 32


def test_blocks_move_from_memory_to_disk_then_get_evicted(tmp_path):
    files = {f"b{i}.bin": payload(BLOCK, i) for i in range(14)}
    mem, ssd = tmp_path / "shm", tmp_path / "ssd"
    levels = [Level("MEM", str(mem), 4 * BLOCK, high=0.95, low=0.5), Level("SSD", str(ssd), 8 * BLOCK, high=0.95, low=0.5)]
    config = make_config(tmp_path, memory_source(files), levels=levels, eviction="lru")
    with DatasetCache(config) as cache:
        for i in range(4):
            cache.read(f"/b{i}.bin")
            time.sleep(0.002)                     # distinct access times
        mem_used, ssd_used = (t["used"] for t in cache.stats().tiers)
        assert (mem_used, ssd_used) == (2 * BLOCK, 2 * BLOCK)   # MEM passed 95%: down to 50%, coldest first
        assert sorted(p.name for p in (ssd / "blocks").rglob("*") if p.is_file()) == sorted(
            cache._ref(cache.info(f"/b{i}.bin"), 0).key for i in (0, 1))
        for i in range(4, 14):
            cache.read(f"/b{i}.bin")
            time.sleep(0.002)
        stats = cache.stats()
        assert stats.evictions > 0
        assert all(t["used"] <= t["quota"] for t in stats.tiers)
        assert not cache.is_cached("/b0.bin") and cache.is_cached("/b13.bin")
        on_disk = sum(p.stat().st_size for folder in (mem, ssd) for p in (folder / "blocks").rglob("*") if p.is_file())
        assert on_disk == stats.cached_bytes
        assert all(cache.read(f"/b{i}.bin") == files[f"b{i}.bin"] for i in range(14))


def test_corrupt_block_is_counted_dropped_and_fetched_again(tmp_path):
    data = payload(2 * BLOCK)
    config = make_config(tmp_path, memory_source({"a.bin": data}))
    with DatasetCache(config) as cache:
        cache.read("/a.bin")
        key = cache._ref(cache.info("/a.bin"), 1).key
    block = config.root / "cache" / "blocks" / key[:2] / key
    raw = bytearray(block.read_bytes())
    raw[10] ^= 0xFF
    block.write_bytes(bytes(raw))
    with DatasetCache(config) as cache:
        cache.reset_stats()
        assert cache.read_range("/a.bin", BLOCK + 5, BLOCK + 20) == data[BLOCK + 5:BLOCK + 20]
        stats = cache.stats()
        assert (stats.corrupt_blocks, stats.ufs_requests, stats.hits) == (1, 1, 0)
        assert block.read_bytes() == data[BLOCK:]


def test_open_sweeps_dead_tmp_files_orphan_blocks_and_rows_without_files(tmp_path):
    config = make_config(tmp_path, memory_source({"a.bin": payload(3 * BLOCK)}))
    with DatasetCache(config) as cache:
        cache.read("/a.bin")
        keys = [cache._ref(cache.info("/a.bin"), i).key for i in range(3)]
    tier = config.root / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tier / "tmp" / f"{int(dead.stdout)}-leftover").write_bytes(b"half a blo")
    (tier / "tmp" / f"{os.getpid()}-mine").write_bytes(b"in progress")       # a live process's: kept
    orphan = tier / "blocks" / "ab" / ("ab" + "0" * 38)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"no row")
    (tier / "blocks" / keys[2][:2] / keys[2]).unlink()
    with DatasetCache(config) as cache:
        assert cache.swept == {"tmp": 1, "files": 1, "rows": 1}
        assert sorted(p.name for p in (tier / "tmp").iterdir()) == [f"{os.getpid()}-mine"]
        assert not orphan.exists()
        assert not cache.is_cached("/a.bin")
        assert cache.stats().cached_bytes == 2 * BLOCK
        assert cache.read("/a.bin") == payload(3 * BLOCK)


class SlowMemory(MemoryFileSystem):
    """memory://, with a delay and a count per range request."""

    cachable = False

    def __init__(self, delay: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay, self.requests = delay, 0
        self._count_lock = threading.Lock()

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._count_lock:
            self.requests += 1
        time.sleep(self.delay)
        return super().cat_file(path, start=start, end=end, **kwargs)


def test_threads_asking_for_one_cold_block_fetch_it_once(tmp_path):
    data = payload(2 * BLOCK)
    config = make_config(tmp_path, memory_source({"a.bin": data}))
    slow = SlowMemory()
    with DatasetCache(config, filesystems={"src": slow}) as cache:
        cache.info("/a.bin")
        results = cache.read_ranges([("/a.bin", i * 100, i * 100 + 5000) for i in range(32)], max_concurrency=16)
        assert results == [data[i * 100:i * 100 + 5000] for i in range(32)]
        assert slow.requests == 1
        stats = cache.stats()
        assert (stats.ufs_requests, stats.misses, stats.hits) == (1, 1, 31)


def test_oversized_file_is_streamed_and_skipped_by_load(tmp_path):
    big, small = payload(5 * BLOCK), payload(BLOCK)
    config = make_config(tmp_path, memory_source({"big.bin": big, "small.bin": small}), quota=4 * BLOCK)
    with DatasetCache(config) as cache:
        result = cache.load()
        assert (result.files, result.bytes, result.fetched_bytes, result.cached_already) == (1, BLOCK, BLOCK, 0)
        assert len(result.skipped) == 1 and result.skipped[0].startswith("/big.bin: 80.00KiB is more than")
        assert cache.read("/big.bin") == big
        assert cache.read_range("/big.bin", 3, 9) == big[3:9]
        stats = cache.stats()
        assert (stats.misses, stats.rejected, stats.ufs_requests, stats.cached_bytes) == (6, 5, 6, BLOCK)
        assert not cache.is_cached("/big.bin")
        assert cache.load(["/small.bin"]).cached_already == 1


def test_load_reports_progress_and_clean_evicts(tmp_path):
    files = {"train/a.bin": payload(3 * BLOCK), "train/b.bin": payload(BLOCK), "test/c.bin": payload(10)}
    config = make_config(tmp_path, memory_source(files))
    with DatasetCache(config) as cache:
        seen: list[tuple[int, int]] = []
        result = cache.load(["/train/*.bin"], parallelism=4, progress=lambda d, t: seen.append((d, t)))
        assert (result.files, result.bytes, result.fetched_bytes) == (2, 4 * BLOCK, 4 * BLOCK)
        assert seen[0] == (0, 4 * BLOCK) and seen[-1] == (4 * BLOCK, 4 * BLOCK) and len(seen) == 5
        assert cache.is_cached("/train/a.bin") and not cache.is_cached("/test/c.bin")
        assert cache.stats().hits + cache.stats().misses == 0          # loading is not reading
        assert cache.clean(["/train/b.bin"]).__dict__ == {"files": 1, "blocks": 1, "bytes": BLOCK}
        cache.load()
        assert cache.clean().__dict__ == {"files": 3, "blocks": 5, "bytes": 4 * BLOCK + 10}
        assert cache.stats().cached_bytes == 0


def test_frequencies_halve_after_the_aging_sample(tmp_path):
    index = Index(tmp_path / "index.db")
    index.aging_sample = 10
    for _ in range(9):
        index.bump_ghost("k")
    index.flush()
    assert index.candidate_frequency("k") == 9
    index.bump_ghost("k")
    index.flush()
    assert index.candidate_frequency("k") == 5
    index.close()


@pytest.mark.parametrize("pattern, hits, misses", [
    ("/train/*.parquet", ["/train/a.parquet"], ["/train/x/a.parquet", "/a.parquet"]),
    ("/**/*.parquet", ["/a.parquet", "/train/x/a.parquet"], ["/a.csv"]),
    ("/train/**", ["/train/a", "/train/x/y"], ["/test/a"]),
    ("/part-[0-2].bin", ["/part-1.bin"], ["/part-3.bin"]),
    ("/?.txt", ["/a.txt"], ["/ab.txt"]),
])
def test_glob_patterns(pattern, hits, misses):
    regex = glob_regex(pattern)
    assert all(regex.fullmatch(p) for p in hits)
    assert not any(regex.fullmatch(p) for p in misses)


def test_a_reader_follows_a_version_another_instance_synced(tmp_path):
    url = memory_source({"a.bin": payload(2 * BLOCK, 1)})
    config = make_config(tmp_path, url)
    with DatasetCache(config) as reader, DatasetCache(config) as syncer:
        assert reader.read("/a.bin") == payload(2 * BLOCK, 1)
        old = reader.info("/a.bin").version
        time.sleep(0.01)
        fsspec.filesystem("memory").pipe_file(url[len("memory://"):] + "/a.bin", payload(2 * BLOCK, 2))  # same size
        syncer.sync_metadata()                   # drops the old version's blocks, records the new one
        assert reader.read("/a.bin") == payload(2 * BLOCK, 2)
        new = reader.info("/a.bin").version
        assert new != old
        assert {row.version for row in reader._index.all_blocks()} == {new}
