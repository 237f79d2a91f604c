"""Self-healing with real processes: killed and hung replicas, a killed training worker,
and a control plane killed with SIGKILL that comes back without duplicates."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import ROOT, Platform, pid_alive, wait_for
from tests.integration.rollout_models import register_v1
from tests.integration.test_scheduling import apply, job, phase_is, results, status

FRAUD_ROW = [120.0, 3, 14, 1, 0, 1, 3, 1.1, 5.0, 700]


def deploy(platform: Platform, tmp_path: Path, replicas: int = 2, probes: str = "") -> None:
    register_v1(platform.home.root / "models")
    text = f"""
    apiVersion: pilothouse.dev/v1alpha1
    kind: ModelDeployment
    metadata: {{name: fraud}}
    spec:
      model: "fraud:1"
      replicas: {replicas}
      terminationGracePeriod: 2s
    {probes}
    """
    result = apply(platform, tmp_path, text)
    assert result.returncode == 0, result.stderr


def ready_replicas(platform: Platform, count: int) -> list[dict[str, Any]] | None:
    """The replicas of 'fraud' (its pods) once exactly ``count`` run and all are ready."""
    replicas = platform.replicas("fraud")
    ready = [r for r in replicas if r["ready"]]
    return ready if len(ready) == count and len(replicas) == count else None


def predict(platform: Platform) -> int:
    url = status(platform, "md", "fraud")["url"]
    body = {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": FRAUD_ROW}]}
    return httpx.post(f"{url}/v2/models/fraud/infer", json=body, timeout=10).status_code


def serve_pids(platform: Platform) -> set[int]:
    """Model server processes of this platform's home (their registry is under it)."""
    out = subprocess.run(
        ["pgrep", "-f", f"pilothouse serve --model [^ ]+ --registry {platform.home.root}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {int(p) for p in out.stdout.split()}


def test_killed_replica_is_replaced(platform: Platform, tmp_path: Path) -> None:
    deploy(platform, tmp_path)
    before = wait_for("2 ready replicas", lambda: ready_replicas(platform, 2), 60)
    victim = before[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> list[dict[str, Any]] | None:
        ready = ready_replicas(platform, 2)
        return ready if ready and victim["id"] not in {r["id"] for r in ready} else None

    after = wait_for("a replacement replica to be ready", replaced, 60)
    assert before[1]["id"] in {r["id"] for r in after}  # the healthy one was left alone
    assert predict(platform) == 200
    assert serve_pids(platform) == {r["pid"] for r in after}


def test_hung_replica_is_detected_killed_and_replaced(platform: Platform, tmp_path: Path) -> None:
    probes = """  probes:
        liveness: {path: /v2/health/live, period: 1s, timeout: 500ms, failureThreshold: 2}
    """
    deploy(platform, tmp_path, probes=probes)
    before = wait_for("2 ready replicas", lambda: ready_replicas(platform, 2), 60)
    victim = before[0]
    os.kill(victim["pid"], signal.SIGSTOP)
    try:

        def replaced() -> list[dict[str, Any]] | None:
            ready = ready_replicas(platform, 2)
            return ready if ready and victim["id"] not in {r["id"] for r in ready} else None

        wait_for("the hung replica to be replaced", replaced, 60)
        wait_for("the hung process to be gone", lambda: not pid_alive(victim["pid"]), 30)
    finally:
        if pid_alive(victim["pid"]):
            os.kill(victim["pid"], signal.SIGCONT)
    with platform.api() as api:
        events = api.get("/apis/pilothouse.dev/v1alpha1/modeldeployments/fraud/events").json()
    exits = [e for e in events["items"] if e["reason"] == "ReplicaExited"]
    assert any(victim["id"] in e["message"] and "liveness" in e["message"] for e in exits)
    assert predict(platform) == 200


def _weights(platform: Platform, name: str, attempt: int) -> str:
    [folder] = (platform.home.root / "outputs").glob(f"{name}-*/attempt-{attempt}")
    path = folder / "weights.npz"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_killed_mid_run_resumes_and_ends_like_an_uninterrupted_run(
    platform: Platform, tmp_path: Path
) -> None:
    example = ROOT / "examples" / "recommendation"
    for name in ("whole", "broken"):
        text = f"""
        apiVersion: pilothouse.dev/v1alpha1
        kind: TrainingJob
        metadata: {{name: {name}}}
        spec:
          command: [{sys.executable}, train.py]
          args: ["--quick", "--seed", "11"]
          workingDir: {example}
          resources: {{cpu: 500m, memory: 512Mi}}
          checkpoint: {{interval: 500ms}}
          restartPolicy: {{maxRestarts: 2, backoff: {{initial: 1s, max: 1s}}}}
          output: {{model: {name}-recommender, framework: custom}}
        """
        assert apply(platform, tmp_path, text).returncode == 0

    def checkpointed() -> dict[str, Any] | None:
        workers = [w for w in platform.workers("broken") if w["running"] and w["pid"]]
        done = list((platform.home.root / "checkpoints").glob("broken-*/step-*"))
        return workers[0] if workers and done else None

    worker = wait_for("the first checkpoint of 'broken'", checkpointed, 60)
    os.kill(worker["pid"], signal.SIGKILL)

    whole = wait_for("'whole' to finish", lambda: phase_is(platform, "whole", "Succeeded"), 120)
    broken = wait_for("'broken' to finish", lambda: phase_is(platform, "broken", "Succeeded"), 120)
    assert whole["restarts"] == 0
    assert broken["restarts"] == 1  # a killed worker is a failure, restarted with back-off
    assert broken["attempt"] == 2
    log = (platform.home.root / "logs" / "trainingjobs" / "broken" / "worker-0.log").read_text()
    assert "resumed from checkpoint step" in log
    # the resumed run ends bit-identical to the one never interrupted
    assert _weights(platform, "broken", 2) == _weights(platform, "whole", 1)
    assert broken["outputModel"]["metrics"] == whole["outputModel"]["metrics"]

    # and the resumed model serves: top-10 items per user, as the example's deployment does
    deployment = (example / "modeldeployment.yaml").read_text()
    deployment = deployment.replace("recommender:latest", broken["outputModel"]["ref"])
    deployment = deployment.replace("replicas: 2", "replicas: 1")
    (tmp_path / "md.yaml").write_text(deployment)
    result = platform.cli("apply", "-f", str(tmp_path / "md.yaml"))
    assert result.returncode == 0, result.stderr
    wait_for(
        "the recommender to be ready",
        lambda: status(platform, "md", "recommender").get("readyReplicas") == 1,
        60,
    )
    url = status(platform, "md", "recommender")["url"]
    request = json.loads((example / "sample-request.json").read_text())
    model = broken["outputModel"]["name"]
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=request, timeout=10)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["shape"] == [2, 10]
    for row in range(2):
        items = output["data"][row * 10 : (row + 1) * 10]
        assert len(set(items)) == 10  # ten different items, best first


def test_control_plane_killed_and_restarted_adopts_its_processes(
    platform: Platform, tmp_path: Path
) -> None:
    deploy(platform, tmp_path)
    replicas = wait_for("2 ready replicas", lambda: ready_replicas(platform, 2), 60)
    hold = tmp_path / "hold"
    assert apply(platform, tmp_path, job("train", args=["--steps", "4", "--hold", str(hold)]))
    worker = wait_for(
        "the worker to run",
        lambda: next(
            (w for w in platform.workers("train") if w["running"] and w["pid"]),
            None,
        ),
        30,
    )
    info = platform.home.read_daemon_info()
    assert info
    os.kill(info["pid"], signal.SIGKILL)
    wait_for("the daemon to be gone", lambda: not pid_alive(info["pid"]), 10)
    # everything it started still runs
    assert serve_pids(platform) == {r["pid"] for r in replicas}
    assert pid_alive(worker["pid"])

    result = platform.cli("up", timeout=60)
    assert result.returncode == 0, result.stderr
    new_info = platform.home.read_daemon_info()
    assert new_info
    assert new_info["pid"] != info["pid"]
    again = wait_for("the adopted replicas to be ready", lambda: ready_replicas(platform, 2), 30)
    assert {r["id"]: r["pid"] for r in again} == {r["id"]: r["pid"] for r in replicas}
    assert predict(platform) == 200
    assert [w["pid"] for w in platform.workers("train") if w["running"]] == [worker["pid"]]
    st = status(platform, "tj", "train")
    assert [(w["rank"], w["phase"]) for w in st["workers"]] == [(0, "Running")]

    hold.touch()
    st = wait_for("the job to finish", lambda: phase_is(platform, "train", "Succeeded"), 60)
    assert st["attempt"] == 1  # the same run went on; it was not restarted
    assert st["restarts"] == 0
    assert results(platform, "train", 1)[0]["work"] == [1, 2, 3, 4]
    # nothing was started twice
    assert serve_pids(platform) == {r["pid"] for r in replicas}
    nodes = json.loads(platform.cli("get", "nodes", "-o", "json").stdout)
    assert sum(len(n["items"]) for n in nodes["items"]) == 2


def test_command_probes_gate_traffic_and_kill_what_fails_them(
    platform: Platform, tmp_path: Path
) -> None:
    gate = tmp_path / "ready-gate"
    alive = tmp_path / "alive"
    alive.touch()
    probes = f"""  probes:
        readiness: {{command: [sh, -c, "test -f {gate}"], period: 500ms}}
        liveness: {{command: [sh, -c, "test -f {alive}"], period: 500ms, failureThreshold: 2}}
    """
    deploy(platform, tmp_path, replicas=1, probes=probes)
    started = wait_for(
        "the replica to run, not ready",
        lambda: next((r for r in platform.replicas("fraud") if r["endpoint"]), None),
        60,
    )
    wait_for("the model server to answer", lambda: _answers(started["endpoint"]), 60)
    # the server answers, but its readiness command fails: no traffic for it
    [replica] = wait_for(
        "the readiness probe to have failed",
        lambda: [
            r
            for r in platform.replicas("fraud")
            if "readiness probe failed: exit code 1" in r["message"]
        ],
        30,
    )
    assert replica["id"] == started["id"]
    assert not replica["ready"]
    st = wait_for(
        "the status to count the replica as starting",
        lambda: (
            (st := status(platform, "md", "fraud")).get("revisions")
            and [(r["ready"], r["starting"]) for r in st["revisions"]] == [(0, 1)]
            and st
        ),
        30,
    )
    assert st["readyReplicas"] == 0
    gate.touch()
    wait_for("the replica to be ready", lambda: ready_replicas(platform, 1), 30)
    assert predict(platform) == 200
    alive.unlink()  # liveness now fails: the replica is killed and replaced

    def replaced() -> list[dict[str, Any]] | None:
        ready = ready_replicas(platform, 1)
        return ready if ready and ready[0]["id"] != started["id"] else None

    alive_again = wait_for("the replica to be killed", lambda: not pid_alive(started["pid"]), 30)
    assert alive_again
    alive.touch()
    wait_for("a new replica to be ready", replaced, 60)


def _answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"http://{endpoint}/v2/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
