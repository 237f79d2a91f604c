"""ModelDeployment rollouts: a canary goes step by step to 100 %, a failing analysis rolls
back by itself, a user's promote skips a pause."""

from __future__ import annotations

import pytest

from tests.contract.harness import World
from tests.contract.observe import condition, deployment, is_true, rollout

pytestmark = pytest.mark.anyio

CANARY = """
  rollout:
    strategy: canary
    canary:
      steps:
        - setWeight: 25
        - pause: {duration: 4s}
        - setWeight: 50
        - pause: {duration: 4s}
        - setWeight: 100
    analysis:
      interval: 2s
      minSamples: 20
      checks:
        - {name: errors, metric: errorRate, max: 0.05}
"""

MANUAL = """
  rollout:
    strategy: canary
    canary:
      steps:
        - setWeight: 20
        - pause: {}
        - setWeight: 60
        - pause: {}
        - setWeight: 100
"""


def serving(name: str, model: str, rollout_yaml: str) -> str:
    return f"""
apiVersion: pilothouse.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}
spec:
  model: {model}
  replicas: 2
  resources: {{cpu: 250m, memory: 256Mi}}
  terminationGracePeriod: 5s
{rollout_yaml}
"""


async def started(world: World, name: str, model: str, rollout_yaml: str) -> str:
    """The deployment serves ``model`` under load; returns its (stable) revision."""
    await world.apply(serving(name, model, rollout_yaml))
    await world.until(lambda: is_true(deployment(world, name), "Ready"), 30, "Ready")
    await world.offer_load(name, 50)
    return str(deployment(world, name)["revision"])


async def test_canary_promotes_step_by_step_and_the_old_revision_goes(world: World) -> None:
    await world.add_model("fraud")
    stable = await started(world, "fraud", "fraud:1", CANARY)
    new_ref = await world.add_model("fraud")

    await world.apply(serving("fraud", new_ref, CANARY))
    await world.until(
        lambda: rollout(deployment(world, "fraud")).get("canaryRevision") is not None,
        10,
        "a canary",
    )
    canary = rollout(deployment(world, "fraud"))["canaryRevision"]
    assert canary != stable
    assert deployment(world, "fraud")["revision"] == canary
    assert rollout(deployment(world, "fraud"))["stableRevision"] == stable
    # while the canary rolls out, the stable model still answers most requests
    assert deployment(world, "fraud")["model"] == "fraud:1"

    seen: list[float] = []

    def canary_share(wanted: float) -> bool:
        share = world.weights("fraud").get(canary, 0.0)
        if not seen or seen[-1] != share:
            seen.append(share)
        return share == pytest.approx(wanted)

    await world.until(lambda: canary_share(25), 30, "25 % to the canary")
    assert set(world.weights("fraud")) == {stable, canary}
    await world.until(lambda: canary_share(50), 30, "50 % to the canary")
    await world.until(
        lambda: (
            rollout(deployment(world, "fraud")).get("canaryRevision") is None
            and rollout(deployment(world, "fraud")).get("stableRevision") == canary
        ),
        30,
        "promoted",
    )
    # the steps were taken in order (never straight from 0 to 100)
    assert [s for s in seen if s > 0][:2] == [pytest.approx(25), pytest.approx(50)]
    current = deployment(world, "fraud")
    assert rollout(current)["phase"] == "Healthy"
    assert current["model"] == new_ref
    assert world.weights("fraud") == {canary: 100.0}

    async def old_gone() -> bool:
        return [r.revision for r in await world.revisions("fraud")] == [canary]

    await world.until(old_gone, 30, "the old revision's replicas stopped")
    await world.until(
        lambda: [r["revision"] for r in deployment(world, "fraud")["revisions"]] == [canary],
        10,
        "the status shows the new revision only",
    )
    assert is_true(deployment(world, "fraud"), "Ready")
    assert deployment(world, "fraud")["readyReplicas"] == 2


