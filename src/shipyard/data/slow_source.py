"""A deliberately slow loopback HTTP file server, the "source" the data-cache benchmark reads from.

``SlowSource(root, latency_ms=20, bandwidth=32 * 2**20)`` serves the files under ``root`` over HTTP/1.1
with a fixed latency before the first byte of every request and ONE token bucket shared by every
connection, so N parallel streams together never exceed ``bandwidth`` bytes/s. It speaks what
fsspec's ``HTTPFileSystem`` needs: GET with a single ``Range`` (206), HEAD, ``ETag`` (size + mtime, so
it changes when the file does), ``Last-Modified`` and directory listings as HTML links (so
``fsspec.filesystem("http").find(url)`` walks the tree).

Counters (requests, GETs, HEADs, bytes sent, the byte ranges fetched per path) come from
``source.stats()`` in-process and from ``GET /_stats`` (JSON) for other processes; ``/_reset`` zeroes
them. Neither control path is delayed or counted.

    python -m shipyard.data.slow_source ROOT --latency-ms 20 --bandwidth 32MiB [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import email.utils
import html
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shipyard.quantity import QuantityError, parse_quantity

CHUNK = 64 * 1024
STATS_PATH = "/_stats"
RESET_PATH = "/_reset"


def parse_bandwidth(value: str | int | float | None, name: str = "bandwidth") -> float | None:
    """``"32MiB"``, ``"32Mi"``, ``"32MiB/s"``, ``"1.5e6"`` or a number -> bytes/s; ``0``/``None``/``"off"`` -> no cap."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        if text.lower() in ("", "0", "off", "none", "unlimited"):
            return None
        cleaned = text.removesuffix("/s").removesuffix("ps")
        if cleaned.endswith("B"):
            cleaned = cleaned[:-1]
        try:
            number = parse_quantity(cleaned, name)
        except QuantityError:
            try:
                number = float(cleaned)  # 1.5e6
            except ValueError:
                raise ValueError(f"{name}: expected bytes per second such as 32MiB, 100Mi or 1048576, "
                                 f"got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name}: expected a positive number of bytes per second, got {value!r}")
    return number or None


class TokenBucket:
    """One bandwidth budget shared by every thread: ``consume(n)`` blocks until n bytes may be sent.

    Tokens may go negative (a reservation), so concurrent senders queue behind each other and the
    aggregate rate stays at ``rate`` however many connections are open. The burst is one chunk, so an
    idle period does not bank credit for a later flood.
    """

    def __init__(self, rate: float | None, burst: int = CHUNK) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, amount: int) -> None:
        if not self.rate or amount <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class _Counters:
    """Thread-safe request/byte counters, with the byte ranges served per path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.gets = 0
            self.heads = 0
            self.range_gets = 0
            self.listings = 0
            self.not_found = 0
            self.bytes_sent = 0
            self.ranges: dict[str, list[list[int]]] = {}
            self.started = time.time()

    def request(self, method: str) -> None:
        with self._lock:
            self.requests += 1
            if method == "GET":
                self.gets += 1
            elif method == "HEAD":
                self.heads += 1

    def add(self, **fields: int) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(self, name, getattr(self, name) + value)

    def fetched(self, path: str, start: int, end: int, ranged: bool) -> None:
        with self._lock:
            self.ranges.setdefault(path, []).append([start, end])
            if ranged:
                self.range_gets += 1

    def sent(self, amount: int) -> None:
        with self._lock:
            self.bytes_sent += amount

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests, "gets": self.gets, "heads": self.heads,
                "range_gets": self.range_gets, "listings": self.listings, "not_found": self.not_found,
                "bytes_sent": self.bytes_sent,
                "fetches": sum(len(r) for r in self.ranges.values()),
                "ranges": {path: [list(r) for r in spans] for path, spans in self.ranges.items()},
                "since": self.started,
            }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: 16 clients connecting at once overflow it, and the dropped
    # SYNs are retried by the kernel after 1 s, which shows up as 1 s stalls in parallel readers.
    request_queue_size = 1024
    source: SlowSource

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a reader that hangs up mid-body is normal (cancelled prefetches, early stops): no traceback
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ShipyardSlowSource/1"
    timeout = 120  # an idle keep-alive connection frees its thread after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def setup(self) -> None:
        super().setup()
        self.server.source._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.source._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        source = self.server.source
        url_path = urllib.parse.urlsplit(self.path).path
        if url_path in (STATS_PATH, RESET_PATH):
            if url_path == RESET_PATH:
                source.reset_stats()
            self._send_bytes(json.dumps(source.stats()).encode(), "application/json", head)
            return
        source.counters.request(self.command)
        if source.latency_s:
            time.sleep(source.latency_s)
        target = source.resolve(url_path)
        if target is None or not target.exists():
            source.counters.add(not_found=1)
            self._send_error(HTTPStatus.NOT_FOUND, f"no such file: {url_path}")
            return
        if target.is_dir():
            source.counters.add(listings=1)
            self._send_bytes(_listing(url_path, target), "text/html; charset=utf-8", head, throttle=True)
            return
        self._send_file(url_path, target, head)

    def _send_error(self, status: HTTPStatus, message: str, extra: dict[str, str] | None = None) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_bytes(self, body: bytes, content_type: str, head: bool, throttle: bool = False) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            if throttle:
                self.server.source.bucket.consume(len(body))
                self.server.source.counters.sent(len(body))
            self.wfile.write(body)

    def _send_file(self, url_path: str, target: Path, head: bool) -> None:
        source = self.server.source
        try:
            handle = target.open("rb")
        except OSError as error:
            self._send_error(HTTPStatus.FORBIDDEN, f"cannot read {url_path}: {error.strerror}")
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            start, end, ranged = 0, size, False
            header = self.headers.get("Range")
            if header:
                parsed = _parse_range(header, size)
                if parsed == "unsatisfiable":
                    self._send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"range {header} outside 0-{size}",
                                     {"Content-Range": f"bytes */{size}"})
                    return
                if parsed is not None:
                    start, end = parsed
                    ranged = True
            self.send_response(HTTPStatus.PARTIAL_CONTENT if ranged else HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{size:x}-{stat.st_mtime_ns:x}"')
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if head:
                return
            source.counters.fetched(urllib.parse.unquote(url_path), start, end, ranged)
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:  # the file shrank under us; the client sees a short body
                    break
                source.bucket.consume(len(chunk))
                # counted before writing, so a client that has the bytes always sees them counted
                source.counters.sent(len(chunk))
                self.wfile.write(chunk)
                remaining -= len(chunk)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range -> [start, end); None to ignore it (serve 200); "unsatisfiable"."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # RFC 9110 lets a server ignore ranges it does not support
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                return "unsatisfiable"
            return max(0, size - length), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return "unsatisfiable"
    return start, min(end, size)


def _listing(url_path: str, folder: Path) -> bytes:
    """An HTML page linking every entry by absolute path (folders end with "/"), as fsspec's ls expects."""
    base = url_path if url_path.endswith("/") else url_path + "/"
    rows = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        name = entry.name + ("/" if entry.is_dir() else "")
        href = urllib.parse.quote(base + name)
        rows.append(f'<li><a href="{html.escape(href, quote=True)}">{html.escape(name)}</a></li>')
    title = html.escape(base)
    return (f"<!DOCTYPE html>\n<html><head><title>Index of {title}</title></head><body>\n"
            f"<h1>Index of {title}</h1>\n<ul>\n" + "\n".join(rows) + "\n</ul>\n</body></html>\n").encode()


