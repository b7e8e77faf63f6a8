"""What every data operation returns (``OperationResult``) or raises (``OperationError``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

Log = Callable[[str], None]
"""One line per call; the controller writes it to the operation's log file."""


class OperationError(RuntimeError):
    """An operation failed; the message says what failed and why (shown in the status and the log)."""


@dataclass
class OperationResult:
    """The outcome of one run of a data operation (``status.shipyard`` is built from it)."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: bool = False            # memoized re-run skipped / nothing changed
    message: str = ""                # one line for the status condition
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput_mbps(self) -> float:
        """Bytes per second in MB/s (10^6), 0 when no time was measured."""
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


def locked(log: Log) -> Log:
    """``log`` made safe to call from several threads (lines never interleave)."""
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            log(line)

    return write
