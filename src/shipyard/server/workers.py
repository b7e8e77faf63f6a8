"""``--workers N``: N worker processes serving the same ports.

The supervisor loads every fork-safe model once (scikit-learn, XGBoost, LightGBM: no thread pools
at load), then forks the workers, which share those weights copy-on-write; other models load in
each worker. Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections
evenly, and on a unix socket where its siblings reach it for global state (statistics, the
repository index, load and unload). The supervisor forwards SIGTERM/SIGINT, waits for the workers
to drain, and replaces a worker that dies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from shipyard import __version__
from shipyard.runtimes import ModelSource
from shipyard.server.peers import Peers
from shipyard.server.runner import (
    ServeOptions,
    StartupError,
    WorkerSetup,
    build_repository,
    listen_error,
    report_loaded,
    run_worker,
    say,
    use_uvloop,
)

#: A worker that dies this soon after starting, this many times in a row, stops the server.
QUICK_DEATH_SECONDS = 2.0
MAX_QUICK_DEATHS = 5


def limit_threads() -> None:
    """One library thread per worker: N workers use N cores, and forking is safe (no thread pools)."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def reserve_port(host: str, port: int, flag: str) -> socket.socket:
    """Bind (without listening) to hold the port for the workers' SO_REUSEPORT sockets."""
    try:
        return _reuseport_socket(host, port)
    except OSError as exc:
        raise StartupError(listen_error(exc, host, port, flag)) from None


def serve_workers(sources: list[ModelSource], options: ServeOptions) -> int:
    limit_threads()
    http_hold = reserve_port(options.host, options.http_port, "--http-port")
    http_port = http_hold.getsockname()[1]
    grpc_hold = None
    if options.grpc_port is not None:
        grpc_hold = reserve_port(options.host, options.grpc_port, "--grpc-port")
        options.grpc_port = grpc_hold.getsockname()[1]
    options.http_port = http_port
    base = f"http://{options.host}:{http_port}"

    repository = build_repository(sources, options)
    if options.grpc_port is not None:
        say(f"gRPC listening on {options.host}:{options.grpc_port}")
    say(f"Shipyard {__version__} listening on {base} ({options.workers} workers, loading {len(sources)} model(s))")
    preloaded = [repository.load_now(entry) for entry in repository.entries() if entry.model.fork_safe]
    if not report_loaded(preloaded, base):
        return 1

    rundir = tempfile.mkdtemp(prefix="shipyard-workers-")
    sockets = [os.path.join(rundir, f"worker-{index}.sock") for index in range(options.workers)]
    supervisor = Supervisor(repository, options, sockets)
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        for hold in (http_hold, grpc_hold):
            if hold is not None:
                hold.close()


class Supervisor:
    """Forks the workers, forwards signals, restarts workers that die."""

    def __init__(self, repository, options: ServeOptions, sockets: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.repository = repository
        self.options = options
        self.sockets = sockets
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}
        self.stopping = False

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = self._child(index)
            except StartupError as exc:
                print(f"error: worker {index}: {exc}", file=sys.stderr, flush=True)
            except BaseException:  # never let a child return into the supervisor's code
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()

    def _child(self, index: int) -> int:
        use_uvloop()
        if os.path.exists(self.sockets[index]):
            os.unlink(self.sockets[index])
        setup = WorkerSetup(
            index=index,
            http_socket=_listening(self.options.host, self.options.http_port),
            unix_socket=self.sockets[index],
            peers=Peers([path for i, path in enumerate(self.sockets) if i != index]),
        )
        return asyncio.run(run_worker(self.repository, self.options, setup))

    def _forward(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            say("Stopping: finishing in-flight requests...")
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for index in range(self.options.workers):
            self._fork(index)
        say("Ready. Press Ctrl+C to stop.")
        quick_deaths, code = 0, 0
        while self.children:
            pid, status = os.wait()
            index = self.children.pop(pid, None)
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                code = max(code, 1 if exit_code not in (0, -signal.SIGTERM) else 0)
                continue
            quick_deaths = quick_deaths + 1 if time.monotonic() - self.started[index] < QUICK_DEATH_SECONDS else 0
            if quick_deaths >= MAX_QUICK_DEATHS or exit_code == 1:
                print(f"error: worker {index} exited with {exit_code}; stopping the server", file=sys.stderr,
                      flush=True)
                self._forward(signal.SIGTERM, None)
                code = 1
                continue
            print(f"warning: worker {index} (pid {pid}) died with {exit_code}; starting a new one", file=sys.stderr,
                  flush=True)
            self._fork(index)
        say("Stopped.")
        return code


def _listening(host: str, port: int) -> socket.socket:
    sock = _reuseport_socket(host, port)
    sock.listen(2048)
    sock.setblocking(False)
    return sock
