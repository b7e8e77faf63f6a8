"""The fsspec protocol ``dataset://NAME/path``: a dataset's files, read through its local cache.

``pd.read_parquet("dataset://imagenet/train/part-0.parquet")`` opens the dataset by name (its
``dataset.json`` under ``$SHIPYARD_HOME``) and reads blocks through :class:`DatasetCache`. Storage
options: ``namespace`` (default ``$SHIPYARD_NAMESPACE`` or "default") and ``home``. Writing
(``open(..., "wb")``) goes to the source when the file is closed.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from shipyard.data.engine import DatasetCache, FileEntry
from shipyard.data.spec import dataset_root

_CACHES: dict[tuple[int, str, str, str], tuple[DatasetCache, float]] = {}
_CACHES_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _CACHES_LOCK
    _CACHES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def open_cache(name: str, namespace: str = "default", home: Path | None = None) -> DatasetCache:
    """A process-wide DatasetCache per dataset, reopened when its ``dataset.json`` changes."""
    config = dataset_root(name, namespace, home) / "dataset.json"
    try:
        stamp = config.stat().st_mtime_ns
    except FileNotFoundError:
        stamp = -1  # DatasetCache.open raises DatasetNotFound with a hint
    key = (os.getpid(), namespace, name, str(home or ""))
    with _CACHES_LOCK:
        found = _CACHES.get(key)
        if found is not None and found[1] == stamp:
            return found[0]
        cache = DatasetCache.open(name, namespace, home)
        if found is not None:
            found[0].close()
        _CACHES[key] = (cache, stamp)
        return cache


class DatasetFileSystem(AbstractFileSystem):
    """``dataset://NAME/path/in/dataset`` (fsspec protocol "dataset")."""

    protocol = "dataset"
    root_marker = ""

    def __init__(self, namespace: str | None = None, home: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace or os.environ.get("SHIPYARD_NAMESPACE") or "default"
        self.home = Path(home) if home else None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = str(path)
        if path.startswith("dataset://"):
            path = path[len("dataset://"):]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"dataset://{self._strip_protocol(name)}"

    def _split(self, path: str) -> tuple[str, str]:
        stripped = self._strip_protocol(path)
        name, _, rest = stripped.partition("/")
        if not name:
            raise ValueError(f"{path}: expected dataset://NAME/path")
        return name, "/" + rest

    def cache(self, name: str) -> DatasetCache:
        """The DatasetCache of one dataset in this filesystem's namespace."""
        return open_cache(name, self.namespace, self.home)

    # -- metadata
    def _file_info(self, name: str, entry: FileEntry) -> dict[str, Any]:
        return {"name": f"{name}{entry.path}", "size": entry.size, "type": "file", "version": entry.version,
                "url": entry.url}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        stripped = self._strip_protocol(path)
        if not stripped:
            folder = (self.home or _home()) / "data" / self.namespace
            names = sorted(p.name for p in folder.iterdir() if (p / "dataset.json").exists()) if folder.is_dir() else []
            out = [{"name": n, "size": 0, "type": "directory"} for n in names]
            return out if detail else [o["name"] for o in out]
        name, inner = self._split(path)
        cache = self.cache(name)
        entries = cache.list(inner)
        if not entries:
            out = [self._file_info(name, cache.info(inner))]
        else:
            children: dict[str, dict[str, Any]] = {}
            base = "" if inner == "/" else inner
            for entry in entries:
                rest = entry.path[len(base):].lstrip("/")
                if entry.path == inner:
                    children[entry.path] = self._file_info(name, entry)
                elif "/" in rest:
                    child = f"{name}{base}/{rest.split('/', 1)[0]}"
                    children.setdefault(child, {"name": child, "size": 0, "type": "directory"})
                else:
                    children[entry.path] = self._file_info(name, entry)
            out = sorted(children.values(), key=lambda item: item["name"])
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        stripped = self._strip_protocol(path)
        if not stripped:
            return {"name": "", "size": 0, "type": "directory"}
        name, inner = self._split(path)
        cache = self.cache(name)
        if inner == "/":
            return {"name": name, "size": 0, "type": "directory"}
        try:
            return self._file_info(name, cache.info(inner))
        except (FileNotFoundError, IsADirectoryError):
            if cache.list(inner):
                return {"name": f"{name}{inner}", "size": 0, "type": "directory"}
            raise FileNotFoundError(f"dataset://{name}{inner}: no such file or folder in dataset "
                                    f"'{self.namespace}/{name}'") from None

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        stripped = self._strip_protocol(path)
        if not stripped:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        name, inner = self._split(path)
        cache = self.cache(name)
        entries = cache.list(inner)
        out: dict[str, dict[str, Any]] = {}
        base = "" if inner == "/" else inner
        for entry in entries:
            rest = entry.path[len(base):].lstrip("/")
            depth = rest.count("/") + 1
            if maxdepth is not None and depth > maxdepth:
                continue
            if withdirs:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folder = f"{name}{base}/{'/'.join(parts[:i])}"
                    out.setdefault(folder, {"name": folder, "size": 0, "type": "directory"})
            out[f"{name}{entry.path}"] = self._file_info(name, entry)
        if not entries and inner != "/":
            try:
                entry = cache.info(inner)
                out[f"{name}{entry.path}"] = self._file_info(name, entry)
            except (FileNotFoundError, IsADirectoryError):
                pass
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def ukey(self, path: str) -> str:
        return self.info(path).get("version", "")

    def invalidate_cache(self, path: str | None = None) -> None:
        pass  # listings live in the dataset's index, with its metadata TTL

    # -- data
    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        name, inner = self._split(path)
        cache = self.cache(name)
        size = cache.info(inner).size
        start = 0 if start is None else (size + start if start < 0 else start)
        end = size if end is None else (size + end if end < 0 else end)
        return cache.read_range(inner, max(0, start), end)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        name, inner = self._split(path)
        self.cache(name).write_file(inner, value)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kwargs: Any) -> None:
        if os.path.isdir(lpath):
            return  # folders exist implicitly
        name, inner = self._split(rpath)
        self.cache(name).put_file(Path(lpath), inner)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass  # folders exist implicitly, as in object stores

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any) -> DatasetFile:
        if mode not in ("rb", "wb"):
            raise ValueError(f"mode: dataset:// files open as 'rb' or 'wb', got {mode!r}")
        name, _ = self._split(path)
        cache = self.cache(name)
        return DatasetFile(self, path, mode=mode, block_size=block_size or cache.block_size,
                           cache_type=kwargs.pop("cache_type", "readahead"), cache_options=cache_options,
                           autocommit=autocommit, **kwargs)


class DatasetFile(AbstractBufferedFile):
    """A dataset file: reads fetch ranges through the cache; writes go to the source on close."""

    def __init__(self, fs: DatasetFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        name, inner = fs._split(path)
        self._dataset = fs.cache(name)
        self._inner = inner
        if mode == "rb":
            entry = self._dataset.info(inner)
            kwargs["size"] = entry.size
        super().__init__(fs, fs._strip_protocol(path), mode=mode, **kwargs)
        if mode == "rb":
            self.details = fs._file_info(name, entry)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._dataset.read_range(self._inner, start, end)

    def _initiate_upload(self) -> None:
        self._parts = io.BytesIO()

    def _upload_chunk(self, final: bool = False) -> bool:
        self._parts.write(self.buffer.getvalue())
        if final:
            self._dataset.write_file(self._inner, self._parts.getvalue())
        return True


def _home() -> Path:
    from shipyard.home import shipyard_home

    return shipyard_home()
