"""DataClean: evict cached blocks of some paths (or of the whole dataset); the source is untouched."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ...quantity import format_bytes
from .result import Log, OperationError, OperationResult

if TYPE_CHECKING:
    from ..engine import DatasetCache


def run_clean(cache: DatasetCache, targets: list[str] | None, *, log: Log) -> OperationResult:
    """Drop the cached blocks of ``targets`` (paths or globs; None or [] = everything).

    A target with nothing cached is not an error (cleaning is idempotent); the result counts the files,
    blocks and bytes freed.
    """
    name = cache.config.name
    started = time.monotonic()
    log(f"cleaning {', '.join(targets) if targets else 'the whole cache'} of dataset {name!r}")
    try:
        freed = cache.clean(list(targets) if targets else None)
    except (OSError, ValueError) as exc:
        raise OperationError(f"cleaning dataset {name!r} failed: {exc}") from exc
    seconds = time.monotonic() - started
    message = f"freed {format_bytes(freed.bytes)} ({freed.blocks} blocks of {freed.files} files)"
    if not freed.files:
        message = "nothing cached to free"
    log(message)
    return OperationResult(files=freed.files, bytes=freed.bytes, seconds=seconds, skipped=not freed.files,
                           message=message, details={"blocks": freed.blocks})
