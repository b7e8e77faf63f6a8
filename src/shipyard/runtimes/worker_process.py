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
from typing import IO, Any, Sequence

from shipyard.runtimes.base import Model, ModelSource

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


class ProcessModel(Model):
    """A model answered by a :class:`WorkerProcess`, one request at a time; a dead worker is replaced.

    Subclasses implement :meth:`_start` (launch the worker and have it load the model) and hold
    :attr:`_lock` while they speak to it.
    """

    def __init__(self, source: ModelSource, worker: WorkerProcess) -> None:
        super().__init__(source)
        #: How many times a dead worker was replaced.
        self.restarts = 0
        self._worker = worker
        self._lock = threading.Lock()
        self._unloaded = False

    @property
    def worker_pid(self) -> int | None:
        """The process id of the worker, if one was started."""
        return self._worker.pid

    def _start(self) -> Any:
        """Start a worker and load the model in it; the caller holds the lock."""
        raise NotImplementedError

    def _ensure_worker(self) -> None:
        """Replace a worker that died since the last request (the caller holds the lock)."""
        if self._worker.alive():
            return
        report = self._worker.exit_report()
        self._worker.log.warning("the %s of model '%s' had stopped (%s); starting a new one",
                                 self._worker.kind, self.name, report)
        self.restarts += 1
        self._start()

    def unload(self) -> None:
        """Stop the worker; an in-flight request gets STOP_SECONDS to finish before it is killed."""
        locked = self._lock.acquire(timeout=STOP_SECONDS)
        try:
            self._unloaded = True
            if not locked:
                self._worker.kill()
            self._worker.stop()
        finally:
            if locked:
                self._lock.release()
        super().unload()
