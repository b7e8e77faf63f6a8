"""A dataset's resolved configuration: its mounts (sources) and its cache (tiers, block size, policy).

Built from a Fluid ``Dataset`` document plus an optional ``CacheRuntime`` of the same name
(:meth:`DatasetConfig.from_documents`), saved as ``$SHIPYARD_HOME/data/<ns>/<name>/dataset.json``
and read back by any process that opens the dataset by name. Secrets are references only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.home import shipyard_home
from shipyard.quantity import QuantityError, parse_quantity

API_VERSION = "data.fluid.io/v1alpha1"
MEDIUMS = ("MEM", "SSD", "HDD")
EVICTION_POLICIES = ("scan-resistant", "lru")
DEFAULT_QUOTA = 10 * 1024**3
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
RUNTIME_OPTIONS = ("blockSize", "evictionPolicy", "metadataTTL", "verifyReads")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class DataSpecError(ValueError):
    """A dataset document or config that cannot be used; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class DatasetNotFound(LookupError):
    """No ``dataset.json`` for this name and namespace."""


@dataclass
class SecretRef:
    """A storage option whose value comes from a secret (Fluid's ``encryptOptions``)."""

    option: str
    secret: str
    key: str


@dataclass
class Mount:
    """One source of a dataset, shown under ``path`` in the dataset's namespace."""

    mount_point: str
    name: str = ""
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)
    encrypt_options: list[SecretRef] = field(default_factory=list)
    read_only: bool = False

    def __post_init__(self) -> None:
        self.mount_point = normalize_mount_point(self.mount_point, "mount_point")
        if not self.name:
            self.name = default_mount_name(self.mount_point)
        self.path = normalize_dataset_path(self.path or f"/{self.name}", "path")


@dataclass
class Level:
    """One cache tier: a folder with a byte quota and eviction watermarks."""

    medium: str
    path: str
    quota: int
    high: float = 0.95
    low: float = 0.70


@dataclass
class CacheConfig:
    """How blocks are cached: tiers (fastest first), block size, eviction and metadata freshness."""

    levels: list[Level]
    block_size: int = DEFAULT_BLOCK_SIZE
    eviction: str = "scan-resistant"
    metadata_ttl_s: float = 300.0
    verify_reads: bool = True

    @property
    def capacity(self) -> int:
        """The sum of every tier's quota, in bytes."""
        return sum(level.quota for level in self.levels)


