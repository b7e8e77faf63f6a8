"""The Dataset controller: each Dataset's configuration, metadata sync, cache statistics and removal.

One pass runs every second (and at once when the API sets ``wake``). For each Dataset:

1. its configuration is built from the Dataset and the CacheRuntime of the same name and namespace
   (Fluid binds runtimes to datasets by name; without one, the default cache: one disk level of
   10 GiB) and saved as ``$SHIPYARD_HOME/data/<namespace>/<name>/dataset.json``, where any process
   (``DatasetCache.open``, ``dataset://`` URLs) finds it. A changed CacheRuntime (e.g. a smaller
   quota) reopens the cache with the new levels;
2. the source's listing is synced when the dataset is bound and then every
   ``data.shipyard.io/metadata-sync-interval`` (default 5m), in a worker thread: phase ``Bound``
   when the source lists, ``Failed`` with a condition naming the URL and the cause when it cannot be
   reached (retried after 2 s, doubling up to the sync interval), ``NotBound`` until the first sync;
3. ``status.cacheStates`` is refreshed every few seconds from the cache index (Fluid's keys;
   ``cacheHitRatio`` null while nothing was read), with ``ufsTotal``, ``fileNum``, ``mounts``,
   ``conditions`` (Ready) and ``operationRef`` (which operation of each kind holds the dataset).
   A DataMigrate or DataProcess that wrote into the dataset triggers a sync when it completes.

Deleting a Dataset waits for the operations running on it, evicts every cached block, then removes
its folder (and its MEM tier) and the resource.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from shipyard.control.controllers.loop import reconcile_loop
from shipyard.control.controllers.status import condition
from shipyard.control.data_validation import DEFAULT_METADATA_SYNC_S, METADATA_SYNC_INTERVAL, parse_duration
from shipyard.control.resources import CACHE_RUNTIME, DATASET, Resource, canonical_json
from shipyard.control.store import Store
from shipyard.quantity import format_bytes

log = logging.getLogger("shipyard.control")

KIND = DATASET.kind
INTERVAL_S = 1.0
STATS_S = 3.0
RETRY_S = 2.0  # the first retry of a failed sync; doubles up to the sync interval

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any, name: str = "shipyard-data") -> T:
    """Run ``function`` in a daemon thread and await its result.

    Not ``asyncio.to_thread``: the default executor's threads are joined when the plane exits, so
    a source that hangs (or a long operation) would keep a stopped plane alive.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the plane stopped meanwhile
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


@dataclass
class Tracked:
    """What the controller keeps for one Dataset between passes."""

    fingerprint: str = ""
    config: Any = None  # shipyard.data.spec.DatasetConfig
    cache: Any = None  # shipyard.data.engine.DatasetCache, for syncs and statistics
    sync: asyncio.Future[tuple[int, int]] | None = None
    stats: asyncio.Future[Any] | None = None
    next_sync: float = 0.0  # monotonic
    failures: int = 0
    synced: bool = False
    error: str | None = None
    last_sync: float | None = None  # wall clock
    ufs: tuple[int, int] | None = None
    cache_states: dict[str, Any] | None = None
    stats_at: float = 0.0  # monotonic


