"""Start ``shipyard serve`` as a real process on a free port, for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

LISTENING = re.compile(r"listening on (http://\S+)")
GRPC_LISTENING = re.compile(r"gRPC listening on ([^\s\"]+)")  # stops at the quote of a JSON log line


class ServerProcess:
    """A running ``shipyard serve``; ``url`` is set once it listens."""

    def __init__(self, *args: str | Path, env: dict[str, str] | None = None,
                 subcommand: tuple[str, ...] = ("serve",)) -> None:
        """``shipyard serve ARGS`` on free ports, or ``shipyard SUBCOMMAND ARGS`` as given (e.g.
        ``subcommand=("monitor", "serve")``)."""
        command = [sys.executable, "-m", "shipyard", *subcommand, *map(str, args)]
        if subcommand == ("serve",):
            if "--http-port" not in command and "-p" not in command:
                command += ["--http-port", "0"]
            if "--grpc-port" not in command and "--no-grpc" not in command:
                command += ["--grpc-port", "0"]
            if "--workers" not in command:  # one process unless a test is about workers
                command += ["--workers", "1"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self.grpc_address: str | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            grpc_match = GRPC_LISTENING.search(line)
            if grpc_match:
                self.grpc_address = grpc_match.group(1)
            match = LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 60) -> str:
        if not self._listening.wait(timeout) or self.url is None:
            raise RuntimeError(f"server did not start:\n{self.output}")
        return self.url

    def wait_ready(self, timeout: float = 60) -> str:
        url = self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output}")

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.05)  # let the pump thread read the last lines
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait_exit(timeout)


@contextmanager
def running(*args: str | Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A ready server for the duration of a ``with`` block (module-scoped fixtures use it)."""
    process = ServerProcess(*args, env=env)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
