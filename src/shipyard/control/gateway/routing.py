"""Route tables: which revisions of an InferenceService get which share of its traffic.

The controller publishes one table per InferenceService (``store.set_routes``)::

    {"isvc": "iris", "namespace": "default", "protocol": "v2", "timeout_s": 60,
     "backends": [{"revision": "iris-predictor-00002", "percent": 20, "tags": ["latest"],
                   "replicas": [{"http": "http://127.0.0.1:41233", "grpc": "127.0.0.1:41234"}]}, ...],
     "shadow": {"revision": "...", "percent": 100, "replicas": [...]} | null,
     "activator": {"queue": 100, "timeout_s": 60},
     "logger": {"mode": "all", "url": "http://...", "errors": true, "component": "predictor"} | absent,
     "version": 17}

A service's transformer and explainer have tables of their own under their component keys
(``iris:transformer``, with ``"component": "transformer"``; components.py): requests to the service
go to its transformer when it has one, explanations to its explainer (``Router.entry``).

``logger`` (payload logging, ``spec.predictor.logger``): the gateway sends each inference request
and/or response of the service as a CloudEvent to ``url`` (shipyard.monitor); ``errors`` false
logs only responses with status 200 (KServe's behaviour).

A backend with ``"activate": true`` takes its share of traffic even without replicas (a revision
scaled to zero, or starting): its requests are held by the activator (activator.py) until a
replica is ready, at most ``activator.queue`` of them per revision for at most
``activator.timeout_s`` seconds. ``"failing": "why"`` on such a backend says its replicas cannot
start right now: held and new requests get 503 with that message instead of waiting. A backend
without ``activate`` and without replicas is skipped by the split, as before (503 when nothing
else can serve).

The weighted split is a smooth weighted round robin (nginx's): deterministic, and exact over
every run of ``sum(percent)`` requests, so a 20% canary gets 200 of 1,000 requests, not
"about 200". Within a revision, replicas take turns; one that refused a connection sits out
for a moment.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from shipyard.control.components import (
    COMPONENTS,
    EXPLAINER,
    PREDICTOR,
    SEPARATOR,
    TRANSFORMER,
    component_key,
    split_key,
)
from shipyard.control.revisions import revision_key
from shipyard.protocol.errors import NotFound, NotReady

#: Seconds a request may take when the table does not say (Knative's default revision timeout).
DEFAULT_TIMEOUT_S = 300.0
#: Seconds a replica that refused a connection is skipped while its siblings can serve.
EJECT_S = 2.0
#: Requests the activator holds per revision while it starts, and how long each may wait (Knative's
#: activator has a similar bound; ``serving.shipyard.io/activator-queue`` / ``-timeout``).
DEFAULT_ACTIVATOR_QUEUE = 100
DEFAULT_ACTIVATOR_TIMEOUT_S = 60.0
#: Tags every table may use in ``latest-``/``prev-`` host names and the revision header.
HOST_TAGS = ("latest", "prev")
DEFAULT_NAMESPACE = "default"

Key = tuple[str, str]  # (namespace, isvc)


LOGGER_MODES = ("all", "request", "response")


@dataclass(frozen=True)
class LoggerConfig:
    """A service's payload logging: what to log (``mode``), where (``url``), failed responses too?"""

    mode: str
    url: str
    errors: bool = True
    component: str = "predictor"

    @property
    def requests(self) -> bool:
        return self.mode in ("all", "request")

    @property
    def responses(self) -> bool:
        return self.mode in ("all", "response")


