"""The worker launcher and process adoption: how a worker ended is known even to a control
plane that was not its parent (real processes, real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from pilothouse.runtime.local.runtime import LAUNCHER
from pilothouse.runtime.local.supervisor import UNKNOWN_EXIT, Supervisor
from pilothouse.store.sqlite import Store
from tests.integration.conftest import pid_alive, wait_for


def launch(state: Path, *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", str(LAUNCHER), str(state), "--", *command],
        start_new_session=True,
    )


def test_launcher_records_the_exit_code(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = launch(state, sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.wait(timeout=30) == 3
    recorded = json.loads(state.read_text())
    assert recorded["exitCode"] == 3
    assert recorded["pid"] > 0


def test_launcher_outlives_a_group_sigterm_and_records_the_signal(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    ready = tmp_path / "ready"
    script = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    proc = launch(state, sys.executable, "-c", script)
    wait_for("the command to start", ready.exists, 30)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert json.loads(state.read_text())["exitCode"] == 143


def test_launcher_reports_a_command_that_cannot_start(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = launch(state, str(tmp_path / "no-such-program"))
    assert proc.wait(timeout=30) == 127
    assert json.loads(state.read_text()) == {"pid": 0, "exitCode": 127}


def test_an_adopted_worker_reports_how_it_ended(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    first = Supervisor(store, tmp_path / "logs")
    state = tmp_path / "state.json"
    release = tmp_path / "release"
    script = (
        "import pathlib, sys, time\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.02)\n"
        "sys.exit(7)\n"
    )
    first.spawn(
        "job-a1-r0",
        owner_kind="TrainingJob",
        owner_name="job",
        role="worker",
        argv=[sys.executable, "-I", str(LAUNCHER), str(state), "--", sys.executable, "-c", script],
        env=dict(os.environ),
        cwd=None,
        log_name="job.log",
        state_file=str(state),
    )
    # a new control plane (the first one "crashed") takes the worker over from SQLite
    second = Supervisor(store, tmp_path / "logs")
    [record] = store.processes()
    child = second.adopt(record)
    assert child.adopted
    assert child.poll() is None
    release.touch()
    wait_for("the adopted worker to end", lambda: child.poll() is not None, 30)
    assert child.exit_code == 7  # from the launcher's record, not a guess
    first.children["job-a1-r0"].popen.wait(timeout=10)  # type: ignore[union-attr]
    store.close()


def test_an_adopted_process_that_vanished_without_a_record_is_unknown(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    supervisor = Supervisor(store, tmp_path / "logs")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    child = supervisor.adopt(
        {"id": "gone", "pid": proc.pid, "startTicks": 1, "ownerKind": "x", "ownerName": "y"}
    )
    assert child.poll() == UNKNOWN_EXIT
    store.close()


def test_stopping_a_worker_whose_launcher_was_killed_stops_its_command(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    supervisor = Supervisor(store, tmp_path / "logs")
    state = tmp_path / "state.json"
    child = supervisor.spawn(
        "job-a1-r0",
        owner_kind="TrainingJob",
        owner_name="job",
        role="worker",
        argv=[sys.executable, "-I", str(LAUNCHER), str(state), "--", "sleep", "300"],
        env=dict(os.environ),
        cwd=None,
        log_name="job.log",
        state_file=str(state),
    )
    command = wait_for("the launcher to say the command's pid", child.launcher_state, 30)["pid"]
    os.kill(child.pid, signal.SIGKILL)  # the launcher only: its command runs on
    wait_for("the launcher to be reaped", lambda: child.poll() is not None, 30)
    assert pid_alive(command)
    supervisor.stop("job-a1-r0", grace=0.0)
    wait_for("the orphaned command to be gone", lambda: not pid_alive(command), 30)
    store.close()


def test_a_stop_while_the_launcher_starts_reaches_the_command(tmp_path: Path) -> None:
    """SIGTERM sent to the group at once (before the launcher could install its handlers)
    neither kills the launcher nor is lost: the command is started, gets it, and the
    launcher records how it ended (without the held signals the launcher died at once,
    recording nothing, and the command ran on unwatched)."""
    store = Store(tmp_path / "state.db")
    supervisor = Supervisor(store, tmp_path / "logs")
    state = tmp_path / "state.json"
    script = "import time; time.sleep(60)"
    try:
        child = supervisor.spawn(
            "w",
            owner_kind="TrainingJob",
            owner_name="t",
            role="worker",
            argv=[
                sys.executable,
                "-I",
                str(LAUNCHER),
                str(state),
                "--",
                sys.executable,
                "-c",
                script,
            ],
            env=dict(os.environ),
            cwd=None,
            log_name="w.log",
            state_file=str(state),
            hold_signals=True,
        )
        os.killpg(child.pid, signal.SIGTERM)  # at once: the launcher is still starting
        assert child.popen is not None
        assert child.popen.wait(timeout=30) == 143
        recorded = json.loads(state.read_text())
        assert recorded["exitCode"] == 143
        assert recorded["pid"] > 0
        assert not pid_alive(recorded["pid"])
    finally:
        supervisor.stop_all(grace=1.0)
        store.close()
