"""OnEvent for DataLoad: notice real changes at the source by diffing fresh listings.

Fluid's ``policy: OnEvent`` is only an enum value (nothing watches); here a ``SourceWatcher`` keeps the
last listing (path -> version, size) of the load's targets and reports the paths that appeared or
changed since. Also the target helpers the other operations share: dataset path globs and resolving a
target (a file, a folder or a glob) to its files.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..engine import glob_regex  # the engine's own glob rules, so a watched target = a loaded one
from .result import OperationError

if TYPE_CHECKING:
    from ..engine import DatasetCache, FileEntry

_MAGIC = re.compile(r"[*?\[]")


def normalize(path: str) -> str:
    """A dataset path with one leading "/" and no trailing "/" ("/" stays "/")."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p and p != "."]
    return "/" + "/".join(parts)


def has_magic(pattern: str) -> bool:
    """Whether ``pattern`` is a glob (has ``*``, ``?`` or ``[``)."""
    return bool(_MAGIC.search(pattern))


def glob_root(pattern: str) -> str:
    """The folder above a glob's first magic segment ("/train/*/x.bin" -> "/train")."""
    parts = normalize(pattern).split("/")[1:]
    fixed: list[str] = []
    for part in parts:
        if has_magic(part):
            break
        fixed.append(part)
    return "/" + "/".join(fixed)


def under(path: str, folder: str) -> bool:
    """Whether dataset ``path`` is ``folder`` itself or inside it."""
    folder = normalize(folder)
    return folder == "/" or path == folder or path.startswith(folder + "/")


def resolve_target(cache: DatasetCache, target: str, *, refresh: bool = False) -> list[FileEntry]:
    """The files a target names: a file, every file under a folder, or every file matching a glob.

    An empty list when nothing matches (the caller decides whether that is an error).
    """
    if has_magic(target):
        pattern = glob_regex(normalize(target))
        return [e for e in _list(cache, glob_root(target), refresh) if pattern.fullmatch(e.path)]
    path = normalize(target)
    entries = [e for e in _list(cache, path, refresh) if under(e.path, path)]
    if entries or path == "/":
        return entries
    try:
        return [cache.info(path, refresh=refresh)]
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []


def _list(cache: DatasetCache, path: str, refresh: bool) -> list[FileEntry]:
    try:
        return list(cache.list(path, refresh=refresh))
    except (FileNotFoundError, NotADirectoryError):
        return []


class SourceWatcher:
    """OnEvent: remembers the targets' listing (path -> version, size) and reports what changed.

    ``changes()`` lists the source afresh (``refresh=True``, bypassing the metadata TTL) on every call.
    The first call records the baseline and returns []; later calls return the paths added or changed
    (another version or size) since the previous call, sorted. Paths that disappeared are in
    ``removed`` after each call (they need no load, so they are not returned).
    """

    def __init__(self, cache: DatasetCache, targets: list[str] | None) -> None:
        self.cache = cache
        self.targets = list(targets) if targets else ["/"]
        self.removed: list[str] = []
        self._previous: dict[str, tuple[str, int]] | None = None

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """The targets' files now, from a fresh listing: path -> (version, size)."""
        snap: dict[str, tuple[str, int]] = {}
        try:
            for target in self.targets:
                for entry in resolve_target(self.cache, target, refresh=True):
                    snap[entry.path] = (entry.version, entry.size)
        except OSError as exc:
            raise OperationError(f"listing the source of dataset {self.cache.config.name!r} failed: {exc}") from exc
        return snap

    def changes(self) -> list[str]:
        """Paths added or changed since the last call (the first call takes the baseline: [])."""
        current = self.snapshot()
        previous, self._previous = self._previous, current
        if previous is None:
            self.removed = []
            return []
        self.removed = sorted(set(previous) - set(current))
        return sorted(path for path, state in current.items() if previous.get(path) != state)
