"""Scheduling on (virtual) nodes with real processes: gangs, queues, preemption, node loss.

Every test starts its own control plane on virtual nodes (``pilothouse up --nodes``), so
GPUs can be rehearsed on a machine without any: each virtual node hands out its own GPU
ids through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Platform, pid_alive, wait_for

WORKERS = Path(__file__).parent / "workers"
PY = sys.executable


def start_cluster(platform: Platform, tmp_path: Path, nodes: str) -> Platform:
    path = tmp_path / "nodes.yaml"
    path.write_text(textwrap.dedent(nodes))
    result = platform.cli("up", "--nodes", str(path), timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return platform


def apply(platform: Platform, tmp_path: Path, text: str) -> Any:
    path = tmp_path / f"apply-{abs(hash(text))}.yaml"
    path.write_text(textwrap.dedent(text))
    return platform.cli("apply", "-f", str(path))


def job(
    name: str,
    *,
    args: list[str],
    workers: int = 1,
    gpu: int = 0,
    cpu: str = "500m",
    priority: int = 0,
    queue: str = "default",
    interval: str = "300s",
    max_restarts: int = 0,
    script: str = "steps.py",
) -> str:
    return f"""
    apiVersion: pilothouse.dev/v1alpha1
    kind: TrainingJob
    metadata: {{name: {name}}}
    spec:
      command: [{PY}, {WORKERS / script}]
      args: {json.dumps(args)}
      workers: {workers}
      queue: {queue}
      priority: {priority}
      resources: {{cpu: "{cpu}", memory: 256Mi, gpu: {gpu}}}
      checkpoint: {{interval: {interval}}}
      terminationGracePeriod: 20s
      restartPolicy: {{maxRestarts: {max_restarts}, backoff: {{initial: 1s, max: 2s}}}}
    """


def status(platform: Platform, kind: str, name: str) -> dict[str, Any]:
    return platform.get_json(kind, name).get("status") or {}


def phase_is(platform: Platform, name: str, phase: str) -> dict[str, Any] | None:
    st = status(platform, "tj", name)
    return st if st.get("phase") == phase else None


def placed_nowhere(platform: Platform, name: str) -> dict[str, Any] | None:
    """The job's status once every worker waits and the scheduler has said why."""
    st = status(platform, "tj", name)
    workers = st.get("workers") or []
    if (
        workers
        and all(w["phase"] == "Pending" for w in workers)
        and "waiting to be placed:" in st["message"]
    ):
        return st
    return None


def running_workers(platform: Platform, name: str) -> list[dict[str, Any]]:
    """The job's workers (its pods) that run now."""
    return [w for w in platform.workers(name) if w["running"]]


def output_dir(platform: Platform, name: str, attempt: int) -> Path:
    """Where the attempt of the job (this incarnation of the name) writes its output."""
    uid = platform.get_json("tj", name)["metadata"]["uid"]
    return platform.home.root / "outputs" / f"{name}-{uid[:8]}" / f"attempt-{attempt}"


