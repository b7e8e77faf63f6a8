"""``shipyard test DIR``: run a package's examples in process and through a real server."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.cli.errors import fail, warn
from shipyard.package.examples import read_examples
from shipyard.package.source import model_source
from shipyard.package.testing import PATHS, Report, run_examples


class RequestPath(str, Enum):
    in_process = "in-process"
    rest = "rest"
    grpc = "grpc"


def test(
    package: Path = typer.Argument(..., metavar="DIR", help="Model package folder with examples.yaml.",
                                   show_default=False),
    only: Optional[list[RequestPath]] = typer.Option(
        None, "--only", metavar="PATH", help="Run the examples on this path only (repeat for several): in-process "
        "(the server's request path in this process, no socket), rest or grpc (a real server on free ports).",
        show_default=False,
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every answer and the test server's output."),
) -> None:
    """Run the examples of a package (examples.yaml) and check the answers.

    Each example runs in process, then through a real [b]shipyard serve[/b] over REST and gRPC.

    Every path runs the server's own code to decode, validate, predict and encode.

    Exit code: 0 when every example passes, 1 when one fails, 2 when the package or examples.yaml is invalid.

    [b]Examples[/b]

      shipyard test ./iris                      [dim]# every example on every path[/]

      shipyard test ./iris --only in-process    [dim]# quick: no server[/]
    """
    if not package.is_dir():
        fail(f"DIR {package} is not a folder; give a model package folder (with shipyard.yaml and examples.yaml)",
             code=2)
    try:
        source, warnings = model_source(package)
        examples = read_examples(package)
    except ValueError as exc:
        fail(str(exc), code=2)
    for message in warnings:
        warn(message)
    paths = [path.value for path in only] if only else list(PATHS)
    console = Console(highlight=False)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    with progress:
        task = progress.add_task("Testing", total=None)
        try:
            report = run_examples(package.resolve(), source, examples, paths,
                                  status=lambda text: progress.update(task, description=escape(text)))
        except ValueError as exc:
            fail(str(exc), code=2)
    console.print(_table(report, [e.name for e in examples], paths, source.name))
    if verbose:
        _print_details(console, report)
    failed = [o for o in report.outcomes if not o.passed]
    if failed:
        names = sorted({o.example for o in failed})
        console.print(f"[red]{len(names)} of {len(examples)} example(s) failed[/]: {escape(', '.join(names))}")
        raise typer.Exit(1)
    console.print(f"[green]All {len(examples)} example(s) passed[/] on {', '.join(paths)}.")


def _table(report: Report, names: list[str], paths: list[str], model: str) -> Table:
    table = Table(title=f"Examples of model '{escape(model)}'", title_justify="left")
    table.add_column("example")
    for path in paths:
        table.add_column(path)
    cells = {(o.example, o.path): o for o in report.outcomes}
    for name in names:
        row = []
        for path in paths:
            outcome = cells[(name, path)]
            row.append("[green]pass[/]" if outcome.passed else f"[red]FAIL[/] {escape(outcome.problem or '')}")
        table.add_row(escape(name), *row)
    return table


def _print_details(console: Console, report: Report) -> None:
    for outcome in report.outcomes:
        console.print(f"[b]{escape(outcome.example)}[/] on {outcome.path}:")
        for name, array in outcome.outputs.items():
            text = np.array2string(array, threshold=20, max_line_width=100).replace("\n", "\n    ")
            console.print(f"  {escape(name)} ({array.dtype}, shape {list(array.shape)}):\n    {escape(text)}")
    if report.server_log:
        console.print("[b]test server output:[/]")
        for line in report.server_log:
            console.print(f"  {escape(line)}")
