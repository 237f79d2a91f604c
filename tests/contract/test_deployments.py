"""ModelDeployment: replicas converge, heal, scale on load, and go away on delete."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.harness import World
from tests.contract.observe import condition, deployment, is_true, revision

pytestmark = pytest.mark.anyio


def serving(name: str, model: str, replicas: str = "2", extra: str = "") -> str:
    return f"""
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}
spec:
  model: {model}
  replicas: {replicas}
  resources: {{cpu: 250m, memory: 256Mi}}
  terminationGracePeriod: 5s
{extra}
"""


async def ready_replicas(world: World, name: str) -> int:
    return sum(r.ready for r in await world.revisions(name))


async def alive_replicas(world: World, name: str) -> int:
    return sum(r.ready + r.starting + r.pending for r in await world.revisions(name))


async def test_static_replicas_scale_up_and_down(world: World) -> None:
    ref = await world.add_model("fraud")
    await world.apply(serving("fraud", "fraud:latest", "2"))
    await world.until(lambda: is_true(deployment(world, "fraud"), "Ready"), 30, "Ready")
    current = deployment(world, "fraud")
    assert current["readyReplicas"] == 2
    assert current["desiredReplicas"] == 2
    assert current["model"] == ref
    assert current["url"]
    assert is_true(current, "Available")
    assert [(r.revision, r.ready) for r in await world.revisions("fraud")] == [
        (current["revision"], 2)
    ]
    assert world.weights("fraud") == {current["revision"]: 100.0}

    await world.apply(serving("fraud", "fraud:latest", "4"))
    await world.until(
        lambda: deployment(world, "fraud")["readyReplicas"] == 4, 30, "scaled up to 4"
    )
    assert is_true(deployment(world, "fraud"), "Ready")
    assert deployment(world, "fraud")["revision"] == current["revision"]  # no new revision

    await world.apply(serving("fraud", "fraud:latest", "1"))

    async def one_left() -> bool:
        return await alive_replicas(world, "fraud") == 1

    await world.until(one_left, 30, "scaled down to 1")
    await world.until(lambda: deployment(world, "fraud")["readyReplicas"] == 1, 10, "status says 1")
    current = deployment(world, "fraud")
    assert current["desiredReplicas"] == 1
    assert is_true(current, "Ready")


async def test_model_not_registered_waits_then_serves(world: World) -> None:
    await world.apply(serving("late", "late-model:latest", "1"))
    await world.advance(5)
    current = deployment(world, "late")
    ready = condition(current, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "ModelNotFound"
    assert await world.revisions("late") == []
    ref = await world.add_model("late-model")
    await world.until(lambda: is_true(deployment(world, "late"), "Ready"), 30, "Ready")
    assert deployment(world, "late")["model"] == ref


async def test_crashed_ready_replica_is_replaced_at_once(world: World) -> None:
    await world.add_model("fraud")
    await world.apply(serving("fraud", "fraud:1", "2"))
    await world.until(lambda: is_true(deployment(world, "fraud"), "Ready"), 30, "Ready")
    rev = deployment(world, "fraud")["revision"]

    await world.crash_replicas("fraud", rev, 1)

    async def replaced() -> bool:
        return await alive_replicas(world, "fraud") == 2

    # a replica that served and died is replaced without a back-off
    await world.until(replaced, 1, "a replacement started")
    await world.until(
        lambda: (
            deployment(world, "fraud")["readyReplicas"] == 2
            and revision(deployment(world, "fraud"), rev).get("restarts") == 1
        ),
        10,
        "two ready again, one restart in the status",
    )
    current = deployment(world, "fraud")
    assert revision(current, rev)["crashLooping"] is False
    assert is_true(current, "Ready")


async def test_crash_loop_backs_off_and_shows_in_status(world: World) -> None:
    await world.add_model("broken", broken=True)
    await world.apply(serving("broken", "broken:1", "1"))

    def serving_revision() -> dict[str, Any]:
        current = deployment(world, "broken")
        return revision(current, str(current.get("revision", "")))

    await world.until(
        lambda: serving_revision().get("crashLooping", False), 30, "crash looping in status"
    )
    looping: list[bool] = []
    end = world.now() + 60

    def watched() -> bool:
        looping.append(bool(serving_revision().get("crashLooping")))
        return world.now() >= end

    await world.until(watched, 61, "a minute watched")
    rev = serving_revision()
    # a restart per second would be ~60; the back-off doubles 1s, 2s, 4s, … so far fewer,
    # and the revision spends most of the minute backing off
    assert 3 <= rev["restarts"] <= 10, rev
    assert sum(looping) > len(looping) / 2, looping
    assert rev["ready"] == 0
    current = deployment(world, "broken")
    assert current["readyReplicas"] == 0
    ready = condition(current, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert not is_true(current, "Available")

    # the spec moves to a version that loads: it rolls out, the loop is over
    await world.add_model("broken")
    await world.apply(serving("broken", "broken:2", "1"))
    await world.until(lambda: is_true(deployment(world, "broken"), "Ready"), 60, "fixed")
    current = deployment(world, "broken")
    assert current["model"] == "broken:2"
    assert [r["crashLooping"] for r in current["revisions"]] == [False]


AUTOSCALING = """
  autoscaling:
    metric: rps
    target: 10
    stableWindow: 10s
    panicWindow: 2s
    scaleToZeroGrace: 10s
