"""Data-cache benchmark: Shipyard's dataset cache against a deliberately slow source (issue 8, B1-B8).

    .venv/bin/python benchmarks/data_cache.py                     # CI profile, every scenario (~1-2 min)
    .venv/bin/python benchmarks/data_cache.py --profile laptop    # 4096 files, 50 ms, 100 MiB/s (much longer)
    .venv/bin/python benchmarks/data_cache.py --scenarios B1,B3 --markdown /tmp/data_cache.md --no-fail
    .venv/bin/python benchmarks/data_cache.py --no-fail --doc docs/performance.md   # what `make bench` runs
    .venv/bin/python benchmarks/data_cache.py --profile smoke    # seconds; checks the harness, not the targets

The source is ``shipyard.data.slow_source.SlowSource``: a loopback HTTP server (run in its own process,
so serving does not compete for this process's GIL) with a latency before every request's first byte
and one bandwidth cap shared by all connections, whose counters are the ground truth for "what
reached the source". Each scenario gets a fresh SHIPYARD_HOME and a Dataset
(Fluid documents -> DatasetConfig, saved) with one http mount on the SlowSource.

Scenarios (CI profile: 256 files x 256 KiB, 20 ms, 32 MiB/s):
  B1 cold epoch, naive: every file in order, one at a time, straight from the source (fsspec http);
     also the same single stream through a cold cache.
  B2 cold epoch with sampler-order prefetch (16 in flight)             target: >= 2.5x faster than B1
  B3 warm epoch (second pass)           target: >= 10x faster than B1, hit ratio >= 0.99, 0 source requests
  B4 DatasetCache.load() then an epoch                          target: cachedPercentage 100%, 0 source requests
  B5 cache = 50% of the data, read twice in order   target: scan-resistant epoch-2 hit ratio >= 0.45 (LRU ~0)
  B6 four processes reading cold at once    target: source block fetches == unique blocks, 0 corrupted reads
  B7 four readers of a parquet table: Flight (grpc+unix) vs each reading the source  target: >= 3x throughput
  B8 flow: migrate -> load -> process (DuckDB SQL); the memoized re-run is skipped

Targets are ratios measured in the same run. Writes one JSON record per scenario to
benchmarks/results/data_cache-<timestamp>.json, prints the tables, writes them as Markdown with
``--markdown PATH``, and exits 1 when a target fails (``--no-fail``: always 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from report import check_doc, environment, write_doc

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
KiB, MiB = 1024, 1024 * 1024
DATASET = "bench"
NAMESPACE = "default"
DOC_START, DOC_END = "<!-- data-cache:start -->", "<!-- data-cache:end -->"
ALL_SCENARIOS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8")
TITLES = {
    "B1": "Cold epoch, naive single stream",
    "B2": "Cold epoch, sampler-order prefetch (16 in flight)",
    "B3": "Warm epoch (second pass through the cache)",
    "B4": "load, then an epoch",
    "B5": "Cache = 50% of the data, read twice in order",
    "B6": "4 processes reading cold at once",
    "B7": "4 readers of a parquet table: Flight vs the source",
    "B8": "Flow: migrate -> load -> process (DuckDB)",
}


@dataclass(frozen=True)
class Profile:
    name: str
    files: int
    file_size: int
    latency_ms: float
    bandwidth: int              # bytes/s, shared by every connection
    parquet_files: int
    parquet_file_size: int      # approximate: float64 columns, no compression
    prefetch: int = 16

    @property
    def total(self) -> int:
        return self.files * self.file_size


PROFILES = {
    "ci": Profile("ci", files=256, file_size=256 * KiB, latency_ms=20, bandwidth=32 * MiB,
                  parquet_files=8, parquet_file_size=8 * MiB),
    # a few seconds, to check the harness itself: its numbers are too small to judge the targets by
    "smoke": Profile("smoke", files=32, file_size=64 * KiB, latency_ms=5, bandwidth=32 * MiB,
                     parquet_files=2, parquet_file_size=1 * MiB),
    "laptop": Profile("laptop", files=4096, file_size=256 * KiB, latency_ms=50, bandwidth=100 * MiB,
                      parquet_files=16, parquet_file_size=64 * MiB),
}


@dataclass
class Check:
    scenario: str
    target: str
    measured: str
    passed: bool | None         # None: not measured (skipped)
    informational: bool = False  # shown, never fails the run

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "SKIP"
        if self.informational:
            return "as expected" if self.passed else "unexpected"
        return "PASS" if self.passed else "FAIL"


@dataclass
class Record:
    scenario: str
    title: str
    epoch_seconds: float | None = None
    MBps: float | None = None
    ufs_requests: int | None = None     # requests that reached the source (SlowSource's counters)
    ufs_bytes: int | None = None        # bytes the source sent
    cache_hit_ratio: float | None = None
    p99_ms: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
OTHER_LOAD_MARK = 0.25   # cores used by other processes during a scenario above which its row gets a ⚠


def machine_busy_seconds() -> float:
    """CPU seconds every core spent on anything but idle/iowait since boot (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def own_cpu_seconds(source_pid: int) -> float:
    """CPU of this process, its waited-for children (workers) and the SlowSource process."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system + process_cpu_seconds(source_pid)


def log(message: str) -> None:
    print(f"[data-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def mbps(size: int, seconds: float | None) -> float | None:
    return round(size / seconds / 1e6, 2) if seconds else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(values: list[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value * 1000, 2)


# ---------------------------------------------------------------------------------------------
# the source data and the datasets


@dataclass
class Bench:
    profile: Profile
    work: Path
    source_root: Path
    source: SourceProcess
    digests: dict[str, str]               # "/train/f00000.bin" (path under the source root) -> sha256
    table_files: list[str]                # "/table/part-0.parquet", ...
    table_bytes: int
    results: dict[str, Record] = field(default_factory=dict)
    homes: int = 0

    @property
    def train_url(self) -> str:
        return self.source.url + "/train"

    def fresh_home(self, label: str) -> Path:
        self.homes += 1
        home = self.work / "homes" / f"{self.homes:02d}-{label}"
        home.mkdir(parents=True)
        os.environ["SHIPYARD_HOME"] = str(home)  # subprocesses and DatasetCache.open(name) find it here
        return home

    def source_path(self, url: str) -> str:
        """A source URL -> its path under the source root ("/train/f00000.bin")."""
        import urllib.parse

        return urllib.parse.unquote(url[len(self.source.url):])


class SourceProcess:
    """A SlowSource in its own process (``python -m shipyard.data.slow_source``), so serving the bytes does
    not take the benchmark's GIL; its counters are read over HTTP (``/_stats``, ``/_reset``)."""

    def __init__(self, root: Path, latency_ms: float, bandwidth: int) -> None:
        self.log = root.parent / "slow-source.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shipyard.data.slow_source", str(root), "--latency-ms", str(latency_ms),
                 "--bandwidth", str(bandwidth)], stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
        line = self.process.stdout.readline()
        if " at http://" not in line:
            self.stop()
            raise RuntimeError(f"SlowSource did not start: {line!r} {self.log.read_text(errors='replace')[-2000:]}")
        self.url = line.split(" at ")[1].split()[0]

    def stats(self) -> dict[str, Any]:
        from shipyard.data.slow_source import fetch_stats

        return fetch_stats(self.url)

    def reset_stats(self) -> None:
        from shipyard.data.slow_source import fetch_stats

        fetch_stats(self.url, reset=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SourceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def generate(profile: Profile, root: Path) -> tuple[dict[str, str], list[str], int]:
    """Random (incompressible) files under root/train and a parquet table under root/table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(8)
    (root / "train").mkdir(parents=True)
    digests = {}
    for index in range(profile.files):
        data = rng.bytes(profile.file_size)
        (root / "train" / f"f{index:05d}.bin").write_bytes(data)
        digests[f"/train/f{index:05d}.bin"] = hashlib.sha256(data).hexdigest()
    (root / "table").mkdir()
    rows = profile.parquet_file_size // (4 * 8)
    names, size = [], 0
    for index in range(profile.parquet_files):
        table = pa.table({"id": np.arange(index * rows, (index + 1) * rows, dtype=np.int64),
                          "a": rng.random(rows), "b": rng.random(rows), "c": rng.standard_normal(rows)})
        path = root / "table" / f"part-{index}.parquet"
        pq.write_table(table, path, compression="none", use_dictionary=False, row_group_size=rows // 4)
        names.append(f"/table/{path.name}")
        size += path.stat().st_size
    return digests, names, size


def make_dataset(bench: Bench, home: Path, mount_url: str, *, name: str = DATASET, quota: int | None = None,
                 block_size: int | None = None, eviction: str | None = None, mounts: list[dict] | None = None):
    """A Dataset (+ CacheRuntime when cache settings are given) as Fluid documents -> DatasetConfig, saved."""
    from shipyard.data.spec import DatasetConfig

    dataset = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
               "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"mounts": mounts or [{"mountPoint": mount_url, "name": "src", "path": "/"}]}}
    runtime = None
    if quota is not None or block_size is not None or eviction is not None:
        options: dict[str, str] = {}
        if block_size is not None:
            options["blockSize"] = str(block_size)
        if eviction is not None:
            options["evictionPolicy"] = eviction
        spec: dict[str, Any] = {"runtimeClassName": "shipyard", "options": options}
        if quota is not None:
            spec["worker"] = {"tieredStore": {"levels": [{"emptyDir": {"quota": str(quota)},
                                                          "high": "0.95", "low": "0.7"}]}}
        runtime = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "CacheRuntime",
                   "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
    config = DatasetConfig.from_documents(dataset, runtime, home=home)
    config.save()
    return config


def open_cache(name: str = DATASET):
    """Open a dataset by name, the way a training script would (SHIPYARD_HOME from the environment)."""
    from shipyard.data.engine import DatasetCache

    return DatasetCache.open(name, namespace=NAMESPACE)


def engine_stats(cache) -> dict[str, Any]:
    stats = cache.stats()
    out = {key: getattr(stats, key) for key in ("hit_bytes", "miss_bytes", "hits", "misses", "ufs_requests",
                                                 "ufs_bytes", "evictions", "rejected", "corrupt_blocks",
                                                 "cached_bytes", "capacity_bytes", "hit_ratio")}
    out["cache_states"] = stats.cache_states()
    return out


def source_counters(bench: Bench) -> dict[str, Any]:
    stats = bench.source.stats()
    return {key: stats[key] for key in ("requests", "gets", "heads", "range_gets", "listings", "bytes_sent",
                                        "fetches")}


def single_stream_epoch(read: Callable[[str], bytes], paths: list[str], expected: int) -> tuple[float, list[float]]:
    """Read every path in order, one at a time; (seconds, per-file latencies)."""
    latencies = []
    started = time.perf_counter()
    for path in paths:
        begun = time.perf_counter()
        data = read(path)
        latencies.append(time.perf_counter() - begun)
        if len(data) != expected:
            raise RuntimeError(f"{path}: read {len(data)} bytes, expected {expected}")
    return time.perf_counter() - started, latencies


def verify(bench: Bench, cache, entries) -> int:
    """How many files read through the cache differ (sha256) from the files on disk."""
    return sum(hashlib.sha256(cache.read(e.path)).hexdigest() != bench.digests[bench.source_path(e.url)]
               for e in entries)


def ranges_epoch(cache, paths: list[str], size: int, concurrency: int, batch: int = 64) -> float:
    """Read every path in order with read_ranges (``concurrency`` streams), in batches to bound memory."""
    started = time.perf_counter()
    for offset in range(0, len(paths), batch):
        chunk = paths[offset:offset + batch]
        for path, data in zip(chunk, cache.read_ranges([(p, 0, size) for p in chunk], max_concurrency=concurrency)):
            if len(data) != size:
                raise RuntimeError(f"{path}: read {len(data)} bytes, expected {size}")
    return time.perf_counter() - started


def baseline(bench: Bench) -> float | None:
    record = bench.results.get("B1")
    return record.epoch_seconds if record and not record.error else None


def speedup_check(bench: Bench, scenario: str, seconds: float | None, factor: float, label: str) -> Check:
    base = baseline(bench)
    if base is None or not seconds:
        return Check(scenario, f"{label} ≥ {factor:g}× faster than B1", "B1 not measured", None)
    ratio = base / seconds
    return Check(scenario, f"{label} ≥ {factor:g}× faster than B1",
                 f"{ratio:.2f}× ({seconds:.2f} s vs {base:.2f} s)", ratio >= factor)


# ---------------------------------------------------------------------------------------------
# scenarios


def b1(bench: Bench) -> tuple[Record, list[Check]]:
    import fsspec

    p = bench.profile
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    urls = sorted(fs.find(bench.train_url))
    if len(urls) != p.files:
        raise RuntimeError(f"the source lists {len(urls)} files under {bench.train_url}, expected {p.files}")
    bench.source.reset_stats()
    seconds, latencies = single_stream_epoch(fs.cat_file, urls, p.file_size)
    src = source_counters(bench)

    home = bench.fresh_home("b1-cache")
    make_dataset(bench, home, bench.train_url)
    cache = open_cache()
    try:
        bench.source.reset_stats()
        listed = time.perf_counter()
        entries = cache.list("/")
        list_seconds = time.perf_counter() - listed
        list_src = source_counters(bench)
        paths = sorted(e.path for e in entries)
        cache.reset_stats()
        bench.source.reset_stats()
        cache_seconds, cache_latencies = single_stream_epoch(cache.read, paths, p.file_size)
        cache.flush()
        cache_src, cache_engine = source_counters(bench), engine_stats(cache)
    finally:
        cache.close()
    model = p.files * (p.latency_ms / 1000 + p.file_size / p.bandwidth)
    record = Record("B1", TITLES["B1"], epoch_seconds=round(seconds, 3), MBps=mbps(p.total, seconds),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"], cache_hit_ratio=0.0,
                    p99_ms=ms(latencies, 0.99),
                    params={"reader": "fsspec http cat_file, one file at a time, sorted order",
                            "expected_seconds_model": round(model, 2)},
                    extra={"p50_ms": ms(latencies, 0.5), "source": src,
                           "cache_cold_single_stream": {
                               "epoch_seconds": round(cache_seconds, 3), "MBps": mbps(p.total, cache_seconds),
                               "p50_ms": ms(cache_latencies, 0.5), "p99_ms": ms(cache_latencies, 0.99),
                               "ufs_requests": cache_src["requests"], "ufs_bytes": cache_src["bytes_sent"],
                               "source": cache_src, "engine": cache_engine,
                               "list_seconds": round(list_seconds, 3), "list_source": list_src}})
    checks = [Check("B1", "listing the dataset (DatasetCache.list) takes ≤ 1 s (info)",
                    f"{list_seconds:.2f} s, {list_src['requests']} source requests "
                    f"({list_src['heads']} HEAD, {list_src['listings']} listings)", list_seconds <= 1.0,
                    informational=True),
              Check("B1", "cache-path cold single stream costs ≤ 1.25× naive (info)",
                    f"{cache_seconds / seconds:.2f}× ({cache_seconds:.2f} s vs {seconds:.2f} s)",
                    cache_seconds <= 1.25 * seconds, informational=True),
              Check("B1", "engine's ufs_bytes = bytes the source sent (cold single stream; info)",
                    f"{cache_engine['ufs_bytes']} vs {cache_src['bytes_sent']}",
                    cache_engine["ufs_bytes"] == cache_src["bytes_sent"], informational=True)]
    return record, checks


def torch_epoch(cache, paths: list[str], size: int, prefetch: int) -> tuple[float, list[float], dict[str, Any]]:
    """One epoch through CachedDataset.loader() (sampler order = sorted paths); (seconds, per-sample waits,
    the dataset's loader_stats)."""
    from shipyard.data.torch import CachedDataset

    dataset = CachedDataset(cache, prefetch=prefetch)
    if dataset.paths != paths:
        raise RuntimeError(f"CachedDataset lists {len(dataset.paths)} files, the cache {len(paths)}")
    try:
        loader = dataset.loader(batch_size=None)  # no collation: each item is one file's bytes
        waits = []
        started = time.perf_counter()
        asked = started
        for item in loader:
            now = time.perf_counter()
            waits.append(now - asked)
            if len(item) != size:
                raise RuntimeError(f"a sample has {len(item)} bytes, expected {size}")
            asked = time.perf_counter()
        seconds = time.perf_counter() - started
        return seconds, waits, dataset.loader_stats()
    finally:
        dataset.close()


def b2(bench: Bench) -> tuple[Record, list[Check]]:
    p = bench.profile
    home = bench.fresh_home("b2")
    make_dataset(bench, home, bench.train_url)
    cache = open_cache()
    try:
        paths = sorted(e.path for e in cache.list("/"))
        cache.reset_stats()
        bench.source.reset_stats()
        loader_stats = None
        try:
            seconds, waits, loader_stats = torch_epoch(cache, paths, p.file_size, p.prefetch)
            how = f"CachedDataset(prefetch={p.prefetch}).loader(batch_size=None), sorted order"
            fallback = None
        except ImportError as error:
            fallback = f"shipyard.data.torch not importable ({error}); used DatasetCache.read_ranges"
            log(f"B2: {fallback}")
            bench.source.reset_stats()
            seconds, waits = ranges_epoch(cache, paths, p.file_size, p.prefetch), []
            how = f"DatasetCache.read_ranges, max_concurrency={p.prefetch}, batches of 64"
        cache.flush()
        src, eng = source_counters(bench), engine_stats(cache)
    finally:
        cache.close()
    record = Record("B2", TITLES["B2"], epoch_seconds=round(seconds, 3), MBps=mbps(p.total, seconds),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"], cache_hit_ratio=eng["hit_ratio"],
                    p99_ms=ms(waits, 0.99), params={"reader": how, "prefetch": p.prefetch},
                    extra={"p50_ms": ms(waits, 0.5), "source": src, "engine": eng, "fallback": fallback,
                           "loader_stats": loader_stats})
    bound = p.total / p.bandwidth
    checks = [speedup_check(bench, "B2", seconds, 2.5, "cold epoch with prefetch"),
              Check("B2", "bandwidth-bound: within 2× of size ÷ bandwidth (info)",
                    f"{seconds:.2f} s vs {bound:.2f} s", seconds <= 2 * bound, informational=True)]
    return record, checks


def b3(bench: Bench) -> tuple[Record, list[Check]]:
    p = bench.profile
    home = bench.fresh_home("b3")
    make_dataset(bench, home, bench.train_url)
    cache = open_cache()
    try:
        entries = sorted(cache.list("/"), key=lambda e: e.path)
        paths = [e.path for e in entries]
        cold = ranges_epoch(cache, paths, p.file_size, p.prefetch)
        cache.flush()
        cache.reset_stats()
        bench.source.reset_stats()
        seconds, latencies = single_stream_epoch(cache.read, paths, p.file_size)
        cache.flush()
        src, eng = source_counters(bench), engine_stats(cache)
        corrupt = verify(bench, cache, entries)
    finally:
        cache.close()
    ratio = eng["hit_ratio"]
    record = Record("B3", TITLES["B3"], epoch_seconds=round(seconds, 4), MBps=mbps(p.total, seconds),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"], cache_hit_ratio=ratio,
                    p99_ms=ms(latencies, 0.99),
                    params={"reader": "DatasetCache.read, one file at a time, sorted order",
                            "first_pass": f"read_ranges, max_concurrency={p.prefetch}"},
                    extra={"p50_ms": ms(latencies, 0.5), "first_pass_seconds": round(cold, 3), "source": src,
                           "engine": eng, "files_differing_from_source": corrupt})
    checks = [speedup_check(bench, "B3", seconds, 10, "warm epoch"),
              Check("B3", "hit ratio ≥ 0.99", "None (no reads counted)" if ratio is None else f"{ratio:.4f}",
                    ratio is not None and ratio >= 0.99),
              Check("B3", "0 source requests", str(src["requests"]), src["requests"] == 0),
              Check("B3", "every file equals the source (sha256)", f"{corrupt} differ", corrupt == 0)]
    return record, checks


def b4(bench: Bench) -> tuple[Record, list[Check]]:
    p = bench.profile
    home = bench.fresh_home("b4")
    make_dataset(bench, home, bench.train_url)
    cache = open_cache()
    try:
        paths = sorted(e.path for e in cache.list("/"))
        bench.source.reset_stats()
        started = time.perf_counter()
        result = cache.load()
        load_seconds = time.perf_counter() - started
        cache.flush()
        load_src = source_counters(bench)
        states = cache.stats().cache_states()
        cache.reset_stats()
        bench.source.reset_stats()
        seconds, latencies = single_stream_epoch(cache.read, paths, p.file_size)
        cache.flush()
        src, eng = source_counters(bench), engine_stats(cache)
    finally:
        cache.close()
    percentage = states.get("cachedPercentage")
    try:
        percent_value = float(str(percentage).rstrip("%"))
    except ValueError:
        percent_value = -1.0
    record = Record("B4", TITLES["B4"], epoch_seconds=round(seconds, 4), MBps=mbps(p.total, seconds),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"], cache_hit_ratio=eng["hit_ratio"],
                    p99_ms=ms(latencies, 0.99),
                    params={"load": "DatasetCache.load() (default parallelism)",
                            "reader": "DatasetCache.read, one file at a time"},
                    extra={"load_seconds": round(load_seconds, 3), "load_MBps": mbps(p.total, load_seconds),
                           "load_result": {k: v for k, v in vars(result).items()} if hasattr(result, "__dict__")
                           else str(result), "load_source": load_src, "cache_states_after_load": states,
                           "p50_ms": ms(latencies, 0.5), "source": src, "engine": eng})
    b2_record = bench.results.get("B2")
    checks = [Check("B4", "cachedPercentage 100% after load", str(percentage), percent_value >= 99.95),
              Check("B4", "0 source requests in the epoch after load", str(src["requests"]), src["requests"] == 0),
              speedup_check(bench, "B4", load_seconds, 2.5, "load (info)"),
              speedup_check(bench, "B4", seconds, 10, "epoch after load (info)")]
    checks[2].informational = checks[3].informational = True
    if b2_record and b2_record.epoch_seconds:
        checks.append(Check("B4", "load time within 1.5× of the B2 prefetch epoch (info)",
                            f"{load_seconds:.2f} s vs {b2_record.epoch_seconds:.2f} s",
                            load_seconds <= 1.5 * b2_record.epoch_seconds, informational=True))
    return record, checks


def b5(bench: Bench) -> tuple[Record, list[Check]]:
    p = bench.profile
    quota = p.total // 2
    block = min(p.file_size, 4 * MiB)
    runs: dict[str, dict[str, Any]] = {}
    for policy in ("lru", "scan-resistant"):
        home = bench.fresh_home(f"b5-{policy}")
        make_dataset(bench, home, bench.train_url, quota=quota, block_size=block, eviction=policy)
        cache = open_cache()
        try:
            paths = sorted(e.path for e in cache.list("/"))
            epochs = []
            for epoch in (1, 2):
                cache.reset_stats()
                bench.source.reset_stats()
                seconds = ranges_epoch(cache, paths, p.file_size, p.prefetch, batch=p.prefetch)
                cache.flush()
                src, eng = source_counters(bench), engine_stats(cache)
                # What the source saw is the ground truth the engine's ratio should agree with.
                truth = 1 - min(src["bytes_sent"], p.total) / p.total
                epochs.append({"epoch": epoch, "seconds": round(seconds, 3), "hit_ratio": eng["hit_ratio"],
                               "source_hit_ratio": round(truth, 4), "source": src, "engine": eng})
                log(f"B5 {policy} epoch {epoch}: {seconds:.2f} s, hit ratio {eng['hit_ratio']}, "
                    f"source-side {truth:.3f}, cached {eng['cached_bytes'] / MiB:.1f} MiB, "
                    f"evictions {eng['evictions']}, rejected {eng['rejected']}")
        finally:
            cache.close()
        runs[policy] = {"epochs": epochs}
    sr, lru = runs["scan-resistant"]["epochs"][1], runs["lru"]["epochs"][1]
    record = Record("B5", TITLES["B5"], epoch_seconds=sr["seconds"], MBps=mbps(p.total, sr["seconds"]),
                    ufs_requests=sr["source"]["requests"], ufs_bytes=sr["source"]["bytes_sent"],
                    cache_hit_ratio=sr["hit_ratio"],
                    params={"quota_bytes": quota, "block_size": block, "watermarks": "high 0.95, low 0.7",
                            "reader": f"read_ranges in order, batches of {p.prefetch}, {p.prefetch} streams",
                            "headline": "scan-resistant epoch 2"},
                    extra=runs)

    def fmt(value: float | None) -> str:
        return "None" if value is None else f"{value:.3f}"

    checks = [Check("B5", "scan-resistant: epoch-2 hit ratio ≥ 0.45",
                    f"{fmt(sr['hit_ratio'])} (source-side {sr['source_hit_ratio']:.3f})",
                    sr["hit_ratio"] is not None and sr["hit_ratio"] >= 0.45),
              Check("B5", "lru: epoch-2 hit ratio ≈ 0, ≤ 0.10 (reproduces Alluxio #10322; info)",
                    f"{fmt(lru['hit_ratio'])} (source-side {lru['source_hit_ratio']:.3f})",
                    lru["hit_ratio"] is not None and lru["hit_ratio"] <= 0.10, informational=True)]
    for policy, run in runs.items():
        for epoch in run["epochs"]:
            if epoch["hit_ratio"] is not None and abs(epoch["hit_ratio"] - epoch["source_hit_ratio"]) > 0.02:
                checks.append(Check("B5", f"{policy} epoch {epoch['epoch']}: engine hit ratio agrees with the "
                                    "source's byte count (±0.02; info)",
                                    f"{epoch['hit_ratio']:.3f} vs {epoch['source_hit_ratio']:.3f}", False,
                                    informational=True))
    return record, checks


# -- B6: four processes


def b6_worker(source_root: str, concurrency: int) -> int:
    """Child: open the dataset by name, wait for "go", read every file, compare sha256 with the disk."""
    import urllib.parse

    cache = open_cache()
    entries = sorted(cache.list("/"), key=lambda e: e.path)
    print(json.dumps({"ready": True, "files": len(entries)}), flush=True)
    sys.stdin.readline()
    started = time.time()
    mismatches, total = [], 0
    batch = 32
    for offset in range(0, len(entries), batch):
        chunk = entries[offset:offset + batch]
        datas = cache.read_ranges([(e.path, 0, e.size) for e in chunk], max_concurrency=concurrency)
        for entry, data in zip(chunk, datas):
            total += len(data)
            local = Path(source_root) / urllib.parse.unquote(urllib.parse.urlsplit(entry.url).path).lstrip("/")
            if hashlib.sha256(data).digest() != hashlib.sha256(local.read_bytes()).digest():
                mismatches.append(entry.path)
    ended = time.time()
    cache.flush()
    stats = cache.stats()
    cache.close()
    print(json.dumps({"start": started, "end": ended, "files": len(entries), "bytes": total,
                      "mismatches": mismatches, "corrupt_blocks": stats.corrupt_blocks,
                      "ufs_requests": stats.ufs_requests, "hits": stats.hits, "misses": stats.misses,
                      "hit_bytes": stats.hit_bytes, "miss_bytes": stats.miss_bytes}), flush=True)
    return 0


def run_workers(commands: list[list[str]], before_go: Callable[[], None], timeout: float = 300
                ) -> tuple[list[dict[str, Any]], float]:
    """Start the workers, wait until each prints its ready line, call before_go, release them all at
    once; (their result lines, seconds from "go" to the last result)."""
    errors = [tempfile.TemporaryFile() for _ in commands]  # files, not pipes: a chatty worker never blocks
    processes = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=error,
                                  text=True, cwd=REPO) for cmd, error in zip(commands, errors)]

    def stderr_of(process: subprocess.Popen) -> str:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        handle = errors[processes.index(process)]
        handle.seek(0)
        return handle.read().decode(errors="replace")[-3000:]

    try:
        for process in processes:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker exited before it was ready:\n{stderr_of(process)}")
        before_go()
        go = time.perf_counter()
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker failed:\n{stderr_of(process)}")
            results.append(json.loads(line))
        seconds = time.perf_counter() - go
        for process in processes:
            process.stdin.close()
            if process.wait(timeout=timeout) != 0:
                raise RuntimeError(f"a worker exited {process.returncode}:\n{stderr_of(process)}")
        return results, seconds
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in errors:
            handle.close()


