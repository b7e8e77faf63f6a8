"""Where a run keeps its work (parts and the manifest of done chunks), and reading/appending the manifest.

The manifest is JSON Lines: a header with the run's fingerprint, then one line per done chunk,
appended after the chunk's part was renamed into place. A line cut short by a kill is ignored, so a
chunk is either recorded with its part complete or done again. A header whose fingerprint differs
(another model, input file, columns or batch size) means the work is not this run's: it starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

from shipyard.batch.readers import is_local
from shipyard.batch.spec import BatchSpec, is_folder_output
from shipyard.home import shipyard_home

MANIFEST = "manifest.jsonl"
#: The work folder inside a folder output (readers of the folder skip names starting with '_').
FOLDER_WORK = "_shipyard-batch"
#: The suffix of the work folder next to a single-file output.
FILE_WORK = ".shipyard-batch"


@dataclass
class ChunkRecord:
    """One done chunk: input rows, rows written, rows failed, and its part files (names in the parts folder)."""

    chunk: int
    start: int
    rows: int
    written: int
    errors: int
    part: str | None
    errors_part: str | None
    seconds: float
    #: The part's column names (its CSV header).
    columns: list[str] | None = None


def output_location(output: str) -> tuple[Any, str, bool]:
    """(filesystem, path, is local) of an output URL or path."""
    fs, path = fsspec.core.url_to_fs(output)
    return fs, path, is_local(fs)


def work_dir(spec: BatchSpec) -> str:
    """The folder holding a run's manifest and parts: next to a local output file (``out.parquet.shipyard-batch``),
    inside a local folder output (``out/_shipyard-batch``), under ``$SHIPYARD_HOME/batch/`` for remote outputs."""
    fs, path, local = output_location(spec.output)
    if not local:
        digest = hashlib.sha256(spec.output.encode()).hexdigest()[:16]
        return str(shipyard_home() / "batch" / digest)
    if is_folder_output(spec.output):
        return str(Path(path) / FOLDER_WORK)
    return str(Path(path).with_name(Path(path).name + FILE_WORK))


def discard(spec: BatchSpec) -> bool:
    """Delete the partial work of a run (its manifest and parts; a folder output's recorded parts too).
    Returns whether there was any."""
    folder = Path(work_dir(spec))
    if not folder.exists():
        return False
    if is_folder_output(spec.output):
        for record in Manifest(folder).records().values():
            if record.part and (folder.parent / record.part).exists() and output_location(spec.output)[2]:
                (folder.parent / record.part).unlink()
    shutil.rmtree(folder, ignore_errors=True)
    return True


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model: str) -> list[Any]:
    """What identifies a local model's content: its files' names, sizes and modification times (up to 2000)."""
    path = Path(model).expanduser()
    if path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        found: list[Any] = [str(path.resolve())]
        for index, item in enumerate(sorted(path.rglob("*"))):
            if index >= 2000:
                break
            if item.is_file() and "__pycache__" not in item.parts:
                stat = item.stat()
                found.append([str(item.relative_to(path)), stat.st_size, stat.st_mtime_ns])
        return found
    return [model]


class Manifest:
    """The manifest file of one work folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / MANIFEST

    def header(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as handle:
                first = handle.readline()
            header = json.loads(first)
        except (OSError, ValueError):
            return None
        return header if isinstance(header, dict) and "fingerprint" in header else None

    def read(self) -> tuple[dict[int, ChunkRecord], dict[str, Any] | None]:
        """Done chunks by index (a torn last line is ignored), and the end of the input once it was
        reached (``{"end": true, "chunks": N, "rows": R}``)."""
        done: dict[int, ChunkRecord] = {}
        end: dict[str, Any] | None = None
        try:
            with open(self.path, "rb") as handle:
                handle.readline()
                for line in handle:
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(item, dict) and "chunk" in item:
                        done[int(item["chunk"])] = ChunkRecord(**item)
                    elif isinstance(item, dict) and "end" in item:
                        end = item
        except (OSError, TypeError):
            return {}, None
        return done, end

    def records(self) -> dict[int, ChunkRecord]:
        return self.read()[0]

    def start(self, print_: str, details: dict[str, Any]) -> None:
        """A fresh manifest (the folder is emptied first)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.folder / "parts").mkdir(parents=True)
        with open(self.path, "w") as handle:
            handle.write(json.dumps({"fingerprint": print_, "manifest": 1, **details}, default=str) + "\n")

    def append(self, item: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(item, default=str) + "\n")
            handle.flush()

    def record(self, record: ChunkRecord) -> None:
        self.append(asdict(record))

    def record_end(self, chunks: int, rows: int) -> None:
        self.append({"end": True, "chunks": chunks, "rows": rows})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


