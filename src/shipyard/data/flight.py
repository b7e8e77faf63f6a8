"""Arrow Flight over cached datasets: tables read once through ``DatasetCache``, served to many readers.

A request names ``NAMESPACE/DATASET/path``, where the path is a tabular file (parquet, CSV/TSV,
JSON lines, Arrow IPC; CSV and JSON lines may be .gz/.bz2/.zst compressed) or a folder or glob
meaning all of its tabular files as one table. On the wire:

- descriptors: ``FlightDescriptor.for_path("ns/ds/train/x.parquet")`` or ``for_command`` of the
  JSON ``{"path": "ns/ds/train", "columns": ["a", "b"]}`` (``columns`` projects);
- ``get_flight_info``: the (projected) schema, rows, source bytes and one endpoint per file, whose
  ticket is the same JSON for that file, so clients can read the files in parallel;
- ``do_get``: the table's record batches. Tables are kept in an in-memory LRU bounded by bytes
  (``max_memory``) and loaded single-flight, so N readers of a table cause one read of the cache;
- ``list_flights``: every tabular file of every dataset under ``$SHIPYARD_HOME`` (criteria: an
  optional ``ns`` / ``ns/ds`` / ``ns/ds/folder`` prefix);
- ``do_action("stats")``: the server's counters as JSON.

An unknown dataset or path is a ``KeyError`` (pyarrow clients see ``ArrowKeyError``), a bad request
a ``ValueError`` (``ArrowInvalid``); the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.flight as flight

from shipyard.quantity import format_bytes, parse_quantity

if TYPE_CHECKING:  # pragma: no cover
    from shipyard.data.engine import DatasetCache, FileEntry

__all__ = ["FlightServer", "TableRef", "normalize_location", "read_table", "serve_flight", "server_stats",
           "table_format"]

log = logging.getLogger(__name__)

DEFAULT_LOCATION = "grpc+unix:///tmp/shipyard-flight.sock"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "json",
            ".ndjson": "json", ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc", ".arrows": "ipc"}
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
_GLOB_CHARS = set("*?[")
_MAX_UNIX_PATH = 107


def table_format(path: str) -> tuple[str, str | None] | None:
    """``("parquet"|"csv"|"tsv"|"json"|"ipc", compression or None)`` for a tabular file name, else None."""
    name = path.rsplit("/", 1)[-1].lower()
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return None
    compression = _COMPRESSIONS.get("." + suffix)
    if compression is not None:
        stem, dot, suffix = stem.rpartition(".")
        if not dot:
            return None
    fmt = _FORMATS.get("." + suffix)
    if fmt is None or (compression and fmt not in ("csv", "tsv", "json")):
        return None
    return fmt, compression


@dataclass(frozen=True)
class TableRef:
    """What a ticket or descriptor asks for: a dataset path and an optional column projection."""

    namespace: str
    dataset: str
    path: str                              # "/" for the whole dataset; may be a glob
    columns: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.dataset}{self.path}"

    def ticket(self) -> bytes:
        body: dict[str, Any] = {"path": f"{self.namespace}/{self.dataset}{self.path}"}
        if self.columns is not None:
            body["columns"] = list(self.columns)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, raw: bytes | str) -> TableRef:
        """A ticket/command: the JSON ``{"path": "ns/ds/p", "columns": [...]}`` or a bare ``ns/ds/p``."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = text.strip()
        columns: tuple[str, ...] | None = None
        if text.startswith("{"):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"ticket: not valid JSON ({exc.msg} at {exc.pos})") from None
            unknown = sorted(set(body) - {"path", "columns"})
            if unknown:
                raise ValueError(f"ticket.{unknown[0]}: unknown key; expected 'path' and optional 'columns'")
            if not isinstance(body.get("path"), str):
                raise ValueError("ticket.path: expected a string NAMESPACE/DATASET/path")
            raw_columns = body.get("columns")
            if raw_columns is not None:
                if not isinstance(raw_columns, list) or not all(isinstance(c, str) for c in raw_columns):
                    raise ValueError(f"ticket.columns: expected a list of column names, got {raw_columns!r}")
                columns = tuple(raw_columns)
            text = body["path"]
        return cls.from_path(text, columns)

    @classmethod
    def from_path(cls, text: str, columns: Sequence[str] | None = None) -> TableRef:
        parts = text.strip().strip("/").split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ValueError(f"path: expected NAMESPACE/DATASET/path (e.g. default/sales/2024.parquet), got {text!r}")
        for part, what in ((parts[0], "namespace"), (parts[1], "dataset")):
            if part in (".", "..") or _GLOB_CHARS & set(part):
                raise ValueError(f"path: {what} {part!r} is not a valid name")
        sub = "/" + (parts[2] if len(parts) > 2 else "").strip("/")
        if ".." in sub.split("/"):
            raise ValueError(f"path: '..' is not allowed in {text!r}")
        return cls(parts[0], parts[1], sub, tuple(columns) if columns is not None else None)


