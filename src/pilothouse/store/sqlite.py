"""The embedded control plane's state in one SQLite file.

This plays the role etcd plays for Kubernetes: desired state (spec, bumped
``generation`` on change), observed state (status, written only by
controllers), events, and the process records the local runtime needs to find
its children again after a crash. Every apply is one transaction, so a batch
of documents is stored whole or not at all.

The file's schema version is ``PRAGMA user_version``. ``MIGRATIONS`` is the
ordered list of steps from version N to N+1; opening a store applies the
missing ones in order, each in its own ``BEGIN IMMEDIATE`` transaction that
re-reads the version first, so several processes may open one file at once
and every step still runs exactly once. A step that fails rolls back whole:
the file keeps its old version and data. A file written by a newer release
(a version above ``SCHEMA_VERSION``) is refused with ``SchemaTooNew`` before
anything is written to it.

Version 1 is the schema of release 0.1.0, which had no version (0): its
``CREATE TABLE IF NOT EXISTS`` statements make the first migration a no-op on
such a file, so a database that release wrote is taken as version 1 as it is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pilothouse import __version__

# Version 1: the schema of release 0.1.0, verbatim (it was run on every open and
# had no version). Never edit it: change the schema with a new migration.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    resource_version INTEGER NOT NULL,
    created TEXT NOT NULL,
    deleting TEXT,
    metadata TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, name);
CREATE TABLE IF NOT EXISTS processes (
    id TEXT PRIMARY KEY,
    owner_kind TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    role TEXT NOT NULL,
    pid INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS placements (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS node_states (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (kind, name, key)
);
"""

# Version 2: a record of the schema's history in the file itself: which migration
# ran, when, and under which pilothouse release. Version 1 predates the record
# (a file may have been made by 0.1.0 long ago), so its row has no time or release.
_SCHEMA_V2 = """
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT,
    release TEXT
);
INSERT INTO schema_migrations(version, description, applied_at, release)
    VALUES (1, 'the schema of release 0.1.0', NULL, NULL);
"""


class SchemaError(Exception):
    """The state database's schema cannot be used or brought up to date."""


class SchemaTooNew(SchemaError):
    """The file was written by a newer pilothouse: its schema version is above ours."""

    def __init__(self, path: Path, found: int, supported: int) -> None:
        self.path, self.found, self.supported = path, found, supported
        super().__init__(
            f"{path}: the state database is at schema version {found}, written by a newer "
            f"pilothouse; this pilothouse ({__version__}) supports schema versions up to "
            f"{supported}. Upgrade pilothouse to use it (nothing was written to the file)."
        )


class MigrationFailed(SchemaError):
    """A migration raised; its transaction was rolled back (``__cause__`` is the error)."""

    def __init__(self, path: Path, version: int, description: str, error: BaseException) -> None:
        self.path, self.version = path, version
        super().__init__(
            f"{path}: migrating the state database from schema version {version - 1} to "
            f"{version} ({description}) failed: {error}; rolled back, the database is "
            f"still at version {version - 1}"
        )


def sql_statements(script: str) -> list[str]:
    """``script``'s statements, one by one, for ``execute`` inside a transaction
    (``executescript`` would commit the open transaction first). Every statement,
    the last one too, ends with ``;``."""
    statements: list[str] = []
    parts = script.split(";")
    pending = ""
    for index, part in enumerate(parts):
        pending += part if index == len(parts) - 1 else part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip() != ";":
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement at the end of the script: {pending!r}")
    return statements


@dataclass(frozen=True)
class Migration:
    """One step of the schema: from ``version - 1`` to ``version``.

    ``apply`` runs inside the transaction that also sets the new version; it must
    not commit or roll back. ``script`` makes one from SQL.
    """

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]

    @classmethod
    def script(cls, version: int, description: str, sql: str) -> Migration:
        statements = sql_statements(sql)

        def run(db: sqlite3.Connection) -> None:
            for statement in statements:
                db.execute(statement)

        return cls(version, description, run)


def _columns(db: sqlite3.Connection, table: str) -> list[tuple[str, str, int, int]]:
    """A table's (name, type, notnull, pk) columns, in order."""
    return [
        (r[1], str(r[2]).upper(), int(r[3]), int(r[5]))
        for r in db.execute(f"PRAGMA table_info({table})").fetchall()
    ]


