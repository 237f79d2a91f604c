"""A killed replica is replaced by a model server that was started ahead of need (a
standby that already imported everything its revision needs), so the replacement serves
within a fraction of a second. State, not time, is checked here: how fast it is, is
``bench/replacement_time.py``'s business."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Platform, pid_alive, wait_for
from tests.integration.test_self_healing import deploy, predict, ready_replicas, serve_pids

pytestmark = pytest.mark.integration


def standby_pids(platform: Platform) -> set[int]:
    """Standby model servers of this platform (their model dir is under its home)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pilothouse.serving.standby" in argv and any(
            a.startswith(str(platform.home.root).encode()) for a in argv
        ):
            found.add(int(entry.name))
    return {pid for pid in found if pid_alive(pid)}


def one_standby(platform: Platform, not_pid: int | None = None) -> int | None:
    pids = standby_pids(platform) - {not_pid}
    return next(iter(pids)) if len(pids) == 1 else None


def test_a_killed_replica_is_replaced_by_the_standby(platform: Platform, tmp_path: Path) -> None:
    deploy(platform, tmp_path)
    before = wait_for("2 ready replicas", lambda: ready_replicas(platform, 2), 60)
    standby = wait_for("a standby model server", lambda: one_standby(platform), 30)
    victim, survivor = before
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> list[dict[str, Any]] | None:
        ready = ready_replicas(platform, 2)
        return ready if ready and victim["id"] not in {r["id"] for r in ready} else None

    after = wait_for("the replacement to be ready", replaced, 60)
    assert survivor["id"] in {r["id"] for r in after}
    [replacement] = [r for r in after if r["id"] != survivor["id"]]
    # the standby became the replica: the same process, now shown as a model server
    assert replacement["pid"] == standby
    assert serve_pids(platform) == {r["pid"] for r in after}
    assert predict(platform) == 200
    # and another standby is made for the next time
    wait_for("a new standby", lambda: one_standby(platform, not_pid=standby), 30)
    with platform.api() as api:
        events = api.get("/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/events").json()
    assert any(
        e["reason"] == "ReplicaExited" and victim["id"] in e["message"] for e in events["items"]
    )

    # nothing of it stays once the deployment is gone
    result = platform.cli("delete", "md", "fraud", "--timeout", "60s")
    assert result.returncode == 0, result.stderr
    wait_for("no standby left", lambda: not standby_pids(platform), 30)
    assert not serve_pids(platform)
