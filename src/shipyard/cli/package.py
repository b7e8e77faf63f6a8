"""``shipyard package OBJECT_FILE DIR`` and ``shipyard init DIR --format F``: making model packages."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from shipyard.cli.errors import fail, warn

_stderr = Console(stderr=True, highlight=False)


@contextmanager
def _reported() -> Iterator[None]:
    """Package errors become one red line; the package's own warnings are printed like the CLI's."""
    from shipyard.package.from_object import PackageWarning

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PackageWarning)
        try:
            yield
        except (ValueError, RuntimeError) as exc:  # PackageError is a ValueError
            error = str(exc)
    for item in caught:
        if issubclass(item.category, PackageWarning):
            warn(str(item.message))
        else:  # a library's own warning: shown as Python would have shown it
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)
    if error is not None:
        fail(error)


def _next_steps(folder: Path) -> None:
    typer.echo(f"\nnext: shipyard test {folder}\n      shipyard serve {folder}")


def package(
    object_file: Optional[Path] = typer.Argument(
        None, metavar="OBJECT_FILE", show_default=False,
        help="A trained model saved to a file: a pickle or joblib file (scikit-learn, XGBoost, LightGBM, or any "
        "object with predict()), an .onnx model, or a PyTorch .pt / .pt2 file.",
    ),
    directory: Optional[Path] = typer.Argument(
        None, metavar="DIR", show_default=False, help="Folder to write the package into (new or empty).",
    ),
    sample: Optional[Path] = typer.Option(
        None, "--sample", "-s", show_default=False,
        help="Rows the model predicts on: .npy, .csv (a header row names the columns), .json (a list of rows) or "
        ".parquet. They give the signature and the examples, and prove the package predicts what the object "
        "does. A PyTorch module needs them.",
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", show_default=False,
                                       help="Model name (default: DIR's name)."),
    format: Optional[str] = typer.Option(
        None, "--format", "-f", show_default=False,
        help="Package as this format instead of the one detected; 'custom' serves any object with predict() "
        "from a generated model.py.",
    ),
    examples: int = typer.Option(3, "--examples", min=0, help="How many sample rows to write to examples.yaml."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it is not empty."),
    from_job: Optional[str] = typer.Option(
        None, "--from-job", show_default=False,
        help="Package the model a TrainJob wrote to its output/ folder instead of OBJECT_FILE: "
        "shipyard package --from-job NAME [DIR] (DIR defaults to NAME).",
    ),
    namespace: str = typer.Option("default", "--namespace", help="The TrainJob's namespace (with --from-job)."),
) -> None:
    """Make a model package from a trained object saved to a file, or from a TrainJob's output.

    The framework is detected and the model saved in the form its runtime serves.

    With --sample, that runtime loads the package to write its signature and examples.

    The package must then predict what the object does.

    Requirements are pinned to the versions installed here.

    [b]Examples[/b]

      shipyard package model.joblib iris --sample rows.csv

      shipyard package net.pt2 classifier --name classifier

      shipyard package --from-job tuned-llm tuned
    """
    if from_job is not None:
        _package_job(from_job, object_file, directory, namespace, name, force)
        return
    if object_file is None or directory is None:
        fail("give OBJECT_FILE and DIR (or --from-job NAME [DIR])")
    from shipyard.package.from_object import package as make_package
    from shipyard.package.from_object import read_object
    from shipyard.package.probe import check_target
    from shipyard.package.sample import read_sample

    with _reported():
        check_target(directory, force, flag="--force")  # before reading a possibly large object
        with _stderr.status(f"Reading {object_file}..."):
            obj = read_object(object_file)
            rows = read_sample(sample) if sample is not None else None
        with _stderr.status(f"Packaging the {type(obj).__name__}..."):
            folder = make_package(obj, directory, rows, name=name, examples=examples, overwrite=force, format=format)
    _summarise(folder)
    _next_steps(directory)


def _package_job(job: str, first: Optional[Path], second: Optional[Path], namespace: str, name: Optional[str],
                 force: bool) -> None:
    """``--from-job NAME [DIR]``: with --from-job the one positional argument is DIR."""
    from shipyard.train.output import package_job

    if second is not None:
        fail("--from-job takes one folder: shipyard package --from-job NAME [DIR]")
    directory = first or Path(job)
    with _reported():
        with _stderr.status(f"Packaging the output of TrainJob {job}..."):
            folder = package_job(job, directory, namespace=namespace, name=name, force=force)
    _summarise(folder)
    _next_steps(directory)


def init(
    directory: Path = typer.Argument(..., metavar="DIR", show_default=False,
                                     help="Folder to create the package in (new or empty)."),
    format: str = typer.Option(
        ..., "--format", "-f", show_default=False,
        help="sklearn, xgboost, lightgbm, onnx, pytorch, huggingface or custom.",
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", show_default=False,
                                       help="Model name (default: DIR's name)."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it is not empty."),
) -> None:
    """Start a model package from a working skeleton.

    It holds a tiny model trained here (no download) and the train.py that made it; custom: a model.py.

    Also: a commented shipyard.yaml, examples.yaml (outputs computed by the runtime), requirements.txt, a README.

    [b]Examples[/b]

      shipyard init iris --format sklearn

      shipyard init my-model --format custom
    """
    from shipyard.package.skeletons import init as make_skeleton

    with _reported():
        with _stderr.status(f"Making a {format} package..."):
            folder = make_skeleton(directory, format, name=name, force=force)
    _summarise(folder)
    _next_steps(directory)


def _summarise(folder: Path) -> None:
    files = sorted(path.relative_to(folder).as_posix() for path in folder.iterdir())
    typer.echo(f"wrote {folder}: {', '.join(files)}")
