"""Integration fixtures: a real control plane in a temporary $PILOTHOUSE_HOME.

Everything is real: the daemon and its replicas are processes, HTTP goes over
127.0.0.1, state is SQLite. Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from pilothouse.api.client import Client
from pilothouse.api.home import Home
from pilothouse.spec.resources import kind_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fraud-detection"
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def pods(client: Client, kind: str, name: str) -> list[dict[str, Any]]:
    """The process view of one object (``GET .../{plural}/{name}/pods``), ``kind`` as the
    CLI takes it (``md``, ``tj``, ``modeldeployments``...).

    A replica is ``{id, node, phase, message, revision, ready, pid, endpoint, exitCode}``,
    a worker ``{id, node, phase, message, rank, attempt, running, pending, pid, exitCode,
    outputDir}``. Replicas being let go are not listed; one being stopped is
    ``Terminating``; one that ended and is not replaced yet has its ``exitCode``.
    """
    return client.pods(kind_for(kind).PLURAL, name)


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replicas that run or start (placed or waiting for a node): neither ended nor
    being stopped."""
    return [p for p in items if p["phase"] != "Terminating" and p.get("exitCode") is None]


def replicas(client: Client, name: str) -> list[dict[str, Any]]:
    """The live replicas of a ModelDeployment (see ``live``), oldest first."""
    return live(pods(client, "modeldeployments", name))


@dataclass
class Platform:
    home: Home
    env: dict[str, str]

    def cli(
        self, *args: str, input_text: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pilothouse", *args],
            env=self.env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def client(self) -> Client:
        return Client.from_home(self.home)

    def get_json(self, kind: str, name: str | None = None) -> Any:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pods(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The replicas or workers of one object (see the module's ``pods``)."""
        with closing(self.client()) as client:
            return pods(client, kind, name)

    def replicas(self, name: str) -> list[dict[str, Any]]:
        """The live replicas of a ModelDeployment (see ``live``)."""
        return live(self.pods("modeldeployments", name))

    def workers(self, name: str) -> list[dict[str, Any]]:
        """The workers of a TrainingJob (every attempt the platform still holds)."""
        return self.pods("trainingjobs", name)

    def token(self) -> str:
        token = self.home.read_token()
        assert token
        return token

    def api(self) -> httpx.Client:
        info = self.home.read_daemon_info()
        assert info
        return httpx.Client(
            base_url=info["url"], headers={"Authorization": f"Bearer {self.token()}"}, timeout=10
        )


def _platform(tmp: Path) -> Platform:
    env = {**os.environ, "PILOTHOUSE_HOME": str(tmp / "home"), "NO_COLOR": "1", "COLUMNS": "200"}
    return Platform(Home(tmp / "home"), env)


@pytest.fixture
def fresh_platform(tmp_path: Path) -> Iterator[Platform]:
    """A platform that is not started yet; stopped at the end whatever the test did."""
    platform = _platform(tmp_path)
    yield platform
    platform.cli("down", timeout=60)


@pytest.fixture
def platform(fresh_platform: Platform) -> Platform:
    """A running control plane of its own."""
    result = fresh_platform.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return fresh_platform


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One running control plane for a module whose tests build on each other."""
    platform = _platform(tmp_path_factory.mktemp("shared"))
    result = platform.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    yield platform
    platform.cli("down", timeout=60)


@pytest.fixture
def api(shared_platform: Platform) -> Iterator[Client]:
    """A control API client of the module's shared platform."""
    client = shared_platform.client()
    yield client
    client.close()


@pytest.fixture
def deployments(shared_platform: Platform) -> Iterator[list[str]]:
    """Names to delete at the end of the test (freeing the cores), whatever it did."""
    names: list[str] = []
    yield names
    for name in names:
        shared_platform.cli("delete", "modeldeployment", name, "--timeout", "60s", timeout=90)
