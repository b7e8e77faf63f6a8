"""Secrets a package names (``secrets:`` in shipyard.yaml), resolved at load time, never stored.

A secret ``NAME`` is read from the environment variable ``NAME``, else from a file ``NAME`` in the
first of these folders that has it: ``$SHIPYARD_SECRETS_DIR``, ``/run/secrets`` (Docker and
Kubernetes mounts), ``$SHIPYARD_HOME/secrets``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from shipyard.home import shipyard_home
from shipyard.package.config import PackageError


def secret_folders() -> list[Path]:
    folders = [Path("/run/secrets"), shipyard_home() / "secrets"]
    if os.environ.get("SHIPYARD_SECRETS_DIR"):
        folders.insert(0, Path(os.environ["SHIPYARD_SECRETS_DIR"]).expanduser())
    return folders


def read_secret(name: str) -> str | None:
    """The value of one secret, or None when neither the environment nor a secrets folder has it."""
    if name in os.environ:
        return os.environ[name]
    for folder in secret_folders():
        path = folder / name
        if path.is_file():
            return path.read_text().rstrip("\n")
    return None


class Secrets(Mapping[str, str]):
    """The resolved secrets of one model; its repr never shows a value."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(
                f"secret '{name}' is not declared; add it to 'secrets' in shipyard.yaml "
                f"(declared: {', '.join(self._values) or 'none'})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({', '.join(self._values)})"


def resolve_secrets(names: list[str]) -> Secrets:
    """Read every declared secret; one that is missing fails the load with how to provide it."""
    values: dict[str, str] = {}
    for name in names:
        value = read_secret(name)
        if value is None:
            folders = ", ".join(str(folder) for folder in secret_folders())
            raise PackageError(
                f"secret '{name}' is not set: export {name}=... or write it to a file named {name} in one of: {folders}"
            )
        values[name] = value
    return Secrets(values)
