"""The package's ``explainer:`` section (``shipyard.package.config.ExplainerConfig``) as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from shipyard.runtimes.base import ModelSource

DEFAULT_INPUT = "input-0"


@dataclass(frozen=True)
class Settings:
    """How to explain one model; the defaults are those of a package without an ``explainer:`` section."""

    algorithm: str = "auto"
    background: str | None = None
    max_background_rows: int = 100
    nsamples: int | None = None
    output: str | None = None
    input_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Whether the package has an ``explainer:`` section at all.
    configured: bool = False


_FIELDS = [f.name for f in fields(Settings) if f.name != "configured"]


def settings_of(source: ModelSource) -> Settings:
    """The model's explainer settings: from its package's typed config (``options["package"]``), else defaults.

    ``options["input_name"]`` (the shap format) overrides the section's ``input_name``."""
    section = getattr(source.options.get("package"), "explainer", None)
    values: dict[str, Any] = {}
    if section is not None:
        values = {name: getattr(section, name) for name in _FIELDS if hasattr(section, name)}
        values["configured"] = True
    if source.options.get("input_name"):
        values["input_name"] = str(source.options["input_name"])
    return Settings(**values)


def package_folder(source: ModelSource) -> Any:
    """The package folder (where the background and examples.yaml are), or the model's own folder."""
    folder = source.options.get("package_dir")
    if folder is not None:
        return folder
    return source.path if source.path.is_dir() else source.path.parent


def declared_columns(source: ModelSource) -> list[str] | None:
    """The column names the package declares for its one input (``inputs[0].columns``), if any."""
    inputs = getattr(source.options.get("package"), "inputs", None) or []
    columns = getattr(inputs[0], "columns", None) if len(inputs) == 1 else None
    if not columns:
        return None
    return [column if isinstance(column, str) else column.name for column in columns]
