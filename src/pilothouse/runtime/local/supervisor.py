"""Start, watch and stop local processes; remember them in SQLite.

Every child runs in its own session (process group) so stopping it stops its
descendants too, logs to its own file, and is recorded with its PID and start
time. The start time lets ``pilothouse down`` (or a restarted daemon) tell one
of our processes from an unrelated one that reused the PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilothouse.store.sqlite import Store


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_same_process(pid: int, start_ticks: int | None) -> bool:
    current = process_start_ticks(pid)
    if current is None:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state == "Z":
        return False
    return start_ticks is None or current == start_ticks


def terminate_group(pid: int, start_ticks: int | None, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL."""
    if not is_same_process(pid, start_ticks):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_same_process(pid, start_ticks):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Child:
    id: str
    popen: subprocess.Popen[bytes]
    record: dict[str, Any]
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def poll(self) -> int | None:
        if self.exit_code is None:
            code = self.popen.poll()
            if code is not None:
                self.exit_code = code
                self.finished_at = time.time()
        return self.exit_code


class Supervisor:
    """Owns the child processes of one daemon."""

    def __init__(self, store: Store, log_dir: Path) -> None:
        self.store = store
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}

    def reap_orphans(self) -> list[dict[str, Any]]:
        """Stop processes a previous daemon left behind (it died without cleaning up)."""
        stopped = []
        for record in self.store.processes():
            if record["id"] in self.children:
                continue
            if is_same_process(record["pid"], record.get("startTicks")):
                terminate_group(record["pid"], record.get("startTicks"), grace=5.0)
                stopped.append(record)
            self.store.delete_process(record["id"])
        return stopped

    def spawn(
        self,
        process_id: str,
        *,
        owner_kind: str,
        owner_name: str,
        role: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        log_name: str,
        pass_fds: tuple[int, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> Child:
        """Start one process; raises OSError (e.g. FileNotFoundError) if it cannot start."""
        log_path = self.log_dir / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        record = {
            "id": process_id,
            "ownerKind": owner_kind,
            "ownerName": owner_name,
            "role": role,
            "pid": popen.pid,
            "startTicks": process_start_ticks(popen.pid),
            "argv": argv,
            "log": str(log_path),
            **(extra or {}),
        }
        self.store.put_process(record)
        child = Child(process_id, popen, record, time.time(), extra=dict(extra or {}))
        self.children[process_id] = child
        return child

    def stop(self, process_id: str, grace: float = 10.0) -> None:
        child = self.children.pop(process_id, None)
        if child is not None and child.poll() is None:
            terminate_group(child.popen.pid, child.record.get("startTicks"), grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=1.0)
        self.store.delete_process(process_id)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every child at once, then wait for all within one grace period."""
        for child in self.children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process_id in list(self.children):
            child = self.children[process_id]
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                terminate_group(child.popen.pid, child.record.get("startTicks"), grace=0.0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=2.0)
            # a process group may outlive its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            self.store.delete_process(process_id)
            del self.children[process_id]
