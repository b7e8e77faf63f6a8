"""A dataset's sources: its mounts as fsspec filesystems, in one namespace of dataset paths.

A mount at ``path: /train`` with ``mountPoint: s3://bucket/imgs`` shows ``s3://bucket/imgs/a.jpg`` as
``/train/a.jpg``. Listing gives each file's size and version (ETag, else modification time + size,
else size), which is what makes cached blocks go stale when the source changes.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from shipyard.data.spec import Mount, SecretRef, normalize_dataset_path

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
LIST_CONCURRENCY = 32   # stat requests in flight when a listing has no sizes (http)


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset."""

    path: str
    size: int
    version: str
    url: str


class SourceError(OSError):
    """The source cannot be reached, refused access, or does not have the file; names the URL and cause."""


class SourceFileNotFound(SourceError, FileNotFoundError):
    """A file (or folder) missing at the source."""


def unreachable(error: BaseException) -> BaseException | None:
    """The connection failure behind an error, if any (fsspec's http turns them into FileNotFoundError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        if isinstance(current, (ConnectionError, TimeoutError)) or any(
                c.__name__ in ("ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError",
                               "EndpointConnectionError", "ConnectTimeoutError", "gaierror")
                for c in kind.__mro__):
            return current
        current = current.__cause__ or current.__context__
    return None


def source_error(url: str, action: str, error: BaseException) -> SourceError:
    """Wrap any exception from a filesystem into a SourceError naming the URL and the cause."""
    if isinstance(error, SourceError):
        return error
    down = unreachable(error)
    if down is not None:
        return SourceError(f"cannot {action} {url}: the source is unreachable ({type(down).__name__}: {down})")
    cause = f"{type(error).__name__}: {error}".strip()
    if isinstance(error, FileNotFoundError):
        return SourceFileNotFound(f"{url} not found at the source ({action}): {cause}")
    if isinstance(error, PermissionError) or "403" in str(error) or "AccessDenied" in str(error):
        return SourceError(f"cannot {action} {url}: access denied ({cause}); check the mount's credentials "
                           f"(encryptOptions secrets, or the environment: AWS_ACCESS_KEY_ID...)")
    return SourceError(f"cannot {action} {url}: {cause}")


def convert_option(value: str) -> Any:
    """"true"/"false" → bool, integers and floats → numbers, anything else stays a string."""
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def nest_options(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"client_kwargs.endpoint_url": x}`` → ``{"client_kwargs": {"endpoint_url": x}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"option '{key}' nests under '{part}', which is already set to a value")
            node = child
        node[parts[-1]] = value
    return out


def resolve_secret(ref: SecretRef, mount: str) -> str:
    """A secret's value: a file ``<secret>/<key>`` in a secrets folder, else the variable or file named
    ``key`` (also ``KEY`` with non-alphanumerics as ``_``), via shipyard.package.secrets."""
    from shipyard.package.secrets import read_secret, secret_folders

    env_name = re.sub(r"[^A-Za-z0-9]", "_", ref.key).upper()
    for candidate in (f"{ref.secret}/{ref.key}", ref.key, env_name):
        value = read_secret(candidate)
        if value is not None:
            return value
    folders = ", ".join(str(folder) for folder in secret_folders())
    raise SourceError(f"mount '{mount}': option '{ref.option}' needs secret '{ref.secret}' key '{ref.key}': "
                      f"export {env_name}=... or write it to {ref.secret}/{ref.key} in one of: {folders}")


def storage_options(mount: Mount) -> dict[str, Any]:
    """The mount's fsspec storage options: converted, nested, with secrets resolved (never stored)."""
    flat: dict[str, Any] = {key: convert_option(value) for key, value in mount.options.items()}
    for ref in mount.encrypt_options:
        flat[ref.option] = resolve_secret(ref, mount.name)
    return nest_options(flat)


def mount_url(mount: Mount) -> str:
    """The mount point as a URL (an absolute path becomes file://)."""
    return "file://" + mount.mount_point if mount.mount_point.startswith("/") else mount.mount_point


def version_of(info: dict[str, Any]) -> str:
    """A file's version from its fsspec info: ETag, else modification time (+ size), else size."""
    size = info.get("size")
    for key in ("ETag", "etag", "e_tag", "md5Hash", "Content-MD5", "Digest"):
        if info.get(key):
            return "etag:" + str(info[key]).removeprefix("W/").strip('"')
    for key in ("mtime", "LastModified", "last_modified", "Last-Modified", "updated", "modified", "created",
                "last_modified_time", "mtime_ns"):
        value = info.get(key)
        if value not in (None, ""):
            stamp = value.isoformat() if hasattr(value, "isoformat") else str(value)
            return f"mtime:{stamp}:{size}"
    return f"size:{size}"


