"""DataMigrate: copy every file under a source to a target, dataset <-> external storage (any fsspec URL).

Each file is streamed in chunks (never whole in memory) while its sha256 is computed; the target file is
then read back and its sha256 compared (``checksum=True``), a mismatch fails the run naming the file.
Incremental: a target file with the same size and the same sha256 as the source is left alone and
counted as unchanged. ``exclude`` globs match the path relative to the source (a pattern without "/"
also matches a file name at any depth: ``*.tmp``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

from ...quantity import format_bytes
from .result import Log, OperationError, OperationResult, locked
from ..engine import glob_regex
from .watch import normalize, resolve_target

if TYPE_CHECKING:
    from ..engine import DatasetCache

CHUNK = 1024 * 1024


@dataclass
class Endpoint:
    """One side of a DataMigrate: a dataset (``cache`` and a ``path`` in it) or external storage (``uri``)."""

    cache: DatasetCache | None = None
    path: str = "/"
    uri: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``dataset://name/path`` or the external URI, for messages."""
        if self.cache is not None:
            return f"dataset://{self.cache.config.name}{normalize(self.path)}"
        return str(self.uri)


class _Side:
    """File access for one endpoint, by path relative to the endpoint's root."""

    def files(self) -> dict[str, int]: ...
    def open(self, rel: str) -> BinaryIO: ...
    def write(self, rel: str, chunks: Iterable[bytes]) -> None: ...
    def name(self, rel: str) -> str: ...


