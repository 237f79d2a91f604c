"""Start and stop the background control plane for one $PILOTHOUSE_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pilothouse.api.client import NotRunning, tls_verify
from pilothouse.api.home import PRIVATE_FILE, Home
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
        verify = tls_verify(info)
        return httpx.get(f"{info['url']}/healthz", timeout=1.0, verify=verify).status_code == 200
    except (httpx.HTTPError, NotRunning):
        return False


def start_background(
    home: Home,
    host: str,
    port: int,
    timeout: float = 30.0,
    *,
    data_host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
    max_connections: int = 0,
    body_budget: int = 256 * 2**20,
) -> dict[str, object]:
    """Spawn ``pilothouse up --foreground`` detached and wait until its API answers."""
    home.ensure()
    home.ensure_token()
    home.daemon_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pilothouse",
        "up",
        "--foreground",
        "--host",
        host,
        "--port",
        str(port),
        "--data-plane-host",
        data_host,
        "--max-connections",
        str(max_connections),
        "--router-body-budget",
        str(body_budget),
        "--log-file",
        str(home.daemon_log),
    ]
    if tls is not None:
        command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    fd = os.open(home.daemon_out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            command,
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
            why = _last_error(home.daemon_log)
            raise StartFailed(
                f"the daemon exited with code {code}"
                + (f": {why}" if why else "")
                + f"; see {home.daemon_log} and {home.daemon_out}"
            )
        info = home.read_daemon_info()
        if info and info.get("pid") == proc.pid and healthy(home):
            return info
        time.sleep(0.1)
    proc.terminate()
    raise StartFailed(f"the daemon did not answer within {timeout:.0f}s; see {home.daemon_log}")


def _last_error(log_file: Path) -> str:
    """The daemon's last ERROR line (why it could not start), without its prefix."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 16384))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        _, marker, message = line.partition(" ERROR ")
        if marker:
            return message.partition(": ")[2] or message
    return ""


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
