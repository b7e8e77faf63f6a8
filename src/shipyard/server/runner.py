"""Run a model server process: load models, listen (REST and gRPC), print where, drain on signals."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
from dataclasses import dataclass, field

from shipyard import __version__
from shipyard.runtimes import ModelSource, create_model
from shipyard.server.batching import BatchPolicy
from shipyard.server.dataplane import DataPlane
from shipyard.server.http import HttpServer
from shipyard.server.repository import ModelRepository, ModelState, SourceResolver
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


class StartupError(RuntimeError):
    """The server could not start (port in use, model failed to load)."""


def _say(message: str) -> None:
    print(message, flush=True)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we test
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(sources: list[ModelSource], options: ServeOptions) -> int:
    """Serve ``sources`` until SIGINT/SIGTERM; return the process exit code."""
    _use_uvloop()
    try:
        return asyncio.run(_serve(sources, options))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


async def _serve(sources: list[ModelSource], options: ServeOptions) -> int:
    repository = ModelRepository(options.resolver, options.repository_location, options.batching)
    for source in sources:
        repository.add(create_model(source))
    dataplane = DataPlane(repository)
    server = HttpServer(RestApp(dataplane, options.max_request_size), options.host, options.http_port,
                        options.max_request_size)
    try:
        await server.start()
    except OSError as exc:
        raise StartupError(_listen_error(exc, options.host, options.http_port, "--http-port")) from None
    grpc_server = None
    if options.grpc_port is not None:
        from shipyard.server.grpc_service import start_grpc_server  # grpc only when asked for

        try:
            grpc_server, grpc_port = await start_grpc_server(dataplane, options.host, options.grpc_port,
                                                             options.max_request_size)
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
    if grpc_server is not None:  # printed first: tools wait for the "listening on http" line
        _say(f"gRPC listening on {options.host}:{grpc_port}")
    _say(f"Shipyard {__version__} listening on {base} (loading {len(sources)} model(s))")
    loading = asyncio.ensure_future(repository.load_all())
    await asyncio.wait([loading, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    failed = False
    if loading.done():
        for entry in loading.result():
            model = entry.model
            if entry.state is ModelState.READY:
                _say(f"  model '{model.name}' ({model.format}, version {model.version}) ready")
                _say(f"    V2: POST {base}/v2/models/{model.name}/infer")
                _say(f"    V1: POST {base}/v1/models/{model.name}:predict")
            else:
                failed = True
                print(f"error: model '{model.name}' failed to load: {entry.reason}", file=sys.stderr, flush=True)
        if not failed:
            _say("Ready. Press Ctrl+C to stop.")
            await stop.wait()

    _say("Stopping: finishing in-flight requests...")
    if grpc_server is not None:
        grpc_stop = asyncio.ensure_future(grpc_server.stop(options.drain_seconds))
    cut = await server.shutdown(options.drain_seconds)
    if grpc_server is not None:
        await grpc_stop
    if cut:
        log.warning("%d connection(s) still busy after %.0fs were closed", cut, options.drain_seconds)
    loading.cancel()
    repository.unload_all()
    _say("Stopped.")
    return 1 if failed else 0


def _listen_error(exc: OSError, host: str, port: int, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; pick another with {flag}"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
