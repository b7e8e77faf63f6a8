"""The control plane's state: SQLite in WAL mode under ``$SHIPYARD_HOME``. The only module that speaks SQL.

Every change that touches several rows runs in one transaction, so a control plane killed at any
moment finds either the old state or the new one. Calls are short and synchronous; the control
plane runs them on its event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from shipyard.control.components import component_key, revision_prefix, split_key
from shipyard.control.resources import Resource, canonical_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, api_version TEXT NOT NULL,
    uid TEXT NOT NULL, generation INTEGER NOT NULL, labels TEXT NOT NULL, annotations TEXT NOT NULL,
    spec TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    deleting INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS revisions (
    namespace TEXT NOT NULL, isvc TEXT NOT NULL, name TEXT NOT NULL, number INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, spec TEXT NOT NULL, generation INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS replicas (
    namespace TEXT NOT NULL, isvc TEXT NOT NULL, revision TEXT NOT NULL, idx INTEGER NOT NULL,
    pid INTEGER, http_url TEXT, grpc_address TEXT, state TEXT NOT NULL, restarts INTEGER NOT NULL DEFAULT 0,
    last_exit TEXT NOT NULL DEFAULT '', started REAL NOT NULL, log_path TEXT NOT NULL,
    PRIMARY KEY (namespace, revision, idx));
CREATE TABLE IF NOT EXISTS routes (
    namespace TEXT NOT NULL, isvc TEXT NOT NULL, route_table TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (namespace, isvc));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    time REAL NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, namespace, name, id);
"""


@dataclass
class Revision:
    """An immutable snapshot of an InferenceService's predictor."""

    namespace: str
    isvc: str
    name: str
    number: int
    fingerprint: str
    spec: dict[str, Any]
    generation: int
    created: float


@dataclass
class ReplicaRecord:
    """One replica process as last recorded (the engine re-adopts it after a restart)."""

    namespace: str
    isvc: str
    revision: str
    index: int
    pid: int | None
    http_url: str | None
    grpc_address: str | None
    state: str
    restarts: int
    last_exit: str
    started: float
    log_path: str


@dataclass
class Event:
    kind: str
    namespace: str
    name: str
    time: float
    type: str
    reason: str
    message: str


