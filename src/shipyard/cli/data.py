"""``shipyard data ls|status|load|clean|flight``: work with a dataset's cache directly, no control plane needed.

A dataset is created with ``shipyard apply -f dataset.yaml`` (Fluid's Dataset kind); these commands
open it by name from ``$SHIPYARD_HOME/data/<namespace>/<name>/`` and run inline, with a progress bar.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer

from shipyard.cli.errors import fail
from shipyard.cli.resources import NAMESPACE_OPTION, table
from shipyard.quantity import format_bytes

if TYPE_CHECKING:
    from shipyard.data.engine import DatasetCache

app = typer.Typer(
    help="Read, preload, clean and serve a dataset's local cache (datasets come from `shipyard apply`).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

NAME_ARGUMENT = typer.Argument(..., help="The Dataset's name.", show_default=False)
PATHS_OPTION = typer.Option(None, "--path", "-p", help="A path or glob in the dataset (repeatable; default: all).",
                            show_default=False)


@contextmanager
def _opened(name: str, namespace: str) -> Iterator["DatasetCache"]:
    """The dataset's cache; a missing dataset or an unreachable source becomes one clear error line."""
    from shipyard.data.engine import DatasetCache
    from shipyard.data.sources import SourceError
    from shipyard.data.spec import DataSpecError, DatasetNotFound

    try:
        cache = DatasetCache.open(name, namespace)
    except DatasetNotFound as exc:
        fail(str(exc))
    except DataSpecError as exc:
        fail(f"dataset '{name}': {exc}")
    try:
        yield cache
    except (SourceError, FileNotFoundError, PermissionError, ValueError) as exc:
        fail(str(exc))
    finally:
        cache.close()


@app.command("ls")
def ls(
    name: str = NAME_ARGUMENT,
    path: str = typer.Argument("/", help="A folder in the dataset.", show_default=True),
    namespace: str = NAMESPACE_OPTION,
    refresh: bool = typer.Option(False, "--refresh", help="List the source again instead of the cached listing."),
) -> None:
    """List a dataset's files with their size and whether they are cached."""
    with _opened(name, namespace) as cache:
        entries = cache.list(path, refresh=refresh)
        rows = [[entry.path, format_bytes(entry.size), "yes" if cache.is_cached(entry.path) else "no"]
                for entry in entries]
    if not rows:
        typer.echo(f"no files under {path} in dataset '{name}'")
        return
    typer.echo(table(["PATH", "SIZE", "CACHED"], rows))


@app.command()
def status(
    name: str = NAME_ARGUMENT,
    namespace: str = NAMESPACE_OPTION,
    output: str = typer.Option("table", "--output", "-o", help="table, json or prom (Prometheus text)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Print again every 2 seconds until Ctrl+C."),
) -> None:
    """Show a dataset's cache: capacity, cached bytes and percentage, hit ratio (— when nothing was read)."""
    if output not in ("table", "json", "prom"):
        fail(f"--output must be table, json or prom, not '{output}'", 2)
    with _opened(name, namespace) as cache:
        while True:
            typer.echo(_status_text(cache, output))
            if not watch:
                return
            try:
                time.sleep(2.0)
            except KeyboardInterrupt:
                return


def _status_text(cache: "DatasetCache", output: str) -> str:
    if output == "prom":
        return cache.prometheus().rstrip("\n")
    stats = cache.stats()
    states = stats.cache_states()
    if output == "json":
        from dataclasses import asdict

        return json.dumps({"cacheStates": states, "stats": asdict(stats)}, indent=2)
    rows = [[key, "—" if value is None else str(value)] for key, value in states.items()]
    rows += [["ufsTotal", "—" if stats.ufs_total_bytes is None else format_bytes(stats.ufs_total_bytes)],
             ["fileNum", "—" if stats.file_num is None else str(stats.file_num)],
             ["sourceRequests", str(stats.ufs_requests)], ["sourceBytes", format_bytes(stats.ufs_bytes)],
             ["evictions", str(stats.evictions)], ["notAdmitted", str(stats.rejected)]]
    return table(["FIELD", "VALUE"], rows)


@app.command()
def load(
    name: str = NAME_ARGUMENT,
    paths: Optional[List[str]] = PATHS_OPTION,
    namespace: str = NAMESPACE_OPTION,
    parallelism: int = typer.Option(8, "--parallelism", min=1, max=256, help="Blocks fetched at once."),
) -> None:
    """Preload files into the cache now (what a DataLoad does), with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from shipyard.data.operations.load import run_load
    from shipyard.data.operations.result import OperationError

    with _opened(name, namespace) as cache:
        columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:  # stdout: the result
            task = progress.add_task(f"loading {name}", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                result = run_load(cache, paths or None, parallelism=parallelism, log=lambda line: None,
                                  progress=advance)
            except OperationError as exc:
                fail(str(exc))
    typer.echo(result.message)
    for reason in result.details.get("skippedFiles", []):
        typer.echo(f"skipped: {reason}")


@app.command()
def clean(
    name: str = NAME_ARGUMENT,
    paths: Optional[List[str]] = PATHS_OPTION,
    namespace: str = NAMESPACE_OPTION,
) -> None:
    """Evict files (or everything) from the cache now (what a DataClean does). The source is not touched."""
    with _opened(name, namespace) as cache:
        result = cache.clean(paths or None)
    typer.echo(f"freed {format_bytes(result.bytes)} ({result.blocks} block(s) of {result.files} file(s))")


@app.command()
def flight(
    listen: str = typer.Option("grpc+unix:///tmp/shipyard-flight.sock", "--listen", "-l",
                               help="Where to listen: grpc+unix:///PATH (processes on this machine) or "
                               "grpc://HOST:PORT."),
    max_memory: str = typer.Option("1Gi", "--max-memory", help="Memory for tables kept decoded between readers."),
) -> None:
    """Serve every dataset's tabular files (Parquet, CSV, JSON Lines, Arrow) over Arrow Flight, through the cache.

    Readers: pyarrow.flight clients, or shipyard.data.flight.read_table(LOCATION, DATASET, PATH).
    """
    from shipyard.data.flight import serve_flight
    from shipyard.quantity import QuantityError, parse_quantity

    try:
        parse_quantity(max_memory, "--max-memory")
    except QuantityError as exc:
        fail(str(exc), 2)

    def ready(server: object) -> None:
        typer.echo(f"serving datasets over Arrow Flight at {getattr(server, 'location', listen)} (Ctrl+C stops)")

    try:
        serve_flight(listen, max_memory=max_memory, ready=ready)
    except (OSError, ValueError) as exc:
        fail(f"cannot serve Flight at {listen}: {exc}")
