"""Payload logging: CloudEvents to a sink, through a bounded queue and a durable spool.

``PayloadLogger.log(event)`` is what the gateway calls on its hot path: it appends to a bounded
in-memory queue and returns (never blocks, never raises; a full queue drops the event and counts
it). One sender thread per logger moves queued events into the on-disk spool (spool.py, one fsync
per move) and delivers the spool's oldest events, ``batch_size`` at a time and in order, to the
sink. Delivered events are acknowledged in the spool after each batch; a failed delivery is
retried with exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``) from the first
event not delivered, so a sink that is down loses nothing (up to the spool's size cap) and gets
every event once, in order, when it returns (exactly once while the process lives; an event sent
just before a crash may come again after it).

Sinks (``sink_for(url)``):

- ``http://`` / ``https://``: each event POSTed in CloudEvents binary mode (``ce-*`` headers,
  ``Content-Type`` the payload's, body the raw payload); any 2xx is success, anything else (or
  no answer within ``timeout_s``) a failed attempt;
- ``file:///path.jsonl``: one line per event in CloudEvents' structured JSON format, fsynced after
  each batch.

A URL naming an InferenceService by host, as KServe users write it (``http://drift.default.example.com/``
or the in-cluster ``http://drift.default.svc.cluster.local/``), goes through the gateway the logger
runs in: ``GatewayRoute`` (set by the gateway on ``PayloadLoggers.route``) sends it to the gateway's
own address with the original ``Host`` header, and the gateway proxies it to that service's replicas
like any request. Hosts under ``.svc.cluster.local``, ``.svc`` and KServe's default domain
``example.com`` always go there (an event waits in the spool until the service exists); any other
host goes there when the gateway routes it (``{isvc}.{namespace}.{domain}`` of a service it has),
and straight to the host otherwise. The decision is made at each delivery, so a detector applied
after its logger is found.

Counters (``stats()``, ``prometheus()``): ``sent``, ``failed_attempts``, ``dropped`` (queue full
plus spool cap), ``backlog`` (events in queue and spool), ``backlog_bytes`` (spool).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import unquote, urlparse

import httpx

from shipyard.monitor.cloudevents import Event, decoded
from shipyard.monitor.spool import DEFAULT_MAX_BYTES, Spool

log = logging.getLogger("shipyard.monitor")

DEFAULT_QUEUE = 10_000
DEFAULT_BATCH = 100
DEFAULT_BACKOFF_S = 0.1
DEFAULT_BACKOFF_MAX_S = 5.0
DEFAULT_TIMEOUT_S = 5.0


class SinkError(Exception):
    """A delivery failed after ``delivered`` events of the batch had been delivered."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink(Protocol):
    def send(self, events: list[Event]) -> None:
        """Deliver every event in order, or raise SinkError saying how many were delivered."""

    def close(self) -> None: ...


#: Host suffixes that only the gateway can reach (Kubernetes' in-cluster names, KServe's default domain).
GATEWAY_ONLY_SUFFIXES = (".svc.cluster.local", ".svc", ".example.com")