def nodes_view(platform: Platform) -> dict[str, Any]:
    result = platform.cli("get", "nodes", "-o", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def events(platform: Platform, kind: str, name: str) -> list[dict[str, Any]]:
    with platform.api() as api:
        plural = {"tj": "trainingjobs", "md": "modeldeployments"}[kind]
        response = api.get(f"/apis/pilothouse.dev/v1alpha1/{plural}/{name}/events")
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def results(platform: Platform, name: str, attempt: int) -> dict[int, dict[str, Any]]:
    [folder] = (platform.home.root / "outputs").glob(f"{name}-*/attempt-{attempt}")
    return {
        int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in folder.glob("result-*.json")
    }


THREE_GPU_NODES = """
nodes:
  - name: gpu
    count: 3
    cpu: 4
    memory: 8Gi
    gpu: 2
"""


def test_gang_ranks_meet_through_master_addr_across_nodes(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    result = apply(
        platform, tmp_path, job("meet", args=[], workers=3, gpu=2, script="rendezvous.py")
    )
    assert result.returncode == 0, result.stderr

    st = wait_for("the gang to finish", lambda: phase_is(platform, "meet", "Succeeded"), 60)
    assert st["restarts"] == 0
    folder = output_dir(platform, "meet", st["attempt"])
    ranks = {r: json.loads((folder / f"rank-{r}.json").read_text()) for r in range(3)}
    # every rank learnt every other rank's node through rank 0's MASTER_ADDR:MASTER_PORT
    nodes = {r: ranks[r]["env"]["PILOTHOUSE_NODE"] for r in range(3)}
    assert sorted(nodes.values()) == ["gpu-0", "gpu-1", "gpu-2"]  # 2 GPUs each: one per node
    for r in range(3):
        assert ranks[r]["peers"] == {str(k): v for k, v in nodes.items()}
        env = ranks[r]["env"]
        assert env["RANK"] == str(r)
        assert env["WORLD_SIZE"] == "3"
        assert env["LOCAL_RANK"] == "0"
        assert env["LOCAL_WORLD_SIZE"] == "1"
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert env["MASTER_PORT"] == ranks[0]["env"]["MASTER_PORT"]
        assert env["MASTER_ADDR"] == "127.0.0.1"
    assert {w["node"] for w in st["workers"]} == set(nodes.values())


def test_gang_is_all_or_nothing_and_starts_when_room_frees(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    hold = tmp_path / "release-a"
    first = job("first", args=["--steps", "3", "--hold", str(hold)], workers=2, gpu=2)
    assert apply(platform, tmp_path, first).returncode == 0
    wait_for(
        "both workers of 'first' to run",
        lambda: (
            (st := status(platform, "tj", "first")).get("workers")
            and all(w["phase"] == "Running" for w in st["workers"])
            and len(st["workers"]) == 2
            and len(running_workers(platform, "first")) == 2
        ),
        30,
    )
    second = job("second", args=["--steps", "3"], workers=2, gpu=2)
    assert apply(platform, tmp_path, second).returncode == 0

    st = wait_for("'second' to wait for room", lambda: placed_nowhere(platform, "second"), 30)
    assert len(st["workers"]) == 2
    # one node is free, but a gang of two does not start half of itself
    assert "only 1 fit" in st["message"]
    waiting = platform.workers("second")
    assert len(waiting) == 2
    assert all(w["pending"] and w["pid"] is None and w["node"] is None for w in waiting)
    view = nodes_view(platform)
    assert {p["owner"] for p in view["pending"]} == {"TrainingJob/second"}
    assert sum(len(n["items"]) for n in view["items"]) == 2
    scheduled = [c for c in st["conditions"] if c["type"] == "Scheduled"]
    assert scheduled[0]["status"] == "False"
    assert scheduled[0]["reason"] == "Unschedulable"
    # it is not running: phase, condition and `wait` all say so
    assert st["phase"] == "Pending"
    assert "startTime" not in st
    running = [c for c in st["conditions"] if c["type"] == "Running"]
    assert running[0]["status"] == "False"
    waited = platform.cli("wait", "trainingjob/second", "--for=condition=Running", "--timeout=1s")
    assert waited.returncode != 0
    table = platform.cli("get", "tj", "second").stdout
    assert "Pending" in table.splitlines()[1]
    assert any(e["reason"] == "FailedScheduling" for e in events(platform, "tj", "second"))

    hold.touch()
    wait_for("'first' to finish", lambda: phase_is(platform, "first", "Succeeded"), 60)
    st = wait_for("'second' to finish", lambda: phase_is(platform, "second", "Succeeded"), 60)
    assert st["restarts"] == 0
    assert sorted(results(platform, "second", 1)) == [0, 1]


def test_higher_priority_job_preempts_training_that_resumes_from_its_checkpoint(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    hold = tmp_path / "never"  # the low job waits at step 5 until it is preempted
    low = job(
        "low",
        args=["--steps", "12", "--step-time", "0.05", "--hold", str(hold), "--hold-at", "5"],
        workers=3,
        gpu=2,
    )
    assert apply(platform, tmp_path, low).returncode == 0
    wait_for(
        "the low-priority gang to fill the cluster",
        lambda: len(running_workers(platform, "low")) == 3,
        30,
    )
    urgent = job("urgent", args=["--steps", "3"], workers=1, gpu=2, priority=100)
    assert apply(platform, tmp_path, urgent).returncode == 0

    wait_for("the urgent job to finish", lambda: phase_is(platform, "urgent", "Succeeded"), 90)
    preempted = [e for e in events(platform, "tj", "low") if e["reason"] == "Preempted"]
    assert preempted
    assert "TrainingJob/urgent" in preempted[0]["message"]
    assert "priority 100 > 0" in preempted[0]["message"]

    hold.touch()  # from now on the low job may finish
    st = wait_for("the low job to finish", lambda: phase_is(platform, "low", "Succeeded"), 90)
    # preemption is a disruption, not a failure of the job
    assert st["restarts"] == 0
    assert st["disruptions"] >= 1
    assert st["attempt"] >= 2
    final = results(platform, "low", st["attempt"])
    # it went on from the checkpoint saved on SIGTERM at step 5: each step done exactly once
    assert final[0]["work"] == list(range(1, 13))
    log = (platform.home.root / "logs" / "trainingjobs" / "low" / "worker-0.log").read_text()
    assert "stopped at step 5; checkpoint saved" in log
    assert "resumed from step 5" in log


def test_failed_node_moves_replicas_and_training_elsewhere(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    from tests.integration.rollout_models import register_v1

    platform = start_cluster(
        fresh_platform,
        tmp_path,
        """
        nodes:
          - {name: a, cpu: 2, memory: 4Gi}
          - {name: b, cpu: 2, memory: 4Gi}
        """,
    )
    register_v1(platform.home.root / "models")
    deployment = """
    apiVersion: pilothouse.dev/v1alpha1
    kind: ModelDeployment
    metadata: {name: fraud}
    spec: {model: "fraud:1", replicas: 2}
    """
    assert apply(platform, tmp_path, deployment).returncode == 0

    def replicas_on_both() -> dict[str, str] | None:
        placed = {r["node"]: r["id"] for r in platform.replicas("fraud") if r["ready"]}
        return placed if set(placed) == {"a", "b"} else None

    placed = wait_for("one ready replica on each node", replicas_on_both, 60)
    train = job(
        "train",
        args=["--steps", "40", "--step-time", "0.1"],
        cpu="1",
        interval="0.5s",
    )
    assert apply(platform, tmp_path, train).returncode == 0
    worker = wait_for(
        "the worker to checkpoint",
        lambda: next(
            (
                w
                for w in running_workers(platform, "train")
                if w["pid"] and list((platform.home.root / "checkpoints").glob("train-*/step-*"))
            ),
            None,
        ),
        30,
    )
    lost = worker["node"]
    survivor = "b" if lost == "a" else "a"
    result = platform.cli("node", "fail", lost, "--yes")
    assert result.returncode == 0, result.stderr
    assert "failed" in result.stdout
    assert not pid_alive(worker["pid"])

    def moved() -> list[dict[str, Any]] | None:
        replicas = platform.replicas("fraud")
        ready = [r for r in replicas if r["ready"]]
        if len(ready) == 2 and all(r["node"] == survivor for r in ready):
            return replicas
        return None

    replicas = wait_for("both replicas to serve from the surviving node", moved, 60)
    assert placed[lost] not in {r["id"] for r in replicas}
    wait_for(
        "the status to say both serve from the surviving node",
        lambda: (
            [
                (r["ready"], r["nodes"])
                for r in status(platform, "md", "fraud").get("revisions") or []
            ]
            == [(2, [survivor])]
        ),
        30,
    )
    st = wait_for(
        "the job to finish elsewhere", lambda: phase_is(platform, "train", "Succeeded"), 90
    )
    assert st["restarts"] == 0
    assert st["disruptions"] == 1
    assert {w["node"] for w in st["workers"]} == {survivor}
    final = results(platform, "train", st["attempt"])
    assert final[0]["work"] == list(range(1, 41))
    log = (platform.home.root / "logs" / "trainingjobs" / "train" / "worker-0.log").read_text()
    assert "resumed from step" in log
    view = {n["name"]: n for n in nodes_view(platform)["items"]}
    assert view[lost]["state"] == "Lost"
    assert view[lost]["items"] == []
    # nothing is placed on a lost node until it is back
    assert platform.cli("node", "uncordon", lost).returncode == 0
    assert {n["name"]: n["state"] for n in nodes_view(platform)["items"]}[lost] == "Ready"


def test_drain_evicts_gracefully_and_cordons(fresh_platform: Platform, tmp_path: Path) -> None:
    platform = start_cluster(
        fresh_platform,
        tmp_path,
        """
        nodes:
          - {name: a, cpu: 2, memory: 4Gi}
          - {name: b, cpu: 2, memory: 4Gi}
        """,
    )
    hold = tmp_path / "hold"
    train = job("train", args=["--steps", "8", "--hold", str(hold), "--hold-at", "3"], cpu="1500m")
    assert apply(platform, tmp_path, train).returncode == 0
    worker = wait_for(
        "the worker to run",
        lambda: next(iter(running_workers(platform, "train")), None),
        30,
    )
    node = worker["node"]
    result = platform.cli("node", "drain", node)
    assert result.returncode == 0, result.stderr
    assert "evicted" in result.stdout
    hold.touch()
    st = wait_for("the job to finish", lambda: phase_is(platform, "train", "Succeeded"), 90)
    other = "b" if node == "a" else "a"
    assert {w["node"] for w in st["workers"]} == {other}
    assert st["restarts"] == 0
    assert st["disruptions"] == 1
    log = (platform.home.root / "logs" / "trainingjobs" / "train" / "worker-0.log").read_text()
    # SIGTERM first: the worker saved its checkpoint before it went
    assert "stopped at step 3; checkpoint saved" in log
    assert "resumed from step 3" in log
    view = {n["name"]: n for n in nodes_view(platform)["items"]}
    assert view[node]["state"] == "Cordoned"
    # a cordoned node takes nothing new: a job needing both nodes' room waits
    big = job("big", args=["--steps", "1"], cpu="1500m", workers=2)
    assert apply(platform, tmp_path, big).returncode == 0
    st = wait_for(
        "'big' to wait",
        lambda: placed_nowhere(platform, "big"),
        30,
    )
    assert "cordoned" in st["message"]
    assert platform.cli("node", "uncordon", node).returncode == 0
    wait_for("'big' to finish", lambda: phase_is(platform, "big", "Succeeded"), 60)


def test_queue_quota_holds_jobs_until_its_room_frees(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    queue = """
    apiVersion: pilothouse.dev/v1alpha1
    kind: Queue
    metadata: {name: research}
    spec: {quota: {gpu: 2}}
    """
    hold = tmp_path / "hold"
    one = job("one", args=["--steps", "2", "--hold", str(hold)], gpu=2, queue="research")
    two = job("two", args=["--steps", "2"], gpu=2, queue="research")
    assert apply(platform, tmp_path, queue + "---" + one).returncode == 0
    wait_for(
        "'one' to run",
        lambda: running_workers(platform, "one"),
        30,
    )
    assert apply(platform, tmp_path, two).returncode == 0
    st = wait_for(
        "'two' to wait for its queue",
        lambda: placed_nowhere(platform, "two"),
        30,
    )
    assert "queue 'research' quota" in st["message"]
    assert "gpu 2 in use of 2" in st["message"]
    queue_status = wait_for(
        "the queue's usage",
        lambda: (q := status(platform, "queue", "research")).get("used", {}).get("gpu") == 2 and q,
        20,
    )
    assert queue_status["pendingWorkers"] == 1
    assert queue_status["runningJobs"] == ["one"]
    hold.touch()
    wait_for("'two' to finish", lambda: phase_is(platform, "two", "Succeeded"), 60)


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        (job("huge", args=[], gpu=4), "spec.resources", ["gpu 4", "largest node has gpu 2"]),
        (job("wide", args=[], workers=4, gpu=2), "spec.workers", ["gang of 4", "at most 3"]),
        (job("lost", args=[], queue="nope"), "spec.queue", ["queue 'nope' does not exist"]),
        (job("zero", args=[], cpu="0"), "spec.resources.cpu", ["greater than zero", "'0'"]),
        (
            job("neg", args=[]).replace("memory: 256Mi", "memory: -1Gi"),
            "spec.resources.memory",
            ["greater than zero", "-1Gi"],
        ),
        (job("gpus", args=[], gpu=-1), "spec.resources.gpu", ["greater than or equal to 0"]),
    ],
    ids=[
        "larger-than-any-node",
        "gang-larger-than-cluster",
        "unknown-queue",
        "zero-cpu",
        "negative-memory",
        "negative-gpu",
    ],
)
def test_impossible_requests_are_refused_at_apply(
    fresh_platform: Platform, tmp_path: Path, document: str, field: str, words: list[str]
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    result = apply(platform, tmp_path, document)
    assert result.returncode != 0
    assert field in result.stderr
    for word in words:
        assert word in result.stderr
    assert "nothing" in result.stderr
    assert "applied" in result.stderr
    assert platform.get_json("tj")["items"] == []


def test_a_command_that_does_not_exist_fails_after_its_restarts(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    text = job("typo", args=[], max_restarts=2).replace(f"[{PY}, ", "[no-such-trainer-x, ")
    assert apply(platform, tmp_path, text).returncode == 0
    st = wait_for("the job to fail", lambda: phase_is(platform, "typo", "Failed"), 60)
    assert st["restarts"] == 2
    assert "command not found: no-such-trainer-x" in st["message"]
    # nothing holds room after it failed
    assert all(n["items"] == [] for n in nodes_view(platform)["items"])
    assert nodes_view(platform)["pending"] == []


def test_machine_node_by_default(platform: Platform) -> None:
    view = nodes_view(platform)
    assert len(view["items"]) == 1
    node = view["items"][0]
    assert node["state"] == "Ready"
    assert node["virtual"] is False
    cores = os.sched_getaffinity(0)
    assert node["capacity"]["cpu"] == str(len(cores))


def test_a_job_its_queue_could_never_hold_is_refused_and_a_used_queue_stays(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    queue = """
    apiVersion: pilothouse.dev/v1alpha1
    kind: Queue
    metadata: {name: research}
    spec: {quota: {gpu: 2}}
    """
    too_big = job("too-big", args=[], workers=2, gpu=2, queue="research")
    result = apply(platform, tmp_path, queue + "---" + too_big)
    assert result.returncode != 0
    assert "spec.workers" in result.stderr
    assert "gpu 4 in all but queue 'research' allows 2" in result.stderr
    assert platform.get_json("queues")["items"] == []  # nothing of the batch was stored

    hold = tmp_path / "hold"
    fits = job("fits", args=["--steps", "2", "--hold", str(hold)], gpu=2, queue="research")
    assert apply(platform, tmp_path, queue + "---" + fits).returncode == 0
    refused = platform.cli("delete", "queue", "research")
    assert refused.returncode != 0
    assert "in use by trainingjob(s) fits" in refused.stderr
    hold.touch()
    wait_for("'fits' to finish", lambda: phase_is(platform, "fits", "Succeeded"), 60)
    assert platform.cli("delete", "queue", "research").returncode == 0


SLOW_TO_STOP = """
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["PILOTHOUSE_OUTPUT_DIR"])
def stop(*_):
    time.sleep(2)  # a long checkpoint
    (out / "who.txt").write_text("old")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(out / "started").write_text("")
while True:
    time.sleep(0.1)
"""


def test_a_job_deleted_and_applied_again_at_once_is_a_new_job(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    platform = start_cluster(fresh_platform, tmp_path, THREE_GPU_NODES)
    script = tmp_path / "slow.py"
    script.write_text(SLOW_TO_STOP)

    def spec(command: str) -> str:
        return f"""
        apiVersion: pilothouse.dev/v1alpha1
        kind: TrainingJob
        metadata: {{name: again}}
        spec:
          command: {command}
          resources: {{cpu: 500m, memory: 128Mi}}
          restartPolicy: {{maxRestarts: 0}}
        """

    assert apply(platform, tmp_path, spec(f"[{PY}, {script}]")).returncode == 0
    old = wait_for(
        "the first job to run",
        lambda: next(
            (
                w
                for w in platform.workers("again")
                if w["outputDir"] and (Path(w["outputDir"]) / "started").exists()
            ),
            None,
        ),
        30,
    )
    assert Path(old["outputDir"]) == output_dir(platform, "again", 1)
    assert platform.cli("delete", "tj", "again").returncode == 0
    write_new = f'[{PY}, -c, "import os, pathlib; pathlib.Path(os.environ[\\"PILOTHOUSE_OUTPUT_DIR\\"], \\"who.txt\\").write_text(\\"new\\")"]'
    wait_for(
        "the deletion to be done",
        lambda: platform.cli("apply", "-f", str(_write(tmp_path, spec(write_new)))).returncode == 0,
        30,
    )
    st = wait_for("the new job to finish", lambda: phase_is(platform, "again", "Succeeded"), 60)
    assert st["restarts"] == 0
    assert output_dir(platform, "again", st["attempt"]) != Path(old["outputDir"])
    new_out = output_dir(platform, "again", st["attempt"]) / "who.txt"
    old_out = Path(old["outputDir"]) / "who.txt"
    wait_for("the old worker to have checkpointed", old_out.exists, 30)
    assert old_out.read_text() == "old"
    assert new_out.read_text() == "new"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "again.yaml"
    path.write_text(textwrap.dedent(text))
    return path