class SlowSource:
    """A throttled HTTP file server on loopback serving ``root``; ``with SlowSource(root) as source: source.url``."""

    def __init__(self, root: str | Path, latency_ms: float = 20.0, bandwidth: str | int | float | None = 32 * 2**20,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"root: expected an existing folder to serve, got {str(root)!r}")
        if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or latency_ms < 0:
            raise ValueError(f"latency_ms: expected a number of milliseconds >= 0, got {latency_ms!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port: expected an integer 0-65535 (0 picks a free port), got {port!r}")
        self.latency_s = float(latency_ms) / 1000.0
        self.bandwidth = parse_bandwidth(bandwidth)
        self.host = host
        self.port = port
        self.bucket = TokenBucket(self.bandwidth)
        self.counters = _Counters()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    # -- lifecycle
    def start(self) -> SlowSource:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.source = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"slow-source:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SlowSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash); the server must be started."""
        if self._server is None:
            raise RuntimeError("SlowSource is not started; call start() or use it as a context manager")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- counters
    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, plus the settings (what ``GET /_stats`` returns)."""
        snapshot = self.counters.snapshot()
        snapshot.update(latency_ms=self.latency_s * 1000.0, bandwidth=self.bandwidth, root=str(self.root))
        return snapshot

    def reset_stats(self) -> None:
        self.counters.reset()

    # -- internals
    def resolve(self, url_path: str) -> Path | None:
        """The file or folder a URL path names, or None when it escapes ``root``."""
        relative = urllib.parse.unquote(url_path).lstrip("/")
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


def fetch_stats(url: str, reset: bool = False, timeout: float = 10.0) -> dict[str, Any]:
    """Another process's view of a SlowSource's counters (``GET url/_stats`` or ``/_reset``)."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + (RESET_PATH if reset else STATS_PATH), timeout=timeout) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipyard.data.slow_source",
                                     description="Serve a folder over HTTP with per-request latency and a shared bandwidth cap.")
    parser.add_argument("root", help="the folder to serve")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay before the first byte of each request (20)")
    parser.add_argument("--bandwidth", default="32MiB", help="total bytes/s across all connections, e.g. 32MiB; 0 = no cap")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        source = SlowSource(args.root, latency_ms=args.latency_ms, bandwidth=args.bandwidth, host=args.host,
                            port=args.port)
    except ValueError as error:
        parser.error(str(error))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with source:
        cap = f"{source.bandwidth / 2**20:.1f} MiB/s" if source.bandwidth else "no bandwidth cap"
        print(f"serving {source.root} at {source.url} ({source.latency_s * 1000:.0f} ms latency, {cap}); "
              f"counters at {source.url}{STATS_PATH}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
