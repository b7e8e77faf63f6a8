"""``shipyard.yaml``, the model package config (the keys serving needs so far)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

CONFIG_FILE = "shipyard.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PackageError(ValueError):
    """A package or its config is invalid; the message names the key and what was expected."""


class TensorConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One declared input or output: ``{name, datatype, shape}`` (-1 for a variable dimension)."""

    name: str
    datatype: str
    shape: list[int]


class PackageConfig(msgspec.Struct, kw_only=True):
    name: str | None = None
    format: str | None = None
    artifact: str | None = None
    version: str = "1"
    #: Serve ``predict_proba`` instead of ``predict`` by default (classifiers).
    predict_proba: bool = False
    #: How many predicts of this model may run at once (custom models).
    concurrency: int = 1
    #: Adaptive batching (see `shipyard serve --help`); setting max_batch_size turns it on for any format.
    max_batch_size: int | None = None
    max_latency_ms: float | None = None
    max_queue: int | None = None
    #: Library threads for one predict (ONNX Runtime intra-op, torch).
    threads: int | None = None
    #: The model's signature, for formats that do not record it (TorchScript).
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    #: Hugging Face: pipeline task, embedding normalisation, arguments passed on every call.
    task: str | None = None
    normalize: bool = False
    pipeline_kwargs: dict[str, Any] | None = None
    #: R: predict(type=), input column names, packages to load first.
    type: str | None = None
    columns: list[str] | None = None
    packages: list[str] | None = None


KNOWN_KEYS = frozenset(PackageConfig.__struct_fields__)


def check_name(name: str, where: str) -> str:
    """Model names travel in URLs: letters, digits, '_', '.', '-'."""
    if not NAME_PATTERN.match(name):
        raise PackageError(
            f"{where}: model name '{name}' is not allowed; use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def read_config(folder: Path) -> tuple[PackageConfig, dict[str, Any], list[str]]:
    """Parse ``folder/shipyard.yaml``: the typed config, the raw mapping, and warnings."""
    path = folder / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PackageError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PackageError(f"{path}: expected a mapping of keys (name, format, artifact, ...), got {type(raw).__name__}")
    if isinstance(raw.get("version"), (int, float)):
        raw["version"] = str(raw["version"])
    try:
        config = msgspec.convert({k: v for k, v in raw.items() if k in KNOWN_KEYS}, PackageConfig)
    except msgspec.ValidationError as exc:
        raise PackageError(f"{path}: {exc}".replace("`$.", "`")) from None
    warnings = [f"{path}: key '{key}' is not used by this version of Shipyard" for key in raw if key not in KNOWN_KEYS]
    if config.name is not None:
        check_name(config.name, str(path))
    for key in ("max_batch_size", "max_queue"):
        if getattr(config, key) is not None and getattr(config, key) < 1:
            raise PackageError(f"{path}: '{key}' must be at least 1, got {getattr(config, key)}")
    if config.concurrency < 1:
        raise PackageError(f"{path}: 'concurrency' must be at least 1, got {config.concurrency}")
    return config, raw, warnings
