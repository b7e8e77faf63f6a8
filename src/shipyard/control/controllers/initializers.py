"""A TrainJob's dataset and model initializers: copy a ``storageUri`` into the job's workspace.

Local paths and ``file://`` are copied; ``http(s)://`` and ``s3://`` are fetched through the
model cache (control/model_source.py, so one URI is downloaded once); ``hf://org/name`` comes from
the local Hugging Face cache only (the plane never downloads from the Hub: fill the cache first
with ``huggingface-cli download org/name``). ``dataset://NAME/path`` names a Dataset of the job's
namespace: the path is preloaded into the dataset's cache (a DataLoad's work, logged), then its
files are copied from the cache into the workspace; with the annotation
``trainer.shipyard.io/dataset-clean-after: "true"`` those paths are evicted from the cache when the
job finishes (``clean_dataset``). Each initializer writes its own log.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import IO

from shipyard.control.model_source import copy_dataset_files, dataset_entries, open_dataset, resolve_storage_uri
from shipyard.quantity import format_bytes


class InitializerError(RuntimeError):
    """An initializer that could not fill its folder (the message says why)."""


def initialize(uri: str, target: Path, log_path: Path, *, namespace: str = "default",
               home: Path | None = None) -> Path:
    """Fill ``target`` (replaced atomically) from ``uri``, logging what happens to ``log_path``.

    ``namespace`` and ``home`` locate a ``dataset://`` URI's Dataset."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"{_now()} initializing {target.name} from {uri}\n")
        try:
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.rmtree(partial, ignore_errors=True)
            if uri.startswith("dataset://"):
                _from_dataset(uri, partial, namespace, home, log, f"spec.initializer.{target.name}.storageUri")
            else:
                source = _local_source(uri, target.name)
                if source.is_dir():
                    shutil.copytree(source, partial, symlinks=False)
                else:
                    partial.mkdir(parents=True)
                    shutil.copy2(source, partial / source.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
        except (OSError, ValueError, LookupError, InitializerError) as exc:  # ModelSourceError: a ValueError
            log.write(f"{_now()} failed: {exc}\n")
            raise InitializerError(f"{target.name} initializer: {exc}") from None
        files = sum(1 for item in target.rglob("*") if item.is_file())
        log.write(f"{_now()} done: {files} file(s) in {target}\n")
    return target


def _from_dataset(uri: str, target: Path, namespace: str, home: Path | None, log: IO[str], where: str) -> None:
    """Preload the URI's files into the dataset's cache, then copy them from the cache into ``target``."""
    try:
        cache = open_dataset(uri[len("dataset://"):].split("/", 1)[0], namespace, home)
    except (LookupError, ValueError, OSError) as exc:
        raise InitializerError(f"{uri}: {exc}") from None
    try:
        entries = dataset_entries(cache, uri, where)
        path = "/" + uri[len("dataset://"):].partition("/")[2].strip("/")
        log.write(f"{_now()} preloading {path} of dataset '{cache.config.name}' ({len(entries)} files) into its "
                  "cache\n")
        loaded = cache.load(None if path == "/" else [path])
        log.write(f"{_now()} preloaded {loaded.files} files ({format_bytes(loaded.bytes)}): fetched "
                  f"{format_bytes(loaded.fetched_bytes)} from the source, {loaded.cached_already} already cached, "
                  f"in {loaded.seconds:.1f}s\n")
        for skipped in loaded.skipped:
            log.write(f"{_now()} not cached (read from the source instead): {skipped}\n")
        copied = copy_dataset_files(cache, uri, entries, target)
        log.write(f"{_now()} copied {len(entries)} files ({format_bytes(copied)}) from the cache\n")
    finally:
        cache.close()


def clean_dataset(uri: str, log_path: Path, *, namespace: str = "default", home: Path | None = None) -> None:
    """Evict a dataset:// initializer's files from the dataset's cache (the job finished); never raises."""
    with open(log_path, "a", buffering=1) as log:
        path = "/" + uri[len("dataset://"):].partition("/")[2].strip("/")
        try:
            cache = open_dataset(uri[len("dataset://"):].split("/", 1)[0], namespace, home)
            try:
                freed = cache.clean(None if path == "/" else [path])
            finally:
                cache.close()
        except Exception as exc:  # the job's outcome stands; the log says why the cache was kept
            log.write(f"{_now()} cleaning {uri} from the cache failed: {exc}\n")
            return
        log.write(f"{_now()} the job finished: cleaned {path} from the cache ({freed.files} files, "
                  f"{format_bytes(freed.bytes)} freed)\n")


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
