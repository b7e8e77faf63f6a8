"""A map-style PyTorch dataset over a cached Shipyard dataset, prefetching files in the sampler's order.

The sampler fixes an epoch's order, so the upcoming files can be read on a thread pool (file I/O
releases the GIL) while the model trains: ``CachedDataset.loader()`` (or ``PrefetchSampler`` around
any sampler or batch sampler) tells the dataset the order as indices are drawn, and the dataset keeps
up to ``prefetch`` reads in flight, never holding more than ``max_bytes_in_flight`` bytes of
read-but-not-consumed files. A consumed result is dropped at once; an index that was never
prefetched is read directly.

Worker processes (``num_workers > 0``): the sampler runs in the main process and DataLoader hands
each worker whole batches, so each worker prefetches only its own share: when a batch arrives, all
of its files are read concurrently (``__getitems__``). ``prefetch`` and ``max_bytes_in_flight`` are
totals, split evenly between the workers, so the memory bound holds for the whole loader. Each
worker opens its own ``DatasetCache`` lazily (the dataset pickles without it). With 2 cores, threads
in the main process (``num_workers=0``, the default) are the better choice for I/O-bound loading.

Counters live in a small shared-memory tensor (one row per process), so ``loader_stats()`` in the
main process sees what the workers did.
"""

from __future__ import annotations

import math
import multiprocessing.util
import os
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from shipyard.quantity import parse_quantity

if TYPE_CHECKING:  # pragma: no cover
    from shipyard.data.engine import DatasetCache

__all__ = ["CachedDataset", "PrefetchSampler", "raw_bytes"]

Decode = Callable[[bytes, str], Any]

_GLOB_CHARS = set("*?[")
_MAX_ROWS = 65                     # row 0: the main process; rows 1..64: DataLoader workers (id % 64)
# per-process counters, then a histogram of sample waits
_SAMPLES, _PREFETCHED, _DIRECT, _BYTES, _WAIT_NS, _FIRST_NS, _LAST_NS, _PEAK, _IN_FLIGHT = range(9)
_FIELDS = 9
_BUCKETS = 200                     # bucket 0: < 1 µs; bucket b: [1.1**(b-1), 1.1**b) µs, up to ~3 minutes
_RATIO = 1.1
_LOG_RATIO = math.log(_RATIO)


def raw_bytes(data: bytes, path: str) -> bytes:
    """The default ``decode``: the file's bytes as they are."""
    return data


@dataclass
class _Slot:
    """A prefetch of one index: its read, its accounted size, and how many draws still want it."""

    future: Future
    size: int
    uses: int = 1


