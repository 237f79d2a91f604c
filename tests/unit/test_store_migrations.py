"""Schema versioning of the state store: PRAGMA user_version and ordered migrations.

Real SQLite files under tmp_path. ``tests/fixtures/store_release_0_1_0.sql`` is a
database written by release 0.1.0 (before versioning), dumped with ``iterdump()``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pilothouse import __version__
from pilothouse.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    MigrationFailed,
    SchemaError,
    SchemaTooNew,
    Store,
    sql_statements,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_release_0_1_0.sql"
V1_TABLES = (
    "resources",
    "events",
    "processes",
    "placements",
    "node_states",
    "counters",
    "requests",
    "sqlite_sequence",
)


def previous_release_db(path: Path) -> Path:
    """A file as release 0.1.0 left it: its tables and rows, WAL mode, user_version 0."""
    db = sqlite3.connect(path)
    db.executescript(FIXTURE.read_text())
    db.execute("PRAGMA journal_mode=WAL")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return path


def version_1_db(path: Path) -> Path:
    """A file at schema version 1, made by the store with only the first migration."""
    Store(previous_release_db(path), migrations=MIGRATIONS[:1]).close()
    assert user_version(path) == 1
    return path


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def table_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the file, in a stable order."""
    db = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def schema_objects(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT type, name FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        db.close()


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def never(db: sqlite3.Connection) -> None:
    raise AssertionError("this migration must not run")


# -- a database written by the previous release ---------------------------------------


def test_previous_release_database_is_upgraded_without_losing_anything(tmp_path: Path) -> None:
    path = previous_release_db(tmp_path / "state.db")
    before = table_rows(path)

    store = Store(path)

    assert store.schema_version() == SCHEMA_VERSION == user_version(path)
    assert [m["version"] for m in store.schema_history()] == list(range(1, SCHEMA_VERSION + 1))
    after = table_rows(path)
    for table in V1_TABLES:
        assert after[table] == before[table], table

    # Every object, status, event and request reads back through the store's API.
    objects = {(o["kind"], o["metadata"]["name"]): o for o in store.list_objects()}
    assert sorted(objects) == [
        ("ModelDeployment", "fraud-detector"),
        ("Queue", "default"),
        ("Queue", "retiring"),
        ("TrainingJob", "fraud-train"),
    ]
    md = store.get("ModelDeployment", "fraud-detector")
    assert md["metadata"]["generation"] == 2
    assert md["metadata"]["resourceVersion"] == "7"
    assert md["metadata"]["labels"] == {"app": "fraud-detection"}
    assert md["spec"]["model"] == "fraud-detector:latest"
    assert md["spec"]["replicas"] == 3
    assert md["spec"]["rollout"]["strategy"] == "canary"
    assert md["status"]["phase"] == "Progressing"
    assert md["status"]["conditions"][0]["reason"] == "MinimumReplicasReady"
    job = store.get("TrainingJob", "fraud-train")
    assert job["spec"]["command"] == ["python", "train.py"]
    assert job["spec"]["output"] == {"framework": "sklearn", "model": "fraud-detector"}
    assert job["status"] == {
        "observedGeneration": 1,
        "phase": "Running",
        "restarts": 1,
        "startTime": "2024-05-01T09:58:00Z",
    }
    assert store.get("Queue", "default")["status"] == {"admitted": ["TrainingJob/fraud-train"]}
    retiring = store.get("Queue", "retiring")
    assert "deletionTimestamp" in retiring["metadata"]
    assert retiring["metadata"]["labels"] == {"team": "old"}
    # uids survive (events carry them too)
    uids = {(row[0], row[1]): row[2] for row in before["resources"]}
    for key, obj in objects.items():
        assert obj["metadata"]["uid"] == uids[key]

    assert [(e.reason, e.count) for e in store.events("TrainingJob", "fraud-train")] == [
        ("Scheduled", 1),
        ("BackOff", 2),
        ("Started", 1),
    ]
    assert [e.message for e in store.events("ModelDeployment", "fraud-detector")] == [
        "scaled up to 3",
        "canary at 25%",
    ]
    assert [e.type for e in store.events("Queue", "retiring")] == ["Normal"]
    assert store.requests("ModelDeployment", "fraud-detector") == {
        "promote": "1",
        "pause": "false",
    }
    assert store.requests("TrainingJob", "fraud-train") == {"abort": "requested"}
    assert store.requests("Queue", "default") == {}
    assert [p["id"] for p in store.processes()] == [
        "modeldeployment-fraud-detector-r0",
        "trainingjob-fraud-train-w0",
    ]
    assert store.processes()[1]["pid"] == 4242
    assert [p["id"] for p in store.placements()] == ["trainingjob-fraud-train-w0"]
    assert store.node_states() == {"gpu-box": "Cordoned"}

    # and the store keeps working on it: resourceVersions continue, events count up
    store.apply([{"kind": "Queue", "metadata": {"name": "new"}, "spec": {}}])
    assert store.get("Queue", "new")["metadata"]["resourceVersion"] == "10"
    store.record_event(
        "TrainingJob", "fraud-train", "Normal", "Started", "worker 0 started (pid 4242)"
    )
    assert store.events("TrainingJob", "fraud-train")[-1].count == 2
    store.close()


def test_opening_an_up_to_date_database_again_is_a_no_op(tmp_path: Path) -> None:
    path = previous_release_db(tmp_path / "state.db")
    Store(path).close()
    history = Store(path).schema_history()
    snapshot = files_in(tmp_path)

    # Not one migration runs (these would raise), and not a byte changes.
    store = Store(path, migrations=[Migration(v, f"v{v}", never) for v in range(1, 3)])
    assert store.schema_version() == SCHEMA_VERSION
    assert store.schema_history() == history
    store.close()
    Store(path).close()
    assert files_in(tmp_path) == snapshot
    assert user_version(path) == SCHEMA_VERSION


def test_a_new_database_starts_at_the_latest_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "state.db")
    assert store.schema_version() == SCHEMA_VERSION
    assert [(m["version"], m["release"] is not None) for m in store.schema_history()] == [
        (1, False),
        (2, True),
    ]
    store.apply([{"kind": "Queue", "metadata": {"name": "q"}, "spec": {}}])
    assert store.get("Queue", "q")["metadata"]["resourceVersion"] == "1"
    store.close()