class _TableLRU:
    """Tables by key, bounded by bytes, least recently used evicted first; loads are single-flight."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._loading: dict[tuple, Future] = {}
        self.bytes = 0
        self.hits = self.loads = self.waits = self.evictions = 0

    def peek(self, key: tuple) -> pa.Table | None:
        with self._lock:
            table = self._items.get(key)
            if table is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return table

    def get(self, key: tuple, load: Callable[[], pa.Table]) -> pa.Table:
        with self._lock:
            table = self._items.get(key)
            if table is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return table
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = self._loading[key] = Future()
            else:
                self.waits += 1
        if not owner:
            return pending.result()
        try:
            table = load()
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            self.loads += 1
            size = table.nbytes
            if size <= self.max_bytes:  # a table bigger than the whole budget is served, not kept
                self._items[key] = table
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.bytes -= old.nbytes
                    self.evictions += 1
        pending.set_result(table)
        return table

    def __len__(self) -> int:
        return len(self._items)


class FlightServer(flight.FlightServerBase):
    """An Arrow Flight server over every dataset in ``home`` (default ``$SHIPYARD_HOME``).

    ``location``: ``grpc+unix:///path.sock`` (same host; a stale socket file is replaced) or
    ``grpc://HOST:PORT`` (port 0 picks one; ``self.location`` has the real one). ``max_memory``
    bounds the table LRU (a quantity such as ``1Gi``). The server listens once constructed;
    ``serve()`` blocks, ``shutdown()`` stops it.
    """

    def __init__(self, location: str = DEFAULT_LOCATION, home: Path | None = None, *,
                 max_memory: int | str = "1Gi", **kwargs: Any) -> None:
        uri = normalize_location(location)
        max_bytes = int(parse_quantity(max_memory, "max_memory"))
        if max_bytes < 0:
            raise ValueError(f"max_memory: expected a size >= 0 such as 1Gi, got {max_memory!r}")
        self._socket_path: str | None = None
        if uri.startswith("grpc+unix://"):
            self._socket_path = _prepare_socket(uri)
        super().__init__(uri, **kwargs)
        parsed = urlparse(uri)
        if parsed.scheme in ("grpc", "grpc+tcp") and parsed.port == 0:
            uri = f"{parsed.scheme}://{parsed.hostname}:{self.port}"
        self.location = uri
        self.home = Path(home) if home is not None else None
        self._tables = _TableLRU(max_bytes)
        self._caches: dict[tuple[str, str], DatasetCache] = {}
        self._caches_lock = threading.Lock()
        self._meta: OrderedDict[tuple, tuple[pa.Schema, int]] = OrderedDict()
        self._meta_lock = threading.Lock()
        self._counts = {"requests": 0, "errors": 0, "rows_sent": 0}
        self._counts_lock = threading.Lock()

    # -- Flight methods

    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        ref = self._guard(lambda: _descriptor_ref(descriptor))
        return self._guard(lambda: self._flight_info(ref, descriptor), ref)

    def get_schema(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        ref = self._guard(lambda: _descriptor_ref(descriptor))
        return flight.SchemaResult(self._guard(lambda: self._flight_info(ref, descriptor), ref).schema)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        ref = self._guard(lambda: TableRef.parse(ticket.ticket))
        table = self._guard(lambda: self.table(ref), ref)
        with self._counts_lock:
            self._counts["rows_sent"] += table.num_rows
        return flight.RecordBatchStream(table)

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        prefix = (criteria or b"").decode("utf-8", "replace").strip().strip("/")
        for namespace, name in self._datasets():
            base = f"{namespace}/{name}"
            if prefix and not (base + "/").startswith(prefix + "/") and not prefix.startswith(base + "/"):
                continue
            folder = "/" + prefix[len(base):].strip("/") if prefix.startswith(base + "/") else "/"
            try:
                cache = self._cache(namespace, name)
                entries = [e for e in cache.list(folder) if table_format(e.path)]
            except Exception as exc:  # one broken dataset must not hide the others
                log.warning("list_flights: skipping dataset %s: %s", base, exc)
                continue
            for entry in sorted(entries, key=lambda e: e.path):
                ref = TableRef(namespace, name, entry.path)
                try:
                    schema, rows = self._file_meta(cache, ref, entry)
                except Exception as exc:
                    log.warning("list_flights: skipping %s: %s", ref.name, exc)
                    continue
                descriptor = flight.FlightDescriptor.for_path(ref.name)
                yield flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ref.ticket(), [])],
                                        rows, entry.size)

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [("stats", "the server's counters as JSON")]

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        if action.type != "stats":
            raise ValueError(f"action: unknown action {action.type!r}; expected 'stats'")
        return iter([json.dumps(self.stats()).encode()])

    # -- tables

    def table(self, ref: TableRef) -> pa.Table:
        """The table a request names (through the LRU), projected to ``ref.columns``."""
        cache = self._cache(ref.namespace, ref.dataset)
        entries = self._files(cache, ref)
        tables = [self._file_table(cache, ref, entry) for entry in entries]
        if len(tables) == 1:
            return tables[0]
        try:
            return pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"{ref.name}: its files do not form one table: {exc}") from None

    def stats(self) -> dict[str, Any]:
        """Requests, errors, rows sent, and the table LRU's loads/hits/waits/evictions and bytes."""
        lru = self._tables
        with self._counts_lock:
            counts = dict(self._counts)
        return {**counts, "table_loads": lru.loads, "table_hits": lru.hits, "table_waits": lru.waits,
                "evictions": lru.evictions, "tables": len(lru), "memory_bytes": lru.bytes,
                "max_memory_bytes": lru.max_bytes, "memory": format_bytes(lru.bytes)}

    def _flight_info(self, ref: TableRef, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        cache = self._cache(ref.namespace, ref.dataset)
        entries = self._files(cache, ref)
        metas = [self._file_meta(cache, TableRef(ref.namespace, ref.dataset, e.path), e) for e in entries]
        try:
            schema = pa.unify_schemas([schema for schema, _ in metas]) if len(metas) > 1 else metas[0][0]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"{ref.name}: its files do not form one table: {exc}") from None
        if ref.columns is not None:
            _check_columns(ref, schema)
            schema = pa.schema([schema.field(c) for c in ref.columns], metadata=schema.metadata)
        endpoints = [flight.FlightEndpoint(TableRef(ref.namespace, ref.dataset, e.path, ref.columns).ticket(), [])
                     for e in entries]
        return flight.FlightInfo(schema, descriptor, endpoints, sum(rows for _, rows in metas),
                                 sum(e.size for e in entries))

    def _files(self, cache: DatasetCache, ref: TableRef) -> list[FileEntry]:
        """The tabular files a path names: a file, or every tabular file under a folder / matching a glob."""
        if _GLOB_CHARS & set(ref.path):
            entries = cache.glob(ref.path)
            explicit = False
        else:
            entries = [e for e in cache.list(ref.path) if e.path != ref.path]
            explicit = not entries
            if explicit:
                try:
                    entries = [cache.info(ref.path)]
                except FileNotFoundError:
                    raise KeyError(f"{ref.name}: no such file or folder in dataset "
                                   f"{ref.namespace}/{ref.dataset}") from None
        tabular = sorted((e for e in entries if table_format(e.path)), key=lambda e: e.path)
        if explicit and not tabular:
            raise ValueError(f"{ref.name}: not a tabular file; expected one of "
                             f"{', '.join(sorted(_FORMATS))} (csv/jsonl may end in .gz, .bz2, .zst)")
        if not tabular:
            raise KeyError(f"{ref.name}: no tabular files ({', '.join(sorted(_FORMATS))}) in dataset "
                           f"{ref.namespace}/{ref.dataset}")
        return tabular

    def _file_table(self, cache: DatasetCache, ref: TableRef, entry: FileEntry) -> pa.Table:
        fmt, compression = table_format(entry.path)  # type: ignore[misc]
        base = (ref.namespace, ref.dataset, entry.path, entry.version)
        if ref.columns is None:
            return self._tables.get(base + (None,), lambda: _read_file(cache, entry, fmt, compression, None))
        whole = self._tables.peek(base + (None,))
        if whole is None and fmt != "parquet":   # only parquet can read just some columns
            whole = self._tables.get(base + (None,), lambda: _read_file(cache, entry, fmt, compression, None))
        if whole is not None:
            _check_columns(TableRef(ref.namespace, ref.dataset, entry.path, ref.columns), whole.schema)
            return whole.select(list(ref.columns))
        return self._tables.get(base + (ref.columns,),
                                lambda: _read_file(cache, entry, fmt, compression, ref.columns))

    def _file_meta(self, cache: DatasetCache, ref: TableRef, entry: FileEntry) -> tuple[pa.Schema, int]:
        """One file's schema and row count: from the parquet footer, else from the (cached) table."""
        key = (ref.namespace, ref.dataset, entry.path, entry.version)
        with self._meta_lock:
            meta = self._meta.get(key)
            if meta is not None:
                self._meta.move_to_end(key)
                return meta
        fmt, compression = table_format(entry.path)  # type: ignore[misc]
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with _open(cache, entry) as handle:
                try:
                    parquet = pq.ParquetFile(handle)
                except pa.ArrowInvalid as exc:
                    raise ValueError(f"{ref.name}: not a readable parquet file: {exc}") from None
                meta = (parquet.schema_arrow, parquet.metadata.num_rows)
        else:
            table = self._file_table(cache, TableRef(ref.namespace, ref.dataset, entry.path), entry)
            meta = (table.schema, table.num_rows)
        with self._meta_lock:
            self._meta[key] = meta
            while len(self._meta) > 4096:
                self._meta.popitem(last=False)
        return meta

    # -- datasets

    def _cache(self, namespace: str, name: str) -> DatasetCache:
        key = (namespace, name)
        with self._caches_lock:
            cache = self._caches.get(key)
            if cache is None:
                from shipyard.data.engine import DatasetCache

                try:
                    cache = DatasetCache.open(name, namespace=namespace, home=self.home)
                except LookupError as exc:
                    raise KeyError(f"dataset {namespace}/{name} not found: {exc}") from None
                self._caches[key] = cache
            return cache

    def _datasets(self) -> list[tuple[str, str]]:
        from shipyard.home import shipyard_home

        root = (self.home or shipyard_home()) / "data"
        return sorted((p.parent.parent.name, p.parent.name) for p in root.glob("*/*/dataset.json"))

    def _guard(self, call: Callable[[], Any], ref: TableRef | None = None) -> Any:
        """Count the request; turn failures into errors a Flight client understands (the server goes on)."""
        if ref is None:
            with self._counts_lock:
                self._counts["requests"] += 1
        try:
            return call()
        except (KeyError, ValueError, flight.FlightError):
            self._count_error()
            raise
        except FileNotFoundError as exc:
            self._count_error()
            raise KeyError(f"{ref.name if ref else 'request'}: {exc}") from None
        except OSError as exc:   # the source is unreachable (SourceError) or a read failed
            self._count_error()
            raise flight.FlightUnavailableError(f"{ref.name if ref else 'request'}: {exc}") from None
        except Exception as exc:
            self._count_error()
            log.exception("flight request failed")
            raise flight.FlightInternalError(f"{ref.name if ref else 'request'}: "
                                             f"{type(exc).__name__}: {exc}") from None

    def _count_error(self) -> None:
        with self._counts_lock:
            self._counts["errors"] += 1

    def shutdown(self) -> None:
        """Stop serving, close the datasets' caches and remove the unix socket."""
        super().shutdown()
        with self._caches_lock:
            caches, self._caches = list(self._caches.values()), {}
        for cache in caches:
            try:
                cache.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.exception("closing a dataset cache failed")
        if self._socket_path and os.path.exists(self._socket_path):
            try:
                os.unlink(self._socket_path)
            except OSError:  # pragma: no cover
                pass


