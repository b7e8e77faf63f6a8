"""The models a server holds, their load state, and the repository extension's load/unload."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from shipyard.protocol.errors import InvalidInput, NotFound, NotReady
from shipyard.runtimes import ModelSource, create_model
from shipyard.runtimes.base import Model
from shipyard.server.batching import Batcher, BatchPolicy, batcher_for
from shipyard.server.stats import ModelStats

log = logging.getLogger("shipyard.server")

#: Finds the source of a model by name: in the ``--model-repository`` directory, or in
#: ``override`` (a folder the repository extension's ``load`` wrote files into).
SourceResolver = Callable[[str, "Path | None"], ModelSource]


UNLOADED = "unloaded"


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
    stats: ModelStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ModelStats(self.model.name, self.model.version)


class ModelRepository:
    """Name -> model. Loading runs in a thread so the server answers health checks meanwhile."""

    def __init__(self, resolver: SourceResolver | None = None, location: str = "",
                 batching: BatchPolicy | None = None) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self.batching = batching or BatchPolicy()
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
        entry.state = ModelState.LOADING
        try:
            await asyncio.get_running_loop().run_in_executor(None, entry.model.load)
        except Exception as exc:
            return self._loaded(entry, exc)
        return self._loaded(entry)

    def load_now(self, entry: ModelEntry) -> ModelEntry:
        """Load in the calling thread (the multi-worker supervisor loads before it forks)."""
        entry.state = ModelState.LOADING
        try:
            entry.model.load()
        except Exception as exc:
            return self._loaded(entry, exc)
        return self._loaded(entry)

    def _loaded(self, entry: ModelEntry, error: Exception | None = None) -> ModelEntry:
        if error is not None:
            entry.state, entry.reason = ModelState.UNAVAILABLE, f"{type(error).__name__}: {error}"
            log.debug("model %s failed to load", entry.model.name, exc_info=error)
        else:
            entry.batcher = batcher_for(entry.model, self.batching)
            entry.state, entry.reason = ModelState.READY, ""
        return entry

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
                current.model.unload()
            return candidate

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
        """The repository extension's unload: the model stays listed, as UNAVAILABLE."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entry(name)
            entry.model.unload()
            entry.state, entry.reason = ModelState.UNAVAILABLE, UNLOADED

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
