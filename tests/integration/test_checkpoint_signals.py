"""The checkpoint SDK's SIGTERM contract with a real worker process.

The worker installs the handler, says it is ready, and loops until asked to stop;
on SIGTERM it saves and exits 143. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pilothouse.sdk import Checkpointer

pytestmark = pytest.mark.integration

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pilothouse.sdk import Checkpointer

    ckpt = Checkpointer(sys.argv[1], interval=3600)
    Path(sys.argv[2]).write_text("ready")
    step = 0
    while True:
        step += 1
        if ckpt.due() or ckpt.stop_requested:
            ckpt.save({"step": step}, step)
        if ckpt.stop_requested:
            ckpt.exit_preempted()
        time.sleep(0.005)  # one "training step"
    """
)


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(0.01)


def test_sigterm_saves_and_exits_143(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    directory = tmp_path / "ck"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "the worker to start")
        assert proc.poll() is None, proc.communicate()
        assert not directory.exists()  # nothing was due yet
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err.decode()
    loaded = Checkpointer(directory, handle_signals=False).load_latest()
    assert loaded is not None
    step, state = loaded
    assert state == {"step": step}
    assert step >= 1
