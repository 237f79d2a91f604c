"""What a process started by the platform sees of the control plane's environment: only
what the platform and its spec set, plus PATH/HOME/locale and the like; a secret in the
daemon's environment stays there unless a spec's ``passEnv`` names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Platform, pid_alive, wait_for
from tests.integration.rollout_models import register_v1
from tests.integration.test_scheduling import apply, phase_is

pytestmark = pytest.mark.integration

PY = sys.executable
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "not-for-users-0123456789",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    # the registry's storage options may hold credentials: the control plane's only
    "PILOTHOUSE_REGISTRY_OPTIONS": '{"secret": "not-for-users"}',
    "PH_TEST_TOKEN": "token-value",
}
DUMP_ENV = (
    "import json, os, pathlib; "
    "pathlib.Path(os.environ['PILOTHOUSE_OUTPUT_DIR'], 'env.json')"
    ".write_text(json.dumps(dict(os.environ)))"
)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.decode().split("=", 1) for e in raw.split(b"\0") if b"=" in e)


def _pass_env(names: list[str]) -> str:
    return f"passEnv: {json.dumps(names)}" if names else ""


def run_job(platform: Platform, tmp_path: Path, name: str, pass_env: list[str]) -> dict[str, str]:
    text = f"""
    apiVersion: pilothouse.dev/v1alpha1
    kind: TrainingJob
    metadata: {{name: {name}}}
    spec:
      command: [{PY}, -c, {json.dumps(DUMP_ENV)}]
      env: [{{name: GREETING, value: hello}}]
      resources: {{cpu: 100m, memory: 64Mi}}
      restartPolicy: {{maxRestarts: 0}}
      {_pass_env(pass_env)}
    """
    result = apply(platform, tmp_path, text)
    assert result.returncode == 0, result.stderr
    wait_for(f"{name} to succeed", lambda: phase_is(platform, name, "Succeeded"), 60)
    [found] = (platform.home.root / "outputs").glob(f"{name}-*/attempt-1/env.json")
    env: dict[str, str] = json.loads(found.read_text())
    return env


def assert_platform_basics(env: dict[str, str]) -> None:
    assert env["PATH"].split(":")[0] == str(Path(PY).parent)  # the platform's Python first
    assert env["HOME"]
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.fixture
def secret_platform(fresh_platform: Platform) -> Platform:
    """A control plane whose own environment holds secrets."""
    fresh_platform.env.update(SECRETS)
    fresh_platform.env["PH_PREFIX_ONE"] = "1"
    fresh_platform.env["PH_PREFIX_TWO"] = "2"
    result = fresh_platform.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return fresh_platform


def test_worker_sees_no_secret_of_the_daemon_unless_passed(
    secret_platform: Platform, tmp_path: Path
) -> None:
    env = run_job(secret_platform, tmp_path, "plain", [])
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert not [k for k in env if k.startswith("PH_PREFIX_")]
    assert_platform_basics(env)
    assert env["GREETING"] == "hello"  # the spec's env
    assert env["PILOTHOUSE_JOB"] == "plain"  # what the platform sets
    assert env["RANK"] == "0"
    assert env["PILOTHOUSE_HOME"] == str(secret_platform.home.root)  # its own settings

    env = run_job(secret_platform, tmp_path, "passing", ["PH_TEST_TOKEN", "AWS_*", "PH_PREFIX_*"])
    assert env["PH_TEST_TOKEN"] == SECRETS["PH_TEST_TOKEN"]
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRETS["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ACCESS_KEY_ID"] == SECRETS["AWS_ACCESS_KEY_ID"]
    assert (env["PH_PREFIX_ONE"], env["PH_PREFIX_TWO"]) == ("1", "2")
    assert "PILOTHOUSE_REGISTRY_OPTIONS" not in env  # not named
    assert_platform_basics(env)
    assert env["GREETING"] == "hello"


def _replicas(platform: Platform, count: int, revision: str | None = None) -> Any:
    """The replicas of 'fraud' (its pods) once exactly ``count`` run, all ready and none of
    ``revision``."""
    current = platform.replicas("fraud")
    ready = [r for r in current if r["ready"] and (revision is None or r["revision"] != revision)]
    return ready if len(ready) == count and len(current) == count else None


def _deployment(pass_env: list[str]) -> str:
    return f"""
    apiVersion: pilothouse.dev/v1alpha1
    kind: ModelDeployment
    metadata: {{name: fraud}}
    spec:
      model: "fraud:1"
      replicas: 1
      terminationGracePeriod: 1s
      {_pass_env(pass_env)}
    """


def test_replica_sees_no_secret_of_the_daemon_unless_passed(
    secret_platform: Platform, tmp_path: Path
) -> None:
    register_v1(secret_platform.home.root / "models")
    assert apply(secret_platform, tmp_path, _deployment([])).returncode == 0
    [replica] = wait_for("a ready replica", lambda: _replicas(secret_platform, 1), 60)
    env = environ_of(replica["pid"])
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert_platform_basics(env)
    assert env["PILOTHOUSE_REPLICA_ID"] == replica["id"]

    # passed through: a new revision, whose replica sees it
    assert apply(secret_platform, tmp_path, _deployment(["PH_TEST_TOKEN"])).returncode == 0
    [passed] = wait_for(
        "the new revision's replica",
        lambda: _replicas(secret_platform, 1, revision=replica["revision"]),
        60,
    )
    wait_for("the old replica to end", lambda: not pid_alive(replica["pid"]), 30)
    env = environ_of(passed["pid"])
    assert env["PH_TEST_TOKEN"] == SECRETS["PH_TEST_TOKEN"]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert_platform_basics(env)
