"""Weights a package fetches (``weights:`` in shipyard.yaml): downloaded once, checked, cached, linked.

Each file is cached under ``$SHIPYARD_HOME/cache/weights/<key>/`` (the key is its SHA-256 when the
package gives one, so two packages naming the same file share it; else a hash of the URI) and a
symlink in the package points at it. A download goes to a temporary file that is renamed into
the cache only when complete and, when ``sha256`` is given, verified: an interrupted or corrupt
download never becomes a cached file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

from shipyard.home import shipyard_home
from shipyard.package.config import PackageError, Weight

log = logging.getLogger("shipyard.weights")
CHUNK = 1 << 20
#: fsspec protocols that need a package of their own.
FSSPEC_EXTRAS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def weights_cache() -> Path:
    return shipyard_home() / "cache" / "weights"


def file_name(uri: str) -> str:
    """The last path segment of a URI (``https://host/a/b.bin?x=1`` -> ``b.bin``)."""
    name = Path(urlparse(uri).path).name
    return name or "weights"


def chunks(uri: str) -> Iterator[bytes]:
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import httpx

        with httpx.stream("GET", uri, follow_redirects=True, timeout=60) as response:
            if response.status_code != 200:
                raise OSError(f"HTTP {response.status_code} for {uri}")
            yield from response.iter_bytes(CHUNK)
        return
    if scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme else uri).expanduser()
        with open(path, "rb") as handle:
            yield from _read(handle)
        return
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec ships with the huggingface extra
        raise PackageError(f"fetching {uri} needs fsspec: pip install fsspec") from None
    try:
        # A fresh filesystem each time: fsspec caches instances by their arguments, and a cached
        # one would keep the endpoint and credentials the environment had when it was made.
        opened = fsspec.open(uri, "rb", skip_instance_cache=True)
    except (ImportError, ValueError) as exc:
        extra = FSSPEC_EXTRAS.get(scheme)
        hint = f"; pip install {extra}" if extra else ""
        raise PackageError(f"cannot fetch {uri}: {exc}{hint}") from None
    with opened as handle:
        yield from _read(handle)


def _read(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def fetch(weight: Weight, where: str) -> Path:
    """The cached copy of ``weight``, downloading it first if needed."""
    key = weight.sha256.lower() if weight.sha256 else "uri-" + hashlib.sha256(weight.uri.encode()).hexdigest()[:32]
    target = weights_cache() / key / file_name(weight.uri)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest, size, started = hashlib.sha256(), 0, time.monotonic()
    log.info("fetching %s", weight.uri)
    try:
        with open(partial, "wb") as out:
            for chunk in chunks(weight.uri):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if weight.sha256 and digest.hexdigest() != weight.sha256.lower():
            raise PackageError(
                f"{where}: {weight.uri} has sha256 {digest.hexdigest()}, but the package expects {weight.sha256}; "
                "the file changed or the download is corrupt"
            )
        os.replace(partial, target)
    except OSError as exc:
        raise PackageError(f"{where}: cannot fetch {weight.uri}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    log.info("fetched %s: %.1f MB in %.1f s", weight.uri, size / 1e6, elapsed)
    return target


def weight_path(weight: Weight) -> Path:
    """Where a weight appears inside its package (default ``data/<file name of its uri>``)."""
    return Path(weight.path or Path("data") / file_name(weight.uri))


def link_into(package: Path, weight: Weight, cached: Path, where: str) -> Path:
    """Make ``package/<path>`` a symlink to the cached file (atomically); return the link."""
    relative = weight_path(weight)
    if relative.is_absolute() or ".." in relative.parts:
        raise PackageError(f"{where}: path '{relative}' must be relative and stay inside the package")
    link = package / relative
    if link.is_symlink():
        if link.resolve() == cached.resolve():
            return link
    elif link.exists():
        raise PackageError(
            f"{where}: {link} already exists and is not the fetched file; remove it or choose another 'path'"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(cached)
    os.replace(temporary, link)
    return link


def materialise(package: Path, weights: list[Weight]) -> list[Path]:
    """Fetch every weight of a package (cached) and link it in; return the links."""
    return [
        link_into(package, weight, fetch(weight, f"weights[{index}]"), f"weights[{index}]")
        for index, weight in enumerate(weights)
    ]