def b6(bench: Bench) -> tuple[Record, list[Check]]:
    p = bench.profile
    block = min(128 * KiB, p.file_size)
    home = bench.fresh_home("b6")
    make_dataset(bench, home, bench.train_url, block_size=block)
    blocks_per_file = math.ceil(p.file_size / block)
    unique_expected = p.files * blocks_per_file
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "b6", "--source-root",
               str(bench.source_root), "--concurrency", "8"]
    results, seconds = run_workers([command] * 4, bench.source.reset_stats)
    stats = bench.source.stats()
    counts: dict[tuple[str, int], int] = {}
    for path, spans in stats["ranges"].items():
        for start, end in spans:
            for index in range(start // block, (end - 1) // block + 1):
                counts[(path, index)] = counts.get((path, index), 0) + 1
    block_fetches, unique = sum(counts.values()), len(counts)
    duplicated = sorted(f"{path}#{index}×{n}" for (path, index), n in counts.items() if n > 1)
    mismatches = sum(len(r["mismatches"]) for r in results)
    corrupt = sum(r["corrupt_blocks"] for r in results)
    read_bytes = sum(r["bytes"] for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    src = source_counters(bench)
    hit_bytes, miss_bytes = sum(r["hit_bytes"] for r in results), sum(r["miss_bytes"] for r in results)
    record = Record("B6", TITLES["B6"], epoch_seconds=round(span, 3), MBps=mbps(read_bytes, span),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"],
                    cache_hit_ratio=round(hit_bytes / (hit_bytes + miss_bytes), 4) if hit_bytes + miss_bytes else None,
                    params={"processes": 4, "block_size": block, "reader": "read_ranges, 8 streams per process, "
                            "same order in every process", "unique_blocks": unique_expected},
                    extra={"block_fetches": block_fetches, "unique_blocks_fetched": unique,
                           "duplicated_blocks": duplicated[:20], "mismatched_files": mismatches,
                           "corrupt_blocks": corrupt, "seconds_go_to_last_result": round(seconds, 3),
                           "source_side_hit_ratio": round(1 - src["bytes_sent"] / read_bytes, 4) if read_bytes else None,
                           "workers": results, "source": src})
    checks = [Check("B6", "source block fetches = unique blocks (single-flight)",
                    f"{block_fetches} fetches, {unique} unique of {unique_expected}",
                    block_fetches == unique == unique_expected),
              Check("B6", "0 corrupted reads (sha256 vs the files, 4 processes)",
                    f"{mismatches} mismatched files, {corrupt} corrupt blocks", mismatches == 0 and corrupt == 0)]
    return record, checks


# -- B7: Flight vs the source


def b7_direct_worker(url: str, files: list[str]) -> int:
    """Child: read the parquet table straight from the source (fsspec http + pyarrow), like pandas would."""
    import fsspec
    import pyarrow.parquet as pq

    fs = fsspec.filesystem("http", skip_instance_cache=True)
    fs.info(url + files[0])  # warm up the HTTP session outside the timed part
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = time.time()
    rows = nbytes = 0
    for name in files:
        with fs.open(url + name, "rb") as handle:
            table = pq.read_table(handle)
        rows += table.num_rows
        nbytes += table.nbytes
    ended = time.time()
    print(json.dumps({"start": started, "end": ended, "rows": rows, "arrow_bytes": nbytes}), flush=True)
    return 0


def b7_flight_worker(location: str) -> int:
    """Child: read the whole table from the Flight server (its files' endpoints in parallel)."""
    from shipyard.data.flight import read_table

    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = time.time()
    table = read_table(location, "table", "/", namespace=NAMESPACE)
    ended = time.time()
    print(json.dumps({"start": started, "end": ended, "rows": table.num_rows, "arrow_bytes": table.nbytes}),
          flush=True)
    return 0


def b7_server(location: str) -> int:
    """Child: the Flight server over $SHIPYARD_HOME's datasets; prints a line once it listens."""
    from shipyard.data.flight import serve_flight

    serve_flight(location, ready=lambda server: print(json.dumps({"ready": server.location}), flush=True))
    return 0


def b7(bench: Bench) -> tuple[Record, list[Check]]:
    """Four reader processes: first via a fresh Flight server (cold: the server reads the table through
    an empty cache), then via the same server again (warm), then each straight from the source."""
    import pyarrow.parquet as pq

    home = bench.fresh_home("b7")
    make_dataset(bench, home, bench.source.url + "/table", name="table")
    rows = sum(pq.ParquetFile(bench.source_root / n.lstrip("/")).metadata.num_rows for n in bench.table_files)
    socket_path = Path(tempfile.mkdtemp(prefix="sy-b7-")) / "flight.sock"
    location = f"grpc+unix://{socket_path}"
    script = str(Path(__file__).resolve())
    server_log = bench.work / "b7-flight-server.log"
    with server_log.open("wb") as handle:
        server = subprocess.Popen([sys.executable, script, "--worker", "b7-server", "--location", location],
                                  stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
    runs: dict[str, dict[str, Any]] = {}

    def measure(label: str, command: list[str]) -> dict[str, Any]:
        results, seconds = run_workers([command] * 4, bench.source.reset_stats)
        bad = [r for r in results if r["rows"] != rows]
        if bad:
            raise RuntimeError(f"B7 {label}: a reader got {bad[0]['rows']} rows, expected {rows}")
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        run = {"seconds": round(span, 3), "MBps": mbps(4 * bench.table_bytes, span),
               "per_reader_seconds": [round(r["end"] - r["start"], 3) for r in results],
               "seconds_go_to_last_result": round(seconds, 3), "source": source_counters(bench)}
        log(f"B7 {label}: 4 readers in {span:.2f} s, {run['MBps']} MB/s aggregate, "
            f"{run['source']['requests']} source requests, {run['source']['bytes_sent'] / 1e6:.1f} MB from the source")
        return run

    try:
        line = server.stdout.readline()
        if not line:
            server.wait(timeout=30)
            raise RuntimeError(f"the Flight server did not start:\n{server_log.read_text(errors='replace')[-3000:]}")
        flight_cmd = [sys.executable, script, "--worker", "b7-flight", "--location", location]
        runs["flight_cold"] = measure("via Flight, cold server and cache", flight_cmd)
        runs["flight"] = measure("via Flight, warm", flight_cmd)
        from shipyard.data.flight import server_stats

        server_counters = server_stats(location)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(socket_path.parent, ignore_errors=True)
    runs["direct"] = measure("each reader from the source", [
        sys.executable, script, "--worker", "b7-direct", "--url", bench.source.url,
        "--files", ",".join(bench.table_files)])
    warm, cold, direct = runs["flight"], runs["flight_cold"], runs["direct"]
    record = Record("B7", TITLES["B7"], epoch_seconds=warm["seconds"], MBps=warm["MBps"],
                    ufs_requests=warm["source"]["requests"], ufs_bytes=warm["source"]["bytes_sent"],
                    params={"readers": 4, "table": f"{len(bench.table_files)} parquet files, "
                            f"{bench.table_bytes / MiB:.1f} MiB, {rows} rows", "location": "grpc+unix",
                            "MBps_basis": "4 × the table's parquet bytes ÷ (last reader's end − first reader's start)",
                            "direct_reader": "fsspec http open + pyarrow.parquet.read_table, file by file",
                            "flight_reader": "shipyard.data.flight.read_table (endpoints in parallel)"},
                    extra={**runs, "server_stats": server_counters})

    def ratio(run: dict[str, Any]) -> float:
        return run["MBps"] / direct["MBps"] if direct["MBps"] else float("inf")

    checks = [Check("B7", "Flight (warm) ≥ 3× the aggregate throughput of reading the source",
                    f"{ratio(warm):.2f}× ({warm['MBps']:.1f} vs {direct['MBps']:.1f} MB/s)", ratio(warm) >= 3),
              Check("B7", "Flight from a cold cache, 4 readers at once ≥ 2× the source (info)",
                    f"{ratio(cold):.2f}× ({cold['MBps']:.1f} vs {direct['MBps']:.1f} MB/s); the source sent "
                    f"{cold['source']['bytes_sent'] / 1e6:.1f} MB for a {bench.table_bytes / 1e6:.1f} MB table",
                    ratio(cold) >= 2, informational=True),
              Check("B7", "warm Flight readers cause 0 source requests", str(warm["source"]["requests"]),
                    warm["source"]["requests"] == 0)]
    return record, checks


# -- B8: a flow


def b8(bench: Bench) -> tuple[Record, list[Check]]:
    """migrate (the SlowSource table -> dataset "lake", a local folder) -> load lake -> DuckDB SQL over lake
    into dataset "report"; then the process again with the previous memo key (must be skipped)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from shipyard.data.engine import DatasetCache
    from shipyard.data.operations import Endpoint, ProcessSpec, run_load, run_migrate, run_process

    home = bench.fresh_home("b8")
    folders = {name: bench.work / "b8" / name for name in ("lake", "report")}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        make_dataset(bench, home, "", name=name, mounts=[{"mountPoint": str(folder), "name": name, "path": "/"}])
    lake, report = DatasetCache.open("lake"), DatasetCache.open("report")
    lines: list[str] = []
    steps: list[dict[str, Any]] = []
    sql = "SELECT count(*) AS n, sum(a) AS a_sum, max(id) AS max_id FROM input"

    def step(name: str, run: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = run()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 3), "files": result.files,
                      "bytes": result.bytes, "skipped": result.skipped, "message": result.message})
        log(f"B8 {name}: {result.message}")
        return result

    def spec(run: int) -> ProcessSpec:
        return ProcessSpec(command=["sql"], source=sql, env={}, input=lake, output=report, output_path="/",
                           workdir=bench.work / "b8" / f"process-{run}")

    try:
        bench.source.reset_stats()
        flow_started = time.perf_counter()
        step("migrate", lambda: run_migrate(Endpoint(uri=bench.source.url + "/table"), Endpoint(cache=lake, path="/"),
                                            log=lines.append))
        copied = {e.path: e.size for e in lake.list("/", refresh=True)}
        wanted = {"/" + n.rsplit("/", 1)[1]: (bench.source_root / n.lstrip("/")).stat().st_size
                  for n in bench.table_files}
        if copied != wanted:
            raise RuntimeError(f"migrate from {bench.source.url}/table left {len(copied)} file(s) in the target "
                               f"({', '.join(f'{k} {v} B' for k, v in sorted(copied.items())[:3])}), expected the "
                               f"{len(wanted)} parquet files ({', '.join(sorted(wanted)[:3])}, ...)")
        step("load", lambda: run_load(lake, None, log=lines.append))
        first = step("process", lambda: run_process(spec(1), previous_key=None, log=lines.append))
        flow_seconds = time.perf_counter() - flow_started
        src = source_counters(bench)
        again = step("process (re-run, memoized)",
                     lambda: run_process(spec(2), previous_key=first.details.get("memoKey"), log=lines.append))
        migrate_again = step("migrate (re-run)", lambda: run_migrate(
            Endpoint(uri=bench.source.url + "/table"), Endpoint(cache=lake, path="/"), log=lines.append))
        result = pq.read_table(report.open_file("/result.parquet")).to_pylist()[0]
        lake_stats = engine_stats(lake)
    finally:
        lake.close()
        report.close()
    tables = [pq.read_table(bench.source_root / name.lstrip("/")) for name in bench.table_files]
    expected = {"n": sum(t.num_rows for t in tables),
                "a_sum": sum(pc.sum(t["a"]).as_py() for t in tables),
                "max_id": max(pc.max(t["id"]).as_py() for t in tables)}
    correct = (result["n"] == expected["n"] and result["max_id"] == expected["max_id"]
               and math.isclose(result["a_sum"], expected["a_sum"], rel_tol=1e-9))
    record = Record("B8", TITLES["B8"], epoch_seconds=round(flow_seconds, 3), MBps=mbps(bench.table_bytes, flow_seconds),
                    ufs_requests=src["requests"], ufs_bytes=src["bytes_sent"], cache_hit_ratio=lake_stats["hit_ratio"],
                    params={"sql": sql, "from": "SlowSource /table (http)", "datasets": ["lake", "report"]},
                    extra={"steps": steps, "result": result, "expected": expected, "log_tail": lines[-15:]})
    checks = [Check("B8", "steps ran in order: migrate → load → process", " → ".join(
                        f"{s['step']} {s['seconds']:.2f} s" for s in steps[:3]),
                    [s["step"] for s in steps[:3]] == ["migrate", "load", "process"]),
              Check("B8", "the SQL result equals the table's (count, sum, max)",
                    f"n={result['n']} a_sum={result['a_sum']:.4f} max_id={result['max_id']}", correct),
              Check("B8", "memoized re-run skipped", f"skipped={again.skipped} ({steps[3]['seconds']:.2f} s)",
                    bool(again.skipped)),
              Check("B8", "migrate re-run copies nothing (incremental; info)",
                    f"{migrate_again.files} files copied", migrate_again.files == 0, informational=True)]
    return record, checks


SCENARIOS: dict[str, Callable[[Bench], tuple[Record, list[Check]]]] = {
    "B1": b1, "B2": b2, "B3": b3, "B4": b4, "B5": b5, "B6": b6, "B7": b7, "B8": b8}


# ---------------------------------------------------------------------------------------------
# output


def fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def results_table(records: list[Record]) -> list[str]:
    lines = ["| # | Scenario | Epoch s | MB/s | Source requests | Source MB | Hit ratio | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.error:
            lines.append(f"| {r.scenario} | {r.title} | error: {one_line(r.error)[:160]} | | | | | |")
            continue
        busy = (r.extra.get("other_cpu_cores") or 0) > OTHER_LOAD_MARK
        lines.append(f"| {r.scenario} | {r.title}{' ⚠' if busy else ''} | {fmt_num(r.epoch_seconds, 3)} | {fmt_num(r.MBps, 1)} | "
                     f"{fmt_num(r.ufs_requests)} | {fmt_num(None if r.ufs_bytes is None else r.ufs_bytes / 1e6, 1)} | "
                     f"{fmt_num(r.cache_hit_ratio, 3)} | {fmt_num(r.p99_ms, 2)} |")
        for label, row in extra_rows(r):
            lines.append(f"| | ↳ {label} | {row} |")
    return lines


def extra_rows(r: Record) -> list[tuple[str, str]]:
    """Secondary measurements shown under a scenario's row."""
    rows = []
    if r.scenario == "B1" and "cache_cold_single_stream" in r.extra:
        c = r.extra["cache_cold_single_stream"]
        rows.append(("same single stream through a cold cache",
                     f"{fmt_num(c['epoch_seconds'], 3)} | {fmt_num(c['MBps'], 1)} | {fmt_num(c['ufs_requests'])} | "
                     f"{fmt_num(c['ufs_bytes'] / 1e6, 1)} | {fmt_num(c['engine']['hit_ratio'], 3)} | "
                     f"{fmt_num(c['p99_ms'], 2)}"))
    if r.scenario == "B4" and "load_seconds" in r.extra:
        s = r.extra["load_source"]
        rows.append(("DatasetCache.load()", f"{fmt_num(r.extra['load_seconds'], 3)} | {fmt_num(r.extra['load_MBps'], 1)} | "
                     f"{fmt_num(s['requests'])} | {fmt_num(s['bytes_sent'] / 1e6, 1)} | — | —"))
    if r.scenario == "B5":
        for policy in ("lru", "scan-resistant"):
            for e in r.extra.get(policy, {}).get("epochs", []):
                rows.append((f"{policy}, epoch {e['epoch']}",
                             f"{fmt_num(e['seconds'], 3)} | {fmt_num(mbps(r.params.get('quota_bytes', 0) * 2, e['seconds']), 1)} | "
                             f"{fmt_num(e['source']['requests'])} | {fmt_num(e['source']['bytes_sent'] / 1e6, 1)} | "
                             f"{fmt_num(e['hit_ratio'], 3)} | —"))
    if r.scenario == "B7":
        for label, key in (("each reader from the source", "direct"),
                           ("via Flight, first read (cold server and cache)", "flight_cold"),
                           ("via Flight, warm", "flight")):
            d = r.extra.get(key)
            if d:
                rows.append((label, f"{fmt_num(d['seconds'], 3)} | {fmt_num(d['MBps'], 1)} | "
                             f"{fmt_num(d['source']['requests'])} | {fmt_num(d['source']['bytes_sent'] / 1e6, 1)} | — | —"))
    return rows


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def checks_table(checks: list[Check]) -> list[str]:
    lines = ["| # | Target | Measured | Result |", "|---|---|---|---|"]
    for c in checks:
        verdict = f"**{c.verdict}**" if not c.informational else c.verdict
        lines.append(f"| {c.scenario} | {one_line(c.target)} | {one_line(c.measured)} | {verdict} |")
    return lines


def markdown(run: dict[str, Any], records: list[Record], checks: list[Check]) -> str:
    p = run["profile"]
    env = run["environment"]
    head = [f"_Generated by `benchmarks/data_cache.py --profile {p['name']}` on {run['started']} "
            f"(took {run['seconds']:.0f} s; raw data: `{run['results_file']}`)._", "",
            f"Source: SlowSource (loopback HTTP) with {p['latency_ms']:g} ms per request and "
            f"{p['bandwidth'] / MiB:g} MiB/s shared by all connections; {p['files']} files × "
            f"{p['file_size'] // KiB} KiB ({p['files'] * p['file_size'] / MiB:.0f} MiB), parquet table "
            f"{p['parquet_files']} files ({run['table_bytes'] / MiB:.0f} MiB). Machine: {env['cpu_count']} cores, "
            f"Python {env['python']}, commit {env['commit']}.", ""]
    busy = [f"{r.scenario} ({r.extra['other_cpu_cores']:.2f})" for r in records
            if (r.extra.get("other_cpu_cores") or 0) > OTHER_LOAD_MARK]
    notes = ("Source requests and MB are SlowSource's own counters for the measured pass (every GET, HEAD and "
             "listing; the metadata listing before the pass is not counted). Hit ratio is the engine's, by bytes. "
             "p99 ms: per file (B1, B3, B4) or per sample waited for (B2).")
    if busy:
        notes += (f" ⚠: other processes used more than {OTHER_LOAD_MARK} of a core during the scenario "
                  f"({', '.join(busy)} cores); its numbers are less trustworthy.")
    body = head + results_table(records) + ["", notes, ""]
    body += checks_table(checks)
    failed = [c for c in checks if c.passed is False and not c.informational]
    body += ["", f"{len(failed)} of {sum(1 for c in checks if not c.informational)} targets failed."
             if failed else "Every target passed."]
    return "\n".join(body) + "\n"


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                        help="comma-separated, e.g. B1,B3 (B1 is added when a speedup target needs it)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    parser.add_argument("--doc", type=Path, help=f"replace the text between {DOC_START} and {DOC_END} in this "
                        "file (docs/performance.md) with the tables")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for data_cache-<timestamp>.json")
    parser.add_argument("--workdir", type=Path, help="where the source files and homes go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target fails")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--source-root", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        wanted = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in SCENARIOS]
        if unknown or not wanted:
            parser.error(f"--scenarios: expected a comma-separated subset of {','.join(ALL_SCENARIOS)}, "
                         f"got {args.scenarios!r}")
        if {"B2", "B3", "B4"} & set(wanted) and "B1" not in wanted:
            wanted.insert(0, "B1")
            log("adding B1: the B2/B3/B4 targets are speedups over it")
        args.wanted = [s for s in ALL_SCENARIOS if s in wanted]
    return args


def run_worker(args: argparse.Namespace) -> int:
    if args.worker == "b6":
        return b6_worker(args.source_root, args.concurrency)
    if args.worker == "b7-direct":
        return b7_direct_worker(args.url, args.files.split(","))
    if args.worker == "b7-flight":
        return b7_flight_worker(args.location)
    if args.worker == "b7-server":
        return b7_server(args.location)
    raise SystemExit(f"--worker: unknown worker {args.worker!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.doc:
        check_doc(args.doc, DOC_START, DOC_END)
    profile = PROFILES[args.profile]
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="shipyard-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    old_home = os.environ.get("SHIPYARD_HOME")
    records: list[Record] = []
    checks: list[Check] = []
    try:
        root = work / "source"
        if root.exists():
            shutil.rmtree(root)
        log(f"profile {profile.name}: generating {profile.files} × {profile.file_size // KiB} KiB and a "
            f"{profile.parquet_files}-file parquet table under {root}")
        digests, table_files, table_bytes = generate(profile, root)
        with SourceProcess(root, latency_ms=profile.latency_ms, bandwidth=profile.bandwidth) as source:
            bench = Bench(profile, work, root, source, digests, table_files, table_bytes)
            log(f"SlowSource at {source.url} ({profile.latency_ms:g} ms, {profile.bandwidth / MiB:g} MiB/s)")
            for name in args.wanted:
                log(f"{name}: {TITLES[name]}")
                begun = time.perf_counter()
                busy0, own0 = machine_busy_seconds(), own_cpu_seconds(source.process.pid)
                try:
                    record, found = SCENARIOS[name](bench)
                except Exception as error:  # noqa: BLE001 - a failing scenario is reported, the others still run
                    detail = traceback.format_exc()
                    log(f"{name} failed:\n{detail}")
                    record = Record(name, TITLES[name], error=f"{type(error).__name__}: {error}",
                                    extra={"traceback": detail})
                    found = [Check(name, TITLES[name], f"error: {type(error).__name__}: {error}"[:200], False)]
                wall = time.perf_counter() - begun
                other = (machine_busy_seconds() - busy0) - (own_cpu_seconds(source.process.pid) - own0)
                record.extra["scenario_seconds"] = round(wall, 2)
                # CPU other processes on the machine used meanwhile: the numbers of a busy scenario are less trustworthy
                record.extra["other_cpu_cores"] = round(max(0.0, other) / wall, 2) if wall > 0 else None
                bench.results[name] = record
                records.append(record)
                checks.extend(found)
                for check in found:
                    log(f"  {check.verdict}: {check.target}: {check.measured}")
    finally:
        if old_home is None:
            os.environ.pop("SHIPYARD_HOME", None)
        else:
            os.environ["SHIPYARD_HOME"] = old_home
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - started
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    results_file = args.results / f"data_cache-{stamp}.json"
    try:
        shown = results_file.relative_to(REPO)
    except ValueError:
        shown = results_file
    run = {"id": stamp, "started": started_at.isoformat(timespec="seconds"), "seconds": round(seconds, 1),
           "profile": asdict(profile), "table_bytes": table_bytes, "environment": environment(("fsspec", "aiohttp", "pyarrow", "duckdb", "torch", "numpy")),
           "results_file": str(shown), "scenarios": args.wanted}
    document = {**run, "records": [asdict(r) for r in records], "checks": [asdict(c) | {"verdict": c.verdict}
                                                                          for c in checks]}
    results_file.write_text(json.dumps(document, indent=1, default=str) + "\n")
    text = markdown(run, records, checks)
    print()
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        log(f"markdown written to {args.markdown}")
    if args.doc:
        write_doc(args.doc, text, DOC_START, DOC_END)
        log(f"{args.doc}: the section between {DOC_START} and {DOC_END} rewritten")
    log(f"results written to {results_file} ({seconds:.0f} s)")
    failed = [c for c in checks if c.passed is False and not c.informational]
    if failed and not args.no_fail:
        log(f"{len(failed)} target(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
