"""What a build context is rendered from: the checked ``BuildPlan``, and ``BuildError`` when a build cannot go ahead.

Its own module so that ``build`` (which makes the plan) and ``image`` / ``manifests`` (which render
from it) can all import it without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.package.config import PackageConfig


class BuildError(ValueError):
    """The build cannot go ahead; the message names the option or key and what was expected."""


@dataclass
class BuildPlan:
    """Everything the context's files are rendered from, checked before anything is written."""

    package_dir: Path
    config: PackageConfig
    #: The name the model is served under, and its Kubernetes (DNS-1035) spelling.
    name: str
    k8s_name: str
    #: Shipyard's format name (sklearn, ..., python).
    format: str
    image: str
    python_version: str
    system_packages: list[str]
    #: Pinned requirements besides Shipyard itself, in install order.
    requirements: list[str]
    storage_uri: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        return self.config.resources.gpu > 0

    @property
    def model_dir(self) -> str:
        """The package's folder in the image."""
        return f"/models/{self.name}"

    @property
    def workers(self) -> int:
        """Worker processes for the requested CPUs: whole cores, at least one (a container sees every core)."""
        cpu = self.config.resources.cpu
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        return max(1, math.floor(cores))
