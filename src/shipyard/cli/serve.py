"""``shipyard serve MODEL...``: a standalone V2/V1 model server."""

from __future__ import annotations

import logging
import re
from typing import Optional

import typer

from shipyard.cli.errors import fail, warn
from shipyard.package.source import model_source
from shipyard.server.runner import DEFAULT_MAX_REQUEST_SIZE, ServeOptions
from shipyard.server.runner import serve as run_server

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """'64MiB', '10mb', '1048576' -> bytes."""
    match = _SIZE.match(text)
    if not match or (match.group(2) or "").lower() not in _UNITS:
        raise typer.BadParameter(f"'{text}' is not a size; use bytes or a unit, e.g. 64MiB, 10MB, 1048576")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def serve(
    models: list[str] = typer.Argument(
        ...,
        metavar="MODEL",
        help="Model package directory (with shipyard.yaml), artifact file (.joblib, .pkl, .json, .ubj, .txt) "
        "or directory with model.py.",
        show_default=False,
    ),
    name: Optional[list[str]] = typer.Option(
        None, "--name", "-n", help="Name to serve a model under; repeat to name each MODEL in order."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    http_port: int = typer.Option(8080, "--http-port", "-p", help="REST port (0 picks a free one)."),
    max_request_size: str = typer.Option(
        f"{DEFAULT_MAX_REQUEST_SIZE // 1024**2}MiB", help="Largest request body accepted; bigger ones get 413."
    ),
    log_level: str = typer.Option("warning", help="debug, info, warning or error."),
) -> None:
    """Serve models over the Open Inference Protocol (V2) and KServe V1 REST.

    [b]Examples[/b]

      shipyard serve model.joblib                 [dim]# serves 'model' on :8080[/]

      shipyard serve iris.joblib churn.json -n iris -n churn -p 9000
    """
    names = name or []
    if len(names) > len(models):
        fail(f"{len(names)} --name values for {len(models)} MODEL(s); give at most one --name per MODEL")
    if not 0 <= http_port <= 65535:
        fail(f"--http-port must be between 0 and 65535, got {http_port}")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level must be debug, info, warning or error, got '{log_level}'")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sources = []
    for index, argument in enumerate(models):
        try:
            source, warnings = model_source(argument, names[index] if index < len(names) else None)
        except ValueError as exc:
            fail(str(exc))
        for message in warnings:
            warn(message)
        sources.append(source)
    taken = [s.name for s in sources]
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        fail(f"two models would be served as '{duplicates[0]}'; name them apart with --name")
    options = ServeOptions(host=host, http_port=http_port, max_request_size=parse_size(max_request_size))
    raise typer.Exit(run_server(sources, options))
