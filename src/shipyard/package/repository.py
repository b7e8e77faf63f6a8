"""A model repository folder (``shipyard serve --model-repository DIR``).

Each entry of DIR is one model: a sub-directory (package, model.py folder, Hugging Face folder,
KServe-style folder with one artifact, or Triton-style folder of numbered versions) or an
artifact file. The model's name is the entry's name (a file's stem).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from shipyard.package.config import CONFIG_FILE
from shipyard.package.source import model_source
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.registry import ARTIFACT_SUFFIXES


class RepositoryFolder:
    """Lists and resolves the models of one folder."""

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise ValueError(f"--model-repository {path} is not a directory")
        self.path = path.resolve()

    def _entries(self) -> dict[str, Path]:
        entries: dict[str, Path] = {}
        for child in sorted(self.path.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                entries[child.name] = child
            elif child.suffix.lower() in ARTIFACT_SUFFIXES:
                entries[child.stem] = child
        return entries

    def names(self) -> list[str]:
        return list(self._entries())

    def sources(self) -> tuple[list[ModelSource], list[str]]:
        """Every model in the folder, and warnings about their configs."""
        sources, warnings = [], []
        for name in self.names():
            source, notes = self.resolve(name)
            sources.append(source)
            warnings.extend(notes)
        return sources, warnings

    def resolve(self, name: str, override: Path | None = None) -> tuple[ModelSource, list[str]]:
        """The source of ``name``; ``override`` holds files or a config sent with a load request."""
        if override is not None:
            return self._resolve_override(name, override)
        entry = self._entries().get(name)
        if entry is None:
            raise FileNotFoundError(name)
        return _versioned_source(entry, name)

    def _resolve_override(self, name: str, override: Path) -> tuple[ModelSource, list[str]]:
        files = [p for p in override.rglob("*") if p.is_file() and p.name != CONFIG_FILE]
        if not files:  # only a config: apply it to the repository's own model files
            entry = self._entries().get(name)
            if entry is None:
                raise FileNotFoundError(name)
            base = _latest_version(entry) if entry.is_dir() else entry.parent
            for child in base.iterdir() if base.is_dir() else []:
                if child.name != CONFIG_FILE and not (override / child.name).exists():
                    (override / child.name).symlink_to(child)
            if entry.is_file() and not (override / entry.name).exists():
                shutil.copy(entry, override / entry.name)
        return _versioned_source(override, name)


def make_resolver(folder: RepositoryFolder | None) -> Callable[[str, Path | None], ModelSource]:
    """The server's hook for loading a model by name (and files sent with the load request)."""

    def resolve(name: str, override: Path | None) -> ModelSource:
        if folder is not None:
            return folder.resolve(name, override)[0]
        if override is None:
            raise FileNotFoundError(name)
        return _versioned_source(override, name)[0]

    return resolve


def _versioned_source(entry: Path, name: str) -> tuple[ModelSource, list[str]]:
    if entry.is_file():
        return model_source(entry, name=name)
    chosen = _latest_version(entry)
    source, warnings = model_source(chosen, name=name)
    if chosen != entry:
        source.version = chosen.name  # Triton layout: the folder's number is the version
    return source, warnings


def _latest_version(folder: Path) -> Path:
    """Triton's layout ``model/1/``, ``model/2/``: the highest numbered version folder, else the folder."""
    versions = [child for child in folder.iterdir() if child.is_dir() and child.name.isdigit()]
    if versions and not (folder / CONFIG_FILE).exists():
        return max(versions, key=lambda child: int(child.name))
    return folder