def _baseline(db: sqlite3.Connection) -> None:
    """Version 1: today's tables on a new file; on a file from 0.1.0 (no version, the same
    tables) nothing changes. Tables of the same names but another shape are refused."""
    for statement in sql_statements(_SCHEMA_V1):
        db.execute(statement)
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(_SCHEMA_V1)
        tables = [
            r[0]
            for r in reference.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            if _columns(db, table) != _columns(reference, table):
                raise SchemaError(
                    f"table {table!r} has columns {_columns(db, table)}, not those of a "
                    "pilothouse state database; is this file one?"
                )
    finally:
        reference.close()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the schema of release 0.1.0", _baseline),
    Migration.script(2, "schema_migrations: a record of each migration", _SCHEMA_V2),
)
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this pilothouse writes (and the newest it can open)."""


class NotFound(KeyError):
    """The object does not exist."""


class Conflict(Exception):
    """The write conflicts with the object's current state (e.g. it is being deleted)."""


class ApplyOutcome(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str
    count: int
    first_seen: str
    last_seen: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "reason": self.reason,
            "message": self.message,
            "count": self.count,
            "firstTimestamp": self.first_seen,
            "lastTimestamp": self.last_seen,
        }


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Resources, events and process records; all methods are synchronous and short."""

    MAX_EVENTS_PER_OBJECT = 50

    def __init__(self, path: Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        """Open (or create) the store at ``path`` and bring its schema up to date.

        Raises ``SchemaTooNew`` for a file from a newer release and ``MigrationFailed``
        if a migration fails (the file keeps its version and data), a file whose
        tables are not a pilothouse state database's included; both are
        ``SchemaError``. ``migrations`` replaces ``MIGRATIONS`` (for tests).
        """
        for index, migration in enumerate(migrations):
            if migration.version != index + 1:
                raise ValueError(
                    f"migration {index} is to version {migration.version}, not {index + 1}"
                )
        self.path = path
        # One connection, shared by the event loop and the runtime's worker
        # threads: every use holds this lock so transactions never interleave.
        self._lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=5000")
            # Refuse a newer file before anything (journal mode included) is written to it.
            self._check_not_newer(self.schema_version(), len(migrations))
            self._wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(migrations)
        except BaseException:
            self._db.close()
            raise

    def _wal(self, within: float = 5.0) -> None:
        """Switch to WAL. Two processes doing that to a new file at once: SQLite answers
        one "database is locked" at once, without waiting (the busy timeout does not apply
        to this switch), so it is retried here for up to ``within`` seconds."""
        deadline = time.monotonic() + within
        pause = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _check_not_newer(self, version: int, supported: int) -> None:
        if version > supported:
            raise SchemaTooNew(self.path, version, supported)

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        """Apply the missing migrations in order, each in its own transaction."""
        latest = len(migrations)
        while True:
            version = self.schema_version()
            self._check_not_newer(version, latest)
            if version == latest:
                return
            with self._lock:
                # The write lock first, then the version again: another process may
                # have migrated (or a newer release written) since the read above.
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    version = self.schema_version()
                    self._check_not_newer(version, latest)
                    if version < latest:
                        self._apply(migrations[version])
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    def _apply(self, migration: Migration) -> None:
        """Run one migration and set its version, inside the caller's transaction."""
        try:
            migration.apply(self._db)
            self._record(migration)
        except Exception as exc:
            raise MigrationFailed(self.path, migration.version, migration.description, exc) from exc
        self._db.execute(f"PRAGMA user_version = {int(migration.version)}")

    def _record(self, migration: Migration) -> None:
        """Note the migration in ``schema_migrations`` once that table exists (version 2)."""
        if self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
        ).fetchone():
            self._db.execute(
                "INSERT INTO schema_migrations(version, description, applied_at, release)"
                " VALUES (?,?,?,?)",
                (migration.version, migration.description, utcnow(), __version__),
            )

    def schema_version(self) -> int:
        """The file's schema version (``PRAGMA user_version``)."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def schema_history(self) -> list[dict[str, Any]]:
        """The migrations recorded in the file, oldest first (``appliedAt``/``release`` are
        None for version 1, which predates the record)."""
        rows = self._query(
            "SELECT version, description, applied_at, release FROM schema_migrations"
            " ORDER BY version"
        )
        return [
            {
                "version": r["version"],
                "description": r["description"],
                "appliedAt": r["applied_at"],
                "release": r["release"],
            }
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _next_version(self, db: sqlite3.Connection) -> int:
        db.execute(
            "INSERT INTO counters(name, value) VALUES('rv', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )
        row = db.execute("SELECT value FROM counters WHERE name='rv'").fetchone()
        return int(row[0])

    # -- resources ---------------------------------------------------------

    def apply(self, docs: list[dict[str, Any]]) -> list[ApplyOutcome]:
        """Create or update every document in one transaction (all or nothing).

        ``docs`` are validated resources dumped to JSON (apiVersion, kind,
        metadata, spec). A document whose spec, labels and annotations are
        unchanged is a no-op: no new generation, no new resourceVersion.
        """
        outcomes: list[ApplyOutcome] = []
        with self._tx() as db:
            for doc in docs:
                kind, meta, spec = doc["kind"], doc["metadata"], doc.get("spec") or {}
                name = meta["name"]
                user_meta = {
                    "labels": meta.get("labels") or {},
                    "annotations": meta.get("annotations") or {},
                }
                row = db.execute(
                    "SELECT * FROM resources WHERE kind=? AND name=?", (kind, name)
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO resources(kind, name, uid, generation, resource_version,"
                        " created, metadata, spec) VALUES (?,?,?,?,?,?,?,?)",
                        (
                            kind,
                            name,
                            str(uuid.uuid4()),
                            1,
                            self._next_version(db),
                            utcnow(),
                            json.dumps(user_meta, sort_keys=True),
                            json.dumps(spec, sort_keys=True),
                        ),
                    )
                    outcomes.append(ApplyOutcome.CREATED)
                    continue
                if row["deleting"]:
                    raise Conflict(f"{kind} '{name}' is being deleted; apply again once it is gone")
                new_spec = json.dumps(spec, sort_keys=True)
                new_meta = json.dumps(user_meta, sort_keys=True)
                if new_spec == row["spec"] and new_meta == row["metadata"]:
                    outcomes.append(ApplyOutcome.UNCHANGED)
                    continue
                generation = row["generation"] + (1 if new_spec != row["spec"] else 0)
                db.execute(
                    "UPDATE resources SET spec=?, metadata=?, generation=?, resource_version=?"
                    " WHERE kind=? AND name=?",
                    (new_spec, new_meta, generation, self._next_version(db), kind, name),
                )
                outcomes.append(ApplyOutcome.CONFIGURED)
        return outcomes

    def _row_to_doc(self, row: sqlite3.Row) -> dict[str, Any]:
        user_meta = json.loads(row["metadata"])
        metadata: dict[str, Any] = {
            "name": row["name"],
            "namespace": "default",
            "uid": row["uid"],
            "generation": row["generation"],
            "resourceVersion": str(row["resource_version"]),
            "creationTimestamp": row["created"],
            "labels": user_meta.get("labels", {}),
            "annotations": user_meta.get("annotations", {}),
        }
        if row["deleting"]:
            metadata["deletionTimestamp"] = row["deleting"]
        return {
            "apiVersion": "pilothouse.dev/v1alpha1",
            "kind": row["kind"],
            "metadata": metadata,
            "spec": json.loads(row["spec"]),
            "status": json.loads(row["status"]),
        }

    def get(self, kind: str, name: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM resources WHERE kind=? AND name=?", (kind, name))
        if not rows:
            raise NotFound(f"{kind} '{name}' not found")
        return self._row_to_doc(rows[0])

    def list_objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            rows = self._query("SELECT * FROM resources ORDER BY kind, name")
        else:
            rows = self._query("SELECT * FROM resources WHERE kind=? ORDER BY name", (kind,))
        return [self._row_to_doc(r) for r in rows]

    def mark_deleted(self, kind: str, name: str) -> dict[str, Any]:
        """Start deletion; controllers tear down what the object owns, then ``remove`` it."""
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"{kind} '{name}' not found")
            if not row["deleting"]:
                db.execute(
                    "UPDATE resources SET deleting=?, resource_version=? WHERE kind=? AND name=?",
                    (utcnow(), self._next_version(db), kind, name),
                )
        return self.get(kind, name)

    def remove(self, kind: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name))
            db.execute("DELETE FROM events WHERE kind=? AND name=?", (kind, name))
            db.execute("DELETE FROM requests WHERE kind=? AND name=?", (kind, name))

    # -- requests: what users ask of a controller (promote, abort, pause, ...) -------------

    def set_requests(self, kind: str, name: str, values: dict[str, str]) -> None:
        """Record user requests to an object's controller (written only by the API, read by
        the controller, so they never race with its status writes); one transaction."""
        with self._tx() as db:
            row = db.execute(
                "SELECT deleting FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"{kind} '{name}' not found")
            if row["deleting"]:
                raise Conflict(f"{kind} '{name}' is being deleted")
            for key, value in values.items():
                db.execute(
                    "INSERT INTO requests(kind, name, key, value, updated) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(kind, name, key) DO UPDATE SET value=excluded.value, "
                    "updated=excluded.updated",
                    (kind, name, key, value, utcnow()),
                )

    def requests(self, kind: str, name: str) -> dict[str, str]:
        rows = self._query("SELECT key, value FROM requests WHERE kind=? AND name=?", (kind, name))
        return {row["key"]: row["value"] for row in rows}

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> bool:
        """Replace the status; returns False if it was unchanged (no new resourceVersion)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"{kind} '{name}' not found")
            text = json.dumps(status, sort_keys=True)
            if text == row["status"]:
                return False
            db.execute(
                "UPDATE resources SET status=?, resource_version=? WHERE kind=? AND name=?",
                (text, self._next_version(db), kind, name),
            )
        return True

    # -- events --------------------------------------------------------------

    def record_event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        """Record an event; a repeat of the last one with the same reason and message counts up."""
        now = utcnow()
        with self._tx() as db:
            row = db.execute(
                "SELECT uid FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            if row is None:
                return
            last = db.execute(
                "SELECT id, reason, message FROM events WHERE kind=? AND name=?"
                " ORDER BY id DESC LIMIT 1",
                (kind, name),
            ).fetchone()
            if last is not None and last["reason"] == reason and last["message"] == message:
                db.execute(
                    "UPDATE events SET count = count + 1, last_seen=? WHERE id=?", (now, last["id"])
                )
                return
            db.execute(
                "INSERT INTO events(kind, name, uid, type, reason, message, first_seen, last_seen)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (kind, name, row["uid"], type_, reason, message, now, now),
            )
            db.execute(
                "DELETE FROM events WHERE kind=? AND name=? AND id NOT IN ("
                " SELECT id FROM events WHERE kind=? AND name=? ORDER BY id DESC LIMIT ?)",
                (kind, name, kind, name, self.MAX_EVENTS_PER_OBJECT),
            )

    def events(self, kind: str, name: str) -> list[Event]:
        rows = self._query("SELECT * FROM events WHERE kind=? AND name=? ORDER BY id", (kind, name))
        return [
            Event(r["type"], r["reason"], r["message"], r["count"], r["first_seen"], r["last_seen"])
            for r in rows
        ]

    # -- process records (owned by runtime.local) ---------------------------------

    def put_process(self, record: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO processes(id, owner_kind, owner_name, role, pid, record)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET pid=excluded.pid,"
                " record=excluded.record",
                (
                    record["id"],
                    record["ownerKind"],
                    record["ownerName"],
                    record["role"],
                    record["pid"],
                    json.dumps(record, sort_keys=True),
                ),
            )

    def delete_process(self, process_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM processes WHERE id=?", (process_id,))

    def processes(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT record FROM processes ORDER BY id")
        return [json.loads(r["record"]) for r in rows]

    # -- placements and node states (owned by runtime.local: its scheduler's bookkeeping) --

    def put_placement(self, record: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO placements(id, record) VALUES (?,?)"
                " ON CONFLICT(id) DO UPDATE SET record=excluded.record",
                (record["id"], json.dumps(record, sort_keys=True)),
            )

    def delete_placement(self, placement_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM placements WHERE id=?", (placement_id,))

    def placements(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT record FROM placements ORDER BY id")
        return [json.loads(r["record"]) for r in rows]

    def set_node_state(self, name: str, state: str) -> None:
        with self._tx() as db:
            if state == "Ready":
                db.execute("DELETE FROM node_states WHERE name=?", (name,))
            else:
                db.execute(
                    "INSERT INTO node_states(name, state) VALUES (?,?)"
                    " ON CONFLICT(name) DO UPDATE SET state=excluded.state",
                    (name, state),
                )

    def node_states(self) -> dict[str, str]:
        return {r["name"]: r["state"] for r in self._query("SELECT name, state FROM node_states")}
