"""Logs of replicas and workers are rotated by size: ``X.log`` and one backup ``X.log.1``,
each about the limit (``$PILOTHOUSE_LOG_MAX_BYTES`` at the daemon's start), the newest
output in ``X.log``, nothing lost or repeated where they meet."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from pilothouse.runtime.local.supervisor import rotate_log
from tests.integration.conftest import Platform, wait_for
from tests.integration.test_scheduling import apply, phase_is

pytestmark = pytest.mark.integration

PY = sys.executable
LIMIT = 256 * 1024
#: what a log may hold beyond the limit: what arrived since the last check, a block
MARGIN = 64 * 1024

#: a worker that writes ROUNDS x 2 MiB of numbered lines as fast as it can; after each
#: round it waits (at most 20 s) until its log has been rotated (its stdout shrank)
CHATTY = r"""
import os, sys, time
number = 0
for round_ in range(3):
    for _ in range(2 * 1024 * 1024 // 100):
        number += 1
        sys.stdout.write(f"line {number:08d} " + "x" * 85 + "\n")
    sys.stdout.flush()
    size = os.fstat(1).st_size
    deadline = time.monotonic() + 20
    while os.fstat(1).st_size >= size:
        if time.monotonic() > deadline:
            print("the log was never rotated", flush=True)
            sys.exit(1)
        time.sleep(0.02)
print(f"done after line {number:08d}", flush=True)
"""
LINES = 3 * (2 * 1024 * 1024 // 100)


@pytest.fixture
def small_logs(fresh_platform: Platform) -> Platform:
    fresh_platform.env["PILOTHOUSE_LOG_MAX_BYTES"] = str(LIMIT)
    result = fresh_platform.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return fresh_platform


def test_a_chatty_worker_log_is_rotated(small_logs: Platform, tmp_path: Path) -> None:
    text = f"""
    apiVersion: pilothouse.dev/v1alpha1
    kind: TrainingJob
    metadata: {{name: chatty}}
    spec:
      command: [{PY}, -c, {json.dumps(CHATTY)}]
      resources: {{cpu: 100m, memory: 64Mi}}
      restartPolicy: {{maxRestarts: 0}}
    """
    assert apply(small_logs, tmp_path, text).returncode == 0
    st = wait_for(
        "the job to end",
        lambda: (
            phase_is(small_logs, "chatty", "Succeeded") or phase_is(small_logs, "chatty", "Failed")
        ),
        90,
    )
    folder = small_logs.home.root / "logs" / "trainingjobs" / "chatty"
    log, backup = folder / "worker-0.log", folder / "worker-0.log.1"
    assert st["phase"] == "Succeeded", log.read_text()[-500:]
    assert log.stat().st_size <= LIMIT + MARGIN
    assert backup.stat().st_size <= LIMIT + MARGIN
    newest = log.read_text().splitlines()
    assert newest[-1] == f"done after line {LINES:08d}"  # the newest output is in X.log
    # the backup starts at a whole line; backup then log: consecutive lines, none lost or
    # repeated where they meet, the last one the last written
    both = backup.read_bytes() + log.read_bytes()
    assert backup.read_bytes().startswith(b"line ")
    numbers = [int(n) for n in re.findall(rb"^line (\d{8}) x{85}$", both, re.M)]
    assert numbers
    assert numbers == list(range(numbers[0], LINES + 1))
    # nothing else is there: no third file
    assert sorted(p.name for p in folder.iterdir()) == ["worker-0.log", "worker-0.log.1"]

    result = small_logs.cli("delete", "trainingjob", "chatty")
    assert result.returncode == 0, result.stderr
    wait_for("the job's logs (backups too) to be removed", lambda: not folder.exists(), 30)


@pytest.mark.parametrize("collapse", [True, False], ids=["cut-in-place", "copytruncate"])
def test_rotation_keeps_the_newest_part_and_the_writer_appending(
    tmp_path: Path, collapse: bool
) -> None:
    """Both ways of rotating (cut the front in place where the filesystem can, else
    copy-then-truncate) with a writer that keeps its descriptor, as a child does."""
    path = tmp_path / "x.log"
    writer = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for n in range(1, 20001):
            os.write(writer, f"{n:06d} {'y' * 40}\n".encode())
        assert not rotate_log(path, 10 * 2**20, collapse=collapse)  # under the limit
        assert rotate_log(path, 64 * 1024, collapse=collapse)
        os.write(writer, b"after the rotation\n")
    finally:
        os.close(writer)
    backup = path.with_name("x.log.1")
    assert path.stat().st_size <= 64 * 1024
    assert backup.stat().st_size <= 64 * 1024
    assert path.read_text().endswith("after the rotation\n")
    lines = (backup.read_text() + path.read_text()).splitlines()
    assert lines[-1] == "after the rotation"
    numbers = [int(line.split()[0]) for line in lines[:-1]]
    assert numbers == list(range(numbers[0], 20001))