async def test_failing_analysis_rolls_back_to_stable(world: World) -> None:
    await world.add_model("fraud")
    stable = await started(world, "fraud", "fraud:1", CANARY)
    bad_ref = await world.add_model("fraud", error_rate=0.5)

    await world.apply(serving("fraud", bad_ref, CANARY))
    await world.until(
        lambda: rollout(deployment(world, "fraud")).get("phase") == "Degraded",
        60,
        "rolled back",
    )
    current = deployment(world, "fraud")
    state = rollout(current)
    assert state["stableRevision"] == stable
    assert state.get("canaryRevision") is None
    assert state["abortedRevision"] == current["revision"] != stable
    assert state["analysis"]["verdict"] == "Failed"
    assert current["model"] == "fraud:1"  # the stable model serves
    assert current["desiredModel"] == bad_ref
    ready = condition(current, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "RolledBack"
    assert is_true(current, "Available")
    assert any(reason == "RolledBack" for _, reason, _ in world.events("ModelDeployment", "fraud"))

    async def only_stable_runs() -> bool:
        return [r.revision for r in await world.revisions("fraud") if r.alive] == [stable]

    await world.until(only_stable_runs, 30, "the failed revision's replicas stopped")
    assert world.weights("fraud") == {stable: 100.0}
    await world.advance(world.seconds(20))
    # it stays rolled back: the same spec is not retried by itself
    assert rollout(deployment(world, "fraud"))["phase"] == "Degraded"
    assert world.weights("fraud") == {stable: 100.0}


async def test_promote_request_skips_a_pause(world: World) -> None:
    await world.add_model("rec")
    stable = await started(world, "rec", "rec:1", MANUAL)
    new_ref = await world.add_model("rec")
    await world.apply(serving("rec", new_ref, MANUAL))

    def share() -> float:
        canary = rollout(deployment(world, "rec")).get("canaryRevision")
        return world.weights("rec").get(canary, 0.0) if canary else 0.0

    await world.until(lambda: share() == pytest.approx(20), 30, "20 % to the canary")
    canary = rollout(deployment(world, "rec"))["canaryRevision"]
    await world.advance(world.seconds(60))
    # an indefinite pause holds until a user promotes
    assert share() == pytest.approx(20)
    assert rollout(deployment(world, "rec"))["canaryRevision"] == canary

    await world.request("ModelDeployment", "rec", "promote")
    await world.until(lambda: share() == pytest.approx(60), 30, "promoted to the next step")
    await world.advance(world.seconds(30))
    assert share() == pytest.approx(60)  # the next pause holds again

    await world.request("ModelDeployment", "rec", "promote", full=True)
    await world.until(
        lambda: rollout(deployment(world, "rec")).get("stableRevision") == canary,
        30,
        "promoted fully",
    )
    assert world.weights("rec") == {canary: 100.0}

    async def old_gone() -> bool:
        return stable not in {r.revision for r in await world.revisions("rec")}

    await world.until(old_gone, 30, "the old revision went away")
    assert deployment(world, "rec")["model"] == new_ref


async def test_abort_request_goes_back_to_stable(world: World) -> None:
    await world.add_model("rec")
    stable = await started(world, "rec", "rec:1", MANUAL)
    new_ref = await world.add_model("rec")
    await world.apply(serving("rec", new_ref, MANUAL))
    await world.until(
        lambda: (
            rollout(deployment(world, "rec")).get("canaryRevision") is not None
            and rollout(deployment(world, "rec")).get("weight", 0) > 0
        ),
        30,
        "a canary with traffic",
    )
    canary = rollout(deployment(world, "rec"))["canaryRevision"]

    await world.request("ModelDeployment", "rec", "abort")
    await world.until(
        lambda: rollout(deployment(world, "rec")).get("canaryRevision") is None, 30, "aborted"
    )
    state = rollout(deployment(world, "rec"))
    assert state["stableRevision"] == stable
    assert state["abortedRevision"] == canary
    assert world.weights("rec") == {stable: 100.0}
    assert deployment(world, "rec")["model"] == "rec:1"


async def test_rolling_update_keeps_every_replica_serving(world: World) -> None:
    await world.add_model("fraud")
    await world.apply(serving("fraud", "fraud:1", ""))
    await world.until(lambda: is_true(deployment(world, "fraud"), "Ready"), 30, "Ready")
    old = deployment(world, "fraud")["revision"]
    await world.offer_load("fraud", 20)
    new_ref = await world.add_model("fraud")
    await world.apply(serving("fraud", new_ref, ""))

    lowest: list[int] = []

    async def rolled() -> bool:
        revisions = await world.revisions("fraud")
        lowest.append(sum(r.ready for r in revisions))
        assert world.weights("fraud"), "no replica took traffic"
        current = deployment(world, "fraud")
        return (
            [r.revision for r in revisions] == [current["revision"]]
            and current["revision"] != old
            and is_true(current, "Ready")
        )

    await world.until(rolled, 60, "rolled to the new revision")
    # maxUnavailable 0: never fewer ready replicas than asked for while rolling
    assert min(lowest) >= 2, lowest
    current = deployment(world, "fraud")
    assert current["model"] == new_ref
    assert rollout(current)["phase"] == "Healthy"
    assert current["readyReplicas"] == 2


BLUE_GREEN = """
  rollout:
    strategy: blueGreen
    blueGreen:
      autoPromotionDelay: 5s
      scaleDownDelay: 5s
"""


async def test_blue_green_switches_all_traffic_at_once(world: World) -> None:
    await world.add_model("fraud")
    stable = await started(world, "fraud", "fraud:1", BLUE_GREEN)
    new_ref = await world.add_model("fraud")
    await world.apply(serving("fraud", new_ref, BLUE_GREEN))

    splits: list[dict[str, float]] = []
    preview_sizes: list[int] = []

    async def switched_and_done() -> bool:
        weights = world.weights("fraud")
        if not splits or splits[-1] != weights:
            splits.append(weights)
        current = deployment(world, "fraud")
        state = rollout(current)
        canary = state.get("canaryRevision")
        if canary is not None and weights == {stable: 100.0}:
            preview_sizes.extend(
                r.ready for r in await world.revisions("fraud") if r.revision == canary
            )
        return state.get("canaryRevision") is None and state.get("stableRevision") != stable

    await world.until(switched_and_done, 60, "switched and promoted")
    new = rollout(deployment(world, "fraud"))["stableRevision"]
    # one revision takes all the traffic at any time: first the old, then the new
    assert splits == [{stable: 100.0}, {new: 100.0}], splits
    # the new revision ran at full size before the switch
    assert max(preview_sizes) == 2, preview_sizes

    async def old_gone() -> bool:
        return [r.revision for r in await world.revisions("fraud")] == [new]

    await world.until(old_gone, 30, "the old revision went away")
    assert deployment(world, "fraud")["model"] == new_ref


async def test_canary_that_never_gets_ready_rolls_back_after_the_deadline(world: World) -> None:
    await world.add_model("fraud")
    with_deadline = CANARY + "    progressDeadline: 20s\n"
    stable = await started(world, "fraud", "fraud:1", with_deadline)
    broken_ref = await world.add_model("fraud", broken=True)
    await world.apply(serving("fraud", broken_ref, with_deadline))
    await world.until(
        lambda: rollout(deployment(world, "fraud")).get("canaryRevision") is not None,
        10,
        "a canary",
    )
    canary = rollout(deployment(world, "fraud"))["canaryRevision"]

    async def looping() -> bool:
        return any(r.revision == canary and r.crash_looping for r in await world.revisions("fraud"))

    await world.until(looping, 20, "the canary crash-loops")
    assert world.weights("fraud") == {stable: 100.0}  # no traffic to what never got ready
    await world.until(
        lambda: rollout(deployment(world, "fraud")).get("phase") == "Degraded",
        40,
        "rolled back after the progress deadline",
    )
    current = deployment(world, "fraud")
    assert rollout(current)["abortedRevision"] == canary
    assert rollout(current)["stableRevision"] == stable
    assert current["model"] == "fraud:1"

    async def only_stable_runs() -> bool:
        return [r.revision for r in await world.revisions("fraud") if r.alive] == [stable]

    await world.until(only_stable_runs, 30, "the broken revision's replicas stopped")
    assert deployment(world, "fraud")["readyReplicas"] == 2
