"""Run a model server process: load models, listen, print where, drain on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
from dataclasses import dataclass

from shipyard import __version__
from shipyard.runtimes import ModelSource, create_model
from shipyard.server.dataplane import DataPlane
from shipyard.server.http import HttpServer
from shipyard.server.repository import ModelRepository, ModelState
from shipyard.server.rest import RestApp

log = logging.getLogger("shipyard.server")

DEFAULT_MAX_REQUEST_SIZE = 64 * 1024 * 1024


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8080
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    drain_seconds: float = 30.0


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
    repository = ModelRepository()
    for source in sources:
        repository.add(create_model(source))
    server = HttpServer(RestApp(DataPlane(repository)), options.host, options.http_port, options.max_request_size)
    try:
        await server.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {options.http_port} on {options.host} is already in use; pick another with --http-port"
            ) from None
        raise StartupError(f"cannot listen on {options.host}:{options.http_port}: {exc.strerror or exc}") from None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    base = f"http://{options.host}:{server.port}"
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
    cut = await server.shutdown(options.drain_seconds)
    if cut:
        log.warning("%d connection(s) still busy after %.0fs were closed", cut, options.drain_seconds)
    loading.cancel()
    repository.unload_all()
    _say("Stopped.")
    return 1 if failed else 0
