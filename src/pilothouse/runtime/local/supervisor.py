"""Start, watch and stop local processes; remember them in SQLite.

Every child runs in its own session (process group) so stopping it stops its
descendants too, logs to its own file, and is recorded with its PID and start
time. The start time lets ``pilothouse down`` (or a restarted daemon) tell one
of our processes from an unrelated one that reused the PID.

Logs are rotated by size (:func:`rotate_log`): a child writes its log through its own
stdout, opened in append mode, so the file is never reopened; once it is over the
limit, its older part moves to ``X.log.1`` (replacing the previous one) and ``X.log``
keeps only what came after, in place. Disk use per log stays about twice the limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.runtime.local")

#: a log is rotated once it is larger than this (the runtime's default)
LOG_MAX_BYTES = 10 * 2**20
_CHUNK = 2**20
_FALLOC_FL_COLLAPSE_RANGE = 0x08
_fallocate: Any = None
#: one rotation at a time (the periodic one and a stopped child's last one may meet)
_rotating = threading.Lock()


def _collapse(fd: int, length: int) -> bool:
    """Remove the first ``length`` bytes of the file in place (Linux ``fallocate``
    COLLAPSE_RANGE on ext4/xfs; ``length`` a multiple of the block size). Atomic for a
    writer appending at the same moment: nothing it writes is lost. False where the
    filesystem or the platform cannot."""
    global _fallocate
    if _fallocate is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            # fallocate64 everywhere glibc is; plain fallocate takes a 64-bit off_t too
            # where a long is 64 bits (musl has only that one)
            function = getattr(libc, "fallocate64", None)
            if function is None and ctypes.sizeof(ctypes.c_long) == 8:
                function = libc.fallocate
        except (OSError, AttributeError):
            function = None
        if function is None:
            _fallocate = False
            return False
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        function.restype = ctypes.c_int
        _fallocate = function
    if _fallocate is False:
        return False
    return bool(_fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, 0, length) == 0)


def _copy(fd: int, start: int, end: int | None, target: Path) -> None:
    """Bytes ``start`` to ``end`` (None: to the end of the file) of ``fd`` into ``target``,
    atomically (a reader sees the previous backup or this one), starting at a line."""
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as out:
        offset, first = start, start > 0
        while end is None or offset < end:
            want = _CHUNK if end is None else min(_CHUNK, end - offset)
            data = os.pread(fd, want, offset)
            if not data:
                break
            offset += len(data)
            if first:
                first = False
                newline = data.find(b"\n")
                if 0 <= newline < len(data) - 1:
                    data = data[newline + 1 :]  # the backup starts with a whole line
            out.write(data)
    os.replace(tmp, target)


def rotate_log(path: Path, max_bytes: int, *, collapse: bool = True) -> bool:
    """If ``path`` is larger than ``max_bytes``: its older part goes to ``path.1`` (the
    newest ``max_bytes`` of it at most, replacing the previous backup) and ``path`` keeps
    what came after, in place (the child writing it keeps its file descriptor). Returns
    whether it rotated.

    Where the filesystem can (ext4, xfs) the moved part is cut off the front of the file
    (:func:`_collapse`): ``path.1`` ends exactly where ``path`` then begins, nothing is
    lost or repeated, and ``path`` may begin in the middle of a line (read ``path.1``
    first). Elsewhere it is copy-then-truncate, as logrotate's ``copytruncate``: what the
    child writes between the copy and the truncation (microseconds) is lost.
    """
    with _rotating:
        return _rotate(path, max_bytes, collapse)


def _rotate(path: Path, max_bytes: int, collapse: bool) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    backup = path.with_name(path.name + ".1")
    try:
        stat = os.fstat(fd)
        if stat.st_size <= max_bytes:
            return False
        block = stat.st_blksize if stat.st_blksize > 0 else 4096
        # whole blocks, short of the end (the range may not reach it)
        cut = (stat.st_size - 1) // block * block
        if collapse and cut > 0:
            _copy(fd, max(0, cut - max_bytes), cut, backup)
            if _collapse(fd, cut):
                return True
        _copy(fd, max(0, stat.st_size - max_bytes), None, backup)
        os.ftruncate(fd, 0)
        return True
    except OSError as exc:
        log.warning("could not rotate %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


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


def kill_orphaned_group(pid: int, start_ticks: int | None) -> None:
    """SIGKILL what is left of a process group whose leader ended (a worker whose launcher
    was killed keeps running otherwise). Only while the group id is still ours: a process
    that now has the leader's PID (another start time) may lead a group of that id."""
    current = process_start_ticks(pid)
    if current is not None and (start_ticks is None or current != start_ticks):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


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
    """A process we started, or one a previous daemon started that we adopted.

    For an adopted process we are not the parent: liveness comes from /proc (PID plus
    start time), and the exit code from the launcher's state file when there is one.
    """

    id: str
    popen: subprocess.Popen[bytes] | None
    record: dict[str, Any]
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    pid_: int = 0
    start_ticks: int | None = None
    #: written by launch.py: {"pid": command pid, "exitCode": ...}
    state_file: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else self.pid_

    @property
    def adopted(self) -> bool:
        return self.popen is None

    def launcher_state(self) -> dict[str, Any]:
        if not self.state_file:
            return {}
        try:
            data = json.loads(Path(self.state_file).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def poll(self) -> int | None:
        if self.exit_code is None:
            if self.popen is not None:
                code = self.popen.poll()
            elif is_same_process(self.pid_, self.start_ticks):
                code = None
            else:
                recorded = self.launcher_state().get("exitCode")
                # gone while nobody could wait for it, and no launcher said how it ended
                code = int(recorded) if isinstance(recorded, int) else UNKNOWN_EXIT
            if code is not None:
                if code < 0:  # killed by a signal: report it as a shell would
                    code = 128 - code
                self.exit_code = code
                self.finished_at = time.time()
        return self.exit_code


#: the exit code of an adopted process that ended with nothing recording how
UNKNOWN_EXIT = 255
#: what a stop sends (held for the launcher until it can handle them: ``hold_signals``)
HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Supervisor:
    """Owns the child processes of one daemon."""

    def __init__(self, store: Store, log_dir: Path, log_max_bytes: int = LOG_MAX_BYTES) -> None:
        self.store = store
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.children: dict[str, Child] = {}

    def rotate_logs(self) -> list[Path]:
        """Rotate every child's log that is over the limit (see :func:`rotate_log`); the
        rotated ones. Safe to call from a thread while children come and go."""
        rotated = []
        for child in list(self.children.values()):
            path = child.record.get("log")
            if path and rotate_log(Path(path), self.log_max_bytes):
                rotated.append(Path(path))
        return rotated

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
        state_file: str | None = None,
        hold_signals: bool = False,
    ) -> Child:
        """Start one process; raises OSError (e.g. FileNotFoundError) if it cannot start.

        ``hold_signals``: it starts with SIGTERM, SIGINT and SIGHUP blocked (held pending,
        not lost), for a program that installs its handlers and then unblocks them (the
        worker launcher): a stop that comes while it is still starting cannot kill it
        before it can record how its command ends."""
        log_path = self.log_dir / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # the mask is the calling thread's, inherited by the child across fork and exec
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS) if hold_signals else None
        try:
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
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        record = {
            "id": process_id,
            "ownerKind": owner_kind,
            "ownerName": owner_name,
            "role": role,
            "pid": popen.pid,
            "startTicks": process_start_ticks(popen.pid),
            "argv": argv,
            "log": str(log_path),
            "startedAt": time.time(),
            "stateFile": state_file,
            **(extra or {}),
        }
        self.store.put_process(record)
        child = Child(
            process_id,
            popen,
            record,
            time.time(),
            extra=dict(extra or {}),
            pid_=popen.pid,
            start_ticks=record["startTicks"],
            state_file=state_file,
        )
        self.children[process_id] = child
        return child

    def assign(
        self,
        process_id: str,
        new_id: str,
        *,
        owner_name: str,
        role: str,
        argv: list[str],
        log_name: str,
        extra: dict[str, Any] | None = None,
    ) -> Child:
        """A running child becomes another: a standby model server that was given a
        replica to be (serving/standby.py). Same process, new id, role and log; its record
        is replaced (the new one first: a daemon that dies in between still finds it)."""
        child = self.children.pop(process_id)
        now = time.time()
        record = {
            **child.record,
            "id": new_id,
            "ownerName": owner_name,
            "role": role,
            "argv": argv,
            "log": str(self.log_dir / log_name),
            "startedAt": now,
            **(extra or {}),
        }
        self.store.put_process(record)
        self.store.delete_process(process_id)
        child.id, child.record, child.started_at = new_id, record, now
        child.extra = {**child.extra, **(extra or {})}
        self.children[new_id] = child
        return child

    def adopt(self, record: dict[str, Any]) -> Child:
        """Take over a process a previous daemon started. If it no longer runs (same PID and
        start time), the child reports it ended (with the launcher's exit code if recorded)."""
        pid, ticks = int(record["pid"]), record.get("startTicks")
        child = Child(
            record["id"],
            None,
            record,
            float(record.get("startedAt") or time.time()),
            extra={k: v for k, v in record.items() if k in ("endpoint", "revision")},
            pid_=pid,
            start_ticks=ticks,
            state_file=record.get("stateFile"),
        )
        self.children[record["id"]] = child
        return child

    def stop(self, process_id: str, grace: float = 10.0) -> None:
        child = self.children.pop(process_id, None)
        if child is not None and child.poll() is None:
            terminate_group(child.pid, child.start_ticks, grace)
            if child.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=1.0)
        if child is not None:
            # the leader is gone; anything still in its group (a worker whose launcher was
            # killed, a model server's stray child) goes too
            kill_orphaned_group(child.pid, child.start_ticks)
            # what it wrote last is rotated too: nothing rotates this log after now
            if child.record.get("log"):
                rotate_log(Path(child.record["log"]), self.log_max_bytes)
        self.store.delete_process(process_id)

    def kill(self, process_id: str) -> None:
        """SIGKILL the process group at once (a lost node, a hung process); keep the record
        until ``stop`` so its exit is still observed."""
        child = self.children.get(process_id)
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)

    def signal(self, process_id: str, signum: int) -> None:
        child = self.children.get(process_id)
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)

    def stop_all(self, grace: float = 10.0, signalled: set[str] | None = None) -> None:
        """SIGTERM every child at once (not those in ``signalled``: they had theirs), then
        wait for all within one grace period, then SIGKILL what is left."""
        for process_id, child in self.children.items():
            if child.poll() is None and process_id not in (signalled or set()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process_id in list(self.children):
            child = self.children[process_id]
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if child.poll() is None:
                terminate_group(child.pid, child.start_ticks, grace=0.0)
                if child.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.popen.wait(timeout=2.0)
            # a process group may outlive its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            self.store.delete_process(process_id)
            del self.children[process_id]
