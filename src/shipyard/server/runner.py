"""Run a model server: load models, listen (REST and gRPC), print where, drain on signals.

One process by default on a one-core machine; ``--workers N`` runs N worker processes on the same
ports (see ``workers.py``). Both run the same ``run_worker`` coroutine.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field

from shipyard import __version__, logformat, tracing
from shipyard.runtimes import ModelSource, create_model
from shipyard.server.batching import BatchPolicy
from shipyard.server.dataplane import DataPlane
from shipyard.server.http import HttpServer
from shipyard.server.peers import Peers
from shipyard.server.reloader import Reloader, WatchedModel
from shipyard.server.repository import ModelEntry, ModelRepository, ModelState, SourceResolver
from shipyard.server.rest import RestApp

log = logging.getLogger("shipyard.server")

DEFAULT_MAX_REQUEST_SIZE = 64 * 1024 * 1024


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8080
    #: None turns gRPC off
    grpc_port: int | None = 8081
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    drain_seconds: float = 30.0
    #: Loads models by name for the repository extension (``--model-repository``).
    resolver: SourceResolver | None = None
    repository_location: str = ""
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    workers: int = 1
    #: Bytes of model memory per worker before least recently used idle models are evicted.
    memory_limit: int | None = None
    #: ``--reload``: models reloaded when their files change (single-process servers only).
    reload: list[WatchedModel] = field(default_factory=list)


@dataclass
class WorkerSetup:
    """What one worker process of a multi-worker server gets from its supervisor."""

    index: int
    http_socket: socket.socket
    unix_socket: str
    peers: Peers


class StartupError(RuntimeError):
    """The server could not start (port in use, model failed to load)."""


def say(message: str, error: bool = False) -> None:
    """An announcement (listening, ready, stopped) or a start-up error: a line on stdout (errors on
    stderr), a JSON line with JSON logs (see shipyard.logformat)."""
    if logformat.ACTIVE:
        logformat.emit(message, "ERROR" if error else "INFO", "shipyard.server", sys.stderr if error else None)
    else:
        print(f"error: {message}" if error else message, file=sys.stderr if error else sys.stdout, flush=True)


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we test
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_repository(sources: list[ModelSource], options: ServeOptions) -> ModelRepository:
    repository = ModelRepository(options.resolver, options.repository_location, options.batching,
                                 options.memory_limit, options.drain_seconds)
    for source in sources:
        repository.add(create_model(source))
    return repository


def serve(sources: list[ModelSource], options: ServeOptions) -> int:
    """Serve ``sources`` until SIGINT/SIGTERM; return the process exit code."""
    try:
        if options.workers > 1:
            from shipyard.server.workers import serve_workers

            return serve_workers(sources, options)
        use_uvloop()
        return asyncio.run(run_worker(build_repository(sources, options), options))
    except StartupError as exc:
        say(str(exc), error=True)
        return 1


def report_loaded(entries: list[ModelEntry], base: str) -> bool:
    """Print each model's URLs or load failure; True when every model loaded."""
    ok = True
    for entry in entries:
        model = entry.model
        if entry.state is ModelState.READY:
            say(f"  model '{model.name}' ({model.format}, version {model.version}) ready")
            say(f"    V2: POST {base}/v2/models/{model.name}/infer")
            say(f"    V1: POST {base}/v1/models/{model.name}:predict")
        else:
            ok = False
            say(f"model '{model.name}' failed to load: {entry.reason}", error=True)
    return ok


async def run_worker(repository: ModelRepository, options: ServeOptions, setup: WorkerSetup | None = None) -> int:
    """Serve until a signal: listen, load what is not loaded yet, then drain. Returns the exit code.

    A single-process server announces itself; in a multi-worker server the supervisor has done
    that, and worker 0 reports the models that load in the workers.
    """
    dataplane = DataPlane(repository, setup.peers if setup else None)
    server = HttpServer(RestApp(dataplane, options.max_request_size), options.host, options.http_port,
                        options.max_request_size)
    try:
        await server.start(setup.http_socket if setup else None)
        if setup:
            await server.start_unix(setup.unix_socket)
    except OSError as exc:
        raise StartupError(listen_error(exc, options.host, options.http_port, "--http-port")) from None
    grpc_server = None
    if options.grpc_port is not None:
        from shipyard.server.grpc_service import start_grpc_server  # grpc only when asked for

        try:
            grpc_server, grpc_port = await start_grpc_server(
                dataplane, options.host, options.grpc_port, options.max_request_size, reuse_port=setup is not None
            )
        except (OSError, RuntimeError) as exc:
            await server.shutdown(0)
            raise StartupError(
                f"cannot listen for gRPC on {options.host}:{options.grpc_port} ({exc}); pick another port with "
                "--grpc-port or turn gRPC off with --no-grpc"
            ) from None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    base = f"http://{options.host}:{server.port}"
    pending = [entry for entry in repository.entries() if entry.state is not ModelState.READY]
    if setup is None:
        if grpc_server is not None:  # printed first: tools wait for the "listening on http" line
            say(f"gRPC listening on {options.host}:{grpc_port}")
        say(f"Shipyard {__version__} listening on {base} (loading {len(pending)} model(s))")
    loading = asyncio.ensure_future(repository.load_all())
    await asyncio.wait([loading, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    failed = False
    watcher: asyncio.Future[None] | None = None
    if loading.done():
        loaded = [entry for entry in loading.result() if entry in pending]
        if setup is None or setup.index == 0:
            failed = not report_loaded(loaded, base)
        else:
            failed = any(entry.state is not ModelState.READY for entry in loaded)
        if not failed:
            settle_garbage_collector()
            if setup is None:
                say("Ready. Press Ctrl+C to stop.")
                if options.reload:
                    watcher = asyncio.ensure_future(Reloader(repository, options.reload).run())
                    say(f"Watching {len(options.reload)} model(s) for changes (--reload).")
            await stop.wait()

    if watcher is not None:
        watcher.cancel()
    if setup is None:
        say("Stopping: finishing in-flight requests...")
    if grpc_server is not None:
        grpc_stop = asyncio.ensure_future(grpc_server.stop(options.drain_seconds))
    cut = await server.shutdown(options.drain_seconds)
    if grpc_server is not None:
        await grpc_stop
    if cut:
        log.warning("%d connection(s) still busy after %.0fs were closed", cut, options.drain_seconds)
    loading.cancel()
    repository.unload_all()
    tracing.shutdown()  # export the spans still queued (a forked worker ends without atexit)
    if setup is None:
        say("Stopped.")
    return 1 if failed else 0


def settle_garbage_collector() -> None:
    """Move everything loaded so far (libraries, models) out of the collector's sight, and collect
    the young generation less often: requests allocate much and make few cycles, and a full
    collection over scikit-learn's and scipy's objects is a multi-millisecond pause in the p99."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _return_free_memory()


def _return_free_memory() -> None:
    """Hand memory freed while loading (import-time garbage, model files read) back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def listen_error(exc: OSError, host: str, port: int, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; pick another with {flag}"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
