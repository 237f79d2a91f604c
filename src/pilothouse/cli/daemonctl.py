"""Start and stop the background control plane for one $PILOTHOUSE_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from pilothouse.api.home import Home
from pilothouse.runtime.local.supervisor import Supervisor, is_same_process
from pilothouse.store.sqlite import Store


class StartFailed(Exception):
    pass


def running_pid(home: Home) -> int | None:
    info = home.read_daemon_info()
    if not info:
        return None
    pid = int(info.get("pid", 0))
    if pid and is_same_process(pid, None):
        return pid
    return None


def healthy(home: Home) -> bool:
    info = home.read_daemon_info()
    if not info:
        return False
    try:
        return httpx.get(f"{info['url']}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_background(home: Home, host: str, port: int, timeout: float = 30.0) -> dict[str, object]:
    """Spawn ``pilothouse up --foreground`` detached and wait until its API answers."""
    home.ensure()
    home.ensure_token()
    home.daemon_file.unlink(missing_ok=True)
    with home.daemon_out.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilothouse",
                "up",
                "--foreground",
                "--host",
                host,
                "--port",
                str(port),
                "--log-file",
                str(home.daemon_log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PILOTHOUSE_HOME": str(home.root)},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise StartFailed(
                f"the daemon exited with code {code}; see {home.daemon_log} and {home.daemon_out}"
            )
        info = home.read_daemon_info()
        if info and info.get("pid") == proc.pid and healthy(home):
            return info
        time.sleep(0.1)
    proc.terminate()
    raise StartFailed(f"the daemon did not answer within {timeout:.0f}s; see {home.daemon_log}")


def stop(home: Home, timeout: float = 60.0) -> tuple[bool, int]:
    """Stop the daemon (it stops its children), then anything left in the process table.

    Returns (whether a daemon was running, how many leftover processes were stopped).
    """
    pid = running_pid(home)
    was_running = pid is not None
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_same_process(pid, None):
            time.sleep(0.05)
        if is_same_process(pid, None):
            os.kill(pid, signal.SIGKILL)
            while is_same_process(pid, None):
                time.sleep(0.05)
    home.daemon_file.unlink(missing_ok=True)
    leftovers = 0
    if home.db.exists():
        store = Store(home.db)
        try:
            leftovers = len(Supervisor(store, home.root / "logs").reap_orphans())
        finally:
            store.close()
    return was_running, leftovers
