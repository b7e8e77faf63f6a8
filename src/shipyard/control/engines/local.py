"""The ``local`` engine: each replica is a ``shipyard serve`` process on this machine.

A replica runs in a session of its own, so it outlives a control plane killed with SIGKILL; the
next control plane adopts it. Its stdout and stderr go to its log file, where the engine also
reads the addresses it listens on. Every replica carries ``SHIPYARD_REPLICA=<home>#<replica id>``
in its environment: that tells a replica of ours from an unrelated process that got a recorded
pid after a reboot or pid wrap-around, and lets a restarted control plane find replicas it
started but never recorded (it was killed while they booted).

With ``prefork=True`` (what ``shipyard up`` uses), replicas of fork-safe formats are forked from a
zygote that has their runtime imported already (control/prefork.py), which cuts a cold start
from ~1.8 s to a few hundred ms; they look like spawned replicas in every way the engine checks.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shipyard import logformat, processes
from shipyard.control import prefork as zygote
from shipyard.control.engines.base import EngineError, ReplicaHandle, ReplicaSpec
from shipyard.home import shipyard_home

REPLICA_ENV = "SHIPYARD_REPLICA"
#: The lines ``shipyard serve`` prints once it listens (server/runner.py).
LISTENING = re.compile(r"listening on (http://\S+)")
GRPC_LISTENING = re.compile(r"gRPC listening on ([^\s\"]+)")  # stops at the quote of a JSON log line
POLL_S = 0.05
#: How often a starting replica's log is read for the line saying where it listens.
LISTEN_POLL_S = 0.01


class LocalEngine:
    """Starts, watches, stops and adopts ``shipyard serve`` processes."""

    def __init__(self, home: Path | None = None, python: str = sys.executable, start_timeout_s: float = 60.0,
                 prefork: bool = False) -> None:
        self.home = (home or shipyard_home()).resolve()
        self.python = python
        self.start_timeout_s = start_timeout_s
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._http: httpx.AsyncClient | None = None
        self.prefork = zygote.Prefork(self.home / "logs" / "prefork.log", python) \
            if prefork and zygote.enabled() and python == sys.executable else None

    def warm(self) -> None:
        """Start the zygote now (in the background), so the first forked replica does not wait for it."""
        if self.prefork is not None:
            self.prefork.warm()

    def _tag(self, spec: ReplicaSpec) -> str:
        return f"{self.home}#{spec.replica_id}"

    def command(self, spec: ReplicaSpec) -> list[str]:
        """The full command line of a replica."""
        return [self.python, "-m", "shipyard", "serve", *spec.argv,
                "--http-port", "0", "--grpc-port", "0", "--workers", "1"]

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Spawn the replica and wait until it prints where it listens (not until its model is loaded)."""
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, REPLICA_ENV: self._tag(spec)}
        with open(spec.log_path, "ab") as log:
            starting = f"starting replica {spec.index} of {spec.revision}: shipyard serve {' '.join(spec.argv)}"
            log.write((logformat.json_line(starting, logger="shipyard.control") if logformat.ACTIVE else
                       f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {starting}\n").encode())
            log.flush()
            offset = log.tell()
        pid = None
        if self.prefork is not None:
            pid = await self.prefork.spawn(spec.env.get(zygote.FORMAT_ENV), self.command(spec), env, spec.log_path)
        if pid is None:
            with open(spec.log_path, "ab") as log:
                process = subprocess.Popen(self.command(spec), stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._children[process.pid] = process
            pid = process.pid
        handle = ReplicaHandle(spec, pid)
        try:
            await self._wait_listening(handle, offset)
        except BaseException:  # failed, timed out or cancelled: never leave the process behind
            await self._kill(pid)
            handle.state = "failed"
            raise
        return handle

    def _exited(self, pid: int) -> int | None:
        """The exit code of a replica this engine started (spawned or forked), None while it runs."""
        process = self._children.get(pid)
        if process is not None:
            return process.poll()
        return self.prefork.exit_code(pid) if self.prefork is not None else None

    async def _wait_listening(self, handle: ReplicaHandle, offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            text = _read_from(handle.spec.log_path, offset)
            grpc_match = GRPC_LISTENING.search(text)
            http_match = LISTENING.search(text)
            if http_match:
                handle.http_url = http_match.group(1)
                handle.grpc_address = grpc_match.group(1) if grpc_match else None
                return
            code = self._exited(handle.pid)
            if code is not None:
                raise EngineError(f"exited with code {code} before listening:\n{_tail(text)}")
            if time.monotonic() > deadline:
                raise EngineError(f"did not listen within {self.start_timeout_s:.0f}s:\n{_tail(text)}")
            await asyncio.sleep(LISTEN_POLL_S)

    async def ready(self, handle: ReplicaHandle) -> bool:
        return await self._get_ok(handle.http_url, "/v2/health/ready")

    async def _get_ok(self, url: str | None, path: str) -> bool:
        if not url:
            return False
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=2.0)
        try:
            return (await self._http.get(url + path)).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self, handle: ReplicaHandle) -> bool:
        process = self._children.get(handle.pid)
        if process is not None:
            return process.poll() is None
        if self.prefork is not None and self.prefork.owns(handle.pid):
            if self.prefork.exit_code(handle.pid) is not None:
                return False
            if self.prefork.running:  # its exit will be reported (with its code) by the zygote
                return True
        return processes.env_tag(handle.pid, REPLICA_ENV) == self._tag(handle.spec)

    def exit_code(self, handle: ReplicaHandle) -> int | None:
        return self._exited(handle.pid)

    async def stop(self, handle: ReplicaHandle, grace_s: float = 10) -> None:
        """SIGTERM the replica's process group (it drains), SIGKILL it after ``grace_s``."""
        if handle.pid in self._children or processes.env_tag(handle.pid, REPLICA_ENV) == self._tag(handle.spec):
            await self._kill(handle.pid, grace_s)
        self._children.pop(handle.pid, None)
        handle.state = "stopped"

    async def _kill(self, pid: int, grace_s: float = 0.0) -> None:
        for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if signum == signal.SIGTERM and grace_s <= 0:
                continue
            try:
                os.killpg(pid, signum)  # the replica leads its own session: its workers go too
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self._running(pid):
                await asyncio.sleep(POLL_S)
            if not self._running(pid):
                break
        self._reap(pid)

    def _running(self, pid: int) -> bool:
        process = self._children.get(pid)
        if process is not None:
            return process.poll() is None
        return processes.alive(pid)

    def _reap(self, pid: int) -> None:
        process = self._children.get(pid)
        if process is not None:
            try:
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not take: nothing more to do
                pass

    async def adopt(self, record: dict[str, Any]) -> ReplicaHandle | None:
        """The replica in ``record`` if that pid is still our replica and answers /v2/health/live."""
        spec = ReplicaSpec(record["namespace"], record["isvc"], record["revision"], int(record["index"]), [],
                           log_path=Path(record.get("log_path") or "replica.log"))
        pid = record.get("pid")
        if not pid or processes.env_tag(pid, REPLICA_ENV) != self._tag(spec) or "shipyard serve" not in processes.cmdline(pid):
            return None
        handle = ReplicaHandle(spec, pid, record.get("http_url"), record.get("grpc_address"))
        if not await self._get_ok(handle.http_url, "/v2/health/live"):
            return None
        handle.state = "ready" if await self.ready(handle) else "starting"
        return handle

    async def sweep(self, keep: set[str]) -> list[int]:
        """Stop this home's replicas that are not in ``keep`` (started by a control plane that died before
        recording them, or whose service is gone). Returns their pids."""
        prefix = f"{self.home}#"
        stopped = []
        for pid in processes.pids():
            tag = processes.env_tag(pid, REPLICA_ENV)
            if tag and tag.startswith(prefix) and tag[len(prefix):] not in keep and pid != os.getpid():
                await self._kill(pid, grace_s=5.0)
                stopped.append(pid)
        return stopped

    async def close(self) -> None:
        if self.prefork is not None:
            await self.prefork.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(1 << 20).decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
