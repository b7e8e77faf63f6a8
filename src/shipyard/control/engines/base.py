"""The engine interface: what the controller needs from whatever runs replicas.

The ``local`` engine runs each replica as a ``shipyard serve`` process; a Ray engine would run
the same ``shipyard serve`` arguments as a Ray actor and implement the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class EngineError(RuntimeError):
    """A replica could not be started (the message says why, with the end of its log)."""


@dataclass
class ReplicaSpec:
    """One replica to run: ``argv`` are the ``shipyard serve`` arguments after ``serve``."""

    namespace: str
    isvc: str
    revision: str
    index: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("replica.log")

    @property
    def replica_id(self) -> str:
        """Identifies the replica across control-plane restarts."""
        return f"{self.namespace}/{self.revision}/{self.index}"


@dataclass
class ReplicaHandle:
    """A started (or adopted) replica; ``state`` is starting, ready, failed or stopped."""

    spec: ReplicaSpec
    pid: int
    http_url: str | None = None
    grpc_address: str | None = None
    state: str = "starting"


class Engine(Protocol):
    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start a replica; return once it listens (its addresses are known) or raise EngineError."""

    async def ready(self, handle: ReplicaHandle) -> bool:
        """Is the replica ready to serve (its models loaded)?"""

    async def stop(self, handle: ReplicaHandle, grace_s: float = 10) -> None:
        """Stop the replica: let in-flight requests finish for up to ``grace_s``, then kill it."""

    def alive(self, handle: ReplicaHandle) -> bool:
        """Is the replica still running?"""

    def exit_code(self, handle: ReplicaHandle) -> int | None:
        """How a replica that is no longer alive ended (None when the engine cannot tell)."""

    async def adopt(self, record: dict[str, Any], spec: ReplicaSpec) -> ReplicaHandle | None:
        """Re-attach to a replica recorded by an earlier control plane, or None when it is gone."""

    async def sweep(self, keep: set[str]) -> list[int]:
        """Stop replicas this engine runs whose replica_id is not in ``keep`` (leftovers of a crash)."""
