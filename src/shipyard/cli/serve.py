"""``shipyard serve MODEL...``: a standalone V2/V1 model server."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Optional

import click
import typer

from shipyard import logformat, tracing
from shipyard.cli.errors import fail, warn
from shipyard.monitor.detector_folder import is_detector_folder
from shipyard.package.repository import RepositoryFolder, make_resolver
from shipyard.package.source import model_source
from shipyard.runtimes.base import ModelSource
from shipyard.server.batching import BatchPolicy
from shipyard.server.reloader import WatchedModel
from shipyard.server.runner import DEFAULT_MAX_REQUEST_SIZE, ServeOptions
from shipyard.server.runner import serve as run_server
from shipyard.server.upstream import Upstream

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """'64MiB', '10mb', '1048576' -> bytes."""
    match = _SIZE.match(text)
    if not match or (match.group(2) or "").lower() not in _UNITS:
        raise typer.BadParameter(f"'{text}' is not a size; use bytes or a unit, e.g. 64MiB, 10MB, 1048576")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def serve(
    ctx: typer.Context,
    models: Optional[list[str]] = typer.Argument(
        None,
        metavar="MODEL",
        help="Model package directory (with shipyard.yaml), artifact file (.joblib, .pkl, .json, .ubj, .txt, .onnx, "
        ".pt, .pt2, .rds), Hugging Face model folder, or folder with model.py.",
        show_default=False,
    ),
    name: Optional[list[str]] = typer.Option(
        None, "--name", "-n", help="Name to serve a model under; repeat to name each MODEL in order."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    http_port: int = typer.Option(8080, "--http-port", "-p", help="REST port (0 picks a free one)."),
    grpc_port: int = typer.Option(8081, "--grpc-port", help="gRPC port (0 picks a free one)."),
    grpc: bool = typer.Option(True, "--grpc/--no-grpc", help="Serve the V2 gRPC service too."),
    model_repository: Optional[Path] = typer.Option(
        None, "--model-repository", help="Folder with one sub-folder or artifact file per model; all are served, "
        "and the repository API (/v2/repository/...) can load and unload them by name.", show_default=False,
    ),
    load_on_request: bool = typer.Option(
        False, "--load-on-request", help="With --model-repository: start with no model loaded; each loads on its "
        "first request (which waits for it) or with POST /v2/repository/models/NAME/load.",
    ),
    max_request_size: str = typer.Option(
        f"{DEFAULT_MAX_REQUEST_SIZE // 1024**2}MiB", help="Largest request body accepted; bigger ones get 413."
    ),
    max_batch_size: int = typer.Option(
        64, "--max-batch-size", help="Rows of concurrent requests merged into one predict (1 turns batching off); "
        "a package's max_batch_size overrides it. Applies to scikit-learn, XGBoost, LightGBM and ONNX models, "
        "and to others whose package sets max_batch_size.",
    ),
    max_latency_ms: float = typer.Option(
        0.0, "--max-latency-ms", help="How long a request may wait for company while another batch runs "
        "(a lone request on an idle model never waits).",
    ),
    max_queue: int = typer.Option(2048, "--max-queue", help="Requests queued per model before 503 + Retry-After."),
    workers: int = typer.Option(
        default_workers(), "--workers", "-w", help="Worker processes serving the same ports (default: one per "
        "core). scikit-learn, XGBoost and LightGBM models load once and are shared by every worker.",
    ),
    memory_limit: Optional[str] = typer.Option(
        None, "--memory-limit", help="Model memory each worker may hold (e.g. 2GiB); past it the least recently "
        "used idle models are unloaded, and load again on their next request.", show_default=False,
    ),
    reload: bool = typer.Option(
        False, "--reload", help="Development: when a file of a MODEL changes (model.py, shipyard.yaml, artifacts, "
        "requirements), load the new version and swap it in; if it fails to load, the old one keeps serving. "
        "Implies --workers 1.",
    ),
    log_level: str = typer.Option("warning", help="debug, info, warning or error."),
    log_format: Optional[str] = typer.Option(
        None, "--log-format", help="text, or json: one JSON object per line with the request id (default: "
        "$SHIPYARD_LOG_FORMAT, else text).", show_default=False,
    ),
    predictor_url: Optional[str] = typer.Option(
        None, "--predictor-url", help="Serve as a transformer or explainer of the predictor at this URL "
        "(http://HOST:PORT): a model.py without predict() forwards its preprocessed inputs there.",
        show_default=False, rich_help_panel="Transformer / explainer",
    ),
    predictor_protocol: str = typer.Option(
        "v2", "--predictor-protocol", help="How to call the predictor: v1, v2 or grpc-v2.",
        rich_help_panel="Transformer / explainer",
    ),
    predictor_host: Optional[str] = typer.Option(
        None, "--predictor-host", help="Host header (gRPC :authority) to send with each predictor call, e.g. "
        "NAME-predictor.default.example.com through a Shipyard gateway.", show_default=False,
        rich_help_panel="Transformer / explainer",
    ),
    predictor_model: Optional[str] = typer.Option(
        None, "--predictor-model", help="The predictor's model name (default: the served model's own name).",
        show_default=False, rich_help_panel="Transformer / explainer",
    ),
    predictor_grpc_url: Optional[str] = typer.Option(
        None, "--predictor-grpc-url", help="Where the predictor's gRPC is when it is not at --predictor-url's "
        "host and port (grpc://HOST:PORT).", show_default=False, rich_help_panel="Transformer / explainer",
    ),
    predictor_timeout: float = typer.Option(
        600.0, "--predictor-timeout", help="Seconds a predictor call may take.",
        rich_help_panel="Transformer / explainer",
    ),
    predictor_retries: int = typer.Option(
        0, "--predictor-retries", help="Retries of a predictor call that could not connect.",
        rich_help_panel="Transformer / explainer",
    ),
) -> None:
    """Serve models over the Open Inference Protocol (V2, REST and gRPC) and KServe V1.

    [b]Examples[/b]

      shipyard serve model.joblib                 [dim]# serves 'model' on :8080[/]

      shipyard serve iris.joblib churn.json -n iris -n churn -p 9000

      shipyard serve --model-repository models/ --grpc-port 9001

      shipyard serve ./my-package --reload        [dim]# reloads when its files change[/]
    """
    models = models or []
    names = name or []
    if len(models) == 1 and model_repository is None and is_detector_folder(models[0]):
        # a detector folder (detector.yaml): its receiver; gRPC, workers and batching do not apply
        from shipyard.cli.monitor import serve_folder_command

        serve_folder_command(Path(models[0]), name=names[0] if names else None, host=host, port=http_port)
        return
    if not models and model_repository is None:
        fail("give at least one MODEL, or --model-repository DIR (see shipyard serve --help)", code=2)
    if load_on_request and model_repository is None:
        fail("--load-on-request needs --model-repository DIR", code=2)
    if len(names) > len(models):
        fail(f"{len(names)} --name values for {len(models)} MODEL(s); give at most one --name per MODEL")
    for flag, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if not 0 <= port <= 65535:
            fail(f"{flag} must be between 0 and 65535, got {port}")
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    if reload:
        workers = _prepare_reload(ctx, workers, model_repository)
    if max_batch_size < 1 or max_queue < 1 or max_latency_ms < 0:
        fail("--max-batch-size and --max-queue must be at least 1, and --max-latency-ms at least 0")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level must be debug, info, warning or error, got '{log_level}'")
    try:
        logformat.setup(level, logformat.resolve(log_format))
        tracing.configure("shipyard-server")  # only when OTEL_* ask for it
    except ValueError as exc:
        fail(str(exc), code=2)
    sources = []
    for index, argument in enumerate(models):
        try:
            source, warnings = model_source(argument, names[index] if index < len(names) else None)
        except ValueError as exc:
            fail(str(exc))
        for message in warnings:
            warn(message)
        sources.append(source)
    folder = None
    if model_repository is not None:
        try:
            folder = RepositoryFolder(model_repository)
            found, warnings = ([], []) if load_on_request else folder.sources()
        except ValueError as exc:
            fail(str(exc))
        for message in warnings:
            warn(message)
        sources.extend(found)
    taken = [s.name for s in sources]
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        fail(f"two models would be served as '{duplicates[0]}'; name them apart with --name")
    attach: Callable[[ModelSource], ModelSource] = lambda source: source
    if predictor_url is not None:
        if predictor_timeout <= 0 or predictor_retries < 0:
            fail("--predictor-timeout must be above 0 and --predictor-retries at least 0")
        try:
            Upstream(predictor_url, "check", predictor_protocol, predictor_host, grpc_url=predictor_grpc_url)
        except ValueError as exc:
            fail(str(exc), code=2)

        def attach(source: ModelSource) -> ModelSource:
            source.options["upstream"] = Upstream(
                predictor_url, predictor_model or source.name, predictor_protocol, predictor_host,
                predictor_timeout, predictor_retries, predictor_grpc_url)
            return source

        sources = [attach(source) for source in sources]
    options = ServeOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port if grpc else None,
        max_request_size=parse_size(max_request_size),
        resolver=make_resolver(folder),
        repository_location=str(folder.path) if folder else "",
        batching=BatchPolicy(max_batch_size, max_latency_ms, max_queue),
        workers=workers,
        memory_limit=parse_size(memory_limit) if memory_limit else None,
        reload=[_watched(argument, source, attach) for argument, source in zip(models, sources)] if reload else [],
    )
    raise typer.Exit(run_server(sources, options))


def _prepare_reload(ctx: typer.Context, workers: int, model_repository: Optional[Path]) -> int:
    """The number of workers for --reload: one, as a reload in one worker would leave the others on the
    old model."""
    if workers > 1 and ctx.get_parameter_source("workers") is not click.core.ParameterSource.DEFAULT:
        warn(f"--reload serves from one process; ignoring --workers {workers}")
    if model_repository is not None:
        warn("--reload watches the MODEL arguments; models of --model-repository are reloaded through the "
             "repository API (POST /v2/repository/models/NAME/load)")
    return 1


def _watched(argument: str, source: ModelSource, attach: Callable[[ModelSource], ModelSource]) -> WatchedModel:
    """Watch the MODEL argument (package folder or artifact file); on change, read it again under the
    same name (``attach`` gives it the predictor it calls, if any)."""
    path = Path(argument).expanduser().resolve()
    return WatchedModel(source.name, path, lambda: attach(model_source(path, source.name)[0]))