def serve_flight(location: str = DEFAULT_LOCATION, *, home: Path | None = None, max_memory: int | str = "1Gi",
                 ready: Callable[[FlightServer], None] | None = None) -> None:
    """Serve every dataset in ``home`` over Arrow Flight at ``location`` until SIGINT/SIGTERM.

    ``ready`` is called with the listening server (its ``location`` has the real port).
    """
    import signal

    server = FlightServer(location, home, max_memory=max_memory)
    # shutdown() waits for serve() to return, so a signal handler (on the serving thread) must not call it
    stopper = threading.Thread(target=server.shutdown, name="shipyard-flight-stop", daemon=True)

    def on_signal(signum: int, frame: Any) -> None:
        if not stopper.is_alive() and stopper.ident is None:
            stopper.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.info("serving datasets over Arrow Flight at %s", server.location)
        if ready is not None:
            ready(server)
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stopper.ident is None:
            server.shutdown()
        else:
            stopper.join()   # it closes the caches and removes the socket before we return


# -- client


def read_table(location: str, dataset: str, path: str = "/", columns: Sequence[str] | None = None,
               namespace: str = "default", *, max_workers: int = 4) -> pa.Table:
    """Read ``path`` of ``namespace/dataset`` from a Flight server, its files' endpoints in parallel.

    A missing dataset/path raises ``KeyError``, a bad request ``ValueError``, both with the server's message.
    """
    if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
        raise TypeError(f"columns: expected a list of column names, got {columns!r}")
    uri = normalize_location(location)
    ref = TableRef.from_path(f"{namespace}/{dataset}/{path.lstrip('/')}", columns)
    descriptor = flight.FlightDescriptor.for_command(ref.ticket())
    client = flight.connect(uri)
    try:
        info = _client_call(lambda: client.get_flight_info(descriptor))
        endpoints = list(info.endpoints)

        def fetch(endpoint: flight.FlightEndpoint) -> pa.Table:
            locations = [str(loc.uri.decode() if isinstance(loc.uri, bytes) else loc.uri)
                         for loc in endpoint.locations]
            if not locations:
                return _client_call(lambda: client.do_get(endpoint.ticket).read_all())
            with flight.connect(locations[0]) as other:
                return _client_call(lambda: other.do_get(endpoint.ticket).read_all())

        if len(endpoints) <= 1 or max_workers <= 1:
            tables = [fetch(e) for e in endpoints]
        else:
            with ThreadPoolExecutor(max_workers=min(max_workers, len(endpoints))) as pool:
                tables = list(pool.map(fetch, endpoints))
    finally:
        client.close()
    if not tables:
        return info.schema.empty_table()
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    return table