class RouteTableError(ValueError):
    """A route table that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Replica:
    """Where one replica of a revision listens."""

    http: str | None
    grpc: str | None


class Pool:
    """The replicas of one revision, taken in turn."""

    def __init__(self, revision: str, replicas: Iterable[Replica]) -> None:
        self.revision = revision
        self.replicas = tuple(replicas)
        self._turn = 0
        self._down_until: dict[Replica, float] = {}

    def __len__(self) -> int:
        return len(self.replicas)

    def next(self, transport: str = "http", exclude: Replica | None = None) -> Replica | None:
        """The next replica with an address for ``transport`` ("http" or "grpc"), other than
        ``exclude``; replicas marked down are skipped unless nothing else is left."""
        candidates = [r for r in self.replicas if getattr(r, transport) and r != exclude]
        if not candidates:
            return None
        now = time.monotonic()
        healthy = [r for r in candidates if self._down_until.get(r, 0.0) <= now] or candidates
        replica = healthy[self._turn % len(healthy)]
        self._turn += 1
        return replica

    def mark_down(self, replica: Replica) -> None:
        """``replica`` refused a connection: skip it for EJECT_S while others can serve."""
        self._down_until[replica] = time.monotonic() + EJECT_S


@dataclass
class Backend:
    """One revision in a table: its share of traffic, its tags and its replicas."""

    revision: str
    percent: int
    tags: tuple[str, ...]
    pool: Pool
    #: ``namespace/revision``: revision names are unique only within a namespace, so the gateway's
    #: in-flight counts and answer windows are kept under this key.
    key: str = ""
    #: Held by the activator while it has no replica (scale from zero) instead of being skipped.
    activate: bool = False
    #: Why its replicas cannot start now (requests are refused at once instead of held).
    failing: str | None = None

    @property
    def servable(self) -> bool:
        """Can the split send it a request now (it has replicas, or the activator holds for it)?"""
        return bool(len(self.pool)) or self.activate


@dataclass
class RouteTable:
    """One InferenceService's routes, as parsed from the controller's JSON."""

    namespace: str
    isvc: str
    protocol: str
    backends: list[Backend]
    shadow: Backend | None
    version: int
    timeout_s: float
    activator_queue: int = DEFAULT_ACTIVATOR_QUEUE
    activator_timeout_s: float = DEFAULT_ACTIVATOR_TIMEOUT_S
    logger: LoggerConfig | None = None
    #: predictor, transformer or explainer; ``isvc`` is then the component key (``name:transformer``).
    component: str = PREDICTOR
    _weights: list[int] = field(default_factory=list, repr=False)
    _shadow_credit: int = field(default=0, repr=False)

    @property
    def key(self) -> Key:
        return (self.namespace, self.isvc)

    @classmethod
    def parse(cls, key: Key, raw: Any) -> "RouteTable":
        """Check and parse a table; RouteTableError names the first bad field."""
        namespace, isvc = key
        where = f"route table {namespace}/{isvc}"
        if not isinstance(raw, Mapping):
            raise RouteTableError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        for name, expected in (("isvc", isvc), ("namespace", namespace)):
            if raw.get(name, expected) != expected:
                raise RouteTableError(f"{where}: '{name}' is {raw.get(name)!r} but the table is stored under {expected!r}")
        version = raw.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise RouteTableError(f"{where}: 'version' must be an integer, got {version!r}")
        timeout = raw.get("timeout_s")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT_S
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise RouteTableError(f"{where}: 'timeout_s' must be a positive number of seconds, got {timeout!r}")
        backends_raw = raw.get("backends", [])
        if not isinstance(backends_raw, list):
            raise RouteTableError(f"{where}: 'backends' must be a list, got {type(backends_raw).__name__}")
        backends = [_backend(item, f"{where}: backends[{i}]", namespace) for i, item in enumerate(backends_raw)]
        revisions = [b.revision for b in backends]
        duplicates = sorted({r for r in revisions if revisions.count(r) > 1})
        if duplicates:
            raise RouteTableError(f"{where}: revision {duplicates[0]!r} appears in more than one backend")
        shadow_raw = raw.get("shadow")
        shadow = None if shadow_raw is None else _backend(shadow_raw, f"{where}: shadow", namespace,
                                                          default_percent=100)
        protocol = raw.get("protocol", "v2")
        if not isinstance(protocol, str):
            raise RouteTableError(f"{where}: 'protocol' must be a string, got {protocol!r}")
        queue, held_s = _activator(raw.get("activator"), where)
        component = raw.get("component", PREDICTOR)
        if component not in COMPONENTS or component != split_key(isvc)[1]:
            raise RouteTableError(f"{where}: 'component' is {component!r} but the table is stored under "
                                  f"{isvc!r}")
        return cls(namespace, isvc, protocol, backends, shadow, version, float(timeout), queue, held_s,
                   _logger(raw.get("logger"), where), component, _weights=[0] * len(backends))

    @property
    def service(self) -> str:
        """The InferenceService's name (``isvc`` is a component key for a transformer or explainer)."""
        return split_key(self.isvc)[0]

    def carry_split(self, old: "RouteTable") -> None:
        """Keep the weighted round robin's place when only replicas changed (a revision scaled up or
        down), so the split stays exact across table swaps."""
        if [(b.revision, b.percent) for b in old.backends] == [(b.revision, b.percent) for b in self.backends]:
            self._weights = list(old._weights)
        if old.shadow is not None and self.shadow is not None and old.shadow.percent == self.shadow.percent:
            self._shadow_credit = old._shadow_credit

    # -- choosing a backend ----------------------------------------------------------------------
    def pick(self) -> Backend | None:
        """The backend for the next untagged request (weighted by percent, among backends that
        have replicas or are held for by the activator), or None when no revision with a share
        of traffic can take it."""
        best, total = -1, 0
        weights = self._weights
        for i, backend in enumerate(self.backends):
            if backend.percent <= 0 or not backend.servable:
                continue
            weights[i] += backend.percent
            total += backend.percent
            if best < 0 or weights[i] > weights[best]:
                best = i
        if best < 0:
            return None
        weights[best] -= total
        return self.backends[best]

    def select(self, name: str) -> Backend | None:
        """The backend a tag (``latest``, ``prev``...) or a revision name asks for, whatever its
        share of traffic (blue-green: a dark revision is reached through its tag). The shadow
        revision can be asked for by name too."""
        for backend in self.backends:
            if backend.revision == name:
                return backend
        for backend in self.backends:
            if name in backend.tags:
                return backend
        if self.shadow is not None and self.shadow.revision == name:
            return self.shadow
        return None

    def mirror(self) -> Backend | None:
        """The shadow backend if this request is to be mirrored (``percent`` of requests, evenly)."""
        shadow = self.shadow
        if shadow is None or not len(shadow.pool):
            return None
        self._shadow_credit += shadow.percent
        if self._shadow_credit < 100:
            return None
        self._shadow_credit -= 100
        return shadow

    def choose(self, wanted: str | None = None) -> Backend:
        """The backend for a request: the one ``wanted`` (a tag or revision) names, else the weighted
        split's pick. NotFound for an unknown tag; NotReady (503) when it has no replica and the
        activator does not hold for it. A backend returned without replicas is for the activator."""
        if wanted:
            backend = self.select(wanted)
            if backend is None:
                raise NotFound(f"'{wanted}' is neither a revision nor a tag of inference service "
                               f"'{self.namespace}/{self.isvc}'; it has {self.describe()}")
        else:
            backend = self.pick()
        service = f"inference service '{self.namespace}/{self.isvc}'"
        if backend is not None and backend.servable:
            return backend
        if backend is not None:
            raise NotReady(f"revision '{backend.revision}' of {service} has no ready replica yet; retry shortly")
        if not any(b.percent > 0 for b in self.backends):
            raise NotReady(f"no revision of {service} takes traffic (revisions: {self.describe()}); "
                           "reach one with its tag or name in the x-shipyard-revision header")
        raise NotReady(f"{service} has no ready replica in a revision that takes traffic yet "
                       f"(revisions: {self.describe()}); retry shortly")

    def revisions(self) -> set[str]:
        """The keys (``namespace/revision``) of every revision this table can send a request to."""
        names = {b.key for b in self.backends}
        if self.shadow is not None:
            names.add(self.shadow.key)
        return names

    def describe(self) -> str:
        """Revisions and tags, for error messages: ``a (20%, latest), b (80%, prev)``."""
        parts = [f"{b.revision} ({', '.join([f'{b.percent}%', *b.tags])})" for b in self.backends]
        return ", ".join(parts) or "no revisions"

    def summary(self) -> dict[str, Any]:
        """This table as the gateway's service list shows it."""
        return {
            "name": self.service,
            "component": self.component,
            "namespace": self.namespace,
            "version": self.version,
            "revisions": [{"revision": b.revision, "percent": b.percent, "tags": list(b.tags),
                           "replicas": len(b.pool)} for b in self.backends],
            "shadow": None if self.shadow is None else self.shadow.revision,
        }


