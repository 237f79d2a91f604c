"""Train -> register -> deploy -> predict, with real processes, then self-healing and cleanup.

The tests in this module build on each other (one shared control plane) and
run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import EXAMPLE, Platform, pid_alive, wait_for

pytestmark = pytest.mark.integration


def _sample() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLE / "sample-request.json").read_text())
    return data


def _ready(platform: Platform, name: str) -> dict[str, Any] | None:
    obj = platform.get_json("modeldeployments", name)
    conditions = {c["type"]: c["status"] for c in obj["status"].get("conditions", [])}
    return obj if conditions.get("Ready") == "True" else None


def test_train_registers_a_model_version(shared_platform: Platform) -> None:
    p = shared_platform
    applied = p.cli("apply", "-f", str(EXAMPLE / "trainingjob.yaml"))
    assert applied.returncode == 0, applied.stderr
    waited = p.cli("wait", "trainingjob/fraud-train", "--for=condition=Complete", "--timeout=180s")
    assert waited.returncode == 0, (
        waited.stderr + p.cli("describe", "trainingjob", "fraud-train").stdout
    )
    job = p.get_json("trainingjobs", "fraud-train")
    assert job["status"]["phase"] == "Succeeded"
    output = job["status"]["outputModel"]
    assert output["ref"] == "fraud-detector:1"
    assert output["metrics"]["auc"] > 0.85
    manifest = json.loads((p.home.models / "fraud-detector" / "1" / "model.json").read_text())
    assert manifest["framework"] == "sklearn"
    assert manifest["lineage"]["trainingJob"] == "fraud-train"
    assert set(manifest["files"]) >= {"model.joblib", "metrics.json", "signature.json"}
    logs = p.cli("logs", "trainingjob/fraud-train")
    assert logs.returncode == 0
    assert "[4/4]" in logs.stdout


def test_logs_follow_streams(shared_platform: Platform) -> None:
    p = shared_platform
    follower = subprocess.Popen(
        [sys.executable, "-m", "pilothouse", "logs", "trainingjob/fraud-train", "-f"],
        env=p.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen: list[str] = []

        def reached_end() -> bool:
            line = follower.stdout.readline() if follower.stdout else ""
            seen.append(line)
            return "[4/4]" in line

        wait_for("the followed log to reach the end of training", reached_end, timeout=30, every=0)
        assert follower.poll() is None, "logs -f keeps following"
    finally:
        follower.terminate()
        follower.communicate(timeout=10)


def test_deploy_two_replicas_behind_the_router(shared_platform: Platform) -> None:
    p = shared_platform
    applied = p.cli("apply", "-f", str(EXAMPLE / "modeldeployment.yaml"))
    assert applied.returncode == 0, applied.stderr
    waited = p.cli(
        "wait", "modeldeployment/fraud-detector", "--for=condition=Ready", "--timeout=120s"
    )
    assert waited.returncode == 0, waited.stderr
    obj = p.get_json("modeldeployments", "fraud-detector")
    status = obj["status"]
    assert status["readyReplicas"] == 2
    assert status["desiredReplicas"] == 2
    assert status["model"] == "fraud-detector:1"
    assert status["url"].startswith("http://127.0.0.1:")
    assert [(r["desired"], r["ready"]) for r in status["revisions"]] == [(2, 2)]
    replicas = p.replicas("fraud-detector")
    assert all(r["ready"] and r["endpoint"] for r in replicas)
    pids = {r["pid"] for r in replicas}
    assert len(pids) == 2
    assert all(pid_alive(pid) for pid in pids)
    table = p.cli("get", "modeldeployments")
    assert "2/2" in table.stdout
    assert status["url"] in table.stdout


def test_predict_through_cli_and_both_protocols(shared_platform: Platform) -> None:
    p = shared_platform
    result = p.cli("predict", "fraud-detector", "--data", json.dumps(_sample()))
    assert result.returncode == 0, result.stderr
    ordinary, suspicious = json.loads(result.stdout)["predictions"]
    assert 0.0 <= ordinary < 0.2 < 0.5 < suspicious <= 1.0

    url = p.get_json("modeldeployments", "fraud-detector")["status"]["url"]
    names = [
        i["name"]
        for i in json.loads(
            (p.home.models / "fraud-detector" / "1" / "signature.json").read_text()
        )["inputs"]
    ]
    rows = [[inst[n] for n in names] for inst in _sample()["instances"]]
    v2 = httpx.post(
        f"{url}/v2/models/fraud-detector/infer",
        json={
            "inputs": [{"name": "x", "shape": [2, len(names)], "datatype": "FP64", "data": rows}]
        },
    )
    assert v2.status_code == 200
    body = v2.json()
    assert body["model_version"] == "1"
    assert body["outputs"][0]["data"] == pytest.approx([ordinary, suspicious])
    bad = httpx.post(f"{url}/v1/models/fraud-detector:predict", json={"instances": [[1, 2]]})
    assert bad.status_code == 400
    assert "expected 10 features" in bad.json()["error"]
    bad_cli = p.cli("predict", "fraud-detector", "--data", "{oops")
    assert bad_cli.returncode == 2


def _served(endpoint: str) -> float:
    text = httpx.get(f"http://{endpoint}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pilothouse_model_requests_total{") and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_router_spreads_load_over_both_replicas(shared_platform: Platform) -> None:
    p = shared_platform
    status = p.get_json("modeldeployments", "fraud-detector")["status"]
    endpoints = [r["endpoint"] for r in p.replicas("fraud-detector") if r["ready"]]
    assert len(endpoints) == 2
    before = [_served(e) for e in endpoints]
    with httpx.Client(base_url=status["url"]) as client:
        for _ in range(60):
            assert (
                client.post("/v1/models/fraud-detector:predict", json=_sample()).status_code == 200
            )
    after = [_served(e) for e in endpoints]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 60
    assert min(served) >= 10, f"load was not balanced: {served}"
    with p.api() as api:
        exported = api.get("/metrics").text
    routed = [
        line
        for line in exported.splitlines()
        if line.startswith("pilothouse_router_requests_total{")
        and 'deployment="fraud-detector"' in line
        and 'code="200"' in line
    ]
    assert routed, "per-revision router metrics are exported for Prometheus"
    assert sum(float(line.rsplit(" ", 1)[1]) for line in routed) >= 60


def test_killed_replica_is_replaced(shared_platform: Platform) -> None:
    p = shared_platform
    victim, survivor = (r["pid"] for r in p.replicas("fraud-detector"))
    os.kill(victim, signal.SIGKILL)

    def healed() -> bool:
        st = p.get_json("modeldeployments", "fraud-detector")["status"]
        pids = {r["pid"] for r in p.replicas("fraud-detector") if r["ready"]}
        return st["readyReplicas"] == 2 and victim not in pids and survivor in pids

    wait_for("the killed replica to be replaced", healed, timeout=60, every=0.3)
    described = p.cli("describe", "modeldeployment", "fraud-detector")
    assert "ReplicaExited" in described.stdout
    assert p.cli("predict", "fraud-detector", "--data", json.dumps(_sample())).returncode == 0


def test_changing_replica_settings_rolls_the_replicas(shared_platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = shared_platform
    before = p.get_json("modeldeployments", "fraud-detector")["status"]
    old_pids = {r["pid"] for r in p.replicas("fraud-detector")}
    assert len(old_pids) == 2
    spec = tmp_path / "md.yaml"
    spec.write_text(
        (EXAMPLE / "modeldeployment.yaml").read_text() + "  batching:\n    maxBatchSize: 1\n"
    )
    codes: dict[int, int] = {}
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=before["url"], timeout=30) as client:
            for _ in range(20000):  # bounded; stopped once the roll is done
                if stop.is_set():
                    return
                code = client.post("/v1/models/fraud-detector:predict", json=_sample()).status_code
                codes[code] = codes.get(code, 0) + 1

    load = threading.Thread(target=traffic)
    load.start()
    assert p.cli("apply", "-f", str(spec)).returncode == 0

    def rolled() -> list[dict[str, Any]] | None:
        st = p.get_json("modeldeployments", "fraud-detector")["status"]
        replicas = p.replicas("fraud-detector")
        done = (
            st["readyReplicas"] == 2
            and len(replicas) == 2
            and not {r["pid"] for r in replicas} & old_pids
            and {r["revision"] for r in replicas} == {st["revision"]} != {before["revision"]}
        )
        return replicas if done else None

    try:
        after = wait_for("replicas of the new revision", rolled, timeout=90, every=0.3)
    finally:
        stop.set()
        load.join(timeout=30)
    assert set(codes) == {200}, f"a roll under load must not fail a request: {codes}"
    for replica in after:
        argv = Path(f"/proc/{replica['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--max-batch-size") + 1] == b"1"
    assert p.cli("predict", "fraud-detector", "--data", json.dumps(_sample())).returncode == 0
    unchanged = p.cli("apply", "-f", str(spec))
    assert "unchanged" in unchanged.stdout


def test_job_with_missing_command_fails_with_reason(shared_platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = shared_platform
    spec = tmp_path / "broken.yaml"
    spec.write_text(
        """apiVersion: pilothouse.dev/v1alpha1
