"""Several processes open one state database written by the previous release at once
(the daemon and CLI commands do): each ends at the latest schema version, and every
migration ran exactly once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pilothouse.store.sqlite import SCHEMA_VERSION, Store
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_release_0_1_0.sql"

# Opens the store once ``go`` exists; migration 2 holds the write lock a while, so the
# other processes read version 1 first and then wait on the lock.
OPENER = """
import sqlite3, sys, time
from pathlib import Path
from pilothouse.store.sqlite import MIGRATIONS, Migration, Store

path, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
real = MIGRATIONS[1]

def slow(db: sqlite3.Connection) -> None:
    time.sleep(0.3)
    real.apply(db)

migrations = [MIGRATIONS[0], Migration(real.version, real.description, slow), *MIGRATIONS[2:]]
ready.touch()  # started, and waiting for the signal
deadline = time.monotonic() + 30
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.005)
store = Store(path, migrations=migrations)
print(store.schema_version())
store.close()
"""


def test_processes_opening_a_previous_release_database_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE.read_text())
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    go = tmp_path / "go"
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(path), str(go), str(tmp_path / f"ready-{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    wait_for(
        "every opener to start and wait for the signal",
        lambda: all((tmp_path / f"ready-{n}").exists() for n in range(4)),
        timeout=60,
    )
    go.touch()
    results = [p.communicate(timeout=60) for p in openers]
    for process, (out, err) in zip(openers, results, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)

    store = Store(path)
    history = store.schema_history()
    assert [m["version"] for m in history] == list(range(1, SCHEMA_VERSION + 1))
    assert store.get("TrainingJob", "fraud-train")["status"]["phase"] == "Running"
    assert store.requests("TrainingJob", "fraud-train") == {"abort": "requested"}
    store.close()
