"""A long-lived helper process that serves one model over its stdin/stdout (R, isolated Python).

The process runs in its own session, so a terminal's Ctrl+C reaches the server, not in-flight
requests; what it writes to stderr is logged with the model's name and its last lines are kept
for the report when it dies. The caller speaks its protocol over :attr:`stdin` / :attr:`stdout`.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO, Sequence

STDERR_LINES = 20
STOP_SECONDS = 5.0


class WorkerProcess:
    """One worker process, its pipes, and the last lines it wrote to stderr."""

    def __init__(self, label: str, kind: str, logger: logging.Logger, said: str) -> None:
        #: The model's name, shown with every line the process writes to stderr.
        self.label = label
        #: What the process is, for log lines: "R worker", "isolated worker".
        self.kind = kind
        #: How exit reports introduce its stderr: "R said".
        self.said = said
        self.log = logger
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.process.stdin if self.process is not None else None

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.process.stdout if self.process is not None else None

    def launch(self, command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        """Start ``command`` with piped stdin/stdout and its stderr pumped into the log."""
        self.stderr_tail.clear()
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        assert self.process.stderr is not None
        self._drain = threading.Thread(
            target=self._pump_stderr, args=(self.process.stderr,), daemon=True, name=f"stderr-{self.label}"
        )
        self._drain.start()

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                self.log.info("%s of model '%s': %s", self.kind, self.label, line)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Close its stdin (the worker exits at end of input), then kill it if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:  # pragma: no cover - a broken pipe on close
                    pass
        if self._drain is not None:
            self._drain.join(1.0)

    def kill(self) -> None:
        """End the process now (it broke the protocol or a request must not wait any longer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def exit_report(self) -> str:
        """How the process ended and what it last wrote to stderr; stops it if it still runs."""
        process = self.process
        if process is None:
            return "it never started"
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.stop()
        code = process.returncode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        tail = " | ".join(self.stderr_tail)
        return f"pid {process.pid}, {how}" + (f"; {self.said}: {tail}" if tail else "")