kind: TrainingJob
metadata: {name: broken}
spec:
  command: [no-such-trainer-binary]
  restartPolicy: {maxRestarts: 1, backoff: {initial: 100ms, max: 200ms}}
"""
    )
    assert p.cli("apply", "-f", str(spec)).returncode == 0
    waited = p.cli("wait", "trainingjob/broken", "--for=condition=Complete", "--timeout=60s")
    assert waited.returncode == 1
    assert "command not found: no-such-trainer-binary" in waited.stderr
    status = p.get_json("trainingjobs", "broken")["status"]
    assert status["phase"] == "Failed"
    assert status["restarts"] == 1


def test_delete_deployment_stops_its_replicas(shared_platform: Platform) -> None:
    p = shared_platform
    status = p.get_json("modeldeployments", "fraud-detector")["status"]
    pids = [r["pid"] for r in p.replicas("fraud-detector")]
    assert len(pids) == 2
    deleted = p.cli("delete", "modeldeployment", "fraud-detector")
    assert deleted.returncode == 0, deleted.stderr
    wait_for("replica processes to exit", lambda: not any(pid_alive(x) for x in pids), timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{status['url']}/v2/health/ready", timeout=2)
    assert p.get_json("modeldeployments")["items"] == []


def test_down_after_daemon_crash_stops_leftovers(shared_platform: Platform) -> None:
    p = shared_platform
    assert p.cli("apply", "-f", str(EXAMPLE / "modeldeployment.yaml")).returncode == 0
    wait_for("redeployed", lambda: _ready(p, "fraud-detector"), timeout=120, every=0.3)
    pids = [r["pid"] for r in p.replicas("fraud-detector")]
    assert len(pids) == 2
    info = p.home.read_daemon_info()
    assert info is not None
    os.kill(info["pid"], signal.SIGKILL)
    wait_for("daemon gone", lambda: not pid_alive(info["pid"]), timeout=10)
    assert all(pid_alive(x) for x in pids), "replicas outlive a crashed daemon until cleaned up"
    down = p.cli("down")
    assert down.returncode == 0
    assert "leftover" in down.stdout
    wait_for("leftover replicas stopped", lambda: not any(pid_alive(x) for x in pids), timeout=30)
