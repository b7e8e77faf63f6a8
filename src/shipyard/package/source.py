"""Resolve a MODEL argument (package directory, artifact file, or model folder) to a ModelSource."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from shipyard.package.checks import input_checks
from shipyard.package.prepare import prepare
from shipyard.package.weights import materialise
from shipyard.package.config import CONFIG_FILE, PackageError, check_name, read_config
from shipyard.package.environment import isolation_for
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.registry import find_artifact, normalise_format, sniff_format


def format_of(path: Path) -> tuple[str, Path]:
    """The format of a file or folder, and the path its runtime should load."""
    if path.is_dir():
        found = find_artifact(path)
        if isinstance(found, str):  # "python" or "huggingface": the folder itself is the model
            return found, path
        return sniff_format(found), found
    if path.suffix == ".py":
        return "python", path
    return sniff_format(path), path


def model_source(argument: str | Path, name: str | None = None) -> tuple[ModelSource, list[str]]:
    """Return the source to serve for ``argument`` and any warnings about its config."""
    path = Path(argument).expanduser()
    if not path.exists():
        raise PackageError(f"model path '{argument}' does not exist")
    path = path.resolve()
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return _from_package(path, name)
    fmt, artifact = format_of(path)
    default_name = path.parent.name if path.name == "model.py" else path.stem if path.is_file() else path.name
    return ModelSource(check_name(name or default_name, str(path)), fmt, artifact), []


def _from_package(folder: Path, name: str | None) -> tuple[ModelSource, list[str]]:
    config, raw, warnings = read_config(folder)
    where = str(folder / CONFIG_FILE)
    target = folder
    if config.artifact:
        target = folder / config.artifact
        if not target.exists() and config.weights:  # the artifact may be one of the weights to fetch
            materialise(folder, config.weights)
        if not target.exists():
            raise PackageError(f"{where}: 'artifact' points to {config.artifact}, which does not exist")
    if config.format:
        fmt, artifact = normalise_format(config.format), target
        if target.is_dir() and fmt not in ("python", "huggingface"):
            found = find_artifact(target)
            artifact = found if isinstance(found, Path) else target
        if fmt == "python" and artifact.is_file() and artifact.suffix != ".py":
            raise PackageError(f"{where}: format 'python' needs a model.py, but 'artifact' is {artifact.name}")
    else:
        fmt, artifact = format_of(target)
    name = check_name(name or config.name or folder.name, where)
    options = {
        "predict_proba": config.predict_proba,
        "concurrency": config.concurrency,
        "config": raw,
        "package": config,
        "package_dir": folder,
        "input_checks": input_checks(name, config),
        "prepare": partial(prepare, name, config, folder),
    }
    source = ModelSource(
        name=name,
        format=fmt,
        path=artifact,
        version=config.version,
        options=options,
    )
    # Isolated environments (package/environment.py): None when the server's own environment will do.
    source.options["isolation"] = isolation_for(config, folder)
    return source, warnings
