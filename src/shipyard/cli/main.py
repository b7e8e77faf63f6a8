"""Entry point: ``shipyard [COMMAND]``.

Each command's module is imported only when that command runs (``shipyard --help`` imports them
all). A model server started by ``shipyard serve`` thus never loads the client, packaging and
control-plane code of the other commands: tens of MB of its idle memory (docs/performance.md).
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from shipyard import __version__

#: command -> (module under shipyard.cli, function); the order is the help's.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("package", "init"),
    "package": ("package", "package"),
    "test": ("test", "test"),
    "serve": ("serve", "serve"),
    "predict": ("predict", "predict"),
    "batch": ("batch", "batch"),
    "build": ("build", "build"),
    "up": ("control", "up"),
    "apply": ("resources", "apply"),
    "get": ("resources", "get"),
    "describe": ("resources", "describe"),
    "delete": ("resources", "delete"),
    "logs": ("resources", "logs"),
    "rollout": ("rollout", "app"),
    "train": ("train", "train"),
    "data": ("data", "app"),
    "monitor": ("monitor", "app"),
}
HELP = ("Take a model to production on one machine: cache its data (Fluid's Dataset), train it (Kubeflow's "
        "TrainJob), package and test it, serve it (KServe V1/V2, REST and gRPC, rollouts) and ship it as a "
        "container with KServe manifests.")


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with just ``only`` (its module alone is imported)."""
    app = typer.Typer(
        name="shipyard",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _group() -> None:  # keeps a one-command app a group: `shipyard serve ...` still names its command
        pass

    for name, (module, attribute) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(import_module(f"shipyard.cli.{module}"), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    if only is None or only == "version":
        app.command("version")(version)
    return app


def version() -> None:
    """Print Shipyard's version."""
    typer.echo(__version__)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    build_app(command if command in COMMANDS or command == "version" else None)()