def _backend(raw: Any, where: str, namespace: str, default_percent: int | None = None) -> Backend:
    if not isinstance(raw, Mapping):
        raise RouteTableError(f"{where}: expected an object with 'revision', 'percent' and 'replicas', got {raw!r}")
    revision = raw.get("revision")
    if not isinstance(revision, str) or not revision:
        raise RouteTableError(f"{where}.revision: expected a revision name, got {revision!r}")
    percent = raw.get("percent", default_percent)
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise RouteTableError(f"{where}.percent: expected an integer from 0 to 100, got {percent!r}")
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise RouteTableError(f"{where}.tags: expected a list of tag names, got {tags!r}")
    replicas_raw = raw.get("replicas") or []
    if not isinstance(replicas_raw, list):
        raise RouteTableError(f"{where}.replicas: expected a list, got {type(replicas_raw).__name__}")
    replicas = []
    for i, item in enumerate(replicas_raw):
        if not isinstance(item, Mapping):
            raise RouteTableError(f"{where}.replicas[{i}]: expected {{'http': URL, 'grpc': HOST:PORT}}, got {item!r}")
        http, grpc = item.get("http"), item.get("grpc")
        if http is not None and not (isinstance(http, str) and http.startswith(("http://", "https://"))):
            raise RouteTableError(f"{where}.replicas[{i}].http: expected an http:// URL, got {http!r}")
        if grpc is not None and not (isinstance(grpc, str) and ":" in grpc):
            raise RouteTableError(f"{where}.replicas[{i}].grpc: expected HOST:PORT, got {grpc!r}")
        if http is None and grpc is None:
            raise RouteTableError(f"{where}.replicas[{i}]: needs an 'http' URL or a 'grpc' address")
        replicas.append(Replica(http.rstrip("/") if http else None, grpc))
    activate = raw.get("activate", False)
    if not isinstance(activate, bool):
        raise RouteTableError(f"{where}.activate: expected true or false, got {activate!r}")
    failing = raw.get("failing")
    if failing is not None and not isinstance(failing, str):
        raise RouteTableError(f"{where}.failing: expected a message, got {failing!r}")
    return Backend(revision, percent, tuple(tags), Pool(revision, replicas), revision_key(namespace, revision),
                   activate, failing or None)


