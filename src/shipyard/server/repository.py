"""The models a server holds, with their load state."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

from shipyard.protocol.errors import NotFound, NotReady
from shipyard.runtimes.base import Model

log = logging.getLogger("shipyard.server")


class ModelState(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelEntry:
    model: Model
    state: ModelState = ModelState.LOADING
    reason: str = ""


class ModelRepository:
    """Name -> model. Loading runs in a thread so the server answers health checks meanwhile."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def add(self, model: Model) -> None:
        if model.name in self._entries:
            raise ValueError(f"two models are named '{model.name}'; give one another name with --name")
        self._entries[model.name] = ModelEntry(model)

    async def load(self, name: str) -> ModelEntry:
        """Load one model; failures are recorded on the entry, not raised."""
        entry = self._entries[name]
        entry.state = ModelState.LOADING
        try:
            await asyncio.get_running_loop().run_in_executor(None, entry.model.load)
        except Exception as exc:
            entry.state, entry.reason = ModelState.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            log.debug("model %s failed to load", name, exc_info=True)
        else:
            entry.state, entry.reason = ModelState.READY, ""
        return entry

    async def load_all(self) -> list[ModelEntry]:
        """Load every model, one at a time: libraries imported from two threads at once can break."""
        return [await self.load(name) for name in list(self._entries)]

    def unload_all(self) -> None:
        for entry in self._entries.values():
            entry.model.unload()

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def all_ready(self) -> bool:
        return bool(self._entries) and all(e.state is ModelState.READY for e in self._entries.values())

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry for ``name`` (and ``version`` if given), or NotFound naming what exists."""
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFound(f"model '{name}' not found; this server has: {known}")
        if version is not None and version != entry.model.version:
            raise NotFound(f"model '{name}' has no version '{version}'; available: {entry.model.version}")
        return entry

    def get(self, name: str, version: str | None = None) -> Model:
        """A ready model, or NotFound / NotReady."""
        entry = self.entry(name, version)
        if entry.state is not ModelState.READY:
            detail = f": {entry.reason}" if entry.reason else " (still loading)"
            raise NotReady(f"model '{name}' is not ready{detail}")
        return entry.model