def test_migration_2_records_when_and_by_which_release(tmp_path: Path) -> None:
    store = Store(version_1_db(tmp_path / "state.db"))
    v1, v2 = store.schema_history()
    assert v1 == {
        "version": 1,
        "description": "the schema of release 0.1.0",
        "appliedAt": None,
        "release": None,
    }
    assert v2["version"] == 2
    assert v2["appliedAt"] is not None
    assert v2["appliedAt"].endswith("Z")
    assert v2["release"] == __version__
    store.close()


# -- a database written by a newer release ----------------------------------------------


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_newer_database_is_refused_and_left_untouched(tmp_path: Path, journal: str) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.apply([{"kind": "Queue", "metadata": {"name": "q"}, "spec": {}}])
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.execute("CREATE TABLE from_the_future (x INTEGER)")
    db.close()
    snapshot = files_in(tmp_path)

    with pytest.raises(SchemaTooNew) as caught:
        Store(path)

    message = str(caught.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 5}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 5, SCHEMA_VERSION)
    assert isinstance(caught.value, SchemaError)
    # same bytes, no journal left behind, still in its own journal mode
    assert files_in(tmp_path) == snapshot


def test_a_newer_database_seen_only_under_the_write_lock_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process moves the file past us between our first read and our migration."""
    path = version_1_db(tmp_path / "state.db")
    before = table_rows(path)

    original = Store.schema_version

    def racing_version(self: Store) -> int:
        # Read under BEGIN IMMEDIATE: a newer release migrated the file first.
        return SCHEMA_VERSION + 1 if self._db.in_transaction else original(self)

    monkeypatch.setattr(Store, "schema_version", racing_version)
    with pytest.raises(SchemaTooNew):
        Store(path)
    monkeypatch.undo()
    assert user_version(path) == 1
    assert table_rows(path) == before


# -- a failing migration ---------------------------------------------------------------


def failing_function(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE half_done (x INTEGER)")
    db.execute("INSERT INTO half_done VALUES (1)")
    db.execute("UPDATE resources SET spec = '{}', status = '{}'")
    db.execute("DELETE FROM events")
    db.execute("PRAGMA user_version = 99")
    raise RuntimeError("disk on fire")


FAILING_SCRIPT = """
CREATE TABLE half_done (x INTEGER);
INSERT INTO half_done VALUES (1);
UPDATE resources SET spec = '{}', status = '{}';
DELETE FROM events;
INSERT INTO no_such_table VALUES (1);
"""


@pytest.mark.parametrize(
    "failing",
    [
        Migration(2, "a step that fails", failing_function),
        Migration.script(2, "a step that fails", FAILING_SCRIPT),
    ],
    ids=["function", "script"],
)
def test_a_failing_migration_rolls_back_completely(tmp_path: Path, failing: Migration) -> None:
    path = version_1_db(tmp_path / "state.db")
    before = table_rows(path)
    objects = schema_objects(path)

    with pytest.raises(MigrationFailed) as caught:
        Store(path, migrations=[MIGRATIONS[0], failing])

    message = str(caught.value)
    assert str(path) in message
    assert "from schema version 1 to 2" in message
    assert "still at version 1" in message
    assert caught.value.__cause__ is not None
    assert user_version(path) == 1
    assert schema_objects(path) == objects
    assert table_rows(path) == before
    # and the real migration still applies afterwards
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.get("TrainingJob", "fraud-train")["status"]["phase"] == "Running"
    store.close()


def test_a_later_failing_migration_keeps_the_earlier_ones(tmp_path: Path) -> None:
    """Each step is its own transaction: 0 -> 1 -> 2 commit, 2 -> 3 fails and rolls back."""
    path = previous_release_db(tmp_path / "state.db")
    before = table_rows(path)
    failing = Migration(3, "a step that fails", failing_function)

    with pytest.raises(MigrationFailed, match="from schema version 2 to 3"):
        Store(path, migrations=[*MIGRATIONS, failing])

    assert user_version(path) == 2
    after = table_rows(path)
    assert "half_done" not in after
    assert [row[0] for row in after["schema_migrations"]] == [1, 2]
    for table in V1_TABLES:
        assert after[table] == before[table], table


def test_tables_that_are_not_a_pilothouse_database_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE resources (id INTEGER PRIMARY KEY, blob BLOB)")
    db.execute("INSERT INTO resources VALUES (1, x'00')")
    db.commit()
    db.close()
    before = table_rows(path)

    with pytest.raises(MigrationFailed, match="not those of a pilothouse state database"):
        Store(path)

    assert user_version(path) == 0
    assert table_rows(path) == before
    assert schema_objects(path) == [("table", "resources")]


# -- concurrent openers ------------------------------------------------------------------


@pytest.mark.parametrize("slow", [False, True], ids=["real", "slow"])
def test_concurrent_openers_migrate_once(tmp_path: Path, slow: bool) -> None:
    """Openers on their own connections (as separate processes would be): all end at
    the latest version; migration 2 (a CREATE TABLE, which fails if run twice) ran once."""
    path = version_1_db(tmp_path / "state.db")
    migrations = list(MIGRATIONS)
    if slow:
        real = MIGRATIONS[1]

        def slow_v2(db: sqlite3.Connection) -> None:
            time.sleep(0.3)  # hold the write lock while the others wait on it
            real.apply(db)

        migrations[1] = Migration(real.version, real.description, slow_v2)
    openers = 4
    start = threading.Barrier(openers)
    versions: list[int] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            start.wait(timeout=10)
            store = Store(path, migrations=migrations)
            versions.append(store.schema_version())
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert versions == [SCHEMA_VERSION] * openers
    rows = table_rows(path)["schema_migrations"]
    assert [row[0] for row in rows] == [1, 2]
    store = Store(path)
    assert store.get("ModelDeployment", "fraud-detector")["spec"]["replicas"] == 3
    store.close()


def test_concurrent_openers_of_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    openers = 4
    start = threading.Barrier(openers)
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            start.wait(timeout=10)
            Store(path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert user_version(path) == SCHEMA_VERSION
    assert [row[0] for row in table_rows(path)["schema_migrations"]] == [1, 2]


# -- the migration list ------------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_an_out_of_order_migration_list_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="migration 1 is to version 3"):
        Store(tmp_path / "state.db", migrations=[MIGRATIONS[0], Migration(3, "x", never)])
    assert not (tmp_path / "state.db").exists()


def test_sql_statements_split_on_statement_ends_only() -> None:
    script = """
    CREATE TABLE t (x TEXT DEFAULT 'a;b');  INSERT INTO t VALUES ('c;d');
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        UPDATE t SET x = x || ';';
    END;
    """
    assert sql_statements(script) == [
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');",
        "INSERT INTO t VALUES ('c;d');",
        "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n        UPDATE t SET x = x || ';';\n    END;",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        sql_statements("CREATE TABLE t (x); INSERT INTO t VALUES (1")
