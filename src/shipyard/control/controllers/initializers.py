"""A TrainJob's dataset and model initializers: copy a ``storageUri`` into the job's workspace.

Local paths and ``file://`` are copied; ``http(s)://`` and ``s3://`` are fetched through the
model cache (control/model_source.py, so one URI is downloaded once); ``hf://org/name`` comes from
the local Hugging Face cache only (the plane never downloads from the Hub: fill the cache first
with ``huggingface-cli download org/name``). Each initializer writes its own log.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from shipyard.control.model_source import ModelSourceError, resolve_storage_uri


class InitializerError(RuntimeError):
    """An initializer that could not fill its folder (the message says why)."""


def initialize(uri: str, target: Path, log_path: Path) -> Path:
    """Fill ``target`` (replaced atomically) from ``uri``, logging what happens to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"{_now()} initializing {target.name} from {uri}\n")
        try:
            source = _local_source(uri, target.name)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.rmtree(partial, ignore_errors=True)
            if source.is_dir():
                shutil.copytree(source, partial, symlinks=False)
            else:
                partial.mkdir(parents=True)
                shutil.copy2(source, partial / source.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
        except (OSError, ModelSourceError, InitializerError) as exc:
            log.write(f"{_now()} failed: {exc}\n")
            raise InitializerError(f"{target.name} initializer: {exc}") from None
        files = sum(1 for item in target.rglob("*") if item.is_file())
        log.write(f"{_now()} done: {files} file(s) in {target}\n")
    return target


def _local_source(uri: str, what: str) -> Path:
    if uri.startswith("hf://"):
        return _hf_cached(uri[len("hf://"):].strip("/"))
    return resolve_storage_uri(uri, f"spec.initializer.{what}.storageUri")


def _hf_cached(repo_id: str) -> Path:
    """A repository's snapshot from the local Hugging Face cache (offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise InitializerError("hf:// needs huggingface_hub: pip install huggingface_hub") from None
    kind = "dataset" if repo_id.startswith("datasets/") else "model"
    name = repo_id.removeprefix("datasets/")
    try:
        return Path(snapshot_download(name, repo_type=kind, local_files_only=True))
    except LocalEntryNotFoundError:
        raise InitializerError(f"hf://{repo_id} is not in the local Hugging Face cache and Shipyard does not "
                               f"download from the Hub; run: huggingface-cli download {name}"
                               f"{' --repo-type dataset' if kind == 'dataset' else ''}") from None
    except (ValueError, OSError) as exc:
        raise InitializerError(f"hf://{repo_id}: {exc}") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
