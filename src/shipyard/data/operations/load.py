"""DataLoad: warm the cache with a dataset's files (targets are paths or globs; none = everything)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from ...quantity import format_bytes
from .result import Log, OperationError, OperationResult
from .watch import has_magic, normalize, resolve_target

if TYPE_CHECKING:
    from ..engine import DatasetCache


def run_load(cache: DatasetCache, targets: list[str] | None, *, parallelism: int = 8,
             load_metadata: bool = False, log: Log,
             progress: Callable[[int, int], None] | None = None) -> OperationResult:
    """Load ``targets`` (dataset paths or globs; None or [] = the whole dataset) into the cache.

    ``load_metadata`` syncs the listing with the source first (Fluid's ``loadMetadata``). A target that
    matches no file raises OperationError naming it, before anything is fetched. Logs a line about every
    10% of progress (or calls ``progress(done_bytes, total_bytes)`` instead, for a progress bar) and a
    summary (files, bytes, MB/s, how much was cached already).
    """
    if parallelism < 1:
        raise OperationError(f"parallelism: expected a positive number, got {parallelism}")
    name = cache.config.name
    started = time.monotonic()
    try:
        if load_metadata:
            total, count = cache.sync_metadata()
            log(f"metadata synced: {count} files, {format_bytes(total)} at the source")
        paths = None
        if targets:
            paths = []
            for target in targets:
                try:
                    matched = resolve_target(cache, target)
                except ValueError as exc:  # e.g. ".." in the path
                    raise OperationError(f"target {target!r}: {exc}") from exc
                if not matched:
                    raise OperationError(f"target {target!r} matches no file in dataset {name!r}")
                paths.append(target if has_magic(target) else normalize(target))
        log(f"loading {', '.join(paths) if paths else 'the whole dataset'} of {name!r} "
            f"with parallelism {parallelism}")
        result = cache.load(paths, parallelism=parallelism, progress=progress or _progress_logger(log))
    except OperationError:
        raise
    except (OSError, ValueError) as exc:
        raise OperationError(f"loading dataset {name!r} failed: {exc}") from exc
    seconds = max(time.monotonic() - started, 1e-9)
    mbps = result.fetched_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    for skipped in result.skipped:
        log(f"skipped: {skipped}")
    message = (f"loaded {result.files} files ({format_bytes(result.bytes)}) in {seconds:.1f}s, "
               f"fetched {format_bytes(result.fetched_bytes)} at {mbps:.1f} MB/s, "
               f"{result.cached_already} files already cached")
    if result.skipped:
        message += f", {len(result.skipped)} skipped"
    log(message)
    return OperationResult(
        files=result.files, bytes=result.bytes, seconds=seconds, message=message,
        details={"fetchedBytes": result.fetched_bytes, "cachedAlready": result.cached_already,
                 "throughputMBps": round(mbps, 2), "skippedFiles": list(result.skipped)})


def _progress_logger(log: Log):
    """A ``progress(done_bytes, total_bytes)`` callback logging once per 10% step (called from loader threads)."""
    lock = threading.Lock()
    state = {"decile": 0}

    def progress(done: int, total: int) -> None:
        if total <= 0:
            return
        decile = min(10, done * 10 // total)
        with lock:
            if decile <= state["decile"]:
                return
            state["decile"] = decile
        log(f"progress: {decile * 10}% ({format_bytes(done)} of {format_bytes(total)})")

    return progress
