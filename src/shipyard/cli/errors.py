"""How the CLI reports a failure: one red line on stderr, exit code 1 (2 for usage errors)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

_stderr = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    _stderr.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    _stderr.print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)
