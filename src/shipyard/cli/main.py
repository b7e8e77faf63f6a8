"""Entry point: ``shipyard [COMMAND]``."""

from __future__ import annotations

import typer

from shipyard import __version__
from shipyard.cli import build, predict, serve, test

app = typer.Typer(
    name="shipyard",
    help="Take a model to production on one machine: serve it with the KServe V1/V2 protocols.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("serve")(serve.serve)
app.command("predict")(predict.predict)
app.command("test")(test.test)
app.command("build")(build.build)


@app.command("version")
def version() -> None:
    """Print Shipyard's version."""
    typer.echo(__version__)


def main() -> None:
    app()