class DatasetController:
    """Reconciles every Dataset (and removes deleted CacheRuntimes); ``home`` is $SHIPYARD_HOME.

    ``operations(namespace, name)`` says which operation holds the dataset per kind (for
    ``operationRef``); ``busy(namespace, name)`` whether one runs on it now (deletion waits);
    ``release(namespace, name)`` lets operations drop what they keep open on it.
    """

    def __init__(self, store: Store, home: Path,
                 operations: Callable[[str, str], dict[str, str]] | None = None,
                 busy: Callable[[str, str], bool] | None = None,
                 release: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.home = home
        self.operations = operations or (lambda namespace, name: {})
        self.busy = busy or (lambda namespace, name: False)
        self.release = release or (lambda namespace, name: None)
        self.wake = asyncio.Event()
        self.tracked: dict[tuple[str, str], Tracked] = {}
        self._removing: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set."""
        await reconcile_loop(self.reconcile_all, self.wake, stop, INTERVAL_S, "dataset")

    async def reconcile_all(self) -> None:
        runtimes = {}
        for runtime in self.store.list(CACHE_RUNTIME.kind):
            if runtime.deleting:  # the dataset falls back to the default cache on this pass
                self.store.remove(CACHE_RUNTIME.kind, runtime.namespace, runtime.name)
                self.store.event(KIND, runtime.namespace, runtime.name, "Normal", "RuntimeDeleted",
                                 f"CacheRuntime '{runtime.name}' deleted: the default cache applies")
                continue
            runtimes[(runtime.namespace, runtime.name)] = runtime
        for dataset in self.store.list(KIND):
            try:
                await self.reconcile(dataset, runtimes.get((dataset.namespace, dataset.name)))
            except Exception:
                log.exception("reconciling dataset %s/%s failed", dataset.namespace, dataset.name)

    async def reconcile(self, dataset: Resource, runtime: Resource | None) -> None:
        key = (dataset.namespace, dataset.name)
        if dataset.deleting:
            if key not in self._removing:
                self._removing[key] = asyncio.ensure_future(self._remove(dataset, runtime))
            return
        tracked = self.tracked.setdefault(key, Tracked())
        status = json.loads(json.dumps(dataset.status or {}))
        try:
            config = self._config(dataset, runtime)
        except ValueError as exc:  # DataSpecError: a runtime that does not fit this dataset
            path, message = getattr(exc, "path", ""), getattr(exc, "message", str(exc))
            self._write(dataset, status, tracked, runtime, invalid=f"{path}: {message}" if path else message)
            return
        fingerprint = canonical_json(config.to_json())
        if fingerprint != tracked.fingerprint:
            await self._rebind(dataset, tracked, config, fingerprint)
        if tracked.cache is None:
            self._write(dataset, status, tracked, runtime)
            return
        now = time.monotonic()
        if tracked.sync is None and now >= tracked.next_sync:
            tracked.sync = asyncio.ensure_future(in_thread(tracked.cache.sync_metadata, name="shipyard-sync"))
        elif tracked.sync is not None and tracked.sync.done():
            self._synced(dataset, tracked)
            tracked.stats_at = 0.0  # show the new totals now
        if tracked.stats is None and now - tracked.stats_at >= STATS_S:
            tracked.stats = asyncio.ensure_future(in_thread(tracked.cache.stats, name="shipyard-stats"))
        elif tracked.stats is not None and tracked.stats.done():
            try:
                stats = tracked.stats.result()
                tracked.cache_states = stats.cache_states()
                if stats.ufs_total_bytes is not None and stats.file_num is not None and tracked.synced:
                    tracked.ufs = (stats.ufs_total_bytes, stats.file_num)
            except Exception as exc:  # a busy index: try again on the next round
                log.warning("dataset %s/%s: reading cache statistics failed: %s", *key, exc)
            tracked.stats, tracked.stats_at = None, now
        self._write(dataset, status, tracked, runtime)

    def _config(self, dataset: Resource, runtime: Resource | None) -> Any:
        from shipyard.data.spec import DatasetConfig

        return DatasetConfig.from_documents(dataset.to_dict(), runtime.to_dict() if runtime else None, home=self.home)

    async def _rebind(self, dataset: Resource, tracked: Tracked, config: Any, fingerprint: str) -> None:
        """A new or changed configuration: save it, reopen the cache (a sync in flight finishes first)."""
        if tracked.sync is not None and not tracked.sync.done():
            return
        if tracked.stats is not None and not tracked.stats.done():
            return
        first = not tracked.fingerprint
        old, tracked.cache, tracked.sync, tracked.stats = tracked.cache, None, None, None
        try:
            tracked.cache = await in_thread(_open, old, config)
        except Exception as exc:
            tracked.error = f"cannot open the cache at {config.root}: {exc}"
            tracked.fingerprint = fingerprint  # retried when the spec changes
            self.store.event(KIND, dataset.namespace, dataset.name, "Warning", "CacheOpenFailed", tracked.error)
            return
        tracked.config, tracked.fingerprint = config, fingerprint
        tracked.next_sync, tracked.failures, tracked.stats_at = 0.0, 0, 0.0
        tracked.error = None
        levels = ", ".join(f"{level.medium} {format_bytes(level.quota)}" for level in config.cache.levels)
        self.store.event(KIND, dataset.namespace, dataset.name, "Normal", "Configured" if first else "Reconfigured",
                         f"cache at {config.root} ({levels})")

    def _synced(self, dataset: Resource, tracked: Tracked) -> None:
        future, tracked.sync = tracked.sync, None
        assert future is not None
        interval = _sync_interval(dataset)
        try:
            total, count = future.result()
        except Exception as exc:  # SourceError names the URL and the cause
            tracked.failures += 1
            message = str(exc) or type(exc).__name__
            if tracked.error != message:
                self.store.event(KIND, dataset.namespace, dataset.name, "Warning", "SourceUnreachable", message)
            tracked.error = message
            tracked.next_sync = time.monotonic() + min(interval, RETRY_S * 2 ** (tracked.failures - 1))
            return
        if not tracked.synced or tracked.error:
            self.store.event(KIND, dataset.namespace, dataset.name, "Normal", "Bound",
                             f"{count} files, {format_bytes(total)} at the source")
        tracked.synced, tracked.error, tracked.failures = True, None, 0
        tracked.ufs, tracked.last_sync = (total, count), time.time()
        tracked.next_sync = time.monotonic() + interval

    def _write(self, dataset: Resource, status: dict[str, Any], tracked: Tracked, runtime: Resource | None,
               invalid: str | None = None) -> None:
        old = dataset.status or {}
        if invalid:
            phase, ok, reason, message = "Failed", False, "InvalidSpec", invalid
        elif tracked.error:
            phase, ok, reason, message = "Failed", False, "SourceUnreachable", tracked.error
        elif not tracked.synced:
            phase, ok, reason, message = "NotBound", False, "NotSynced", "listing the source for the first time"
        else:
            phase, ok, reason, message = "Bound", True, "", ""
        ready = condition(old, "Ready", ok, reason, message)
        if ok and tracked.ufs is not None:
            ready.update(reason="DatasetReady", message=f"{tracked.ufs[1]} files, {format_bytes(tracked.ufs[0])} "
                         "at the source")
        status.update(phase=phase, conditions=[ready], mounts=dataset.spec.get("mounts") or [])
        if tracked.ufs is not None:
            status["ufsTotal"], status["fileNum"] = format_bytes(tracked.ufs[0]), str(tracked.ufs[1])
        if tracked.cache_states is not None:
            status["cacheStates"] = tracked.cache_states
        status["operationRef"] = self.operations(dataset.namespace, dataset.name) or None
        status["runtimes"] = [{"name": runtime.name, "namespace": runtime.namespace, "category": "Accelerate",
                               "type": "cache"}] if runtime is not None else None
        own = status.setdefault("shipyard", {})
        if tracked.config is not None:
            own["root"] = str(tracked.config.root)
        if tracked.last_sync is not None:
            own["lastMetadataSync"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tracked.last_sync))
        status = {key: value for key, value in status.items() if value is not None}
        if canonical_json(status) != canonical_json(old):
            self.store.set_status(KIND, dataset.namespace, dataset.name, status)

    # -- deletion and shutdown -----------------------------------------------------------------------
    async def _remove(self, dataset: Resource, runtime: Resource | None) -> None:
        key = (dataset.namespace, dataset.name)
        try:
            while self.busy(*key):  # in-flight operations end first
                await asyncio.sleep(0.2)
            self.release(*key)
            tracked = self.tracked.pop(key, None) or Tracked()
            for future in (tracked.sync, tracked.stats):
                if future is not None:
                    await asyncio.wait([future])
            config = tracked.config
            if config is None:
                try:
                    config = self._config(dataset, runtime)
                except ValueError:
                    config = None
            await in_thread(_wipe, tracked.cache, config, self.home / "data" / dataset.namespace / dataset.name)
            self.store.remove(KIND, *key)
            log.info("deleted dataset %s/%s", *key)
        except Exception:
            log.exception("deleting dataset %s/%s failed; retrying", *key)
            await asyncio.sleep(1.0)
        finally:
            self._removing.pop(key, None)

    def resync(self, namespace: str, name: str) -> None:
        """Re-read a dataset's listing on the next pass (an operation wrote files to its source)."""
        tracked = self.tracked.get((namespace, name))
        if tracked is not None:
            tracked.next_sync = 0.0
            self.wake.set()

    async def shutdown(self) -> None:
        """Close every cache (in-flight syncs are left to finish in their threads)."""
        for task in self._removing.values():
            task.cancel()
        for tracked in self.tracked.values():
            if tracked.cache is not None and (tracked.sync is None or tracked.sync.done()) \
                    and (tracked.stats is None or tracked.stats.done()):
                try:
                    tracked.cache.close()
                except Exception:  # closing must not stop the plane's shutdown
                    log.exception("closing a dataset cache failed")
        self.tracked.clear()


def _open(old: Any, config: Any) -> Any:
    """Close the previous cache, save the configuration, open the cache (in a worker thread)."""
    from shipyard.data.engine import DatasetCache

    if old is not None:
        old.close()
    config.save()
    return DatasetCache(config)


def _wipe(cache: Any, config: Any, default_root: Path) -> None:
    """Evict every block (whatever tier it is on), close, remove the dataset's folders."""
    if cache is None and config is not None and (config.root / "dataset.json").exists():
        from shipyard.data.engine import DatasetCache

        try:
            cache = DatasetCache(config)
        except Exception:  # a broken index: the folders go anyway
            cache = None
    if cache is not None:
        try:
            cache.clean(None)
        finally:
            cache.close()
    roots = [config.root if config is not None else default_root]
    if config is not None:  # a MEM tier in Shipyard's own shared-memory folder goes too (never a folder of the user's)
        from shipyard.data.spec import memory_tier_path

        ours = Path(memory_tier_path(config.name, config.namespace))
        roots += [Path(level.path) for level in config.cache.levels if Path(level.path) == ours]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _sync_interval(dataset: Resource) -> float:
    try:
        return parse_duration(dataset.annotations.get(METADATA_SYNC_INTERVAL, DEFAULT_METADATA_SYNC_S))
    except ValueError:
        return DEFAULT_METADATA_SYNC_S