def _activator(raw: Any, where: str) -> tuple[int, float]:
    """A table's ``activator`` settings: (queue bound per revision, seconds a request may be held)."""
    if raw is None:
        return DEFAULT_ACTIVATOR_QUEUE, DEFAULT_ACTIVATOR_TIMEOUT_S
    if not isinstance(raw, Mapping):
        raise RouteTableError(f"{where}: 'activator' must be an object with 'queue' and 'timeout_s', got {raw!r}")
    queue = raw.get("queue", DEFAULT_ACTIVATOR_QUEUE)
    if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
        raise RouteTableError(f"{where}: activator.queue must be a whole number >= 0, got {queue!r}")
    timeout = raw.get("timeout_s", DEFAULT_ACTIVATOR_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise RouteTableError(f"{where}: activator.timeout_s must be a positive number of seconds, got {timeout!r}")
    return queue, float(timeout)


def _logger(raw: Any, where: str) -> LoggerConfig | None:
    """A table's ``logger`` settings (None: no payload logging)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RouteTableError(f"{where}: 'logger' must be an object with 'mode' and 'url', got {raw!r}")
    mode = raw.get("mode") or "all"
    if mode not in LOGGER_MODES:
        raise RouteTableError(f"{where}: logger.mode must be one of {', '.join(LOGGER_MODES)}, got {mode!r}")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
        raise RouteTableError(f"{where}: logger.url must be an http(s):// or file:// URL, got {url!r}")
    errors = raw.get("errors", True)
    if not isinstance(errors, bool):
        raise RouteTableError(f"{where}: logger.errors must be true or false, got {errors!r}")
    component = raw.get("component") or "predictor"
    if not isinstance(component, str):
        raise RouteTableError(f"{where}: logger.component must be a string, got {component!r}")
    return LoggerConfig(mode, url, errors, component)


def parse_host(host: str | None) -> tuple[str, str] | None:
    """``{isvc}.{namespace}.{domain...}`` (any port) → (first label, namespace); None for an IP
    address, ``localhost`` or a name too short to carry both."""
    if not host:
        return None
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        return None
    name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(labels) < 3 or not labels[0] or not labels[1]:
        return None
    return labels[0], labels[1]


class Router:
    """The current tables, swapped as a whole when the controller publishes new ones."""

    def __init__(self) -> None:
        self.tables: dict[Key, RouteTable] = {}
        self._raw: dict[Key, Any] = {}
        #: Last parse error per table, so each bad table is reported once.
        self.errors: dict[Key, str] = {}

    def update(self, raw_tables: Mapping[Key, Any]) -> list[str]:
        """Take the controller's tables. A table that did not change keeps its state (weights,
        turns); one that does not parse keeps its previous version. Returns the messages of bad
        tables not reported before."""
        new: dict[Key, RouteTable] = {}
        problems = []
        for key, raw in raw_tables.items():
            key = (str(key[0]), str(key[1]))
            old = self.tables.get(key)
            if old is not None and raw == self._raw.get(key):  # equal content, whatever the version says
                new[key] = old
                continue
            try:
                new[key] = RouteTable.parse(key, raw)
                if old is not None:
                    new[key].carry_split(old)
                self._raw[key] = raw
                self.errors.pop(key, None)
            except RouteTableError as exc:
                if self.errors.get(key) != str(exc):
                    problems.append(str(exc))
                self.errors[key] = str(exc)
                if old is not None:
                    new[key] = old
        for key in [k for k in self._raw if k not in new]:
            del self._raw[key]
        self.tables = new  # one assignment: a request sees the old set or the new one
        return problems

    def lookup(self, namespace: str, isvc: str) -> RouteTable | None:
        return self.tables.get((namespace, isvc))

    def find(self, name: str, namespace: str | None = None, explain: bool = False) -> RouteTable:
        """The table a request to the service a model name means goes to (see :meth:`entry`): in
        ``namespace`` if given and it is there, else in the default namespace. NotFound says what is
        served instead."""
        table = self.tables.get((namespace, name)) if namespace else None
        if table is None:
            table = self.tables.get((DEFAULT_NAMESPACE, name))
        if table is None or SEPARATOR in name:
            where = namespace if namespace and self.has_namespace(namespace) else DEFAULT_NAMESPACE
            served = sorted(isvc for ns, isvc in self.tables if ns == where and SEPARATOR not in isvc)
            raise NotFound(f"model '{name}' is not served; namespace '{where}' serves "
                           f"{', '.join(served) or 'nothing'} (GET /v2/models lists them)")
        return self.entry(table, explain)

    def entry(self, table: RouteTable, explain: bool = False) -> RouteTable:
        """Where a request to a service goes: its transformer when it has one (KServe's ingress sends
        the service's host there), and an explanation to its explainer first. A table of a transformer
        or explainer (addressed by its own host) is its own entry."""
        if table.component != PREDICTOR:
            return table
        for component in (EXPLAINER, TRANSFORMER) if explain else (TRANSFORMER,):
            found = self.tables.get((table.namespace, component_key(table.isvc, component)))
            if found is not None:
                return found
        return table

    def has_namespace(self, namespace: str) -> bool:
        return any(ns == namespace for ns, _ in self.tables)

    def by_host(self, host: str | None, explain: bool = False) -> tuple[RouteTable, str | None] | None:
        """The table (and tag) a ``Host: [latest-|prev-]{isvc}.{namespace}.{domain}`` names, if any; the
        service's host goes to its entry (:meth:`entry`), ``{isvc}-predictor.{namespace}...`` (and
        ``-transformer``, ``-explainer``) to that component."""
        parsed = parse_host(host)
        if parsed is None:
            return None
        label, namespace = parsed
        table = self.tables.get((namespace, label))
        if table is not None:
            return self.entry(table, explain), None
        for component in COMPONENTS:
            if label.endswith(f"-{component}"):
                table = self.tables.get((namespace, component_key(label[:-len(component) - 1], component)))
                if table is not None:
                    return table, None
        for tag in HOST_TAGS:
            if label.startswith(tag + "-"):
                table = self.tables.get((namespace, label[len(tag) + 1:]))
                if table is not None:
                    return table, tag
        return None

    def namespace_of(self, host: str | None) -> str | None:
        parsed = parse_host(host)
        return parsed[1] if parsed else None

    def references(self, key: str) -> bool:
        """Does any current table still route (or mirror) requests to the revision ``namespace/revision``?"""
        return any(key in table.revisions() for table in self.tables.values())
