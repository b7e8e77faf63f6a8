"""Reading replica logs (``$SHIPYARD_HOME/logs/<namespace>/<isvc>/<revision>-<replica>.log``): tail and follow.

Following is a cursor: each answer carries where every file was read up to, and the next call
returns only the complete lines written since (new files from their start). The API can then
serve ``shipyard logs -f`` with plain request/response calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BLOCK = 64 * 1024
#: Most bytes returned per file and call, so a huge log cannot blow up one answer.
MAX_CHUNK = 4 * 1024 * 1024
POLL_S = 0.2


@dataclass(frozen=True)
class LogFile:
    """One replica's log: ``label`` (``<revision>-<replica>``) prefixes its lines when several are shown."""

    label: str
    revision: str
    path: Path


@dataclass(frozen=True)
class LogChunk:
    text: str
    cursor: str


def files_in(folder: Path, recorded: dict[Path, str] | None = None) -> list[LogFile]:
    """The log files of one InferenceService, oldest revision first.

    ``recorded`` maps log paths the store knows to their revision; other files are named
    ``<revision>-<replica>.log``.
    """
    recorded = recorded or {}
    paths = set(folder.glob("*.log")) if folder.is_dir() else set()
    paths |= {path for path in recorded if path.is_file()}
    files = [LogFile(path.stem, recorded.get(path) or path.stem.rsplit("-", 1)[0], path) for path in paths]
    return sorted(files, key=lambda file: file.label)


def tail(files: list[LogFile], lines: int) -> LogChunk:
    """The last ``lines`` complete lines of each file, and a cursor at their ends."""
    parts, offsets = [], {}
    for file in files:
        size, text = _last_lines(file.path, lines)
        offsets[file.label] = size
        parts.append(_prefixed(text, file.label, len(files) > 1))
    return LogChunk("".join(parts), encode_cursor(offsets))


def since(files: list[LogFile], cursor: str) -> LogChunk:
    """Complete lines written after ``cursor`` (files it does not name are read from their start)."""
    offsets = decode_cursor(cursor)
    parts = []
    for file in files:
        start = offsets.get(file.label, 0)
        try:
            with open(file.path, "rb") as handle:
                if handle.seek(0, 2) < start:  # truncated or replaced: start over
                    start = 0
                handle.seek(start)
                data = handle.read(MAX_CHUNK)
        except FileNotFoundError:
            continue
        complete = data[: data.rfind(b"\n") + 1]
        offsets[file.label] = start + len(complete)
        parts.append(_prefixed(complete.decode("utf-8", "replace"), file.label, len(files) > 1))
    return LogChunk("".join(parts), encode_cursor(offsets))


async def follow(find_files: Callable[[], list[LogFile]], cursor: str, wait_s: float) -> LogChunk:
    """Like ``since``, but waits up to ``wait_s`` for a new line (files may appear meanwhile)."""
    deadline = time.monotonic() + wait_s
    while True:
        chunk = since(find_files(), cursor)
        if chunk.text or time.monotonic() >= deadline:
            return chunk
        await asyncio.sleep(POLL_S)


def encode_cursor(offsets: dict[str, int]) -> str:
    return ",".join(f"{label}:{offset}" for label, offset in sorted(offsets.items()))


def decode_cursor(cursor: str) -> dict[str, int]:
    """``label:offset,...`` -> offsets; ValueError names what is wrong."""
    offsets: dict[str, int] = {}
    for item in filter(None, cursor.split(",")):
        label, _, offset = item.rpartition(":")
        if not label or not offset.isdigit():
            raise ValueError(f"log cursor item '{item}' is not LABEL:OFFSET")
        offsets[label] = int(offset)
    return offsets


def _last_lines(path: Path, lines: int) -> tuple[int, str]:
    """(size read up to, the last ``lines`` complete lines)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return 0, ""
    with handle:
        end = handle.seek(0, 2)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= lines and len(data) < MAX_CHUNK:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    complete = data[: data.rfind(b"\n") + 1]
    size = position + len(complete)
    kept = complete.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return size, b"".join(kept).decode("utf-8", "replace")


def _prefixed(text: str, label: str, prefix: bool) -> str:
    if not prefix or not text:
        return text
    return "".join(f"[{label}] {line}" for line in text.splitlines(keepends=True))