class Sources:
    """The mounts of one dataset, each with its (lazily built, per-process) fsspec filesystem."""

    def __init__(self, mounts: list[Mount], filesystems: dict[str, Any] | None = None) -> None:
        self.mounts = sorted(mounts, key=lambda m: len(m.path), reverse=True)
        self._given = dict(filesystems or {})
        unknown = set(self._given) - {m.name for m in mounts}
        if unknown:
            raise ValueError(f"filesystems: no mount named {', '.join(sorted(unknown))} "
                             f"(mounts: {', '.join(m.name for m in mounts)})")
        self._built: dict[str, Any] = {}
        self._roots: dict[str, str] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def given(self) -> dict[str, Any]:
        """The prebuilt filesystems passed in, by mount name."""
        return dict(self._given)

    # -- filesystems
    def filesystem(self, mount: Mount) -> Any:
        """The fsspec filesystem of a mount (rebuilt after a fork: async clients do not survive one)."""
        if mount.name in self._given:
            return self._given[mount.name]
        if self._pid != os.getpid():  # a forked child: the parent's clients and lock are not ours
            self._lock = threading.Lock()
            self._built = {}
            self._pid = os.getpid()
        with self._lock:
            fs = self._built.get(mount.name)
            if fs is None:
                fs = self._build(mount)
                self._built[mount.name] = fs
            return fs

    def _build(self, mount: Mount) -> Any:
        import fsspec

        url = mount_url(mount)
        match = _SCHEME.match(url)
        protocol = match.group(1) if match else "file"
        options = storage_options(mount)
        if mount.encrypt_options:
            options["skip_instance_cache"] = True  # credentials must not leak into a shared instance
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as error:
            raise SourceError(f"mount '{mount.name}' ({mount.mount_point}): cannot use {protocol}://: {error}") from error
        try:
            return cls(**options)
        except TypeError as error:
            raise SourceError(f"mount '{mount.name}': bad options for {protocol}:// ({error}); "
                              f"check spec.mounts[].options") from error

    def root(self, mount: Mount) -> str:
        """The mount point as the filesystem's own path (what find/info return)."""
        if mount.name not in self._roots:
            fs = self.filesystem(mount)
            self._roots[mount.name] = fs._strip_protocol(mount_url(mount)).rstrip("/")
        return self._roots[mount.name]

    # -- path mapping
    def locate(self, path: str) -> tuple[Mount, str]:
        """The mount holding a dataset path, and the path relative to that mount ("" for its root)."""
        path = normalize_dataset_path(path, "path")
        for mount in self.mounts:
            if mount.path == "/" or path == mount.path or path.startswith(mount.path + "/"):
                return mount, path[len(mount.path):].strip("/") if mount.path != "/" else path.strip("/")
        raise FileNotFoundError(f"{path}: no mount holds this path (mounts: "
                                f"{', '.join(f'{m.name} at {m.path}' for m in self.mounts)})")

    def url(self, mount: Mount, relative: str) -> str:
        """The source URL of a path inside a mount."""
        base = mount_url(mount).rstrip("/")
        return f"{base}/{relative}" if relative else base

    def fs_path(self, mount: Mount, relative: str) -> str:
        """The filesystem path of a path inside a mount."""
        root = self.root(mount)
        return f"{root}/{relative}" if relative else root

    def dataset_path(self, mount: Mount, fs_path: str) -> str:
        """The dataset path of a filesystem path found under a mount."""
        root = self.root(mount)
        relative = fs_path[len(root):].strip("/") if fs_path.startswith(root) else fs_path.rsplit("/", 1)[-1]
        return normalize_dataset_path(f"{mount.path}/{relative}", "path")

    # -- metadata
    def list(self, path: str = "/") -> list[FileEntry]:
        """Every file under a dataset path, recursively, across mounts."""
        path = normalize_dataset_path(path, "path")
        entries: list[FileEntry] = []
        matched = False
        for mount in self.mounts:
            under = path == "/" or mount.path == path or mount.path.startswith(path + "/")
            inside = mount.path == "/" or path.startswith(mount.path + "/")
            if under:
                matched = True
                entries.extend(self._list_mount(mount, ""))
            elif inside:
                matched = True
                _, relative = self.locate(path)
                entries.extend(self._list_mount(mount, relative))
        if not matched:
            raise FileNotFoundError(f"{path}: no mount holds this path (mounts: "
                                    f"{', '.join(f'{m.name} at {m.path}' for m in self.mounts)})")
        return sorted(entries, key=lambda e: e.path)

    def _list_mount(self, mount: Mount, relative: str) -> list[FileEntry]:
        fs = self.filesystem(mount)
        target = self.fs_path(mount, relative)
        url = self.url(mount, relative)
        try:
            fs.invalidate_cache(target)
            found = fs.find(target, detail=True, withdirs=False)
        except FileNotFoundError as error:
            if unreachable(error) is not None:
                raise source_error(url, "list", error) from error
            found = {}
        except Exception as error:  # noqa: BLE001 - every backend raises its own types
            raise source_error(url, "list", error) from error
        if not found:
            try:
                info = fs.info(target)
            except FileNotFoundError as error:
                if unreachable(error) is not None:
                    raise source_error(url, "list", error) from error
                return []  # an empty or missing folder lists nothing
            except Exception as error:  # noqa: BLE001
                raise source_error(url, "list", error) from error
            if info.get("type") != "file":
                return []
            found = {target: info}  # the path (or the mount point itself) is one file
        files = {name: info for name, info in found.items() if info.get("type") != "directory"}
        unsized = [name for name, info in files.items() if info.get("size") is None]
        if unsized:  # http listings carry no sizes: ask for each file's, many at once (latency-bound)
            with ThreadPoolExecutor(max_workers=min(LIST_CONCURRENCY, len(unsized))) as pool:
                sized = pool.map(lambda name: self._info(fs, name, self._url_of(mount, name)), unsized)
                files.update(zip(unsized, sized))
        return [self._entry(mount, name, info) for name, info in files.items()]

    def _url_of(self, mount: Mount, fs_path: str) -> str:
        root = self.root(mount)
        relative = fs_path[len(root):].strip("/") if fs_path.startswith(root) else ""
        return self.url(mount, relative) if relative or fs_path == root else fs_path

    def _entry(self, mount: Mount, fs_path: str, info: dict[str, Any]) -> FileEntry:
        return FileEntry(path=self.dataset_path(mount, fs_path), size=int(info.get("size") or 0),
                         version=version_of(info), url=self._url_of(mount, fs_path))

    @staticmethod
    def _info(fs: Any, fs_path: str, url: str) -> dict[str, Any]:
        try:
            return fs.info(fs_path)
        except Exception as error:  # noqa: BLE001
            raise source_error(url, "stat", error) from error

    def info(self, path: str) -> FileEntry:
        """One file's size and version, asked of the source (FileNotFoundError when it is missing)."""
        mount, relative = self.locate(path)
        fs = self.filesystem(mount)
        target = self.fs_path(mount, relative)
        url = self.url(mount, relative)
        try:
            fs.invalidate_cache(target)
        except Exception:  # noqa: BLE001 - optional for a backend
            pass
        info = self._info(fs, target, url)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{normalize_dataset_path(path, 'path')} is a folder ({url})")
        if info.get("size") is None:
            raise SourceError(f"cannot stat {url}: the source reports no size")
        return FileEntry(path=normalize_dataset_path(path, "path"), size=int(info["size"]),
                         version=version_of(info), url=url)

    # -- data
    def cat_range(self, entry: FileEntry, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file (end exclusive), one request to the source."""
        mount, relative = self.locate(entry.path)
        fs = self.filesystem(mount)
        try:
            data = fs.cat_file(self.fs_path(mount, relative), start=start, end=end)
        except Exception as error:  # noqa: BLE001
            raise source_error(entry.url, f"read bytes {start}-{end} of", error) from error
        if len(data) != end - start and len(data) == entry.size and entry.size > end - start:
            data = data[start:end]  # a server that ignores Range sends the whole file
        return data

    def write(self, path: str, data: bytes) -> FileEntry:
        """Write a whole file to its mount; PermissionError when the mount is readOnly."""
        return self._upload(path, "write", lambda fs, target: fs.pipe_file(target, data))

    def put(self, local: str, path: str) -> FileEntry:
        """Upload a local file to its mount."""
        return self._upload(path, "upload to", lambda fs, target: fs.put_file(local, target))

    def _upload(self, path: str, verb: str, send: Callable[[Any, str], None]) -> FileEntry:
        """``send(fs, target)`` into the mount holding ``path`` (its parent folder made first when local)."""
        mount, relative = self.writable(path)
        fs = self.filesystem(mount)
        url = self.url(mount, relative)
        target = self.fs_path(mount, relative)
        try:
            parent = target.rsplit("/", 1)[0]
            if parent and _is_local(fs):
                fs.makedirs(parent, exist_ok=True)
            send(fs, target)
        except Exception as error:  # noqa: BLE001
            raise source_error(url, verb, error) from error
        return self.info(path)

    def writable(self, path: str) -> tuple[Mount, str]:
        """The mount and relative path to write; PermissionError naming a readOnly mount."""
        mount, relative = self.locate(path)
        if mount.read_only:
            raise PermissionError(f"cannot write {normalize_dataset_path(path, 'path')}: mount '{mount.name}' "
                                  f"({mount.mount_point}) is readOnly")
        if not relative:
            raise IsADirectoryError(f"{path} is the root of mount '{mount.name}'; write a file under it")
        return mount, relative


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
