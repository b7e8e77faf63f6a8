"""``shipyard serve --reload``: reload a model when a file of its package changes.

The watcher polls modification times (no file-notification dependency): every ``interval`` it
takes a snapshot of each watched path, and when one differs it waits until the files stop changing
(``debounce``: editors and copies write in several steps), then asks the repository to reload the
model. A version that fails to load leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shipyard.runtimes.base import ModelSource
from shipyard.server.repository import ModelRepository

log = logging.getLogger("shipyard.server")

#: Path -> (modification time in ns, size) of every watched file.
Snapshot = dict[str, tuple[int, int]]
#: Folders and files that change without the model changing.
_IGNORED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache", ".venv"}
_IGNORED_SUFFIXES = (".pyc", ".swp", ".swx", ".tmp", "~")


@dataclass(frozen=True)
class WatchedModel:
    """A served model and where it comes from: ``path`` (a package folder or an artifact file) is
    watched, and ``resolve`` reads it again into a source (shipyard.yaml may have changed too)."""

    name: str
    path: Path
    resolve: Callable[[], ModelSource]


def snapshot(path: Path) -> Snapshot:
    """Modification time and size of ``path`` or of every file under it (hidden files, caches and
    editor swap files left out)."""
    if path.is_file():
        return _stat(str(path), {})
    found: Snapshot = {}
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS and not d.startswith(".")]
        for file in files:
            if not file.startswith(".") and not file.endswith(_IGNORED_SUFFIXES):
                _stat(os.path.join(folder, file), found)
    return found


def _stat(path: str, into: Snapshot) -> Snapshot:
    try:
        status = os.stat(path)
    except OSError:  # removed while we looked
        return into
    into[path] = (status.st_mtime_ns, status.st_size)
    return into


class Reloader:
    """Watches models' files and reloads a model when its files change."""

    def __init__(self, repository: ModelRepository, watched: list[WatchedModel], interval: float = 0.5,
                 debounce: float = 0.3) -> None:
        self.repository = repository
        self.watched = watched
        self.interval = interval
        self.debounce = debounce

    async def run(self) -> None:
        """Poll until cancelled."""
        last = {model.name: await self._snapshot(model) for model in self.watched}
        while True:
            await asyncio.sleep(self.interval)
            for model in self.watched:
                current = await self._snapshot(model)
                if current == last[model.name]:
                    continue
                last[model.name] = await self._settled(model, current)
                await self.reload(model)

    async def _snapshot(self, model: WatchedModel) -> Snapshot:
        # in a thread: a large package folder must not hold up requests
        return await asyncio.get_running_loop().run_in_executor(None, snapshot, model.path)

    async def _settled(self, model: WatchedModel, current: Snapshot) -> Snapshot:
        """Wait until two snapshots ``debounce`` apart agree."""
        while True:
            await asyncio.sleep(self.debounce)
            latest = await self._snapshot(model)
            if latest == current:
                return latest
            current = latest

    async def reload(self, model: WatchedModel) -> bool:
        """Reload one model now; True when the new version serves."""
        print(f"{model.path} changed: reloading model '{model.name}'...", flush=True)
        try:
            error = await self.repository.reload(model.name, model.resolve)
        except Exception as exc:  # a bug of ours: say so, keep watching
            log.exception("reloading model %s failed", model.name)
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            print(f"  model '{model.name}' reloaded", flush=True)
            return True
        print(f"error: model '{model.name}' failed to reload, still serving the previous version: {error}",
              file=sys.stderr, flush=True)
        return False
