"""The in-memory ports themselves (``pilothouse.runtime.memory``): they must behave like
the backends they stand in for, or the contract suite proves nothing."""

from __future__ import annotations

import pytest

from pilothouse.policy.scheduler import NodeInfo
from pilothouse.policy.scheduler import Resources as PolicyResources
from pilothouse.ports.dataplane import Traffic
from pilothouse.ports.state import ModelUnavailable
from pilothouse.ports.workload import (
    GangTemplate,
    MemberPhase,
    ReplicaTemplate,
    Resources,
    RevisionTarget,
    TrainingOutput,
)
from pilothouse.runtime.memory import (
    MemoryDataPlane,
    MemoryRegistry,
    MemoryState,
    MemoryWorkload,
    ReplicaBehaviour,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def template(model: str = "m:1", cpu: int = 1000, grace: float = 5.0) -> ReplicaTemplate:
    return ReplicaTemplate(
        deployment="d",
        model=model,
        model_name=model.split(":")[0],
        resources=Resources(cpu=cpu),
        grace=grace,
    )


def gang(
    job: str, attempt: int = 1, workers: int = 2, cpu: int = 1000, **kw: object
) -> GangTemplate:
    return GangTemplate(
        job=job,
        uid=f"uid-{job}",
        attempt=attempt,
        workers=workers,
        command=("train",),
        resources=Resources(cpu=cpu),
        grace=5.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_replicas_go_pending_starting_ready_within_node_capacity() -> None:
    clock = Clock()
    node = NodeInfo("n", PolicyResources(cpu=2500, memory=2**30))
    workload = MemoryWorkload(clock, nodes=[node], start_seconds=2.0)
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(), 3)})
    [state] = await workload.revisions("d")
    assert (state.desired, state.ready, state.starting, state.pending) == (3, 0, 2, 1)
    assert state.reason == "Unschedulable"
    assert "cpu" in state.message  # why the third waits
    clock.now += 2.0
    [state] = await workload.revisions("d")
    assert (state.ready, state.starting, state.pending) == (2, 0, 1)
    assert state.nodes == ("n",)
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(), 2)})
    [state] = await workload.revisions("d")
    assert (state.ready, state.pending) == (2, 0)
    assert state.reason == ""


async def test_revisions_not_named_drain_then_go() -> None:
    clock = Clock()
    workload = MemoryWorkload(clock)
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(), 2)})
    clock.now += 2.0
    await workload.apply_revisions("d", {"r2": RevisionTarget(template("m:2"), 1)})
    old, new = await workload.revisions("d")
    assert (old.revision, old.desired, old.ready) == ("r1", 0, 0)  # drained at once
    assert new.revision == "r2"
    assert workload.ready_replicas("d") == {}
    clock.now += 5.0  # the grace period
    assert [r.revision for r in await workload.revisions("d")] == ["r2"]
    assert workload.ready_replicas("d") == {"r2": 1}


async def test_a_crashed_ready_replica_is_replaced_at_once() -> None:
    clock = Clock()
    workload = MemoryWorkload(clock)
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(), 2)})
    clock.now += 2.0
    workload.crash("d", "r1", 1)
    [state] = await workload.revisions("d")
    assert (state.ready, state.starting, state.restarts, state.failed) == (1, 1, 1, 0)
    assert not state.crash_looping


async def test_a_crash_loop_backs_off() -> None:
    clock = Clock()
    workload = MemoryWorkload(clock)
    workload.set_behaviour("m:1", ReplicaBehaviour(crash_after=1.0))
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(), 1)})
    restarts = []
    for _ in range(120):
        clock.now += 0.5
        [state] = await workload.revisions("d")
        restarts.append(state.restarts)
    assert state.crash_looping
    assert state.ready == 0
    # without a back-off: a restart every second (~60); with it: 1 s, 2 s, 4 s, … apart
    assert 4 <= restarts[-1] <= 8, restarts
    assert workload.next_change() is not None


async def test_gangs_are_admitted_whole_and_the_later_waits() -> None:
    clock = Clock()
    node = NodeInfo("n", PolicyResources(cpu=3000, memory=2**30))
    workload = MemoryWorkload(clock, nodes=[node])
    await workload.apply_gang(gang("a"))
    await workload.apply_gang(gang("b"))
    a, b = await workload.gang("a"), await workload.gang("b")
    assert a is not None
    assert a.admitted
    assert a.count(MemberPhase.RUNNING) == 2
    assert b is not None
    assert not b.admitted
    assert b.waiting
    assert b.count(MemberPhase.PENDING) == 2  # not one of its two workers started
    usage = (await workload.queue_usage())["default"]
    assert usage.running_jobs == ("a",)
    assert usage.pending_workers == 2
    workload.finish("a", 0)
    workload.finish("a", 1)
    b = await workload.gang("b")
    assert b is not None
    assert b.admitted