class Store:
    """Resources, revisions, replicas, routes and events in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- resources -------------------------------------------------------------------------------
    def apply(self, resource: Resource, db: sqlite3.Connection | None = None) -> tuple[Resource, str]:
        """Create or update a resource's spec, labels and annotations; status is kept.

        Returns the stored resource and ``created``, ``configured`` (spec or metadata changed; the
        generation goes up when the spec did) or ``unchanged``. Pass ``db`` to join a transaction.
        """
        if db is None:
            with self.transaction() as joined:
                return self.apply(resource, joined)
        now = time.time()
        row = db.execute("SELECT * FROM resources WHERE kind=? AND namespace=? AND name=?", resource.key).fetchone()
        if row is None:
            resource.generation = 1
            resource.created = resource.created or now
            db.execute(
                "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0)",
                (resource.kind, resource.namespace, resource.name, resource.api_version, resource.uid,
                 resource.generation, canonical_json(resource.labels), canonical_json(resource.annotations),
                 canonical_json(resource.spec), canonical_json(resource.status), resource.created, now),
            )
            return resource, "created"
        stored = _resource(row)
        spec_changed = canonical_json(resource.spec) != row["spec"]
        meta_changed = (canonical_json(resource.labels) != row["labels"]
                        or canonical_json(resource.annotations) != row["annotations"])
        if not spec_changed and not meta_changed and not stored.deleting:
            return stored, "unchanged"
        stored.spec, stored.labels, stored.annotations = resource.spec, resource.labels, resource.annotations
        stored.api_version = resource.api_version
        stored.generation += 1 if spec_changed else 0
        stored.deleting = False
        db.execute(
            "UPDATE resources SET api_version=?, generation=?, labels=?, annotations=?, spec=?, updated=?, deleting=0 "
            "WHERE kind=? AND namespace=? AND name=?",
            (stored.api_version, stored.generation, canonical_json(stored.labels),
             canonical_json(stored.annotations), canonical_json(stored.spec), now, *resource.key),
        )
        return stored, "configured"

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        rows = self._query("SELECT * FROM resources WHERE kind=? AND namespace=? AND name=?", kind, namespace, name)
        return _resource(rows[0]) if rows else None

    def list(self, kind: str, namespace: str | None = None) -> list[Resource]:
        if namespace is None:
            rows = self._query("SELECT * FROM resources WHERE kind=? ORDER BY namespace, name", kind)
        else:
            rows = self._query("SELECT * FROM resources WHERE kind=? AND namespace=? ORDER BY name", kind, namespace)
        return [_resource(row) for row in rows]

    def set_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE resources SET status=?, updated=? WHERE kind=? AND namespace=? AND name=?",
                       (canonical_json(status), time.time(), kind, namespace, name))

    def mark_deleting(self, kind: str, namespace: str, name: str) -> bool:
        """Flag a resource for deletion (the controller stops its workloads, then removes it)."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE resources SET deleting=1, updated=? WHERE kind=? AND namespace=? AND name=?",
                                (time.time(), kind, namespace, name))
            return cursor.rowcount > 0

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Forget a resource and everything recorded for it."""
        with self.transaction() as db:
            db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            if kind != "InferenceService":  # the other tables hold an InferenceService's records only
                return
            components = f"{component_key(name, '')}%"  # its transformer's and explainer's keys
            for table in ("revisions", "replicas", "routes"):
                db.execute(f"DELETE FROM {table} WHERE namespace=? AND (isvc=? OR isvc LIKE ?)",
                           (namespace, name, components))

    # -- revisions -------------------------------------------------------------------------------
    def add_revision(self, namespace: str, isvc: str, fingerprint: str, spec: dict[str, Any],
                     generation: int) -> Revision:
        """Record a new revision numbered after the last one (``<isvc>-predictor-00001``, ...; a component
        key's ``<isvc>-transformer-00001``...)."""
        with self.transaction() as db:
            last = db.execute("SELECT MAX(number) FROM revisions WHERE namespace=? AND isvc=?",
                              (namespace, isvc)).fetchone()[0] or 0
            revision = Revision(namespace, isvc, f"{revision_prefix(isvc)}-{last + 1:05d}", last + 1, fingerprint,
                                spec, generation, time.time())
            db.execute("INSERT INTO revisions VALUES (?,?,?,?,?,?,?,?)",
                       (namespace, isvc, revision.name, revision.number, fingerprint, canonical_json(spec),
                        generation, revision.created))
            return revision

    def revisions(self, namespace: str, isvc: str) -> list[Revision]:
        """Oldest first."""
        rows = self._query("SELECT * FROM revisions WHERE namespace=? AND isvc=? ORDER BY number", namespace, isvc)
        return [Revision(r["namespace"], r["isvc"], r["name"], r["number"], r["fingerprint"], json.loads(r["spec"]),
                         r["generation"], r["created"]) for r in rows]

    # -- replicas --------------------------------------------------------------------------------
    def upsert_replica(self, record: ReplicaRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO replicas VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.namespace, record.isvc, record.revision, record.index, record.pid, record.http_url,
                 record.grpc_address, record.state, record.restarts, record.last_exit, record.started,
                 record.log_path),
            )

    def replicas(self, namespace: str | None = None, isvc: str | None = None) -> list[ReplicaRecord]:
        sql, args = "SELECT * FROM replicas", []
        if namespace is not None:
            sql += " WHERE namespace=?" + (" AND isvc=?" if isvc is not None else "")
            args = [namespace] + ([isvc] if isvc is not None else [])
        rows = self._query(sql + " ORDER BY namespace, revision, idx", *args)
        return [ReplicaRecord(r["namespace"], r["isvc"], r["revision"], r["idx"], r["pid"], r["http_url"],
                              r["grpc_address"], r["state"], r["restarts"], r["last_exit"], r["started"],
                              r["log_path"]) for r in rows]

    def delete_replica(self, namespace: str, revision: str, index: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM replicas WHERE namespace=? AND revision=? AND idx=?", (namespace, revision, index))

    # -- routes ----------------------------------------------------------------------------------
    def set_routes(self, namespace: str, isvc: str, table: dict[str, Any] | None) -> None:
        """Publish (or with None, withdraw) the gateway's routing table for one InferenceService."""
        with self.transaction() as db:
            if table is None:
                db.execute("DELETE FROM routes WHERE namespace=? AND isvc=?", (namespace, isvc))
            else:
                db.execute("INSERT OR REPLACE INTO routes VALUES (?,?,?,?)",
                           (namespace, isvc, canonical_json(table), time.time()))

    def routes(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self._query("SELECT namespace, isvc, route_table FROM routes")
        return {(r["namespace"], r["isvc"]): json.loads(r["route_table"]) for r in rows}

    # -- what changed (the dashboard's live updates) ----------------------------------------------
    def change_marks(self) -> dict[str, tuple[Any, ...]]:
        """Per kind, values that differ once a resource of it is created, changed (spec or status),
        marked for deletion or removed; an InferenceService's also follow its replicas and routes."""
        marks: dict[str, tuple[Any, ...]] = {
            r[0]: (r[1], r[2], r[3]) for r in self._query(
                "SELECT kind, COUNT(*), MAX(updated), SUM(deleting) FROM resources GROUP BY kind")}
        replicas = self._query("SELECT COUNT(*), group_concat(r, ',') FROM (SELECT namespace || '/' || revision || "
                               "':' || idx || ':' || state || ':' || restarts AS r FROM replicas "
                               "ORDER BY namespace, revision, idx)")[0]
        routes = self._query("SELECT COUNT(*), MAX(updated) FROM routes")[0]
        isvc = marks.get("InferenceService", ())
        marks["InferenceService"] = (*isvc, replicas[0], replicas[1], routes[0], routes[1])
        return marks

    def event_kinds_since(self, event_id: int | None) -> tuple[int, set[str]]:
        """The last event's id, and the kinds with events after ``event_id`` (None: the id only)."""
        last = self._query("SELECT MAX(id) FROM events")[0][0] or 0
        if event_id is None or last <= event_id:
            return last, set()
        rows = self._query("SELECT DISTINCT kind FROM events WHERE id > ?", event_id)
        return last, {row[0] for row in rows}

    # -- events ----------------------------------------------------------------------------------
    def event(self, kind: str, namespace: str, name: str, type_: str, reason: str, message: str) -> None:
        """Record what happened to an object (``Normal`` or ``Warning``), as ``kubectl describe`` shows; a
        component key's events are its service's."""
        name = split_key(name)[0]
        with self.transaction() as db:
            db.execute("INSERT INTO events (kind, namespace, name, time, type, reason, message) VALUES (?,?,?,?,?,?,?)",
                       (kind, namespace, name, time.time(), type_, reason, message))

    def events(self, kind: str, namespace: str, name: str, limit: int = 20) -> list[Event]:
        """The most recent events of an object, oldest first."""
        rows = self._query(
            "SELECT * FROM events WHERE kind=? AND namespace=? AND name=? ORDER BY id DESC LIMIT ?",
            kind, namespace, name, limit,
        )
        return [Event(r["kind"], r["namespace"], r["name"], r["time"], r["type"], r["reason"], r["message"])
                for r in reversed(rows)]


def _resource(row: sqlite3.Row) -> Resource:
    return Resource(
        api_version=row["api_version"], kind=row["kind"], name=row["name"], namespace=row["namespace"],
        spec=json.loads(row["spec"]), status=json.loads(row["status"]), labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]), uid=row["uid"], generation=row["generation"],
        created=row["created"], deleting=bool(row["deleting"]),
    )
