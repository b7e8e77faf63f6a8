"""What a package needs just before its model loads: environment variables, secrets and weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from shipyard.package.config import PackageConfig
from shipyard.package.secrets import resolve_secrets
from shipyard.package.weights import materialise

log = logging.getLogger("shipyard.package")

#: Environment variables set by in-process models: name -> (model, value), to warn on clashes.
_SET_BY: dict[str, tuple[str, str]] = {}


def apply_environment(model: str, variables: dict[str, str]) -> None:
    """Set a package's environment variables in this process (models loaded here share it)."""
    for key, value in variables.items():
        previous = _SET_BY.get(key)
        if previous is not None and previous[0] != model and previous[1] != value:
            log.warning(
                "models '%s' and '%s' set %s differently; they share this process, so '%s' wins "
                "(set 'isolate: always' to give a model a process of its own)", previous[0], model, key, model,
            )
        _SET_BY[key] = (model, value)
        os.environ[key] = value


def prepare(model: str, config: PackageConfig, folder: Path, in_process: bool = True) -> dict[str, Any]:
    """Fetch the weights, resolve the secrets and (in process) set the environment variables.

    Returns what the runtime receives in ``source.options``: ``{"secrets": Secrets}``.
    """
    materialise(folder, config.weights)
    secrets = resolve_secrets(config.secrets)
    if in_process:
        apply_environment(model, config.environment_variables)
    return {"secrets": secrets}
