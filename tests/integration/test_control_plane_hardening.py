"""The control plane against hostile or careless input, and what it exposes: names that
try to leave their path, YAML and JSON bombs, a private home, loopback data plane by
default, the open-files limit, and a control API that outlives a flood of idle sockets."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import ROOT, Platform, wait_for
from tests.integration.servers import register_fraud_model

pytestmark = pytest.mark.integration

P = "/apis/pilothouse.dev/v1alpha1"
QUEUE = """
apiVersion: pilothouse.dev/v1alpha1
kind: Queue
metadata: {name: research}
spec: {weight: 2}
"""


def billion_laughs() -> str:
    text = "apiVersion: pilothouse.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\n"
    text += "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    previous = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    return text


# -- names -----------------------------------------------------------------------------


def test_names_cannot_traverse_to_another_objects_path(platform: Platform) -> None:
    applied = platform.cli("apply", "-f", "-", input_text=QUEUE)
    assert applied.returncode == 0, applied.stderr
    for args in (
        ("get", "md", "../queues", "-o", "json"),
        ("get", "md", "../queues/research", "-o", "json"),
        ("get", "md/../../nodes"),
        ("describe", "md", "a?b#c"),
        ("get", "md", "..%2Fqueues"),
        ("delete", "md", "../queues/research", "--no-wait"),
        ("delete", "md", "..", "--no-wait"),
    ):
        result = platform.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "metadata.name" in result.stderr, result.stderr
        assert "expected" in result.stderr, result.stderr
        assert "research" not in result.stdout, "nothing of another object is shown"
    listed = platform.get_json("queues")
    assert [q["metadata"]["name"] for q in listed["items"]] == ["research"], (
        "the queue was not deleted through a crafted name"
    )


def test_api_refuses_invalid_names_with_400(platform: Platform) -> None:
    with platform.api() as api:
        for method, raw in (
            ("GET", f"{P}/modeldeployments/..%2F..%2Fnodes"),
            ("GET", f"{P}/modeldeployments/%2E%2E"),
            ("GET", f"{P}/queues/fraud%0A"),
            ("DELETE", f"{P}/queues/..%2Fqueues%2Fdefault"),
            ("GET", "/api/v1/nodes/..%2F..%2Fstatus"),
        ):
            response = api.request(method, raw)
            assert api.build_request(method, raw).url.raw_path == raw.encode()
            assert response.status_code == 400, (method, raw, response.status_code, response.text)
            body = response.json()
            assert body["kind"] == "Status"
            assert body["reason"] == "BadRequest"
            assert "expected" in body["message"]


# -- YAML and JSON bombs ---------------------------------------------------------------


def test_apply_refuses_a_billion_laughs_fast(fresh_platform: Platform, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    started = time.monotonic()
    result = fresh_platform.cli("apply", "-f", str(bomb), timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert re.search(
        rf"{re.escape(str(bomb))}:\d+: document 1: invalid YAML: aliases expand", result.stderr
    ), result.stderr
    assert "nothing was applied" in result.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s (the CLI's own start included)"


def test_apply_refuses_deep_nesting(fresh_platform: Platform, tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("spec: " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = fresh_platform.cli("apply", "-f", str(deep), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{deep}:1: document 1: invalid YAML: nested deeper than 100 levels" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_answers_400_to_bad_json_on_every_endpoint_with_a_body(platform: Platform) -> None:
    deep = b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big = b'{"items": [{"spec": {"replicas": 18446744073709551616}}]}'
    latin1 = '{"items": ["caf\xe9"]}'.encode("latin-1")
    with platform.api() as api:
        for method, path in (
            ("POST", f"{P}/apply"),
            ("PUT", f"{P}/queues/q"),
            ("POST", f"{P}/modeldeployments/fraud/rollout"),
            ("POST", "/api/v1/nodes/" + platform.get_json("nodes")["items"][0]["name"] + "/cordon"),
        ):
            for body, says in (
                (deep, "nested deeper than 100 levels"),
                (big, "too large"),
                (latin1, "not UTF-8"),
                (b"[]", "a JSON array; expected"),
            ):
                response = api.request(method, path, content=body)
                assert response.status_code == 400, (path, says, response.text[:200])
                payload = response.json()
                assert payload["reason"] == "BadRequest"
                assert says in payload["message"], payload["message"]


# -- the home, the data plane, the process -------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_state_files_are_private_on_every_start(fresh_platform: Platform) -> None:
    p = fresh_platform
    root = p.home.root
    root.mkdir(parents=True)
    (root / "nodes.yaml").write_text("nodes:\n  - {name: n, cpu: 2, memory: 2Gi}\n")
    first = p.cli("up")
    assert first.returncode == 0, first.stderr
    assert p.cli("down").returncode == 0
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / "old-replica.log").write_text("old\n")
    # an older version, a copy, a hand-made home: everything world-readable
    for path in [root, root / "logs"]:
        os.chmod(path, 0o755)
    for path in root.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
    second = p.cli("up")
    assert second.returncode == 0, second.stderr
    info = p.home.read_daemon_info()
    assert info is not None
    assert _mode(root) == 0o700
    assert _mode(root / "logs") == 0o700
    for name in ("state.db", "token", "daemon.json", "nodes.yaml", "daemon.log"):
        assert _mode(root / name) == 0o600, name
    assert _mode(root / "logs" / "old-replica.log") == 0o600
    for name in ("state.db-wal", "state.db-shm"):
        if (root / name).exists():
            assert _mode(root / name) == 0o600, name
    umask = re.search(r"^Umask:\s*(\d+)", Path(f"/proc/{info['pid']}/status").read_text(), re.M)
    assert umask is not None
    assert int(umask.group(1), 8) == 0o077
    # what the daemon creates from now on is private too
    applied = p.cli("apply", "-f", "-", input_text=QUEUE)
    assert applied.returncode == 0
    wal = root / "state.db-wal"
    assert wal.exists()
    assert _mode(wal) == 0o600


@pytest.fixture
def deployable(fresh_platform: Platform) -> Platform:
    register_fraud_model(fresh_platform.home.models, rows=2000)
    return fresh_platform


def _deployment_url(p: Platform) -> str:
    spec = (
        "apiVersion: pilothouse.dev/v1alpha1\nkind: ModelDeployment\n"
        "metadata: {name: fraud}\nspec: {model: 'fraud:1', replicas: 1}\n"
    )
    applied = p.cli("apply", "-f", "-", input_text=spec)
    assert applied.returncode == 0, applied.stderr
    return str(
        wait_for(
            "the deployment's endpoint",
            lambda: (p.get_json("md", "fraud").get("status") or {}).get("url"),
            timeout=60,
        )
    )


def test_data_plane_stays_on_loopback_whatever_the_api_host(deployable: Platform) -> None:
    p = deployable
    up = p.cli("up", "--host", "0.0.0.0")
    assert up.returncode == 0, up.stderr
    assert "unauthenticated" not in up.stderr
    url = _deployment_url(p)
    assert urlsplit(url).hostname == "127.0.0.1", url


def test_data_plane_host_flag_warns_plainly(deployable: Platform) -> None:
    p = deployable
    up = p.cli("up", "--data-plane-host", "0.0.0.0")
    assert up.returncode == 0, up.stderr
    assert "0.0.0.0" in up.stderr, up.stderr
    assert "unauthenticated" in up.stderr, up.stderr
    assert "pilothouse is up at http://127.0.0.1:" in up.stdout
    log = p.home.daemon_log.read_text()
    assert "unauthenticated" in log
    assert "0.0.0.0" in log
    url = _deployment_url(p)
    assert urlsplit(url).hostname == "0.0.0.0", url


def test_max_connections_must_not_be_negative(fresh_platform: Platform) -> None:
    result = fresh_platform.cli("up", "--max-connections", "-1")
    assert result.returncode == 2
    assert "--max-connections" in result.stderr
    assert "not in the range" in result.stderr, result.stderr


def test_daemon_raises_its_open_files_limit(fresh_platform: Platform) -> None:
    p = fresh_platform
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    up = subprocess.run(
        [sys.executable, "-m", "pilothouse", "up"],
        env=p.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=lower,
    )
    assert up.returncode == 0, up.stderr
    info = p.home.read_daemon_info()
    assert info is not None
    limits = Path(f"/proc/{info['pid']}/limits").read_text()
    row = re.search(r"^Max open files\s+(\S+)\s+(\S+)", limits, re.M)
    assert row is not None, limits
    assert row.group(1) == row.group(2), f"soft limit not raised to the hard limit: {row.group(0)}"
    log = p.home.daemon_log.read_text()
    assert "open files: soft limit" in log, log
    assert f"(was {low})" in log, log


# -- idle connections ------------------------------------------------------------------


@contextlib.contextmanager
def _open_files_raised() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (a non-blocking socket; nothing is read)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE)


def test_control_api_answers_while_2000_idle_connections_are_open(platform: Platform) -> None:
    info = platform.home.read_daemon_info()
    assert info is not None
    address = urlsplit(info["url"])
    assert address.hostname
    assert address.port
    sockets: list[socket.socket] = []
    with _open_files_raised() as limit:
        wanted = min(2000, limit - 256)
        note = f"{wanted} idle connections (RLIMIT_NOFILE {limit}; 2000 wanted)"
        try:
            for _ in range(wanted):
                sock = socket.create_connection((address.hostname, address.port), timeout=10)
                sock.setblocking(False)  # peeking must never wait
                sockets.append(sock)
            opened = time.monotonic()
            status = wait_for(
                f"`pilothouse status` with {note}",
                lambda: (r := platform.cli("status", "-o", "json")).returncode == 0 and r,
                timeout=8,
            )
            assert json.loads(status.stdout)["running"] is True
            with platform.api() as api:
                assert api.get("/api/v1/nodes").status_code == 200, note
                assert api.get(f"{P}/queues").status_code == 200, note
            answered = time.monotonic() - opened
            still_open = sum(not _closed_by_peer(s) for s in sockets)
            assert still_open >= 0.9 * wanted, (
                f"only {still_open} of {note} were still open when the API answered "
                f"({answered:.1f}s): it must answer while they are open"
            )
            # connections that never send a byte are closed after the first-byte timeout
            wait_for(
                f"the daemon to close {note} that never sent a byte",
                lambda: all(_closed_by_peer(s) for s in sockets),
                timeout=40,
                every=0.5,
            )
            assert platform.cli("status").returncode == 0
        finally:
            for sock in sockets:
                sock.close()
