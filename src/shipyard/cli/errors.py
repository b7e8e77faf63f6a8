"""How the CLI reports a failure: one red line on stderr, exit code 1 (2 for usage errors)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console


@lru_cache(maxsize=1)
def _stderr() -> Console:
    """rich on first use: a server that never prints an error or warning never loads it."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    _stderr().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    _stderr().print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)
