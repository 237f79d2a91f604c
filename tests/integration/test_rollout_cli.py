"""``pilothouse rollout`` end to end: a canary that pauses, is promoted, aborted, retried
and undone, driven only through the CLI against a real control plane and real replicas.

The tests build on each other (one shared control plane, one deployment) and run in
file order. Every wait is on the object's state, with a deadline.
"""

from __future__ import annotations

import getpass
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import Platform, wait_for
from tests.integration.rollout_models import MODEL, register_good, register_v1, v2_body
from tests.integration.servers import sample_rows

pytestmark = pytest.mark.integration

NAME = "fraud-canary"
#: 25% of live traffic to the new revision, then wait for `rollout promote`, then all of it
STEPS = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]
WAIT = 120.0


def _manifest(version: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "pilothouse.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME},
            "spec": {
                "model": f"{MODEL}:{version}",
                "replicas": 1,
                "probes": {"readiness": {"path": "/v2/health/ready", "period": "1s"}},
                "rollout": {"strategy": "canary", "canary": {"steps": STEPS}},
            },
        },
        sort_keys=False,
    )


def _apply(p: Platform, tmp: Path, version: int) -> None:
    path = tmp / f"{NAME}-{version}.yaml"
    path.write_text(_manifest(version))
    applied = p.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr


def _obj(p: Platform) -> dict[str, Any]:
    with p.api() as api:
        response = api.get(f"/apis/pilothouse.dev/v1alpha1/modeldeployments/{NAME}")
    assert response.status_code == 200, response.text
    obj: dict[str, Any] = response.json()
    return obj


def _rollout(p: Platform) -> dict[str, Any]:
    rollout: dict[str, Any] = (_obj(p).get("status") or {}).get("rollout") or {}
    return rollout