class GatewayRoute:
    """Sends a logger URL that names an InferenceService by host to the gateway, with that ``Host``.

    ``base_url()`` is the gateway's own REST address (None while it does not listen yet) and
    ``serves(host)`` says whether it routes a ``Host`` header to a service now."""

    def __init__(self, base_url: Callable[[], str | None], serves: Callable[[str], bool]) -> None:
        self.base_url = base_url
        self.serves = serves

    def resolve(self, url: str) -> tuple[str, dict[str, str]] | None:
        """(the URL to POST to, extra headers) through the gateway; None to send to ``url`` itself.
        SinkError when the URL is for the gateway but it does not listen yet."""
        parsed = urlparse(url)
        hostname = (parsed.hostname or "").lower().rstrip(".")
        if not hostname or hostname == "localhost" or hostname.count(".") < 2 or _is_ip(hostname):
            return None
        always = hostname.endswith(GATEWAY_ONLY_SUFFIXES)
        if not always and not self.serves(parsed.netloc.rsplit("@", 1)[-1]):
            return None
        base = self.base_url()
        if not base:
            raise SinkError(f"{url} goes through the gateway, which is not listening yet")
        target = base.rstrip("/") + (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        return target, {"host": parsed.netloc.rsplit("@", 1)[-1]}


def _is_ip(hostname: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(hostname.strip("[]"))
        return True
    except ValueError:
        return False


class HttpSink:
    """POST each event in binary mode to ``url`` (through the gateway when ``route`` says so)."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, route: GatewayRoute | None = None) -> None:
        self.url = url
        self.route = route
        self.client = httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False)

    def target(self) -> tuple[str, dict[str, str]]:
        """Where the next batch goes: (URL, extra headers)."""
        routed = self.route.resolve(self.url) if self.route is not None else None
        return routed if routed is not None else (self.url, {})

    def send(self, events: list[Event]) -> None:
        url, extra = self.target()
        via = f" (through the gateway at {url})" if extra else ""
        for i, event in enumerate(events):
            try:
                response = self.client.post(url, content=event.body, headers={**event.headers, **extra})
            except httpx.HTTPError as exc:
                raise SinkError(f"POST {self.url}{via}: {type(exc).__name__}: {exc}", i) from exc
            if not 200 <= response.status_code < 300:
                raise SinkError(f"POST {self.url}{via}: HTTP {response.status_code}{_reason(response)}", i)

    def close(self) -> None:
        self.client.close()


class JsonlSink:
    """Append each event as a structured-mode JSON line to a file (fsynced per batch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def send(self, events: list[Event]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(e.structured(), separators=(",", ":")) + "\n" for e in events)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise SinkError(f"writing {self.path}: {exc}") from exc

    def close(self) -> None:
        pass


def _reason(response: httpx.Response) -> str:
    """A short reason from an error answer's ``{"error": ...}`` body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {str(error)[:300]}" if error else ""


def sink_for(url: str, timeout_s: float = DEFAULT_TIMEOUT_S, route: GatewayRoute | None = None) -> Sink:
    """The sink a logger ``url`` names: http(s):// or file:///path."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return HttpSink(url, timeout_s, route)
    if parsed.scheme == "file":
        return JsonlSink(unquote(parsed.path))
    raise ValueError(f"a logger url must be http://, https:// or file:///path.jsonl, got {url!r}")


class PayloadLogger:
    """Delivers events to ``sink`` through a queue and a spool in ``spool_dir`` (see the module doc)."""

    def __init__(self, sink: Sink, spool_dir: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 batch_size: int = DEFAULT_BATCH, *, queue_size: int = DEFAULT_QUEUE, drop: str = "newest",
                 backoff_s: float = DEFAULT_BACKOFF_S, backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                 fsync: bool = True, name: str = "payload-logger") -> None:
        self.sink = sink
        self.spool = Spool(spool_dir, max_bytes, drop, fsync=fsync)
        self.batch_size = max(1, batch_size)
        self.queue_size = queue_size
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.name = name
        self.sent = 0
        self.failed_attempts = 0
        self.queue_dropped = 0
        self.last_error: str | None = None
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the hot path ------------------------------------------------------------------------------
    def log(self, event: Event) -> bool:
        """Queue ``event``; False (and counted as dropped) when the queue is full or stopped."""
        try:
            if len(self._queue) >= self.queue_size or self._stopping.is_set():
                self.queue_dropped += 1
                return False
            self._queue.append(event)
            self._wake.set()
            return True
        except Exception:  # never fail the caller
            return False

    # -- the sender --------------------------------------------------------------------------------
    def _spool_queued(self) -> None:
        items: list[bytes] = []
        self._moving = True
        try:
            while self._queue:
                self._in_transit = len(items) + 1  # before the pop: the backlog never looks short
                try:
                    items.append(self._queue.popleft().encode())
                except IndexError:
                    break
            if items:
                self.spool.append_many(items)
        finally:
            self._in_transit = 0
            self._moving = False

    def _run(self) -> None:
        delay = 0.0
        retry_at = 0.0
        while True:
            try:
                self._spool_queued()
                if self._stopping.is_set() and (not self.spool.records or time.monotonic() >= self._stop_deadline):
                    break
                wait = retry_at - time.monotonic()
                if wait > 0:
                    self._wake.wait(min(wait, 0.05))
                    self._wake.clear()
                    continue
                batch = self.spool.peek(self.batch_size)
                if not batch:
                    if self._stopping.is_set():
                        break
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                events = [decoded(Event.decode(record)) for _, record in batch]
                try:
                    self.sink.send(events)
                    delivered = len(events)
                    error = None
                except SinkError as exc:
                    delivered, error = exc.delivered, str(exc)
                except Exception as exc:  # a sink bug: retry like a failure
                    delivered, error = 0, f"{type(exc).__name__}: {exc}"
                if delivered:
                    self.sent += delivered
                    self.spool.ack(batch[delivered - 1][0])
                if error is None:
                    delay = 0.0
                    self.last_error = None
                else:
                    self.failed_attempts += 1
                    if self.last_error is None:
                        log.warning("%s: delivery failed, retrying with backoff: %s", self.name, error)
                    self.last_error = error
                    delay = min(self.backoff_max_s, max(self.backoff_s, delay * 2))
                    retry_at = time.monotonic() + delay
            except Exception:  # the spool's disk: keep trying, slowly
                log.exception("%s: the sender failed; retrying", self.name)
                if self._stopping.is_set():
                    break
                time.sleep(1.0)
        try:
            self.spool.close()
        except Exception:
            log.exception("%s: closing the spool failed", self.name)
        try:
            self.sink.close()
        except Exception:
            pass

    _stop_deadline = 0.0
    _moving = False
    _in_transit = 0

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop: queued events go to the spool; delivery goes on for up to ``timeout_s``; what is
        left waits in the spool for the next logger on the same directory."""
        self._stop_deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s + 5.0)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything logged so far was delivered (tests); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._queue and not self._moving and not self.spool.records:
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    # -- counters ----------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self.queue_dropped + self.spool.dropped

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed_attempts": self.failed_attempts, "dropped": self.dropped,
                "backlog": len(self._queue) + self._in_transit + self.spool.records, "backlog_bytes": self.spool.bytes,
                "last_error": self.last_error}

    def prometheus(self, labels: dict[str, str] | None = None) -> list[str]:
        """Sample lines (no HELP/TYPE: ``PROMETHEUS_HELP`` has those, once per scrape)."""
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
        s = self.stats()
        return [f"shipyard_payload_logger_sent_total{{{text}}} {s['sent']}",
                f"shipyard_payload_logger_failed_attempts_total{{{text}}} {s['failed_attempts']}",
                f"shipyard_payload_logger_dropped_total{{{text}}} {s['dropped']}",
                f"shipyard_payload_logger_backlog_events{{{text}}} {s['backlog']}",
                f"shipyard_payload_logger_backlog_bytes{{{text}}} {s['backlog_bytes']}"]


PROMETHEUS_HELP = [
    "# HELP shipyard_payload_logger_sent_total Payload events delivered to the logger's sink.",
    "# TYPE shipyard_payload_logger_sent_total counter",
    "# HELP shipyard_payload_logger_failed_attempts_total Deliveries to the sink that failed (retried).",
    "# TYPE shipyard_payload_logger_failed_attempts_total counter",
    "# HELP shipyard_payload_logger_dropped_total Payload events lost to a full queue or the spool's size cap.",
    "# TYPE shipyard_payload_logger_dropped_total counter",
    "# HELP shipyard_payload_logger_backlog_events Payload events waiting (queue and spool).",
    "# TYPE shipyard_payload_logger_backlog_events gauge",
    "# HELP shipyard_payload_logger_backlog_bytes Bytes waiting in the spool.",
    "# TYPE shipyard_payload_logger_backlog_bytes gauge",
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PayloadLoggers:
    """The gateway's loggers: one per (namespace, isvc, url), its spool in
    ``{root}/{namespace}/{isvc}/{sha256(url)[:12]}`` (with the url in ``url.txt``). ``sync`` opens
    the loggers the route tables ask for and closes the others (their undelivered events stay in
    their spool and are delivered when a logger for the same service and url opens again)."""

    def __init__(self, root: Path | None = None, **options: Any) -> None:
        self._root = root
        self.options = options
        self._route: GatewayRoute | None = None
        self.loggers: dict[tuple[str, str, str], PayloadLogger] = {}
        self.failed: dict[tuple[str, str, str], str] = {}

    @property
    def route(self) -> GatewayRoute | None:
        """Set by the gateway: URLs naming a service by host are delivered through it (GatewayRoute);
        setting it applies to the loggers open already too."""
        return self._route

    @route.setter
    def route(self, route: GatewayRoute | None) -> None:
        self._route = route
        for logger in self.loggers.values():
            if isinstance(logger.sink, HttpSink):
                logger.sink.route = route

    @property
    def root(self) -> Path:
        if self._root is None:
            from shipyard.home import shipyard_home

            self._root = shipyard_home() / "spool"
        return self._root

    def spool_dir(self, namespace: str, isvc: str, url: str) -> Path:
        import hashlib

        return self.root / namespace / isvc / hashlib.sha256(url.encode()).hexdigest()[:12]

    def get(self, namespace: str, isvc: str, url: str) -> PayloadLogger | None:
        return self.loggers.get((namespace, isvc, url))

    def sync(self, wanted: set[tuple[str, str, str]]) -> list[PayloadLogger]:
        """Open the loggers in ``wanted`` not open yet; returns the ones no longer wanted (removed
        here; the caller closes them off the event loop)."""
        for key in wanted - self.loggers.keys():
            namespace, isvc, url = key
            try:
                folder = self.spool_dir(namespace, isvc, url)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "url.txt").write_text(url + "\n")
                self.loggers[key] = PayloadLogger(sink_for(url, route=self.route), folder, name=f"payload-logger {namespace}/{isvc}",
                                                  **self.options)
                self.failed.pop(key, None)
            except Exception as exc:  # a bad url or an unusable directory: no logging, inference goes on
                if self.failed.get(key) != str(exc):
                    log.error("payload logging for %s/%s to %s cannot start: %s", namespace, isvc, url, exc)
                self.failed[key] = str(exc)
        gone = [self.loggers.pop(key) for key in list(self.loggers) if key not in wanted]
        return gone

    def prometheus(self) -> list[str]:
        if not self.loggers:
            return []
        lines = list(PROMETHEUS_HELP)
        for (namespace, isvc, url), logger in sorted(self.loggers.items()):
            lines += logger.prometheus({"namespace": namespace, "isvc": isvc, "url": url})
        return lines

    def stats(self) -> dict[str, dict[str, Any]]:
        return {f"{ns}/{isvc} {url}": logger.stats() for (ns, isvc, url), logger in self.loggers.items()}

    def close(self, timeout_s: float = 2.0) -> None:
        loggers, self.loggers = list(self.loggers.values()), {}
        threads = [threading.Thread(target=logger.close, args=(timeout_s,), daemon=True) for logger in loggers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + 6.0)
