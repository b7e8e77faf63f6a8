"""The models a server holds, their load state, and the repository extension's load/unload."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from shipyard.protocol.errors import InvalidInput, NotFound, NotReady
from shipyard.runtimes import ModelSource, create_model
from shipyard.runtimes.base import Model
from shipyard.server.batching import Batcher, BatchPolicy, batcher_for
from shipyard.server.metrics import ServerMetrics
from shipyard.server.stats import ModelStats

log = logging.getLogger("shipyard.server")

#: Finds the source of a model by name: in the ``--model-repository`` directory, or in
#: ``override`` (a folder the repository extension's ``load`` wrote files into).
SourceResolver = Callable[[str, "Path | None"], ModelSource]


UNLOADED = "unloaded"
EVICTED = "evicted to stay under the memory limit"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class ModelState(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelEntry:
    model: Model
    state: ModelState = ModelState.LOADING
    reason: str = ""
    batcher: Batcher | None = None
    #: Resident memory the process gained while the model loaded (an estimate of its size).
    memory_bytes: int = 0
    #: Requests being served by this model, and when it last served one (for LRU eviction).
    in_flight: int = 0
    last_used: float = 0.0
    stats: ModelStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ModelStats(self.model.name, self.model.version)


class ModelRepository:
    """Name -> model. Loading runs in a thread so the server answers health checks meanwhile."""

    def __init__(self, resolver: SourceResolver | None = None, location: str = "",
                 batching: BatchPolicy | None = None, memory_limit: int | None = None,
                 drain_seconds: float = 30.0) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self.batching = batching or BatchPolicy()
        #: Bytes of model memory this process may hold; least recently used idle models are evicted.
        self.memory_limit = memory_limit
        self.drain_seconds = drain_seconds
        self.metrics = ServerMetrics()
        self._locks: dict[str, asyncio.Lock] = {}
        self.resolver = resolver
        #: Where models can be loaded from by name (shown in messages), if anywhere.
        self.location = location

    def add(self, model: Model) -> ModelEntry:
        if model.name in self._entries:
            raise ValueError(f"two models are named '{model.name}'; give one another name with --name")
        entry = ModelEntry(model)
        self._entries[model.name] = entry
        return entry

    async def _load_entry(self, entry: ModelEntry) -> ModelEntry:
        """Load in a thread: requests to other models keep being served meanwhile."""
        entry.state = ModelState.LOADING
        before = resident_bytes()
        try:
            await asyncio.get_running_loop().run_in_executor(None, entry.model.setup)
        except Exception as exc:
            return self._loaded(entry, before, exc)
        return self._loaded(entry, before)

    def load_now(self, entry: ModelEntry) -> ModelEntry:
        """Load in the calling thread (the multi-worker supervisor loads before it forks)."""
        entry.state = ModelState.LOADING
        before = resident_bytes()
        try:
            entry.model.setup()
        except Exception as exc:
            return self._loaded(entry, before, exc)
        return self._loaded(entry, before)

    def _loaded(self, entry: ModelEntry, rss_before: int, error: Exception | None = None) -> ModelEntry:
        name = entry.model.name
        if error is not None:
            entry.state, entry.reason = ModelState.UNAVAILABLE, f"{type(error).__name__}: {error}"
            log.debug("model %s failed to load", name, exc_info=error)
            return entry
        entry.memory_bytes = max(0, resident_bytes() - rss_before)
        entry.batcher = batcher_for(entry.model, self.batching)
        entry.state, entry.reason = ModelState.READY, ""
        entry.last_used = time.monotonic()
        self.metrics.loaded.labels(name, entry.model.version).set(1)
        self.metrics.memory.labels(name).set(entry.memory_bytes)
        self._evict_over_limit(keep=entry)
        return entry

    def _evict_over_limit(self, keep: ModelEntry) -> None:
        """Unload least recently used idle models until the loaded ones fit ``memory_limit``."""
        if self.memory_limit is None:
            return
        loaded = [e for e in self._entries.values() if e.state is ModelState.READY and e is not keep]
        total = keep.memory_bytes + sum(e.memory_bytes for e in loaded)
        for victim in sorted((e for e in loaded if e.in_flight == 0), key=lambda e: e.last_used):
            if total <= self.memory_limit:
                break
            total -= victim.memory_bytes
            self._release(victim, EVICTED)
            log.info("evicted model %s (%d bytes) to stay under --memory-limit", victim.model.name,
                     victim.memory_bytes)
        if total > self.memory_limit:
            log.warning("models in use hold %d bytes, over --memory-limit %d", total, self.memory_limit)

    def _release(self, entry: ModelEntry, reason: str) -> None:
        entry.state, entry.reason = ModelState.UNAVAILABLE, reason
        entry.model.unload()
        self.metrics.loaded.labels(entry.model.name, entry.model.version).set(0)
        self.metrics.memory.labels(entry.model.name).set(0)

    async def load_all(self) -> list[ModelEntry]:
        """Load every model not loaded yet, one at a time (libraries imported from two threads at
        once can break)."""
        return [
            entry if entry.state is ModelState.READY else await self._load_entry(entry)
            for entry in list(self._entries.values())
        ]

    async def load(self, name: str, override: Path | None = None) -> ModelEntry:
        """The repository extension's load: (re)load ``name``; a failed reload keeps the old model serving."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self._entries.get(name)
            source = self._source_for(name, override, current)
            try:
                candidate = ModelEntry(create_model(source))
            except ValueError as exc:
                raise InvalidInput(f"failed to load model '{name}': {exc}") from None
            await self._load_entry(candidate)
            if candidate.state is not ModelState.READY:
                raise InvalidInput(f"failed to load model '{name}': {candidate.reason}")
            self._entries[name] = candidate
            if current is not None and current.state is ModelState.READY:
                await self._drain(current)
                current.model.unload()
            return candidate

    async def reload(self, name: str, resolve: Callable[[], ModelSource]) -> str | None:
        """Load a new version of ``name`` from ``resolve()`` next to the old one, then swap it in: the
        old one finishes its in-flight requests and is unloaded. If the new version fails to load, the
        old one keeps serving and its index ``reason`` says why. Returns that reason, or None."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            current = self.entry(name)
            try:
                candidate = ModelEntry(create_model(resolve()))
            except Exception as exc:  # a broken shipyard.yaml, an unknown format: the package's fault
                error: str | None = f"{type(exc).__name__}: {exc}"
            else:
                await self._load_entry(candidate)
                error = candidate.reason if candidate.state is not ModelState.READY else None
            if error is not None:
                if current.state is ModelState.READY:
                    current.reason = f"reload failed, serving the previous version: {error}"
                return error
            self._entries[name] = candidate
            if current.model.version != candidate.model.version:
                self.metrics.loaded.labels(name, current.model.version).set(0)
            if current.state is ModelState.READY:
                await self._drain(current)
                current.model.unload()
            return None

    async def acquire(self, name: str, version: str | None = None) -> ModelEntry:
        """A ready model for a request. A model the repository has but has not loaded (or evicted)
        is loaded now, once however many requests ask (the request waits; it does not fail)."""
        entry = self._entries.get(name)
        lazy = entry is None or entry.reason == EVICTED
        if lazy and self.resolver is not None:
            async with self._locks.setdefault(name, asyncio.Lock()):
                entry = self._entries.get(name)
                needed = entry is None or entry.reason == EVICTED
            if needed:
                try:
                    await self.load(name)
                except InvalidInput as exc:
                    raise NotReady(exc.message) from None
                except NotFound:
                    self._locks.pop(name, None)  # no lock kept per unknown name a client tries
                    raise
        return self.ready_entry(name, version)

    async def _drain(self, entry: ModelEntry) -> None:
        """Wait for a model's in-flight requests to finish (up to ``drain_seconds``)."""
        deadline = time.monotonic() + self.drain_seconds
        while entry.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _source_for(self, name: str, override: Path | None, current: ModelEntry | None) -> ModelSource:
        if self.resolver is not None:
            try:
                return self.resolver(name, override)
            except FileNotFoundError:
                pass
            except ValueError as exc:
                raise InvalidInput(f"failed to load model '{name}': {exc}") from None
        if current is not None and override is None:
            return current.model.source
        where = f" in model repository {self.location}" if self.location else ""
        raise NotFound(f"model '{name}' not found{where}; this server has: {', '.join(self.names()) or 'none'}")

    async def unload(self, name: str) -> None:
        """The repository extension's unload: new requests are refused at once, in-flight ones
        finish, then the model is released. It stays listed, as UNAVAILABLE."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entry(name)
            was_ready = entry.state is ModelState.READY
            entry.state, entry.reason = ModelState.UNAVAILABLE, UNLOADED
            if was_ready:
                await self._drain(entry)
            self._release(entry, UNLOADED)

    def unload_all(self) -> None:
        for entry in self._entries.values():
            entry.model.unload()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model with its state and reason."""
        rows = []
        for entry in self._entries.values():
            if ready_only and entry.state is not ModelState.READY:
                continue
            rows.append({"name": entry.model.name, "version": entry.model.version, "state": entry.state.value,
                         "reason": entry.reason})
        return rows

    def all_ready(self) -> bool:
        """Every model ready, not counting ones unloaded on purpose (as Triton's readiness does)."""
        return all(e.state is ModelState.READY or e.reason == UNLOADED for e in self._entries.values())

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry for ``name`` (and ``version`` if given), or NotFound naming what exists."""
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFound(f"model '{name}' not found; this server has: {known}")
        if version is not None and version != entry.model.version:
            raise NotFound(f"model '{name}' has no version '{version}'; available: {entry.model.version}")
        return entry

    def ready_entry(self, name: str, version: str | None = None) -> ModelEntry:
        """A ready model's entry, or NotFound / NotReady."""
        entry = self.entry(name, version)
        if entry.state is not ModelState.READY:
            if entry.reason == UNLOADED:
                raise NotReady(f"model '{name}' is unloaded; load it through the repository API "
                               f"(REST POST /v2/repository/models/{name}/load, gRPC RepositoryModelLoad)")
            detail = f": {entry.reason}" if entry.reason else " (still loading)"
            raise NotReady(f"model '{name}' is not ready{detail}")
        return entry

    def get(self, name: str, version: str | None = None) -> Model:
        """A ready model, or NotFound / NotReady."""
        return self.ready_entry(name, version).model