def server_stats(location: str) -> dict[str, Any]:
    """A Flight server's counters (``do_action("stats")``)."""
    with flight.connect(normalize_location(location)) as client:
        results = list(_client_call(lambda: client.do_action(flight.Action("stats", b""))))
    return json.loads(results[0].body.to_pybytes())


def _client_call(call: Callable[[], Any]) -> Any:
    """Re-raise the server's KeyError/ValueError with its message and without its traceback."""
    try:
        return call()
    except pa.ArrowKeyError as exc:
        raise KeyError(_server_message(exc)) from None
    except pa.ArrowInvalid as exc:
        raise ValueError(_server_message(exc)) from None


def _server_message(exc: Exception) -> str:
    text = str(exc).split(". Detail:", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


# -- helpers


def normalize_location(location: str) -> str:
    """``grpc+unix:///p.sock``, ``unix:///p.sock``, ``/p.sock``, ``grpc://h:port`` or ``h:port`` -> a Flight URI."""
    if not isinstance(location, str) or not location.strip():
        raise ValueError(f"location: expected grpc+unix:///path.sock or grpc://HOST:PORT, got {location!r}")
    text = location.strip()
    if text.startswith("/"):
        text = "grpc+unix://" + text
    elif text.startswith("unix://"):
        text = "grpc+unix://" + text[len("unix://"):]
    elif text.startswith("unix:"):
        text = "grpc+unix://" + text[len("unix:"):]
    elif "://" not in text:
        text = "grpc://" + text
    parsed = urlparse(text)
    if parsed.scheme == "grpc+unix":
        if not parsed.path.startswith("/"):
            raise ValueError(f"location: a unix socket needs an absolute path (grpc+unix:///tmp/x.sock), "
                             f"got {location!r}")
        if len(parsed.path.encode()) > _MAX_UNIX_PATH:
            raise ValueError(f"location: the socket path is longer than {_MAX_UNIX_PATH} bytes "
                             f"(a unix socket limit): {parsed.path}")
        return f"grpc+unix://{parsed.path}"
    if parsed.scheme in ("grpc", "grpc+tcp", "grpc+tls"):
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ValueError(f"location: expected grpc://HOST:PORT (PORT may be 0), got {location!r}")
        return text
    raise ValueError(f"location: expected grpc+unix:///path.sock or grpc://HOST:PORT, got {location!r}")


def _prepare_socket(uri: str) -> str:
    """Make the socket's folder; replace a stale socket file, refuse a live one or a non-socket."""
    path = urlparse(uri).path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"location: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)   # nobody listens: left over from a server that died
        return path
    finally:
        probe.close()
    raise ValueError(f"location: a server is already listening on {path}")


def _descriptor_ref(descriptor: flight.FlightDescriptor) -> TableRef:
    if descriptor.descriptor_type == flight.DescriptorType.PATH:
        parts = [p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in descriptor.path]
        return TableRef.from_path("/".join(parts))
    return TableRef.parse(descriptor.command)


def _check_columns(ref: TableRef, schema: pa.Schema) -> None:
    names = schema.names
    missing = [c for c in ref.columns or () if c not in names]
    if missing:
        raise ValueError(f"columns: {', '.join(map(repr, missing))} not in {ref.name} "
                         f"(its columns: {', '.join(names)})")


class _open:
    """``cache.open_file`` as a context manager (the contract promises close(), not __enter__)."""

    def __init__(self, cache: DatasetCache, entry: FileEntry) -> None:
        self.handle = cache.open_file(entry.path)

    def __enter__(self) -> Any:
        return self.handle

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _read_file(cache: DatasetCache, entry: FileEntry, fmt: str, compression: str | None,
               columns: tuple[str, ...] | None) -> pa.Table:
    """One tabular file read through the cache (parquet: only the requested columns' chunks)."""
    name = entry.path
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with _open(cache, entry) as handle:
                parquet = pq.ParquetFile(handle)
                if columns is not None:
                    missing = [c for c in columns if c not in parquet.schema_arrow.names]
                    if missing:
                        raise ValueError(f"columns: {', '.join(map(repr, missing))} not in {name} "
                                         f"(its columns: {', '.join(parquet.schema_arrow.names)})")
                return parquet.read(columns=list(columns) if columns is not None else None)
        data = pa.BufferReader(cache.read(name))
        if fmt == "ipc":
            try:
                return pa.ipc.open_file(data).read_all()
            except pa.ArrowInvalid:
                return pa.ipc.open_stream(pa.BufferReader(cache.read(name))).read_all()
        stream = pa.input_stream(data, compression=compression) if compression else data
        if fmt in ("csv", "tsv"):
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
            return pcsv.read_csv(stream, parse_options=parse)
        import pyarrow.json as pjson

        return pjson.read_json(stream)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"{name}: cannot be read as {fmt}: {_server_message(exc)}") from None
