"""``shipyard batch MODEL --input URI --output URI``: score a file, a folder or a dataset with a model, in chunks,
with a progress bar; run the same command again to resume a run that was stopped or killed."""

from __future__ import annotations

import signal
import threading
from typing import Any, List, Optional

import typer
from rich.console import Console

from shipyard.cli.errors import fail

#: BatchSpec field -> the option that sets it (for messages).
OPTIONS = {
    "model": "MODEL", "input": "--input", "output": "--output", "input_format": "--format",
    "output_format": "--output-format", "columns": "--columns", "carry": "--carry", "batch_size": "--batch-size",
    "workers": "--workers", "limit": "--limit", "errors": "--errors", "max_errors": "--max-errors",
    "model_name": "--model-name", "namespace": "--namespace", "concurrency": "--concurrency",
    "request_rows": "--request-rows", "retries": "--retries", "timeout_s": "--timeout", "output_columns": "--rename",
}
#: Fields whose problems found at the start of a run are usage errors (exit 2), as the CLI's own checks.
USAGE_FIELDS = {"input", "input_format", "output_format", "columns", "carry", "output_columns", "model_name"}
ENDPOINT = "Endpoint (a server URL or an InferenceService)"


def _names(values: Optional[List[str]]) -> Optional[list[str]]:
    """Repeatable and comma-separated: ``--carry id --carry ts`` or ``--carry id,ts``."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _renames(values: Optional[List[str]]) -> Optional[dict[str, str]]:
    if not values:
        return None
    renames: dict[str, str] = {}
    for value in values:
        source, sep, target = value.partition("=")
        if not sep or not source.strip() or not target.strip():
            fail(f"--rename takes OUTPUT=COLUMN (e.g. predict=label), got '{value}'", code=2)
        renames[source.strip()] = target.strip()
    return renames


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def batch(
    model: str = typer.Argument(..., metavar="MODEL", show_default=False,
                                help="A model package folder or artifact file (run in this process), a deployed "
                                "InferenceService's name (through the running control plane), or a V2 server URL "
                                "(http://HOST:PORT, e.g. a `shipyard serve`)."),
    input: str = typer.Option("", "--input", "-i", show_default=False,
                              help="What to score: a file, a folder of files or a glob; a local path, any fsspec URL "
                              "(s3://, gs://, http://...) or dataset://NAME/path."),
    output: str = typer.Option("", "--output", "-o", show_default=False,
                               help="Where to write: a file (written whole at the end), or a folder of parts when it "
                               "ends with '/'. Rows keep the input's order; failed rows go to the errors file."),
    input_format: Optional[str] = typer.Option(None, "--format", "-f", show_default=False,
                                               help="The input's format: parquet, csv or jsonl (default: from its "
                                               "name)."),
    output_format: Optional[str] = typer.Option(None, "--output-format", show_default=False,
                                                help="parquet, csv or jsonl (default: from the output's name, else "
                                                "the input's format)."),
    columns: Optional[List[str]] = typer.Option(None, "--columns", "-c", show_default=False,
                                                help="Columns fed to the model, in order (comma-separated or "
                                                "repeated; default: the model's declared columns, else every column "
                                                "not carried)."),
    carry: Optional[List[str]] = typer.Option(None, "--carry", show_default=False,
                                              help="Columns copied to the output unchanged, e.g. an id (comma-"
                                              "separated or repeated)."),
    batch_size: int = typer.Option(10_000, "--batch-size", "-b",
                                   help="Rows per chunk: one predict call, and the unit of progress and resume."),
    workers: int = typer.Option(1, "--workers", "-w",
                                help="Worker processes for a model run here; each loads the model once."),
    limit: Optional[int] = typer.Option(None, "--limit", show_default=False,
                                        help="Only the first N rows (to try it out)."),
    errors: Optional[str] = typer.Option(None, "--errors", show_default=False,
                                         help="Where failed rows go, with the reason (JSON Lines; default: "
                                         "OUTPUT.errors.jsonl)."),
    max_errors: Optional[str] = typer.Option(None, "--max-errors", show_default=False,
                                             help="Fail the run when more rows failed than this: a count (100) or a "
                                             "fraction of the rows (0.01 or 1%). Default: fail only when every row "
                                             "fails."),
    rename: Optional[List[str]] = typer.Option(None, "--rename", show_default=False,
                                               help="Name an output column: OUTPUT=COLUMN, e.g. predict=label or "
                                               "predict_proba_1=score (repeatable)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", show_default=False, rich_help_panel=ENDPOINT,
                                             help="The model's name on the server (default: the service's name, "
                                             "or the server's only model)."),
    namespace: str = typer.Option("default", "--namespace", rich_help_panel=ENDPOINT,
                                  help="The InferenceService's namespace."),
    concurrency: int = typer.Option(4, "--concurrency", rich_help_panel=ENDPOINT, help="Requests in flight."),
    request_rows: int = typer.Option(256, "--request-rows", rich_help_panel=ENDPOINT, help="Rows per V2 request."),
    retries: int = typer.Option(3, "--retries", rich_help_panel=ENDPOINT,
                                help="Retries of a request that could not connect or got 429/502/503/504."),
    timeout: float = typer.Option(60.0, "--timeout", rich_help_panel=ENDPOINT, help="Seconds one request may take."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no log lines; only the summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log every chunk that had failed rows."),
) -> None:
    """Score a file, a folder or a dataset with a model: Parquet, CSV or JSON Lines in and out, in chunks,
    resumable.

    [b]Examples[/b]

      shipyard batch model.joblib -i data.parquet -o scores.parquet --carry id

      shipyard batch ./churn -i s3://bucket/customers/ -o scores/ --workers 2 --max-errors 1%

      shipyard batch iris -i dataset://flowers/test.csv -o preds.jsonl    [dim]# an InferenceService[/]

      shipyard batch http://127.0.0.1:8080 --model-name iris -i rows.jsonl -o out.csv --limit 100

    A run that was stopped (Ctrl+C) or killed continues where it stopped when the same command runs again.
    """
    from shipyard.batch import BatchSpec, input_problems, parse_max_errors

    threshold: float | int | None = None
    if max_errors is not None:
        try:
            threshold = parse_max_errors(max_errors)
        except ValueError as exc:
            fail(f"--max-errors: {exc}", code=2)
    spec = BatchSpec(
        model=model, input=input, output=output, input_format=input_format, output_format=output_format,
        columns=_names(columns), carry=_names(carry) or [], batch_size=batch_size, workers=workers, limit=limit,
        errors=errors, max_errors=threshold, model_name=model_name, namespace=namespace, concurrency=concurrency,
        request_rows=request_rows, retries=retries, timeout_s=timeout, output_columns=_renames(rename),
    )
    problems = input_problems(spec)
    if problems:
        field, message = problems[0]
        fail(f"{OPTIONS.get(field, field)} {message}" if message.startswith(("is ", "must ", "names "))
             else f"{OPTIONS.get(field, field)}: {message}", code=2)
    result = _run(spec, quiet, verbose)
    if result.rows or result.state != "Failed":  # a run that failed before its first chunk: just the error
        _summary(result)
    if result.state == "Stopped":
        Console(stderr=True, highlight=False).print(f"[yellow]stopped:[/] {result.message}")
        raise typer.Exit(130)
    if result.state != "Succeeded":
        message = result.message
        field = message.split(":", 1)[0]
        if field in OPTIONS:
            message = f"{OPTIONS[field]}{message[len(field):]}"
        # the columns or formats do not fit the model or the data, found before any row was read: a usage error
        fail(message, code=2 if field in USAGE_FIELDS and not result.rows else 1)


def _run(spec: Any, quiet: bool, verbose: bool) -> Any:
    """run_batch with a progress bar on stderr; Ctrl+C (or SIGTERM) stops after the chunks in flight."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    from shipyard.batch import run_batch

    stop = threading.Event()
    console = Console(stderr=True, highlight=False)

    def interrupted(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping after the chunks in flight (Ctrl+C again to quit now)...[/]")

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(
        SpinnerColumn(), TextColumn("[bold]scoring[/]"), BarColumn(),
        TextColumn("{task.fields[rows]}"), TextColumn("[cyan]{task.fields[rate]}[/]"),
        TextColumn("[red]{task.fields[errors]}[/]"), TextColumn("ETA {task.fields[eta]}"),
        console=console, transient=False, disable=quiet,
    )
    task = progress.add_task("scoring", total=None, rows="", rate="", errors="", eta="—")
    shown = False

    def update(state: Any) -> None:
        nonlocal shown
        if not shown:  # the bar appears with the first chunk's start, not before the model loaded
            progress.start()
            shown = True
        total = state.rows_total
        remaining = (total - state.rows_done) / state.rows_per_s if total is not None and state.rows_per_s else None
        progress.update(
            task, completed=state.rows_done, total=total,
            rows=f"{state.rows_done:,}/{total:,} rows" if total is not None else f"{state.rows_done:,} rows",
            rate=f"{state.rows_per_s:,.0f} rows/s" if state.rows_per_s else "",
            errors=f"{state.errors:,} failed" if state.errors else "",
            eta=_duration(remaining) if remaining is not None else "—",
        )

    def log(line: str) -> None:
        if quiet or (line.startswith("chunk ") and not verbose):
            return
        (progress.console if shown else console).print(f"[dim]{line}[/]", soft_wrap=True)

    try:
        result = run_batch(spec, progress=update, stop=stop, log=log)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130) from None
    finally:
        if shown:
            progress.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return result


def _summary(result: Any) -> None:
    """The final table on stdout."""
    from rich.table import Table

    colour = {"Succeeded": "green", "Failed": "red"}.get(result.state, "yellow")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rate = f"{result.rows_per_s:,.0f} rows/s" if result.rows_per_s else "—"
    rows = [
        ("state", f"[{colour}]{result.state}[/]"),
        ("rows", f"{result.rows:,}"),
        ("written", f"{result.written:,}"),
        ("errors", f"{result.errors:,}"),
        ("time", f"{result.seconds:.2f} s"),
        ("throughput", rate),
    ]
    if result.resumed_chunks:
        rows.append(("resumed", f"{result.resumed_chunks} chunk(s) done before"))
    if result.state == "Succeeded":
        rows.append(("output", result.output))
    if result.errors_file:
        rows.append(("errors file", result.errors_file))
    for key, value in rows:
        table.add_row(key, value)
    Console(highlight=False, soft_wrap=True).print(table)