"""


async def test_autoscaling_follows_rps(world: World) -> None:
    await world.add_model("rec")
    await world.apply(serving("rec", "rec:1", "{min: 1, max: 6}", AUTOSCALING))
    await world.until(lambda: is_true(deployment(world, "rec"), "Ready"), 30, "Ready")
    assert deployment(world, "rec")["readyReplicas"] == 1

    await world.offer_load("rec", 38)  # 38 rps / 10 per replica -> 4
    await world.until(lambda: deployment(world, "rec")["readyReplicas"] == 4, 60, "up to 4")
    await world.advance(world.seconds(20))
    assert deployment(world, "rec")["readyReplicas"] == 4  # steady load: it stays
    assert deployment(world, "rec")["autoscaler"]["metric"] == "rps"

    await world.offer_load("rec", 8)

    async def one_runs() -> bool:
        return await alive_replicas(world, "rec") == 1

    await world.until(one_runs, 120, "down to 1")
    assert deployment(world, "rec")["desiredReplicas"] == 1

    await world.offer_load("rec", 0)
    await world.advance(world.seconds(60))
    assert await alive_replicas(world, "rec") == 1  # min: 1 holds without load
    assert is_true(deployment(world, "rec"), "Ready")


async def test_scale_to_zero_and_back(world: World) -> None:
    await world.add_model("rare")
    await world.apply(serving("rare", "rare:1", "{min: 0, max: 3}", AUTOSCALING))
    await world.offer_load("rare", 15)
    await world.until(
        lambda: deployment(world, "rare").get("readyReplicas", 0) >= 2, 60, "serving the load"
    )

    await world.offer_load("rare", 0)

    async def none_runs() -> bool:
        return await alive_replicas(world, "rare") == 0

    await world.until(none_runs, 180, "scaled to zero")
    await world.advance(5)
    current = deployment(world, "rare")
    assert current["readyReplicas"] == 0
    assert current["desiredReplicas"] == 0
    assert not is_true(current, "Available")

    # requests arrive again: they are held, and a replica starts for them
    await world.offer_load("rare", 5)
    await world.until(
        lambda: deployment(world, "rare").get("readyReplicas", 0) >= 1, 30, "woke from zero"
    )
    assert is_true(deployment(world, "rare"), "Available")


async def test_delete_waits_for_replicas_then_the_object_goes(world: World) -> None:
    await world.add_model("gone")
    await world.apply(serving("gone", "gone:1", "2"))
    await world.until(lambda: is_true(deployment(world, "gone"), "Ready"), 30, "Ready")

    await world.delete("ModelDeployment", "gone")
    await world.advance(1)
    # the grace period (5 s) is not over: the object stays while its replicas stop
    found = world.get("ModelDeployment", "gone")
    assert found is not None
    assert found["deleting"] is True
    assert sum(r.ready for r in await world.revisions("gone")) == 0  # drained first

    await world.until(lambda: world.get("ModelDeployment", "gone") is None, 30, "finalized")
    assert await world.revisions("gone") == []
    assert world.weights("gone") == {}


def public(current: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in current.items() if k != "internal"}


async def test_status_is_steady_once_converged(world: World) -> None:
    await world.add_model("calm")
    await world.apply(serving("calm", "calm:1", "2"))
    await world.until(lambda: is_true(deployment(world, "calm"), "Ready"), 30, "Ready")
    await world.advance(5)
    before = deployment(world, "calm")
    assert (
        before["observedGeneration"]
        == world.get("ModelDeployment", "calm")["metadata"][  # type: ignore[index]
            "generation"
        ]
    )
    await world.advance(world.seconds(30))
    # level-based and idempotent: nothing changed, so nothing in the status moved
    # (conditions keep their lastTransitionTime, no revision appears or goes)
    assert public(deployment(world, "calm")) == public(before)
    assert not [e for e in world.events("ModelDeployment", "calm") if e[0] == "Warning"]


async def test_replicas_that_do_not_fit_wait_with_a_reason(world: World) -> None:
    await world.add_model("big")
    # three replicas of 12 cpus on one node of 32: two fit
    big = serving("big", "big:1", "3").replace("cpu: 250m", "cpu: '12'")
    await world.apply(big)

    async def two_ready() -> bool:
        return await ready_replicas(world, "big") == 2

    await world.until(two_ready, 30, "two replicas ready")
    await world.advance(5)
    current = deployment(world, "big")
    assert current["readyReplicas"] == 2
    assert [r["pending"] for r in current["revisions"]] == [1]
    scheduled = condition(current, "Scheduled")
    assert scheduled is not None, current
    assert scheduled["status"] == "False", current
    assert "cpu" in scheduled["message"], scheduled
    assert not is_true(current, "Ready")
    assert is_true(current, "Available")

    await world.apply(big.replace("replicas: 3", "replicas: 2"))
    await world.until(lambda: is_true(deployment(world, "big"), "Ready"), 30, "Ready with 2")
    assert is_true(deployment(world, "big"), "Scheduled")
    assert [r["pending"] for r in deployment(world, "big")["revisions"]] == [0]