class _DatasetSide(_Side):
    def __init__(self, endpoint: Endpoint) -> None:
        assert endpoint.cache is not None
        self.cache = endpoint.cache
        self.root = normalize(endpoint.path)
        self.single = False

    def files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in resolve_target(self.cache, self.root, refresh=True):
            if entry.path == self.root:  # the endpoint names one file
                self.single = True
                return {posixpath.basename(entry.path): entry.size}
            out[entry.path[len(self.root):].lstrip("/")] = entry.size
        return out

    def full(self, rel: str) -> str:
        return self.root if self.single else normalize(f"{self.root}/{rel}")

    def open(self, rel: str) -> BinaryIO:
        return self.cache.open_file(self.full(rel))

    def write(self, rel: str, chunks: Iterable[bytes]) -> None:
        # put_file takes a local file: spool the stream to disk so a big file never sits in memory.
        fd, tmp = tempfile.mkstemp(prefix="shipyard-migrate-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            self.cache.put_file(Path(tmp), self.full(rel))
        finally:
            os.unlink(tmp)

    def name(self, rel: str) -> str:
        return f"dataset://{self.cache.config.name}{self.full(rel)}"


class _ExternalSide(_Side):
    def __init__(self, endpoint: Endpoint, role: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(str(endpoint.uri), **endpoint.storage_options)
        except (ValueError, ImportError, OSError) as exc:
            raise OperationError(f"{role}: external storage {endpoint.uri!r}: {exc}") from exc
        self.uri = str(endpoint.uri).rstrip("/")
        self.root = root.rstrip("/") or root
        self.single = False

    def files(self) -> dict[str, int]:
        if not self.fs.exists(self.root):
            return {}
        # A folder first: fsspec's http filesystem calls every URL a file, its listing page included.
        prefix = self.root.rstrip("/") + "/"
        found = {path: info for path, info in self.fs.find(self.root, detail=True).items()
                 if info.get("type", "file") == "file" and path.startswith(prefix)}
        if not found and self.fs.isfile(self.root):
            self.single = True
            return {posixpath.basename(self.root): int(self.fs.size(self.root))}
        return {path[len(prefix):]: int(info["size"] if info.get("size") is not None else self.fs.size(path))
                for path, info in found.items()}

    def full(self, rel: str) -> str:
        return self.root if self.single else f"{self.root}/{rel}"

    def open(self, rel: str) -> BinaryIO:
        return self.fs.open(self.full(rel), "rb")

    def write(self, rel: str, chunks: Iterable[bytes]) -> None:
        path = self.full(rel)
        parent = posixpath.dirname(path)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        with self.fs.open(path, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        self.fs.invalidate_cache(path)

    def name(self, rel: str) -> str:
        return self.uri if self.single else f"{self.uri}/{rel}"


def _side(endpoint: Endpoint, role: str) -> _Side:
    if (endpoint.cache is None) == (endpoint.uri is None):
        raise OperationError(f"{role}: expected exactly one of a dataset or an external storage uri")
    return _DatasetSide(endpoint) if endpoint.cache is not None else _ExternalSide(endpoint, role)


def _read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := handle.read(CHUNK):
            yield chunk
    finally:
        handle.close()


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in _read_chunks(handle):
        digest.update(chunk)
    return digest.hexdigest()


def _exclusions(patterns: list[str]) -> list[tuple[re.Pattern[str], bool]]:
    """(regex, also-match-the-file-name) per exclude glob."""
    if isinstance(patterns, str) or not all(isinstance(p, str) and p for p in patterns):
        raise OperationError(f"exclude: expected a list of globs such as ['*.tmp', 'logs/**'], got {patterns!r}")
    return [(glob_regex(p.lstrip("/")), "/" not in p.lstrip("/")) for p in patterns]


def _excluded(rel: str, exclusions: list[tuple[re.Pattern[str], bool]]) -> bool:
    return any(regex.fullmatch(rel) or (by_name and regex.fullmatch(posixpath.basename(rel)))
               for regex, by_name in exclusions)


def run_migrate(source: Endpoint, target: Endpoint, *, parallelism: int = 4, checksum: bool = True,
                exclude: list[str] = (), log: Log) -> OperationResult:  # type: ignore[assignment]
    """Copy every file under ``source`` to ``target`` (see the module doc); OperationError on failure.

    The result counts the files and bytes copied; ``details`` has ``copied``, ``unchanged``,
    ``excluded`` and ``checksum``; ``skipped`` is True when every file was already there unchanged.
    """
    if parallelism < 1:
        raise OperationError(f"parallelism: expected a positive number, got {parallelism}")
    log = locked(log)
    exclusions = _exclusions(list(exclude) if not isinstance(exclude, str) else exclude)
    src, dst = _side(source, "from"), _side(target, "to")
    started = time.monotonic()
    try:
        listing = src.files()
        existing = dst.files()
    except OperationError:
        raise
    except OSError as exc:
        raise OperationError(f"listing {source.describe()} or {target.describe()} failed: {exc}") from exc
    if not listing:
        raise OperationError(f"from: {source.describe()} has no files to migrate")
    files = {rel: size for rel, size in listing.items() if not _excluded(rel, exclusions)}
    excluded = len(listing) - len(files)
    log(f"migrating {len(files)} files ({format_bytes(sum(files.values()))}) from {source.describe()} to "
        f"{target.describe()}" + (f", {excluded} excluded" if excluded else "")
        + (", sha256 checked" if checksum else ""))

    def one(rel: str, size: int) -> tuple[bool, int]:
        """(copied, bytes) for one file; raises OperationError naming it."""
        try:
            if existing.get(rel) == size and _sha256(src.open(rel)) == _sha256(dst.open(rel)):
                return False, size
            digest = hashlib.sha256()
            copied = 0

            def stream() -> Iterator[bytes]:
                nonlocal copied
                for chunk in _read_chunks(src.open(rel)):
                    digest.update(chunk)
                    copied += len(chunk)
                    yield chunk

            dst.write(rel, stream())
            if checksum:
                back = _sha256(dst.open(rel))
                if back != digest.hexdigest():
                    raise OperationError(f"checksum mismatch for {dst.name(rel)}: sha256 of the data sent "
                                         f"{digest.hexdigest()[:16]}..., read back {back[:16]}...")
            return True, copied
        except OperationError:
            raise
        except (OSError, ValueError) as exc:
            raise OperationError(f"copying {src.name(rel)} to {dst.name(rel)} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc

    copied = unchanged = copied_bytes = unchanged_bytes = done = 0
    decile = 0
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=min(parallelism, max(1, len(files))),
                            thread_name_prefix="shipyard-migrate") as pool:
        futures = [pool.submit(one, rel, size) for rel, size in sorted(files.items())]
        for future in as_completed(futures):
            if future.exception() is not None:
                failure = future.exception()
                for other in futures:
                    other.cancel()  # the ones not started; running copies finish before the pool closes
                break
            was_copied, size = future.result()
            done += 1
            if was_copied:
                copied, copied_bytes = copied + 1, copied_bytes + size
            else:
                unchanged, unchanged_bytes = unchanged + 1, unchanged_bytes + size
            if done * 10 // len(files) > decile:
                decile = done * 10 // len(files)
                log(f"progress: {decile * 10}% ({done}/{len(files)} files)")
    if failure is not None:
        log(f"failed: {failure}")
        raise failure
    seconds = max(time.monotonic() - started, 1e-9)
    if copied:
        message = (f"copied {copied} files ({format_bytes(copied_bytes)}) in {seconds:.1f}s, "
                   f"{copied_bytes / seconds / 1e6:.1f} MB/s; {unchanged} unchanged"
                   + ("; sha256 verified" if checksum else ""))
    else:
        message = f"nothing to copy: {unchanged} files unchanged at the target"
    log(message)
    return OperationResult(
        files=copied, bytes=copied_bytes, seconds=seconds, skipped=copied == 0, message=message,
        details={"copied": copied, "unchanged": unchanged, "unchangedBytes": unchanged_bytes,
                 "excluded": excluded, "checksum": "sha256" if checksum else None,
                 "throughputMBps": round(copied_bytes / seconds / 1e6, 2)})
