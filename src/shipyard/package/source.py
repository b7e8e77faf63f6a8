"""Resolve a MODEL argument (package directory, artifact file, or model.py folder) to a ModelSource."""

from __future__ import annotations

from pathlib import Path

from shipyard.package.config import CONFIG_FILE, PackageError, check_name, read_config
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.registry import find_artifact, normalise_format, sniff_format


def model_source(argument: str | Path, name: str | None = None) -> tuple[ModelSource, list[str]]:
    """Return the source to serve for ``argument`` and any warnings about its config."""
    path = Path(argument).expanduser()
    if not path.exists():
        raise PackageError(f"model path '{argument}' does not exist")
    path = path.resolve()
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return _from_package(path, name)
    if path.is_dir():
        found = find_artifact(path)
        if found == "python":
            return ModelSource(check_name(name or path.name, str(path)), "python", path), []
        assert isinstance(found, Path)
        return ModelSource(check_name(name or path.name, str(path)), sniff_format(found), found), []
    default_name = path.stem if path.name != "model.py" else path.parent.name
    fmt = "python" if path.suffix == ".py" else sniff_format(path)
    return ModelSource(check_name(name or default_name, str(path)), fmt, path), []


def _from_package(folder: Path, name: str | None) -> tuple[ModelSource, list[str]]:
    config, raw, warnings = read_config(folder)
    where = str(folder / CONFIG_FILE)
    if config.artifact:
        artifact = folder / config.artifact
        if not artifact.exists():
            raise PackageError(f"{where}: 'artifact' points to {config.artifact}, which does not exist")
    else:
        found = find_artifact(folder)
        artifact = folder if found == "python" else found  # type: ignore[assignment]
    if config.format:
        fmt = normalise_format(config.format)
    elif artifact.is_dir() or artifact.suffix == ".py":
        fmt = "python"
    else:
        fmt = sniff_format(artifact)
    if fmt == "python" and artifact.is_file() and artifact.suffix != ".py":
        raise PackageError(f"{where}: format 'python' needs a model.py, but 'artifact' is {artifact.name}")
    options = {"predict_proba": config.predict_proba, "concurrency": config.concurrency, "config": raw}
    source = ModelSource(
        name=check_name(name or config.name or folder.name, where),
        format=fmt,
        path=artifact,
        version=config.version,
        options=options,
    )
    return source, warnings