async def test_preemption_marks_the_victim_disrupted() -> None:
    clock = Clock()
    node = NodeInfo("n", PolicyResources(cpu=3000, memory=2**30))
    workload = MemoryWorkload(clock, nodes=[node])
    await workload.apply_gang(gang("low"))
    await workload.apply_gang(gang("high", priority=10))
    low, high = await workload.gang("low"), await workload.gang("high")
    assert low is not None
    assert low.disrupted
    assert high is not None
    assert not high.admitted
    clock.now += 5.0
    high = await workload.gang("high")
    assert high is not None
    assert high.admitted
    low = await workload.gang("low")
    assert low is not None
    assert {m.exit_code for m in low.members} == {143}


async def test_output_registered_once_with_versions_per_name() -> None:
    clock = Clock()
    registry = MemoryRegistry()
    registry.add("trained")
    workload = MemoryWorkload(clock, registry=registry)
    await workload.apply_gang(gang("t", workers=1, output=TrainingOutput("trained")))
    workload.finish("t", 0)
    done = await workload.gang("t")
    assert done is not None
    assert done.output is not None
    assert done.output.ref == "trained:2"
    assert await workload.gang("t") == done  # registered once
    assert await workload.delete_gang("t")
    assert await workload.gang("t") is None
    await workload.apply_gang(gang("u", workers=1, output=TrainingOutput("x")))
    workload.fail_output("u", "empty folder")
    workload.finish("u", 0)
    failed = await workload.gang("u")
    assert failed is not None
    assert failed.output is None
    assert failed.output_error == "empty folder"


async def test_delete_is_true_only_once_everything_stopped() -> None:
    clock = Clock()
    workload = MemoryWorkload(clock)
    await workload.apply_revisions("d", {"r1": RevisionTarget(template(grace=5.0), 1)})
    clock.now += 2.0
    assert not await workload.delete_deployment("d")
    clock.now += 4.0
    assert not await workload.delete_deployment("d")
    clock.now += 1.0
    assert await workload.delete_deployment("d")
    assert await workload.revisions("d") == []
    await workload.apply_gang(gang("g"))
    assert not await workload.delete_gang("g")
    clock.now += 5.0
    assert await workload.delete_gang("g")


async def test_data_plane_measures_each_second_split_by_weights() -> None:
    clock = Clock()
    ready = {"a": 1, "b": 1}
    plane = MemoryDataPlane(clock, ready=lambda _: dict(ready))
    url = await plane.set_traffic("d", Traffic(weights={"a": 75.0, "b": 25.0}))
    assert url == "http://memory/d"
    plane.offer("d", 100)
    plane.set_error_rate("d", "b", 0.5)
    clock.now += 3.0
    load = await plane.load("d", since=clock.now - 2.0)
    assert [s.requests for s in load.revisions["a"]] == [75, 75]
    assert [(s.requests, s.errors) for s in load.revisions["b"]] == [(25, 12), (25, 12)]
    assert plane.shares("d") == {"a": 75.0, "b": 25.0}
    # nothing ready, and the endpoint holds requests: they queue (scale from zero)
    ready.clear()
    await plane.set_traffic("d", Traffic(weights={"a": 100.0}, hold_when_empty=True))
    clock.now += 1.0
    assert (await plane.load("d", since=clock.now - 0.5)).queued == 100
    await plane.remove("d")
    assert (await plane.load("d", since=0)).revisions == {}


async def test_state_generation_deletion_and_model_references() -> None:
    clock = Clock()
    state = MemoryState(clock)
    first = state.apply("ModelDeployment", "d", {"model": "m"})
    assert first.generation == 1
    state.set_status("ModelDeployment", "d", {"ready": True})
    assert state.apply("ModelDeployment", "d", {"model": "m"}).generation == 1
    again = state.apply("ModelDeployment", "d", {"model": "m:2"})
    assert again.generation == 2
    assert again.status == {"ready": True}  # a spec change keeps the status
    assert state.requests("ModelDeployment", "d") == {"appliedBy": "test"}
    state.delete("ModelDeployment", "d")
    found = state.get("ModelDeployment", "d")
    assert found is not None
    assert found.deleting
    state.finalize("ModelDeployment", "d")
    assert state.get("ModelDeployment", "d") is None

    state.add_model("m", framework="sklearn")
    state.add_model("m", stage="production")
    state.add_model("m")
    assert (await state.resolve_model("m")).version == 3
    assert (await state.resolve_model("m:latest")).version == 3
    assert (await state.resolve_model("m:1")).ref == "m:1"
    assert (await state.resolve_model("m@production")).version == 2
    with pytest.raises(ModelUnavailable):
        await state.resolve_model("m@staging")
    with pytest.raises(ModelUnavailable):
        await state.resolve_model("other")