@dataclass
class DatasetConfig:
    """Everything a process needs to open a dataset's cache (never secret values)."""

    namespace: str
    name: str
    mounts: list[Mount]
    cache: CacheConfig
    root: Path

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``dataset.json`` holds)."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "root": str(self.root),
            "mounts": [
                {"mountPoint": m.mount_point, "name": m.name, "path": m.path, "options": dict(m.options),
                 "encryptOptions": [{"option": s.option, "secret": s.secret, "key": s.key} for s in m.encrypt_options],
                 "readOnly": m.read_only}
                for m in self.mounts
            ],
            "cache": {
                "levels": [{"medium": lv.medium, "path": lv.path, "quota": lv.quota, "high": lv.high, "low": lv.low}
                           for lv in self.cache.levels],
                "blockSize": self.cache.block_size,
                "eviction": self.cache.eviction,
                "metadataTTL": self.cache.metadata_ttl_s,
                "verifyReads": self.cache.verify_reads,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetConfig:
        """The inverse of :meth:`to_json`; DataSpecError names a bad field."""
        _expect(data, dict, "")
        namespace = _name(data.get("namespace", "default"), "namespace")
        name = _name(data.get("name"), "name")
        root = Path(_expect(data.get("root"), str, "root"))
        mounts_data = _expect(data.get("mounts"), list, "mounts")
        if not mounts_data:
            raise DataSpecError("mounts", "expected at least one mount")
        mounts = []
        for i, m in enumerate(mounts_data):
            where = f"mounts[{i}]"
            _expect(m, dict, where)
            refs = [SecretRef(_expect(s.get("option"), str, f"{where}.encryptOptions[{j}].option"),
                              _expect(s.get("secret"), str, f"{where}.encryptOptions[{j}].secret"),
                              _expect(s.get("key"), str, f"{where}.encryptOptions[{j}].key"))
                    for j, s in enumerate(_expect(m.get("encryptOptions", []), list, f"{where}.encryptOptions"))]
            mounts.append(_mount(m.get("mountPoint"), m.get("name") or "", m.get("path") or "",
                                 _string_map(m.get("options") or {}, f"{where}.options"), refs,
                                 bool(m.get("readOnly", False)), where))
        _check_mounts(mounts, "mounts")
        cache = _expect(data.get("cache"), dict, "cache")
        levels = []
        for i, lv in enumerate(_expect(cache.get("levels"), list, "cache.levels")):
            where = f"cache.levels[{i}]"
            _expect(lv, dict, where)
            medium = lv.get("medium")
            if medium not in MEDIUMS:
                raise DataSpecError(f"{where}.medium", f"expected one of {', '.join(MEDIUMS)}, got {medium!r}")
            levels.append(_level(medium, _expect(lv.get("path"), str, f"{where}.path"),
                                 _quota(lv.get("quota"), f"{where}.quota"),
                                 lv.get("high", 0.95), lv.get("low", 0.70), where))
        config = CacheConfig(levels=levels,
                             block_size=_block_size(cache.get("blockSize", DEFAULT_BLOCK_SIZE), "cache.blockSize"),
                             eviction=_eviction(cache.get("eviction", "scan-resistant"), "cache.eviction"),
                             metadata_ttl_s=_seconds(cache.get("metadataTTL", 300.0), "cache.metadataTTL"),
                             verify_reads=_boolean(cache.get("verifyReads", True), "cache.verifyReads"))
        _check_levels(config.levels, "cache.levels")
        return cls(namespace=namespace, name=name, mounts=mounts, cache=config, root=root)

    def save(self) -> Path:
        """Write ``root/dataset.json`` atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / "dataset.json"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".dataset.json.")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.to_json(), handle, indent=2)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, name: str, namespace: str = "default", home: Path | None = None) -> DatasetConfig:
        """Read ``dataset.json`` of a dataset; DatasetNotFound says how to create one."""
        path = dataset_root(name, namespace, home) / "dataset.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatasetNotFound(
                f"dataset '{name}' not found in namespace '{namespace}' (no {path}); "
                f"apply a Dataset first: shipyard apply -f dataset.yaml") from None
        except json.JSONDecodeError as error:
            raise DataSpecError(str(path), f"not valid JSON: {error}") from None
        return cls.from_json(data)

    @classmethod
    def from_documents(cls, dataset: dict[str, Any], runtime: dict[str, Any] | None,
                       home: Path | None = None) -> DatasetConfig:
        """Resolve a Fluid ``Dataset`` document and an optional ``CacheRuntime`` of the same name."""
        _expect(dataset, dict, "")
        _kind(dataset, "Dataset", "")
        metadata = _expect(dataset.get("metadata"), dict, "metadata")
        name = _name(metadata.get("name"), "metadata.name")
        namespace = _name(metadata.get("namespace") or "default", "metadata.namespace")
        root = dataset_root(name, namespace, home)
        spec = _expect(dataset.get("spec"), dict, "spec")
        shared = _string_map(spec.get("sharedOptions") or {}, "spec.sharedOptions")
        shared_refs = _secret_refs(spec.get("sharedEncryptOptions") or [], "spec.sharedEncryptOptions")
        mounts_data = _expect(spec.get("mounts"), list, "spec.mounts")
        if not mounts_data:
            raise DataSpecError("spec.mounts", "expected at least one mount")
        mounts = []
        for i, m in enumerate(mounts_data):
            where = f"spec.mounts[{i}]"
            _expect(m, dict, where)
            options = {**shared, **_string_map(m.get("options") or {}, f"{where}.options")}
            own = _secret_refs(m.get("encryptOptions") or [], f"{where}.encryptOptions")
            refs = [r for r in shared_refs if r.option not in {o.option for o in own}] + own
            read_only = m.get("readOnly", False)
            if not isinstance(read_only, bool):
                raise DataSpecError(f"{where}.readOnly", f"expected true or false, got {read_only!r}")
            mounts.append(_mount(m.get("mountPoint"), _expect(m.get("name") or "", str, f"{where}.name"),
                                 _expect(m.get("path") or "", str, f"{where}.path"), options, refs, read_only, where))
        _check_mounts(mounts, "spec.mounts")
        cache = _cache_from_runtime(runtime, name, namespace, root)
        return cls(namespace=namespace, name=name, mounts=mounts, cache=cache, root=root)


def dataset_root(name: str, namespace: str = "default", home: Path | None = None) -> Path:
    """``$SHIPYARD_HOME/data/<namespace>/<name>``: where a dataset's config, index and disk cache live."""
    return (Path(home) if home is not None else shipyard_home()) / "data" / namespace / name


def memory_tier_path(name: str, namespace: str) -> str:
    """The default MEM tier folder: ``/dev/shm/shipyard/<ns>/<name>`` (a temp folder where there is no /dev/shm)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return str(base / "shipyard" / namespace / name)


def normalize_mount_point(value: Any, path: str) -> str:
    """Check a mountPoint; ``local:///abs`` becomes ``file:///abs``. pvc:// is rejected with a hint."""
    if not isinstance(value, str) or len(value) < 5:
        raise DataSpecError(path, f"expected a URL or absolute path of at least 5 characters "
                                  f"(s3://bucket/prefix, https://host/dir/, file:///abs, /abs), got {value!r}")
    match = _SCHEME.match(value)
    if match is None:
        if not value.startswith("/"):
            raise DataSpecError(path, f"expected a URL with a scheme (s3://, gs://, https://, file://) "
                                      f"or an absolute local path, got {value!r}")
        return value
    scheme = match.group(1).lower()
    if scheme == "pvc":
        raise DataSpecError(path, f"pvc:// names a Kubernetes volume claim, which a single machine does not "
                                  f"have; mount the folder it holds instead (local:///abs/path or /abs/path), "
                                  f"got {value!r}")
    if scheme == "local":
        rest = value[len("local://"):]
        if not rest.startswith("/"):
            raise DataSpecError(path, f"local:// needs an absolute path (local:///data/train), got {value!r}")
        return "file://" + rest
    if scheme == "file" and not value[len("file://"):].startswith("/"):
        raise DataSpecError(path, f"file:// needs an absolute path (file:///data/train), got {value!r}")
    from fsspec.registry import known_implementations, registry

    if scheme not in known_implementations and scheme not in registry:
        raise DataSpecError(path, f"unknown scheme {scheme}:// (fsspec knows e.g. s3, gs, az, http, https, "
                                  f"hf, memory, file), got {value!r}")
    return value


def default_mount_name(mount_point: str) -> str:
    """The last non-empty segment of a mount point (Fluid's default mount name)."""
    rest = _SCHEME.sub("", mount_point).rstrip("/")
    return rest.rsplit("/", 1)[-1] or "root"


def normalize_dataset_path(value: str, path: str) -> str:
    """A dataset path with one leading "/" and no trailing "/", no "." or ".." segments."""
    if not isinstance(value, str):
        raise DataSpecError(path, f"expected a path such as /train, got {value!r}")
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise DataSpecError(path, f"'.' and '..' are not allowed in a dataset path, got {value!r}")
    return "/" + "/".join(parts)


def _mount(mount_point: Any, name: str, mount_path: str, options: dict[str, str], refs: list[SecretRef],
           read_only: bool, where: str) -> Mount:
    point = normalize_mount_point(mount_point, f"{where}.mountPoint")
    name = name or default_mount_name(point)
    return Mount(mount_point=point, name=name, path=normalize_dataset_path(mount_path or f"/{name}", f"{where}.path"),
                 options=options, encrypt_options=refs, read_only=read_only)


def _check_mounts(mounts: list[Mount], where: str) -> None:
    for i, mount in enumerate(mounts):
        for j, other in enumerate(mounts[:i]):
            if other.name == mount.name:
                raise DataSpecError(f"{where}[{i}].name", f"mount name '{mount.name}' is already used by "
                                                          f"{where}[{j}]; give each mount its own name")
            a, b = other.path.rstrip("/") + "/", mount.path.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                raise DataSpecError(f"{where}[{i}].path", f"'{mount.path}' overlaps '{other.path}' of {where}[{j}]; "
                                                          f"mounts must appear under separate paths")


def _secret_refs(items: Any, where: str) -> list[SecretRef]:
    refs = []
    for i, item in enumerate(_expect(items, list, where)):
        at = f"{where}[{i}]"
        _expect(item, dict, at)
        option = item.get("name")
        if not isinstance(option, str) or not option:
            raise DataSpecError(f"{at}.name", "expected the storage option this secret sets (e.g. key, secret)")
        ref = ((item.get("valueFrom") or {}).get("secretKeyRef")) or {}
        secret = ref.get("name")
        if not isinstance(secret, str) or not secret:
            raise DataSpecError(f"{at}.valueFrom.secretKeyRef.name", "expected the name of a secret")
        key = ref.get("key") or option
        refs.append(SecretRef(option=option, secret=secret, key=_expect(key, str, f"{at}.valueFrom.secretKeyRef.key")))
    return refs


def _cache_from_runtime(runtime: dict[str, Any] | None, name: str, namespace: str, root: Path) -> CacheConfig:
    default = [Level(medium="SSD", path=str(root / "cache"), quota=DEFAULT_QUOTA)]
    if runtime is None:
        return CacheConfig(levels=default)
    _expect(runtime, dict, "")
    _kind(runtime, "CacheRuntime", "runtime")
    meta = _expect(runtime.get("metadata"), dict, "runtime.metadata")
    if meta.get("name") != name:
        raise DataSpecError("runtime.metadata.name", f"a CacheRuntime binds to the Dataset of the same name; "
                                                     f"expected '{name}', got {meta.get('name')!r}")
    spec = _expect(runtime.get("spec") or {}, dict, "runtime.spec")
    levels: list[Level] = []
    for part in ("worker", "client"):
        store = ((spec.get(part) or {}).get("tieredStore") or {})
        if store.get("levels"):
            levels = _runtime_levels(store["levels"], f"runtime.spec.{part}.tieredStore.levels", name, namespace, root)
            break
    options = _string_map(spec.get("options") or {}, "runtime.spec.options")
    for key in options:
        if key not in RUNTIME_OPTIONS:
            close = difflib.get_close_matches(key, RUNTIME_OPTIONS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DataSpecError(f"runtime.spec.options.{key}",
                                f"unknown option; {hint}Shipyard honours {', '.join(RUNTIME_OPTIONS)}")
    return CacheConfig(
        levels=levels or default,
        block_size=_block_size(options.get("blockSize", DEFAULT_BLOCK_SIZE), "runtime.spec.options.blockSize"),
        eviction=_eviction(options.get("evictionPolicy", "scan-resistant"), "runtime.spec.options.evictionPolicy"),
        metadata_ttl_s=_seconds(options.get("metadataTTL", 300.0), "runtime.spec.options.metadataTTL"),
        verify_reads=_boolean(options.get("verifyReads", True), "runtime.spec.options.verifyReads"),
    )


def _runtime_levels(items: Any, where: str, name: str, namespace: str, root: Path) -> list[Level]:
    levels: list[Level] = []
    disk = 0
    for i, item in enumerate(_expect(items, list, where)):
        at = f"{where}[{i}]"
        _expect(item, dict, at)
        kinds = [k for k in ("processMemory", "emptyDir", "hostPath") if item.get(k) is not None]
        if len(kinds) != 1:
            raise DataSpecError(at, f"expected exactly one of processMemory, emptyDir or hostPath, got "
                                    f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        body = _expect(item[kind], dict, f"{at}.{kind}")
        high, low = item.get("high", "0.95"), item.get("low", "0.7")
        if kind == "processMemory":
            levels.append(_level("MEM", memory_tier_path(name, namespace), _quota(body.get("quota"), f"{at}.{kind}.quota"),
                                 high, low, at))
        elif kind == "emptyDir":
            medium = body.get("medium") or ""
            if medium not in ("", "Memory"):
                raise DataSpecError(f"{at}.emptyDir.medium", f'expected "Memory" or "", got {medium!r}')
            if medium == "Memory":
                path = memory_tier_path(name, namespace)
            else:
                path = str(root / ("cache" if disk == 0 else f"cache-{disk}"))
                disk += 1
            levels.append(_level("MEM" if medium == "Memory" else "SSD", path,
                                 _quota(body.get("quota"), f"{at}.emptyDir.quota"), high, low, at))
        else:
            paths = _expect(body.get("paths"), list, f"{at}.hostPath.paths")
            quotas = _expect(body.get("quotas"), list, f"{at}.hostPath.quotas")
            if not paths:
                raise DataSpecError(f"{at}.hostPath.paths", "expected at least one absolute folder")
            if len(quotas) not in (1, len(paths)):
                raise DataSpecError(f"{at}.hostPath.quotas", f"expected one quota per path ({len(paths)}), or one "
                                                             f"shared evenly, got {len(quotas)}")
            for j, folder in enumerate(paths):
                if not isinstance(folder, str) or not folder.startswith("/"):
                    raise DataSpecError(f"{at}.hostPath.paths[{j}]", f"expected an absolute folder, got {folder!r}")
                if len(quotas) == len(paths):
                    quota = _quota(quotas[j], f"{at}.hostPath.quotas[{j}]")
                else:  # one quota for several folders is shared evenly (Fluid's tiered-store rule)
                    quota = _quota(quotas[0], f"{at}.hostPath.quotas[0]") // len(paths)
                levels.append(_level("SSD", folder, quota, high, low, at))
    _check_levels(levels, where)
    order = {m: r for r, m in enumerate(MEDIUMS)}
    return sorted(levels, key=lambda lv: order[lv.medium])


def _level(medium: str, path: str, quota: int, high: Any, low: Any, where: str) -> Level:
    high_f = _fraction(high, f"{where}.high")
    low_f = _fraction(low, f"{where}.low")
    if low_f > high_f:
        raise DataSpecError(f"{where}.low", f"the low watermark ({low}) must not be above the high one ({high}); "
                                            f"expected 0 < low <= high <= 1")
    if not path.startswith("/"):
        raise DataSpecError(f"{where}.path", f"expected an absolute folder, got {path!r}")
    return Level(medium=medium, path=path, quota=quota, high=high_f, low=low_f)


def _check_levels(levels: list[Level], where: str) -> None:
    if not levels:
        raise DataSpecError(where, "expected at least one cache level")
    seen: dict[str, int] = {}
    for i, level in enumerate(levels):
        if level.path in seen:
            raise DataSpecError(f"{where}[{i}]", f"the folder {level.path} is already used by {where}[{seen[level.path]}]")
        seen[level.path] = i


def _fraction(value: Any, path: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataSpecError(path, f'expected a fraction as a string such as "0.95", got {value!r}') from None
    if not 0 < number <= 1:
        raise DataSpecError(path, f"expected 0 < value <= 1, got {value!r}")
    return number


def _quota(value: Any, path: str) -> int:
    if value is None:
        raise DataSpecError(path, "expected a quota such as 10Gi")
    try:
        number = int(parse_quantity(value, path))
    except QuantityError as error:
        raise DataSpecError(path, f"expected a quota such as 512Mi or 10Gi, got {value!r}") from error
    if number <= 0:
        raise DataSpecError(path, f"expected a quota above zero, got {value!r}")
    return number


def _block_size(value: Any, path: str) -> int:
    try:
        number = int(parse_quantity(value, path))
    except QuantityError:
        raise DataSpecError(path, f"expected a size such as 4Mi or 1Mi, got {value!r}") from None
    if not 4096 <= number <= 1024**3:
        raise DataSpecError(path, f"expected a block size between 4Ki and 1Gi, got {value!r}")
    return number


def _eviction(value: Any, path: str) -> str:
    if value not in EVICTION_POLICIES:
        raise DataSpecError(path, f"expected one of {', '.join(EVICTION_POLICIES)}, got {value!r}")
    return value


def _seconds(value: Any, path: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if not match:
            raise DataSpecError(path, f'expected seconds or a duration such as "30s", "5m", "1h", got {value!r}')
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        number = float(match.group(1)) * scale
    if number < 0:
        raise DataSpecError(path, f"expected a duration of zero or more, got {value!r}")
    return number


def _boolean(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise DataSpecError(path, f'expected "true" or "false", got {value!r}')


def _string_map(value: Any, path: str) -> dict[str, str]:
    _expect(value, dict, path)
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise DataSpecError(path, f"expected string keys, got {key!r}")
        if isinstance(item, bool):
            item = "true" if item else "false"
        if not isinstance(item, (str, int, float)):
            raise DataSpecError(f"{path}.{key}", f"expected a string value, got {type(item).__name__}")
        out[key] = str(item)
    return out


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 253:
        raise DataSpecError(path, f"expected a lowercase name (letters, digits, '-', '.'), got {value!r}")
    return value


def _kind(document: dict[str, Any], kind: str, where: str) -> None:
    prefix = f"{where}." if where else ""
    if document.get("kind") != kind:
        raise DataSpecError(f"{prefix}kind", f"expected {kind}, got {document.get('kind')!r}")
    api = document.get("apiVersion")
    if api is not None and api != API_VERSION:
        raise DataSpecError(f"{prefix}apiVersion", f"expected {API_VERSION}, got {api!r}")


def _expect(value: Any, kind: type, path: str) -> Any:
    if not isinstance(value, kind):
        names = {dict: "a mapping", list: "a list", str: "a string"}
        raise DataSpecError(path or "document", f"expected {names.get(kind, kind.__name__)}, got {value!r}")
    return value
