"""``shipyard rollout promote|rollback|pin NAME [REVISION]``: move an InferenceService's traffic."""

from __future__ import annotations

from typing import Optional

import typer

from shipyard.cli.resources import NAMESPACE_OPTION, api_errors, connect

app = typer.Typer(
    help="Move an InferenceService's traffic: promote the canary, roll back, or pin a revision.\n\n"
    "Applying the service's YAML again lifts a pin.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

NAME_ARGUMENT = typer.Argument(..., help="The InferenceService's name.", show_default=False)


def _rollout(name: str, action: str, revision: str | None, namespace: str) -> None:
    with api_errors():
        result = connect().rollout(name, action, revision, namespace)
    typer.echo(result.get("message") or f"{name}: {action} done")


@app.command()
def promote(name: str = NAME_ARGUMENT, namespace: str = NAMESPACE_OPTION) -> None:
    """Send all traffic to the latest ready revision (drops canaryTrafficPercent and any pin)."""
    _rollout(name, "promote", None, namespace)


@app.command()
def rollback(
    name: str = NAME_ARGUMENT,
    revision: Optional[str] = typer.Argument(None, help="Revision to go back to (default: the previous rolled-out "
                                             "one).", show_default=False),
    namespace: str = NAMESPACE_OPTION,
) -> None:
    """Send all traffic back to the previous rolled-out revision (or REVISION) and pin it there."""
    _rollout(name, "pin" if revision else "rollback", revision, namespace)


@app.command()
def pin(
    name: str = NAME_ARGUMENT,
    revision: str = typer.Argument(..., help="Revision name or number (e.g. 2).", show_default=False),
    namespace: str = NAMESPACE_OPTION,
) -> None:
    """Send all traffic to REVISION (once it is ready) and keep it there until promote or the next apply."""
    _rollout(name, "pin", revision, namespace)
