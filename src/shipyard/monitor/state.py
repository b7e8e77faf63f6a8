"""A detector's state on disk, so its window, counters and feedback survive a restart.

One JSON file, replaced atomically (written to a temporary file in the same folder, fsynced, renamed
over the old one, the folder fsynced), so a crash leaves the previous state or the new one, never a
torn file. The receiver saves it every few seconds when something changed and once more on a
graceful stop (SIGTERM / SIGINT), and loads it at start.

The file carries a fingerprint of what the state belongs to (the detector, its options and a hash of
the reference sample); a state saved for something else is ignored with a warning, as is a file that
does not read (the next save replaces it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from shipyard.home import shipyard_home

#: Bumped when the layout changes; a file of another version is ignored.
STATE_VERSION = 1
#: Environment variable that sets the state file of ``shipyard serve FOLDER`` (the control plane may set it).
STATE_ENV = "SHIPYARD_DETECTOR_STATE"


class StateError(ValueError):
    """A state file that cannot be read; the message says which and why."""


def default_state_path(name: str) -> Path:
    """``$SHIPYARD_HOME/monitor/<name>/state.json``."""
    return shipyard_home() / "monitor" / name / "state.json"


def fingerprint(detector: str, options: Mapping[str, Any], reference: pd.DataFrame) -> str:
    """What a state belongs to: the detector, its options and the reference's columns and values."""
    digest = hashlib.sha256()
    chosen = {k: v for k, v in sorted(options.items()) if v is not None}
    digest.update(json.dumps([detector, chosen, [str(c) for c in reference.columns]], default=str).encode())
    digest.update(pd.util.hash_pandas_object(reference, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


class StateFile:
    """Load and atomically save one JSON state file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> dict[str, Any] | None:
        """The saved state, None when there is none; StateError when it does not read."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"the state file {self.path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise StateError(f"the state file {self.path} does not hold a JSON object")
        if data.get("version") != STATE_VERSION:
            raise StateError(f"the state file {self.path} has version {data.get('version')!r}; this Shipyard "
                             f"reads version {STATE_VERSION}")
        return data

    def save(self, data: Mapping[str, Any]) -> None:
        """Write ``data`` (plus the version) atomically; OSError when the folder is not writable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({**data, "version": STATE_VERSION}, separators=(",", ":")).encode()
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        try:
            folder = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(folder)
        except OSError:
            pass
        finally:
            os.close(folder)
