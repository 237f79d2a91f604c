"""TrainingJob: gangs admitted whole, restarted with back-off, queued, preempted, deleted."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from tests.contract.harness import World
from tests.contract.observe import condition, is_true, job

pytestmark = pytest.mark.anyio


def training(
    name: str,
    *,
    workers: int = 2,
    cpu: str = "1",
    queue: str = "default",
    priority: int = 0,
    extra: str = "",
) -> str:
    return f"""
apiVersion: pilothouse.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
spec:
  command: [python, train.py]
  workers: {workers}
  resources: {{cpu: "{cpu}", memory: 1Gi}}
  queue: {queue}
  priority: {priority}
  terminationGracePeriod: 5s
  restartPolicy:
    maxRestarts: 2
    backoff: {{initial: 2s, max: 8s}}
{extra}
"""


QUEUE = """
apiVersion: pilothouse.dev/v1alpha1
kind: Queue
metadata:
  name: small
spec:
  quota: {cpu: "2", memory: 8Gi}
"""


def running(world: World, name: str, attempt: int | None = None) -> bool:
    """The status says the attempt runs, and shows its workers running."""
    current = job(world, name)
    workers = current.get("workers") or []
    return (
        current.get("phase") == "Running"
        and (attempt is None or current.get("attempt") == attempt)
        and bool(workers)
        and all(w.get("phase") == "Running" for w in workers)
    )


async def finish_all(world: World, name: str, workers: int, code: int = 0) -> None:
    for rank in range(workers):
        await world.finish_worker(name, rank, code)


def assert_consistent(current: dict[str, Any]) -> None:
    """Conditions never contradict the phase."""
    phase = current.get("phase")
    conditions = {c["type"]: c for c in current.get("conditions") or []}
    if phase in ("Succeeded", "Failed"):
        # an ended job neither runs nor waits to be placed
        assert not is_true(current, "Running"), conditions
        scheduled = conditions.get("Scheduled")
        assert scheduled is None or scheduled["status"] == "True", conditions
        assert all(c.get("reason") != "Unschedulable" for c in conditions.values()), conditions
    if phase == "Succeeded":
        assert is_true(current, "Complete"), conditions
        failed = conditions.get("Failed")
        assert failed is None or (
            failed["status"] == "False" and failed["reason"] != "Succeeded"
        ), conditions
    if phase == "Failed":
        assert is_true(current, "Failed"), conditions
        assert not is_true(current, "Complete"), conditions
    if phase in ("Succeeded", "Failed"):
        # and neither do its workers: each ended (or never started)
        workers = current.get("workers") or []
        assert all(w.get("phase") in ("Succeeded", "Failed") for w in workers), workers
    if phase in ("Restarting", "Registering"):
        # between attempts, or once every worker ended: nothing runs or is placed
        assert not is_true(current, "Running"), conditions
        assert "Scheduled" not in conditions, conditions
    if phase == "Running":
        assert is_true(current, "Running"), conditions
        assert not is_true(current, "Failed"), conditions
        assert not is_true(current, "Complete"), conditions
    if phase == "Pending":
        assert not is_true(current, "Running"), conditions


async def test_gang_runs_succeeds_and_registers_its_output(world: World) -> None:
    await world.apply(training("train", extra="  output: {model: trained, framework: sklearn}"))
    await world.until(lambda: running(world, "train"), 30, "running")
    current = job(world, "train")
    assert_consistent(current)
    assert current["attempt"] == 1
    assert [w["phase"] for w in current["workers"]] == ["Running", "Running"]
    gang = await world.gang("train")
    assert gang is not None
    assert gang.admitted
    assert gang.count("Running") == 2

    await finish_all(world, "train", 2)
    await world.until(lambda: job(world, "train").get("phase") == "Succeeded", 30, "succeeded")
    current = job(world, "train")
    assert_consistent(current)
    assert current["outputModel"]["name"] == "trained"
    assert current["outputModel"]["ref"] == "trained:1"
    assert current["restarts"] == 0
    assert current.get("completionTime")
    # the registered model serves like any other
    await world.apply(
        """
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: trained}
spec: {model: "trained:latest", replicas: 1}
"""
    )
    await world.until(
        lambda: (
            (world.get("ModelDeployment", "trained") or {}).get("status", {}).get("model")
            == "trained:1"
        ),
        30,
        "serving the trained model",
    )
    await world.advance(world.seconds(10))
    assert job(world, "train")["phase"] == "Succeeded"  # an ended job stays ended
    assert_consistent(job(world, "train"))


async def test_a_job_is_never_said_to_run_before_its_gang_is_placed(world: World) -> None:
    await world.apply(QUEUE)
    await world.apply(training("first", queue="small"))
    await world.until(lambda: running(world, "first"), 30, "first runs")
    seen: list[tuple[str, str, bool]] = []

    def observe() -> bool:
        current = job(world, "second")
        workers = current.get("workers") or []
        placed = bool(workers) and all(w.get("phase") != "Pending" for w in workers)
        seen.append((str(current.get("phase")), str(current.get("attempt")), placed))
        if current.get("phase") == "Running" or is_true(current, "Running"):
            assert placed, f"reported running with workers {workers}: {current}"
        return False

    # the second gang does not fit the queue's quota: it waits the whole time
    await world.apply(training("second", queue="small"))
    end = world.now() + 10
    await world.until(lambda: observe() or world.now() >= end, 11, "10 s observed")
    assert_consistent(job(world, "second"))
    assert job(world, "second")["phase"] == "Pending", seen


async def test_failed_worker_restarts_with_back_off_then_fails(world: World) -> None:
    await world.apply(training("flaky"))
    for attempt in (1, 2, 3):
        await world.until(partial(running, world, "flaky", attempt), 60, f"attempt {attempt} runs")
        assert_consistent(job(world, "flaky"))
        assert job(world, "flaky")["restarts"] == attempt - 1
        await world.finish_worker("flaky", 1, 3)
        if attempt == 3:
            break
        await world.until(
            lambda: job(world, "flaky").get("phase") == "Restarting", 10, "restarting"
        )
        current = job(world, "flaky")
        assert current["restarts"] == attempt
        assert not is_true(current, "Complete")
        assert not is_true(current, "Failed")
        # back-off: 2 s after the first failure, 4 s after the second
        await world.advance(2.0 * 2 ** (attempt - 1) - 1.0)
        assert job(world, "flaky")["attempt"] == attempt, "restarted before its back-off"

    await world.until(lambda: job(world, "flaky").get("phase") == "Failed", 30, "failed")
    current = job(world, "flaky")
    assert current["restarts"] == 2
    assert current["attempt"] == 3
    assert_consistent(current)
    failed = condition(current, "Failed")
    assert failed is not None
    assert "code 3" in failed["message"]
    await world.advance(world.seconds(20))
    current = job(world, "flaky")
    assert current["phase"] == "Failed"
    assert current["attempt"] == 3
    assert_consistent(current)
    assert await world.gang("flaky") is None  # nothing of it runs


async def test_second_gang_waits_for_room_then_runs(world: World) -> None:
    await world.apply(QUEUE)
    await world.apply(training("first", queue="small"))
    await world.until(lambda: running(world, "first"), 30, "first runs")
    await world.apply(training("second", queue="small"))
    await world.advance(5)

    second = job(world, "second")
    assert second["phase"] == "Pending", second
    assert_consistent(second)
    scheduled = condition(second, "Scheduled")
    assert scheduled is not None, second
    assert scheduled["status"] == "False", second
    assert "quota" in second["message"] or "quota" in scheduled["message"], second
    gang = await world.gang("second")
    assert gang is not None
    assert not gang.admitted
    assert gang.waiting
    queue = world.get("Queue", "small")
    assert queue is not None
    assert queue["status"].get("pendingWorkers") == 2
    assert queue["status"].get("runningJobs") == ["first"]

    await finish_all(world, "first", 2)
    await world.until(lambda: running(world, "second"), 30, "second runs")
    await world.until(lambda: job(world, "first")["phase"] == "Succeeded", 5, "first succeeded")
    current = job(world, "second")
    assert current["attempt"] == 1
    assert current["restarts"] == 0
    assert_consistent(current)
    assert is_true(current, "Scheduled")


async def test_higher_priority_gang_preempts_and_the_victim_restarts_free(world: World) -> None:
    # each gang needs 24 of the node's 32 cpus: they cannot run side by side
    await world.apply(training("low", cpu="12", priority=0))
    await world.until(lambda: running(world, "low"), 30, "low runs")

    await world.apply(training("high", cpu="12", priority=100))

    await world.until(
        lambda: job(world, "low").get("disruptions", 0) >= 1, 10, "low disrupted in its status"
    )
    await world.until(lambda: running(world, "high"), 30, "high runs")
    low = job(world, "low")
    assert low["restarts"] == 0, low  # a preemption is not the job's failure
    assert low["disruptions"] == 1, low
    assert low["phase"] in ("Pending", "Restarting"), low
    assert_consistent(low)
    assert any(reason == "Disrupted" for _, reason, _ in world.events("TrainingJob", "low"))

    await finish_all(world, "high", 2)
    await world.until(lambda: running(world, "low", 2), 30, "low runs again")
    low = job(world, "low")
    assert low["restarts"] == 0
    assert low["disruptions"] == 1
    await finish_all(world, "low", 2)
    await world.until(lambda: job(world, "low").get("phase") == "Succeeded", 30, "low done")
    assert_consistent(job(world, "low"))


async def test_delete_waits_for_workers_then_the_job_goes(world: World) -> None:
    await world.apply(training("doomed"))
    await world.until(lambda: running(world, "doomed"), 30, "running")
    await world.delete("TrainingJob", "doomed")
    await world.advance(1)
    found = world.get("TrainingJob", "doomed")
    assert found is not None
    assert found["deleting"] is True

    await world.until(lambda: world.get("TrainingJob", "doomed") is None, 30, "finalized")
    assert await world.gang("doomed") is None


async def test_output_that_cannot_be_registered_fails_the_job(world: World) -> None:
    await world.apply(training("empty", extra="  output: {model: nothing, framework: sklearn}"))
    await world.until(lambda: running(world, "empty"), 30, "running")
    await world.break_output("empty")
    await finish_all(world, "empty", 2)
    await world.until(lambda: job(world, "empty").get("phase") == "Failed", 30, "failed")
    current = job(world, "empty")
    assert_consistent(current)
    assert "outputModel" not in current
    assert "register" in current["message"], current
    assert current["restarts"] == 0  # registering is not retried by restarting the gang


async def test_serving_replicas_preempt_lower_priority_training(world: World) -> None:
    await world.apply(training("batch", cpu="12"))
    await world.until(lambda: running(world, "batch"), 30, "training runs")
    await world.add_model("urgent")
    urgent = """
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata: {name: urgent}
spec:
  model: urgent:1
  replicas: REPLICAS
  priority: 100
  resources: {cpu: "12", memory: 1Gi}
"""
    await world.apply(urgent.replace("REPLICAS", "1"))
    await world.until(
        lambda: (
            (world.get("ModelDeployment", "urgent") or {}).get("status", {}).get("readyReplicas")
            == 1
        ),
        30,
        "the replica serves",
    )
    batch = job(world, "batch")
    assert batch["disruptions"] == 1, batch
    assert batch["restarts"] == 0, batch
    assert batch["phase"] in ("Pending", "Restarting"), batch
    assert_consistent(batch)

    await world.apply(urgent.replace("REPLICAS", "0"))
    await world.until(lambda: running(world, "batch", 2), 60, "training runs again")
    assert job(world, "batch")["restarts"] == 0
