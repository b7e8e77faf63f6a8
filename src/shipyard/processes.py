"""What ``/proc`` says about other processes: ids, state, command line and an environment tag.

The control plane and the training launcher recognise their own processes after a restart by a
tag in their environment (a pid alone may have been reused by a stranger).
"""

from __future__ import annotations

import os


def pids() -> list[int]:
    """Every process id this machine lists (empty where there is no ``/proc``)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()] if os.path.isdir("/proc") else []


def state(pid: int) -> str | None:
    """The process state letter (R, S, Z...), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    return state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" when unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def env_tag(pid: int, name: str) -> str | None:
    """The value of environment variable ``name`` in a live process (None for zombies, strangers
    without it and other users' processes)."""
    if not alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            variables = handle.read().split(b"\0")
    except OSError:
        return None
    prefix = f"{name}=".encode()
    for variable in variables:
        if variable.startswith(prefix):
            return variable[len(prefix):].decode(errors="replace")
    return None
