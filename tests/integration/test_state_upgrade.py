"""A control plane started on state written by another release: the previous one is
upgraded in place (schema and controller bookkeeping), a newer one is refused untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.integration.conftest import Platform, wait_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_release_0_1_0.sql"


def _write_db(path: Path, sql: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        db.executescript(sql)
    finally:
        db.close()


def test_a_newer_releases_state_is_refused_and_left_as_it_was(fresh_platform: Platform) -> None:
    db = fresh_platform.home.db
    _write_db(db, "CREATE TABLE resources (kind TEXT); PRAGMA user_version = 99;")
    before = db.read_bytes()
    result = fresh_platform.cli("up", timeout=60)
    assert result.returncode != 0
    said = " ".join((result.stderr + result.stdout).split())
    assert "schema version 99" in said, said
    assert str(db) in said, said
    assert "supports schema versions up to" in said, said
    assert db.read_bytes() == before


def test_the_previous_releases_state_is_upgraded_in_place(fresh_platform: Platform) -> None:
    p = fresh_platform
    _write_db(p.home.db, FIXTURE.read_text())
    result = p.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    names = {o["metadata"]["name"] for o in p.get_json("modeldeployments")["items"]}
    assert names == {"fraud-detector"}
    assert {o["metadata"]["name"] for o in p.get_json("trainingjobs")["items"]} == {"fraud-train"}

    def migrated() -> dict | None:  # type: ignore[type-arg]
        status = p.get_json("modeldeployments", "fraud-detector")["status"]
        internal = status.get("internal") or {}
        return status if internal.get("version") == 2 else None

    # the controller reads the old bookkeeping (top-level fields) and writes it back in
    # the versioned internal field; the model is not in this home's registry
    status = wait_for("the deployment's status to be migrated", migrated, timeout=30)
    assert "rolloutState" not in status
    assert "replicaStatuses" not in status
    assert "fraud-detector" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "ModelNotFound"
    with sqlite3.connect(p.home.db) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