class CachedDataset(Dataset):
    """Files of a cached dataset as samples: ``dataset[i] = decode(bytes of file i, its path)``.

    ``cache_or_name``: a ``DatasetCache`` or a dataset name (opened with ``DatasetCache.open``).
    ``paths``: ``None`` for every file; a folder (``"/train"``) or a glob (``"/train/*.bin"``);
    or a list of paths and globs. Items are the matching files, sorted by path.
    """

    def __init__(self, cache_or_name: DatasetCache | str, paths: str | Sequence[str] | None = None,
                 decode: Decode | None = None, *, namespace: str = "default", home: Path | None = None,
                 prefetch: int = 16, max_bytes_in_flight: int | str = 256 * 1024 * 1024) -> None:
        if decode is not None and not callable(decode):
            raise TypeError(f"decode: expected a callable (bytes, path) -> sample, got {decode!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch: expected an integer >= 0 (reads kept in flight), got {prefetch!r}")
        budget = int(parse_quantity(max_bytes_in_flight, "max_bytes_in_flight"))
        if budget <= 0:
            raise ValueError(f"max_bytes_in_flight: expected a positive size such as 256Mi, "
                             f"got {max_bytes_in_flight!r}")
        self.decode: Decode = decode or raw_bytes
        self.prefetch = prefetch
        self.max_bytes_in_flight = budget
        if isinstance(cache_or_name, str):
            from shipyard.data.engine import DatasetCache

            self._open_args: tuple[str, str, Path | None] | None = (cache_or_name, namespace, home)
            self._config = None
            cache = DatasetCache.open(cache_or_name, namespace=namespace, home=home)
            self._owns_cache = True
        elif hasattr(cache_or_name, "read") and hasattr(cache_or_name, "config"):
            self._open_args = None
            self._config = cache_or_name.config       # workers rebuild their own cache from it
            cache = cache_or_name
            self._owns_cache = False
        else:
            raise TypeError(f"cache_or_name: expected a DatasetCache or a dataset name, got {cache_or_name!r}")
        try:
            entries = _select(cache, paths)
            if not entries:
                raise ValueError(f"paths: no files match {paths!r} in dataset "
                                 f"{cache.config.namespace}/{cache.config.name}")
        except BaseException:
            if self._owns_cache:
                cache.close()
            raise
        self.paths: list[str] = [entry.path for entry in entries]
        self.sizes: list[int] = [int(entry.size) for entry in entries]
        # counters shared with worker processes (fork and spawn alike: torch shares the storage)
        self._stats = torch.zeros((_MAX_ROWS, _FIELDS + _BUCKETS), dtype=torch.int64).share_memory_()
        self._epochs: list[tuple[float, int]] = []
        self._epoch: dict[str, Any] | None = None
        self._reset_process_state(cache)

    # -- process-local state (rebuilt after fork or unpickling)

    def _reset_process_state(self, cache: DatasetCache | None) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._cache_obj = cache
        self._executor: ThreadPoolExecutor | None = None
        self._slots: dict[int, _Slot] = {}
        self._pending: deque[int] = deque()
        self._bytes_in_flight = 0
        self._sampler_active = False
        self._counters = self._stats.numpy()     # numpy view: cheap scalar updates on the shared memory
        info = torch.utils.data.get_worker_info()
        if info is None:
            self._row = 0
            self._max_inflight = self.prefetch
            self._budget = self.max_bytes_in_flight
        else:
            self._row = 1 + info.id % (_MAX_ROWS - 1)
            self._max_inflight = max(1, self.prefetch // info.num_workers) if self.prefetch else 0
            self._budget = max(1, self.max_bytes_in_flight // info.num_workers)

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():
            # a forked worker: the parent's cache handle (SQLite, locks) and threads are not ours
            self._reset_process_state(None)
        elif self._row == 0 and torch.utils.data.get_worker_info() is not None:
            # a spawned worker unpickles the dataset before DataLoader tells it its worker id
            self._reset_process_state(self._cache_obj)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_cache_obj", "_executor", "_slots", "_pending", "_counters", "_epoch"):
            state.pop(key, None)
        state["_owns_cache"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._epoch = None
        self._reset_process_state(None)

    @property
    def cache(self) -> DatasetCache:
        """This process's ``DatasetCache`` (opened lazily in worker processes)."""
        self._ensure_process()
        with self._lock:
            if self._cache_obj is None:
                from shipyard.data.engine import DatasetCache

                if self._config is not None:
                    self._cache_obj = DatasetCache(self._config)
                else:
                    name, namespace, home = self._open_args  # type: ignore[misc]
                    self._cache_obj = DatasetCache.open(name, namespace=namespace, home=home)
                self._owns_cache = True
                if torch.utils.data.get_worker_info() is not None:
                    # DataLoader workers end with os._exit (no atexit): close, and so flush the cache's
                    # buffered counters, from multiprocessing's exit hook instead
                    multiprocessing.util.Finalize(self, _close_quietly, args=(self._cache_obj,), exitpriority=10)
            return self._cache_obj

    def close(self) -> None:
        """Stop prefetching; close the cache if this dataset opened it."""
        with self._lock:
            self._abandon()
            executor, self._executor = self._executor, None
            cache = self._cache_obj if self._owns_cache and self._pid == os.getpid() else None
            self._cache_obj = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if cache is not None:
            cache.close()

    def __enter__(self) -> CachedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Dataset protocol

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        index = self._check_index(index)
        self._ensure_process()
        return self.decode(self._fetch(index), self.paths[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch (DataLoader calls this with auto-batching): its files are read concurrently."""
        indices = [self._check_index(i) for i in indices]
        self._ensure_process()
        with self._lock:
            if not self._sampler_active:   # a PrefetchSampler already scheduled these otherwise
                self._pending.extend(indices)
                self._pump()
        return [self.decode(self._fetch(i), self.paths[i]) for i in indices]

    def _check_index(self, index: int) -> int:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index: expected an integer, got {index!r}")
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index: {index} is out of range for a dataset of {n} files")
        return index % n

    # -- prefetching

    def _fetch(self, index: int) -> bytes:
        start = time.monotonic_ns()
        with self._lock:
            slot = self._slots.get(index)
            if slot is None:
                try:   # it is read now, so it must not be fetched later for nobody
                    self._pending.remove(index)
                except ValueError:
                    pass
        data: bytes | None = None
        if slot is not None:
            try:
                data = slot.future.result()
            except CancelledError:
                data = None
            finally:
                with self._lock:
                    self._release(index, slot)
        prefetched = data is not None
        if data is None:
            data = self._read(index)
        self._record(start, len(data), prefetched)
        return data

    def _read(self, index: int) -> bytes:
        return self.cache.read(self.paths[index])

    def _schedule(self, indices: Iterable[int]) -> None:
        """The sampler's upcoming indices, in order (main process only)."""
        self._ensure_process()
        with self._lock:
            self._pending.extend(indices)
            self._pump()

    def _pump(self) -> None:
        """Start reads from the head of the order while the count and byte budgets allow (lock held)."""
        counters = self._counters[self._row]
        while self._pending and len(self._slots) < self._max_inflight:
            index = self._pending[0]
            slot = self._slots.get(index)
            if slot is not None:          # drawn again while still held: one read serves both
                slot.uses += 1
                self._pending.popleft()
                continue
            size = self.sizes[index]
            if size > self._budget:       # could never fit: read directly when asked for
                self._pending.popleft()
                continue
            if self._bytes_in_flight + size > self._budget:
                break                     # keep the order: wait for consumption to free budget
            self._pending.popleft()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=max(1, self._max_inflight),
                                                    thread_name_prefix="shipyard-prefetch")
            self._bytes_in_flight += size
            counters[_IN_FLIGHT] = self._bytes_in_flight
            if self._bytes_in_flight > counters[_PEAK]:
                counters[_PEAK] = self._bytes_in_flight
            self._slots[index] = _Slot(self._executor.submit(self._read, index), size)

    def _release(self, index: int, slot: _Slot) -> None:
        """One use of a prefetched index consumed; its bytes are freed with the last (lock held)."""
        slot.uses -= 1
        if slot.uses <= 0 and self._slots.get(index) is slot:
            del self._slots[index]
            self._free(slot.size)
            self._pump()

    def _free(self, size: int, pump: bool = False) -> None:
        with self._lock:
            self._bytes_in_flight -= size
            self._counters[self._row][_IN_FLIGHT] = self._bytes_in_flight
            if pump:   # an abandoned read ended: its budget can serve the current order
                self._pump()

    def _abandon(self) -> None:
        """Drop every scheduled and prefetched index (a new epoch, an early stop, close)."""
        self._pending.clear()
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            if slot.future.cancel():
                self._free(slot.size)
            else:  # still reading: its bytes stay counted until the read ends
                slot.future.add_done_callback(lambda _future, size=slot.size: self._free(size, pump=True))

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of files this process has prefetched (reading or read) and not yet consumed."""
        return self._bytes_in_flight

    # -- epochs (driven by PrefetchSampler in the main process)

    def _begin_epoch(self, scheduling: bool) -> None:
        self._ensure_process()
        with self._lock:
            self._finish_epoch(force=True)
            self._abandon()
            self._sampler_active = scheduling
            self._epoch = {"start_ns": time.monotonic_ns(), "samples_at_start": self._total(_SAMPLES),
                           "drawn": 0, "exhausted": False}

    def _note_drawn(self, count: int) -> None:
        if self._epoch is not None:
            self._epoch["drawn"] += count

    def _end_sampler(self, exhausted: bool) -> None:
        with self._lock:
            self._sampler_active = False
            if self._epoch is None:
                return
            if exhausted:
                self._epoch["exhausted"] = True
                self._finish_epoch(force=False)
            else:   # stopped early: nothing more will be consumed in this order
                self._abandon()
                self._epoch = None

    def _finish_epoch(self, force: bool) -> None:
        """Record the epoch once its sampler ran out and every drawn index was consumed (or at the next
        epoch's start when ``force``, e.g. after drop_last left some drawn indices unread)."""
        epoch = self._epoch
        if epoch is None or not epoch["exhausted"]:
            return
        consumed = self._total(_SAMPLES) - epoch["samples_at_start"]
        if consumed < epoch["drawn"] and not force:
            return
        last = int(self._stats[:, _LAST_NS].max())
        if consumed > 0 and last > epoch["start_ns"]:
            self._epochs.append(((last - epoch["start_ns"]) / 1e9, consumed))
        self._epoch = None

    # -- statistics

    def _record(self, start_ns: int, size: int, prefetched: bool) -> None:
        now = time.monotonic_ns()
        wait = now - start_ns
        micros = wait / 1000.0
        bucket = 0 if micros < 1.0 else min(_BUCKETS - 1, 1 + int(math.log(micros) / _LOG_RATIO))
        with self._lock:
            row = self._counters[self._row]
            row[_SAMPLES] += 1
            row[_PREFETCHED if prefetched else _DIRECT] += 1
            row[_BYTES] += size
            row[_WAIT_NS] += wait
            if row[_FIRST_NS] == 0:
                row[_FIRST_NS] = now
            row[_LAST_NS] = now
            row[_FIELDS + bucket] += 1

    def _total(self, field: int) -> int:
        return int(self._stats[:, field].sum())

    def loader_stats(self) -> dict[str, Any]:
        """Loading statistics of this process and its DataLoader workers.

        ``samples``, ``prefetched`` (served from a prefetch), ``direct`` (read when asked),
        ``bytes_read``, ``processes`` (that served samples: the main one and/or workers);
        ``epochs`` completed (through ``loader()``/``PrefetchSampler``), ``epoch_seconds`` and
        ``samples_per_s`` of the last one (before any: over all samples so far);
        ``wait_p50_ms``/``wait_p99_ms``/``wait_mean_ms``: how long ``dataset[i]`` waited for its bytes
        (from a histogram, ±5%); ``bytes_in_flight``, ``peak_bytes_in_flight`` (the largest of any
        one process) and the budgets.
        """
        with self._lock:
            self._finish_epoch(force=False)
            epochs = list(self._epochs)
        stats = self._stats
        samples = self._total(_SAMPLES)
        if epochs:
            seconds, count = epochs[-1]
            rate = count / seconds if seconds > 0 else None
        else:
            seconds = None
            started = stats[:, _FIRST_NS][stats[:, _FIRST_NS] > 0]
            span = (int(stats[:, _LAST_NS].max()) - int(started.min())) / 1e9 if len(started) else 0.0
            rate = samples / span if span > 0 else None
        hist = stats[:, _FIELDS:].sum(dim=0).tolist()
        return {
            "samples": samples,
            "prefetched": self._total(_PREFETCHED),
            "direct": self._total(_DIRECT),
            "bytes_read": self._total(_BYTES),
            "epochs": len(epochs),
            "epoch_seconds": seconds,
            "samples_per_s": rate,
            "wait_p50_ms": _percentile(hist, 0.50),
            "wait_p99_ms": _percentile(hist, 0.99),
            "wait_mean_ms": self._total(_WAIT_NS) / samples / 1e6 if samples else None,
            "processes": int((stats[:, _SAMPLES] > 0).sum()),
            "bytes_in_flight": self._total(_IN_FLIGHT),
            "peak_bytes_in_flight": int(stats[:, _PEAK].max()),
            "max_bytes_in_flight": self.max_bytes_in_flight,
            "prefetch": self.prefetch,
        }

    def reset_loader_stats(self) -> None:
        """Zero the counters and forget finished epochs."""
        with self._lock:
            self._stats.zero_()
            self._counters[self._row][_IN_FLIGHT] = self._bytes_in_flight
            self._epochs.clear()
            self._epoch = None

    # -- DataLoader

    def loader(self, batch_size: int | None = 1, shuffle: bool = False, sampler: Sampler | Iterable | None = None,
               num_workers: int = 0, *, drop_last: bool = False, generator: torch.Generator | None = None,
               **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` that prefetches in its sampler's order (other keywords go to DataLoader).

        ``batch_sampler=`` may be given instead of ``batch_size``/``shuffle``/``sampler``/``drop_last``.
        """
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: expected an integer >= 0, got {num_workers!r}")
        # in the main process with workers, prefetching would read files the workers then read again
        lookahead = None if num_workers == 0 else 0
        batch_sampler = kwargs.pop("batch_sampler", None)
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler: it is exclusive with batch_size, shuffle, sampler and drop_last")
            wrapped = PrefetchSampler(batch_sampler, self, lookahead=lookahead)
            return DataLoader(self, batch_sampler=wrapped, num_workers=num_workers, **kwargs)
        if sampler is None:
            sampler = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        elif shuffle:
            raise ValueError("shuffle: it cannot be combined with sampler (the sampler decides the order)")
        if batch_size is None:
            return DataLoader(self, batch_size=None, sampler=PrefetchSampler(sampler, self, lookahead=lookahead),
                              num_workers=num_workers, **kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1 or None, got {batch_size!r}")
        batches = PrefetchSampler(BatchSampler(sampler, batch_size, drop_last), self, lookahead=lookahead)
        return DataLoader(self, batch_sampler=batches, num_workers=num_workers, **kwargs)

    def __repr__(self) -> str:
        return (f"CachedDataset({len(self.paths)} files, prefetch={self.prefetch}, "
                f"max_bytes_in_flight={self.max_bytes_in_flight})")


class PrefetchSampler(Sampler):
    """Wraps a sampler (indices) or a batch sampler (lists of indices): what it yields is unchanged,
    and as it draws it tells ``dataset`` the upcoming order, ``lookahead`` indices ahead
    (default ``2 * dataset.prefetch``; 0 only counts epochs, for DataLoaders with worker processes)."""

    def __init__(self, sampler: Sampler | Iterable, dataset: CachedDataset, *, lookahead: int | None = None) -> None:
        if not isinstance(dataset, CachedDataset):
            raise TypeError(f"dataset: expected a CachedDataset, got {type(dataset).__name__}")
        if lookahead is not None and (isinstance(lookahead, bool) or not isinstance(lookahead, int)
                                      or lookahead < 0):
            raise ValueError(f"lookahead: expected an integer >= 0 or None, got {lookahead!r}")
        self.sampler = sampler
        self.dataset = dataset
        self.lookahead = 2 * dataset.prefetch if lookahead is None else lookahead

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        dataset = self.dataset
        scheduling = self.lookahead > 0 and dataset.prefetch > 0
        dataset._begin_epoch(scheduling)
        source = iter(self.sampler)
        window: deque[tuple[Any, int]] = deque()
        queued = 0
        exhausted = False
        try:
            while True:
                fresh: list[int] = []
                while not exhausted and queued < max(1, self.lookahead):
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    indices = _indices(item)
                    window.append((item, len(indices)))
                    queued += len(indices)
                    fresh.extend(indices)
                if fresh and scheduling:
                    dataset._schedule(fresh)
                if not window:
                    break
                item, count = window.popleft()
                queued -= count
                dataset._note_drawn(count)
                yield item
        finally:
            dataset._end_sampler(exhausted and not window)


def _close_quietly(cache: DatasetCache) -> None:
    try:
        cache.close()
    except Exception:  # pragma: no cover - a worker on its way out has nobody to tell
        pass


def _indices(item: Any) -> list[int]:
    if isinstance(item, (list, tuple)):
        return [int(i) for i in item]
    if isinstance(item, torch.Tensor):
        return [int(i) for i in item.reshape(-1).tolist()]
    return [int(item)]


def _select(cache: DatasetCache, paths: str | Sequence[str] | None) -> list[Any]:
    """The files named by ``paths`` (folders, globs, files), sorted by path, without duplicates."""
    if paths is None:
        patterns: Sequence[str] = ["/"]
    elif isinstance(paths, str):
        patterns = [paths]
    elif isinstance(paths, Sequence) and all(isinstance(p, str) for p in paths):
        patterns = paths
    else:
        raise TypeError(f"paths: expected None, a path or glob, or a list of them, got {paths!r}")
    found: dict[str, Any] = {}
    for pattern in patterns:
        normal = "/" + pattern.strip().lstrip("/")
        if _GLOB_CHARS & set(normal):
            matches = cache.glob(normal)
        else:
            matches = cache.list(normal)
            if not matches and normal != "/":   # not a folder: a single file (FileNotFoundError names it)
                matches = [cache.info(normal)]
        for entry in matches:
            found[entry.path] = entry
    return [found[path] for path in sorted(found)]


def _percentile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket, count in enumerate(hist):
        seen += count
        if seen >= rank and count:
            if bucket == 0:
                return 0.0005
            # the bucket's geometric middle, µs -> ms
            return _RATIO ** (bucket - 0.5) / 1000.0
    return None  # pragma: no cover - the loop always reaches the total
