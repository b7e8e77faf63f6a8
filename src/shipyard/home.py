"""``$SHIPYARD_HOME``: where Shipyard keeps caches and state (default ``~/.shipyard``)."""

from __future__ import annotations

import os
from pathlib import Path


def shipyard_home() -> Path:
    """The Shipyard home folder (not created here); tests point ``SHIPYARD_HOME`` at a temporary one."""
    return Path(os.environ.get("SHIPYARD_HOME") or Path.home() / ".shipyard").expanduser()
