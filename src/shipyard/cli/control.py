"""``shipyard up``: start the local control plane (API, gateway, controller), in the foreground or detached."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import typer

from shipyard import logformat, tracing
from shipyard.cli.errors import fail
from shipyard.home import shipyard_home

#: How long ``--detach`` waits for the plane to answer /healthz.
DETACH_TIMEOUT_S = 60.0


def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background (output to "
                                "$SHIPYARD_HOME/logs/plane.log); return once it answers."),
    api_port: int = typer.Option(8400, "--api-port", help="Port of the control plane's API (0 picks a free one)."),
    http_port: int = typer.Option(8080, "--http-port", help="Gateway REST port (0 picks a free one)."),
    grpc_port: int = typer.Option(8081, "--grpc-port", help="Gateway gRPC port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the API, dashboard and gateway listen on. "
                             "Beyond loopback (e.g. 0.0.0.0) the API and dashboard need a token."),
    token: Optional[str] = typer.Option(None, "--token", help="The token the API and dashboard require "
                                        "(default: $SHIPYARD_TOKEN; beyond loopback without one, a token is "
                                        "generated and printed once).", show_default=False),
    home: Optional[Path] = typer.Option(None, "--home", help="State folder (default: $SHIPYARD_HOME, else "
                                        "~/.shipyard).", show_default=False),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    log_format: Optional[str] = typer.Option(
        None, "--log-format", help="text, or json: one JSON object per line, for the plane and its replicas "
        "(default: $SHIPYARD_LOG_FORMAT, else text).", show_default=False,
    ),
) -> None:
    """Start the control plane: API on :8400, gateway on :8080 (REST) and :8081 (gRPC).

    Apply KServe InferenceService YAML with [b]shipyard apply -f[/]; the gateway serves each service by name.

    Ctrl+C (or SIGTERM) stops the plane [b]and every replica[/]; a killed plane leaves them serving for the next one.

    [b]Examples[/b]

      shipyard up                          [dim]# foreground; Ctrl+C stops it[/]

      shipyard up --detach                 [dim]# background; logs in ~/.shipyard/logs/plane.log[/]

      shipyard up --http-port 9080 --grpc-port 9081 --home ./state

      shipyard up --host 0.0.0.0           [dim]# reachable from other machines; prints the dashboard's token[/]

    The dashboard is at the API's address: [b]http://127.0.0.1:8400/[/].
    """
    from shipyard.control.auth import ENV as TOKEN_ENV
    from shipyard.control.auth import generate_token, is_loopback
    from shipyard.control.plane import PlaneError, PlaneOptions, running_plane, serve_plane
    from shipyard.server.runner import use_uvloop

    for flag, port in (("--api-port", api_port), ("--http-port", http_port), ("--grpc-port", grpc_port)):
        if not 0 <= port <= 65535:
            fail(f"{flag} must be between 0 and 65535, got {port}", code=2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level must be debug, info, warning or error, got '{log_level}'", code=2)
    if not host.strip():
        fail("--host must be an address such as 127.0.0.1 or 0.0.0.0", code=2)
    given = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if given is not None and (not given.strip() or any(ch.isspace() or ch in ';,"' for ch in given)):
        fail("--token (or $SHIPYARD_TOKEN) must be a non-empty word without spaces, quotes, commas or semicolons",
             code=2)
    generated = generate_token() if given is None and not is_loopback(host) else None
    try:
        os.environ[logformat.ENV] = logformat.resolve(log_format)  # replicas and a detached plane inherit it
        tracing.exporters_from(os.environ)  # a bad OTEL_* variable fails here, not in the background
    except ValueError as exc:
        fail(str(exc), code=2)
    if home is not None:  # replicas and every helper read it from the environment
        os.environ["SHIPYARD_HOME"] = str(home.expanduser().resolve())
    state = shipyard_home()
    info = running_plane(state)
    if info is not None:
        fail(f"a control plane is already running for {state} (pid {info.get('pid', '?')}, API "
             f"{info.get('api_url', '?')}); stop it first, or use another --home")
    if detach:
        _detach(state, api_port, http_port, grpc_port, log_level, host, given or generated, generated is not None)
        return
    logformat.setup(level, os.environ[logformat.ENV])
    try:
        tracing.configure("shipyard-gateway")  # only when OTEL_* ask for it; replicas inherit them
    except ValueError as exc:
        fail(str(exc), code=2)
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # one line per health check otherwise
    use_uvloop()
    try:
        options = PlaneOptions(host=host, api_port=api_port, http_port=http_port, grpc_port=grpc_port, home=state,
                               token=given or generated)
        raise typer.Exit(asyncio.run(serve_plane(options, lambda info: _announce(info, generated is not None))))
    except PlaneError as exc:
        fail(str(exc))


def _announce(info: dict[str, Any], show_token: bool = False) -> None:
    _say(f"Shipyard control plane {info['version']} running (pid {info['pid']}, state in {info['home']})")
    _print_urls(info, show_token)
    _say("Apply a service: shipyard apply -f isvc.yaml. Ctrl+C stops the plane and its replicas.")


def _print_urls(info: dict[str, Any], show_token: bool = False) -> None:
    _say(f"  API:      {info['api_url']}")
    _say(f"  Gateway:  {info['gateway_url']} (REST), {info.get('gateway_grpc') or '-'} (gRPC)")
    dashboard = _dashboard_url(info["api_url"])
    if not info.get("token"):
        _say(f"  Dashboard: {dashboard}")
    elif show_token:  # generated: shown this once (it is also in plane.json, readable by you only)
        _say(f"  Dashboard: open {dashboard}?token={info['token']}")
        _say("  The API needs this token beyond loopback: the CLI reads it from plane.json; elsewhere set "
             "SHIPYARD_TOKEN.")
    else:
        _say(f"  Dashboard: {dashboard} (open {dashboard}?token=YOUR_TOKEN once)")


def _dashboard_url(api_url: str) -> str:
    """The API's URL as a browser elsewhere reaches it: a wildcard address becomes this machine's name."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    if parts.hostname in ("0.0.0.0", "::"):
        return f"http://{socket.gethostname()}:{parts.port}/"
    return api_url.rstrip("/") + "/"


def _say(message: str) -> None:
    """A line for the user; a JSON line with JSON logs."""
    if logformat.ACTIVE:
        logformat.emit(message.strip(), logger="shipyard.control")
    else:
        print(message, flush=True)


def _detach(state: Path, api_port: int, http_port: int, grpc_port: int, log_level: str, host: str = "127.0.0.1",
            token: str | None = None, show_token: bool = False) -> None:
    """Start ``shipyard up`` in a session of its own and wait until it answers (the token goes to it in
    its environment, not on its command line)."""
    from shipyard.control.auth import ENV as TOKEN_ENV
    from shipyard.control.plane import running_plane

    log_path = state / "logs" / "plane.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "shipyard", "up", "--api-port", str(api_port), "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--home", str(state), "--log-level", log_level, "--host", host]
    environment = {**os.environ, TOKEN_ENV: token} if token else None
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=environment)
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"the control plane exited with code {process.returncode}:\n{_read_from(log_path, offset)}")
        info = running_plane(state)
        if info and info.get("pid") == process.pid and _healthy(info.get("api_url")):
            print(f"Shipyard control plane running in the background (pid {process.pid}; log {log_path})")
            _print_urls(info, show_token)
            return
        time.sleep(0.1)
    fail(f"the control plane did not answer within {DETACH_TIMEOUT_S:.0f}s (pid {process.pid}); see {log_path}")


def _healthy(url: str | None) -> bool:
    try:
        return bool(url) and httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").rstrip()
