"""Datasets with a local cache, as Fluid defines them (docs/datasets.md).

``DatasetCache.open(name)`` reads a dataset through its cache; ``dataset://NAME/path`` does the same
for any fsspec user (pandas, pyarrow, Hugging Face datasets). The heavy parts (engine, torch, Flight)
are imported on first use, so ``import shipyard.data`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DatasetCache", "DatasetConfig", "CacheStats", "FileEntry", "SourceError", "DataSpecError",
           "DatasetNotFound"]

_HOMES = {
    "DatasetCache": "shipyard.data.engine", "CacheStats": "shipyard.data.engine", "FileEntry": "shipyard.data.engine",
    "SourceError": "shipyard.data.sources", "DatasetConfig": "shipyard.data.spec",
    "DataSpecError": "shipyard.data.spec", "DatasetNotFound": "shipyard.data.spec",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'shipyard.data' has no attribute {name!r}")