def _until(p: Platform, what: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The object once ``done(status.rollout)`` holds for its current spec; on timeout the
    failure shows the last rollout status seen."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        obj = _obj(p)
        status = obj.get("status") or {}
        last["rollout"] = status.get("rollout")
        current = status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
        return obj if current and done(status.get("rollout") or {}) else None

    try:
        return wait_for(what, probe, timeout=WAIT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status.rollout: {last.get('rollout')}") from None


def _healthy(rollout: dict[str, Any]) -> bool:
    """Healthy on one revision."""
    return bool(
        rollout.get("phase") == "Healthy"
        and rollout.get("stableRevision")
        and not rollout.get("canaryRevision")
    )


def _held_at_pause(rollout: dict[str, Any]) -> bool:
    """At the manual pause (step index 1) with 25% of live traffic on a ready canary."""
    canary = rollout.get("canaryRevision")
    ready = ((rollout.get("replicas") or {}).get(canary) or {}).get("ready", 0)
    return bool(
        rollout.get("phase") in ("Progressing", "Paused")
        and rollout.get("step") == 1
        and rollout.get("weight") == 25
        and canary
        and ready >= 1
    )


def _degraded(rollout: dict[str, Any]) -> bool:
    return rollout.get("phase") == "Degraded"


def _versions_served(p: Platform, requests: int = 40) -> set[str]:
    """``model_version`` of each answer the router gives to ``requests`` live requests."""
    url = _obj(p)["status"]["url"]
    served = set()
    with httpx.Client(base_url=url, timeout=30) as http:
        for row in sample_rows(requests):
            response = http.post(f"/v2/models/{MODEL}/infer", content=v2_body(row))
            assert response.status_code == 200, response.text
            served.add(str(response.json()["model_version"]))
    return served


def _history_rows(p: Platform) -> list[list[str]]:
    listed = p.cli("rollout", "history", NAME)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "NUMBER",
        "REVISION",
        "MODEL",
        "OUTCOME",
        "AGE",
        "APPLIED-BY",
        "CAUSE",
    ]
    return [line.split() for line in lines[1:]]


@pytest.fixture
def watch(shared_platform: Platform) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Starts ``rollout status --watch`` beside the test (not a terminal: plain lines)."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "pilothouse", "rollout", "status", NAME, "-w", "--timeout=3m"],
            env=shared_platform.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_first_revision_becomes_stable(shared_platform: Platform, tmp_path: Path) -> None:
    p = shared_platform
    register_v1(p.home.models)
    _apply(p, tmp_path, 1)
    waited = p.cli("wait", f"modeldeployment/{NAME}", "--for=condition=Ready", "--timeout=120s")
    assert waited.returncode == 0, waited.stderr
    obj = _until(p, "the first revision to be healthy", _healthy)
    rollout = obj["status"]["rollout"]
    assert rollout["strategy"] == "canary"
    assert rollout["stableRevisionNumber"] == 1
    stable = rollout["stableRevision"]
    assert rollout["replicas"][stable] == {"desired": 1, "ready": 1}

    shown = p.cli("rollout", "status", NAME)
    assert shown.returncode == 0, shown.stderr
    assert "Healthy" in shown.stdout
    assert f"{stable} (1/1 ready)" in shown.stdout

    watched = p.cli("rollout", "status", NAME, "--watch", "--timeout=30s", timeout=60)
    assert watched.returncode == 0, watched.stderr
    assert f"modeldeployment/{NAME} rollout is healthy at revision {stable}" in watched.stdout

    rows = _history_rows(p)
    assert [r[:4] for r in rows] == [["1*", stable, f"{MODEL}:1", "Stable"]]


def test_canary_holds_at_its_pause_until_promoted(
    shared_platform: Platform, tmp_path: Path, watch: Callable[[], subprocess.Popen[str]]
) -> None:
    p = shared_platform
    stable = _rollout(p)["stableRevision"]
    register_good(p.home.models)
    _apply(p, tmp_path, 2)
    watcher = watch()
    rollout = _until(p, "the canary to hold at 25%", _held_at_pause)["status"]["rollout"]
    canary = rollout["canaryRevision"]
    assert rollout["stableRevision"] == stable
    assert rollout["canaryRevisionNumber"] == 2
    assert _versions_served(p) == {"1", "2"}, "25% of live traffic reaches the canary"

    shown = p.cli("rollout", "status", NAME)
    assert shown.returncode == 0, shown.stderr
    # not a terminal: whole plain lines, never cut to a terminal's width
    assert "phase=Paused strategy=canary step=2/3 weight=25%" in shown.stdout
    assert f"new {canary} (1/1 ready)" in shown.stdout
    assert "message: paused at step 2/3 until promoted" in shown.stdout
    assert watcher.poll() is None, "a paused rollout is not finished: the watch goes on"

    promoted = p.cli("rollout", "promote", NAME)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"modeldeployment/{NAME} promoted"

    out, err = watcher.communicate(timeout=WAIT)
    assert watcher.returncode == 0, out + err
    # each line starts with the time it was seen: HH:MM:SSZ
    assert all(re.match(r"\d\d:\d\d:\d\dZ ", line) for line in out.splitlines()[:-1]), out
    lines = [
        line.split(" ", 1)[1] if re.match(r"\d\d:", line) else line for line in out.splitlines()
    ]
    held = [line for line in lines if line.startswith("phase=") and "step=2/3" in line]
    assert len(held) == 1, f"the held state is printed once, not at every poll:\n{out}"
    assert "weight=25%" in held[0]
    assert lines[-1] == f"modeldeployment/{NAME} rollout is healthy at revision {canary}"

    obj = _until(p, "the promoted canary to be stable", _healthy)
    assert obj["status"]["rollout"]["stableRevision"] == canary
    assert obj["status"]["model"] == f"{MODEL}:2"
    running = [r for r in obj["status"]["revisions"] if r["ready"] or r["starting"] or r["pending"]]
    assert [r["revision"] for r in running] == [canary]
    assert {r["revision"] for r in p.replicas(NAME)} == {canary}
    assert _versions_served(p) == {"2"}

    again = p.cli("rollout", "promote", NAME)
    assert again.returncode == 2
    assert "no rollout in progress" in again.stderr

    rows = _history_rows(p)
    assert [r[:4] for r in rows] == [
        ["1", stable, f"{MODEL}:1", "Superseded"],
        ["2*", canary, f"{MODEL}:2", "Stable"],
    ]
    template = p.cli("rollout", "history", NAME, "--revision", "1")
    assert template.returncode == 0, template.stderr
    assert yaml.safe_load(template.stdout)["model"] == f"{MODEL}:1"
    missing = p.cli("rollout", "history", NAME, "--revision", "9")
    assert missing.returncode == 2
    assert "has no revision 9 (known: 1, 2)" in missing.stderr


def test_abort_puts_all_traffic_back_on_stable_and_retry_starts_again(
    shared_platform: Platform, tmp_path: Path
) -> None:
    p = shared_platform
    stable = _rollout(p)["stableRevision"]
    register_good(p.home.models, seed=13)
    _apply(p, tmp_path, 3)
    held = _until(p, "the canary to hold at 25%", _held_at_pause)
    canary = held["status"]["rollout"]["canaryRevision"]

    aborted = p.cli("rollout", "abort", NAME)
    assert aborted.returncode == 0, aborted.stderr
    assert aborted.stdout.strip() == f"modeldeployment/{NAME} aborted"

    rollout = _until(p, "the aborted rollout to be degraded", _degraded)["status"]["rollout"]
    assert rollout["weight"] == 0
    assert rollout["stableRevision"] == stable
    assert rollout["abortedRevision"] == canary
    assert _versions_served(p) == {"2"}, "no live request reaches the aborted revision"

    watched = p.cli("rollout", "status", NAME, "-w", "--timeout=30s", timeout=60)
    assert watched.returncode == 1
    assert f"modeldeployment/{NAME} rollout is degraded: " in watched.stderr
    assert _history_rows(p)[-1][:4] == ["3", canary, f"{MODEL}:3", "Aborted"]

    retried = p.cli("rollout", "retry", NAME)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"modeldeployment/{NAME} retried"
    rollout = _until(p, "the retried canary to hold at 25%", _held_at_pause)["status"]["rollout"]
    assert rollout["canaryRevision"] == canary
    assert rollout["stableRevision"] == stable

    full = p.cli("rollout", "promote", NAME, "--full")
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip() == f"modeldeployment/{NAME} fully promoted"
    obj = _until(p, "the retried revision to be stable", _healthy)
    assert obj["status"]["rollout"]["stableRevision"] == canary
    assert _versions_served(p) == {"3"}


def test_undo_rolls_out_an_earlier_revision_again(
    shared_platform: Platform, tmp_path: Path
) -> None:
    p = shared_platform
    unknown = p.cli("rollout", "undo", NAME, "--to-revision", "99")
    assert unknown.returncode == 2
    assert "no revision 99" in unknown.stderr

    undone = p.cli("rollout", "undo", NAME, "--to-revision", "1")
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.strip() == f"modeldeployment/{NAME} rolled back to revision 1"
    assert _obj(p)["spec"]["model"] == f"{MODEL}:1"

    _until(p, "the undo's canary to hold at 25%", _held_at_pause)

    paused = p.cli("rollout", "pause", NAME)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"modeldeployment/{NAME} paused"
    rollout = _until(p, "the rollout to be paused", lambda r: r.get("phase") == "Paused")
    why = rollout["status"]["rollout"]["pausedReason"]
    assert why, "a pause says why"
    assert _held_at_pause(rollout["status"]["rollout"]), "a pause keeps step and weight"
    shown = p.cli("rollout", "status", NAME)
    assert "phase=Paused" in shown.stdout, shown.stdout
    assert why in shown.stdout

    resumed = p.cli("rollout", "resume", NAME)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"modeldeployment/{NAME} resumed"
    _until(p, "the user's pause to end", lambda r: r.get("pausedReason") != why)

    assert p.cli("rollout", "promote", NAME, "--full").returncode == 0
    obj = _until(p, "the undone revision to be stable", _healthy)
    assert obj["status"]["model"] == f"{MODEL}:1"
    assert _versions_served(p) == {"1"}
    last = obj["status"]["history"][-1]
    assert last["model"] == f"{MODEL}:1"
    assert last["outcome"] == "Stable"
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    assert last["appliedBy"] == f"{who} (undo to revision 1)", "the CLI says who asked"


def test_describe_has_rollout_and_history_sections(shared_platform: Platform) -> None:
    described = shared_platform.cli("describe", "modeldeployment", NAME)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert text.index("Rollout:") < text.index("History:") < text.index("Events:")
    rollout = text[text.index("Rollout:") : text.index("History:")]
    assert "Strategy:  canary" in rollout
    assert "Phase:     Healthy" in rollout


def test_actions_on_an_unknown_deployment_fail_with_the_servers_message(
    shared_platform: Platform,
) -> None:
    for action in ("promote", "abort", "pause", "resume", "retry", "undo"):
        result = shared_platform.cli("rollout", action, "no-such-deployment")
        assert result.returncode == 2, (action, result.stdout)
        assert "no-such-deployment" in result.stderr
        assert result.stdout == ""
