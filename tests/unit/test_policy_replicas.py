"""Unit tests for the replica plan (pure: spec, observed replicas, state, now)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilothouse.policy.backoff import BackoffParams
from pilothouse.policy.replicas import (
    ObservedReplica,
    ReplicaPolicyState,
    plan_replicas,
    plan_revisions,
)

FRESH = ReplicaPolicyState()


def rep(
    id_: str,
    version: str = "v1",
    *,
    ready: bool = True,
    exited: bool = False,
    started_at: float = 0.0,
    exited_at: float | None = None,
) -> ObservedReplica:
    return ObservedReplica(
        id=id_,
        version=version,
        ready=ready,
        exited=exited,
        started_at=started_at,
        exited_at=exited_at,
    )


def test_from_nothing_starts_desired() -> None:
    plan = plan_replicas(3, "v1", [], FRESH, now=100.0)
    assert plan.start == 3
    assert plan.stop == []
    assert not plan.converged


def test_converged_when_desired_ready_replicas_of_the_version_exist() -> None:
    observed = [rep("a"), rep("b"), rep("c")]
    plan = plan_replicas(3, "v1", observed, FRESH, now=100.0)
    assert plan.start == 0
    assert plan.stop == []
    assert plan.converged
    assert plan.reason == "converged"


def test_not_ready_replicas_are_waited_for_not_duplicated() -> None:
    observed = [rep("a"), rep("b", ready=False)]
    plan = plan_replicas(2, "v1", observed, FRESH, now=100.0)
    assert plan.start == 0
    assert plan.stop == []
    assert not plan.converged
    assert plan.reason == "1/2 ready"


def test_missing_replicas_are_started() -> None:
    plan = plan_replicas(3, "v1", [rep("a")], FRESH, now=100.0)
    assert plan.start == 2
    assert plan.stop == []
    assert not plan.converged


def test_surplus_stops_not_ready_replicas_first() -> None:
    observed = [
        rep("r1", started_at=1.0),
        rep("n1", ready=False, started_at=2.0),
        rep("r2", started_at=3.0),
        rep("n2", ready=False, started_at=4.0),
    ]
    plan = plan_replicas(2, "v1", observed, FRESH, now=100.0)
    assert sorted(plan.stop) == ["n1", "n2"]
    assert plan.start == 0


def test_surplus_of_ready_replicas_stops_not_ready_then_newest() -> None:
    observed = [
        rep("old", started_at=1.0),
        rep("mid", started_at=2.0),
        rep("new", started_at=3.0),
        rep("sick", ready=False, started_at=0.5),
    ]
    plan = plan_replicas(1, "v1", observed, FRESH, now=100.0)
    assert sorted(plan.stop) == ["mid", "new", "sick"]
    assert "old" not in plan.stop
    assert plan.start == 0


def test_exited_replica_is_stopped_and_replaced_after_the_backoff() -> None:
    crashed = rep("x", ready=False, exited=True, started_at=10.0, exited_at=11.0)
    plan = plan_replicas(1, "v1", [crashed], FRESH, now=11.0)
    assert plan.stop == ["x"]
    assert plan.start == 0
    assert "back-off" in plan.reason
    assert plan.state.failures == 1
    assert plan.state.next_start_at == pytest.approx(12.0)  # initial delay 1 s

    waiting = plan_replicas(1, "v1", [], plan.state, now=11.5)
    assert waiting.start == 0
    assert "back-off" in waiting.reason
    assert waiting.requeue_after == pytest.approx(0.5)

    due = plan_replicas(1, "v1", [], plan.state, now=12.0)
    assert due.start == 1
    assert "back-off" not in due.reason


def test_repeated_crashes_increase_the_delay() -> None:
    state = FRESH
    now = 1000.0
    delays = []
    for n in range(5):
        crashed = rep(f"x{n}", ready=False, exited=True, started_at=now - 2.0, exited_at=now)
        plan = plan_replicas(1, "v1", [crashed], state, now=now)
        assert plan.stop == [f"x{n}"]
        assert plan.start == 0
        delays.append(plan.state.next_start_at - now)
        state = plan.state
        now = state.next_start_at
        assert plan_replicas(1, "v1", [], state, now=now).start == 1
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_delay_respects_custom_backoff_and_cap() -> None:
    params = BackoffParams(initial=5.0, maximum=12.0, multiplier=3.0)
    state = ReplicaPolicyState(failures=3, next_start_at=0.0)
    crashed = rep("x", ready=False, exited=True, started_at=99.0, exited_at=100.0)
    plan = plan_replicas(1, "v1", [crashed], state, now=100.0, backoff=params)
    assert plan.state.failures == 4
    assert plan.state.next_start_at == pytest.approx(112.0)


def test_a_crash_after_a_long_run_resets_the_count() -> None:
    state = ReplicaPolicyState(failures=6, next_start_at=0.0)
    crashed = rep("x", ready=False, exited=True, started_at=0.0, exited_at=1000.0)
    plan = plan_replicas(1, "v1", [crashed], state, now=1000.0)
    assert plan.state.failures == 1
    assert plan.state.next_start_at == pytest.approx(1001.0)


def test_version_change_surges_then_stops_all_old() -> None:
    old = [rep("a1", "a", started_at=1.0), rep("a2", "a", started_at=2.0)]

    step1 = plan_replicas(2, "b", old, FRESH, now=100.0)
    assert step1.start == 2
    assert step1.stop == []
    assert not step1.converged

    starting = [rep("b1", "b", ready=False), rep("b2", "b", ready=False)]
    step2 = plan_replicas(2, "b", old + starting, step1.state, now=101.0)
    assert step2.start == 0
    assert step2.stop == []
    assert not step2.converged

    half = [rep("b1", "b"), rep("b2", "b", ready=False)]
    step3 = plan_replicas(2, "b", old + half, step2.state, now=102.0)
    assert step3.start == 0
    assert step3.stop == []
    assert not step3.converged

    ready = [rep("b1", "b"), rep("b2", "b")]
    step4 = plan_replicas(2, "b", old + ready, step3.state, now=103.0)
    assert step4.start == 0
    assert sorted(step4.stop) == ["a1", "a2"]
    assert not step4.converged

    step5 = plan_replicas(2, "b", ready, step4.state, now=104.0)
    assert step5.start == 0
    assert step5.stop == []
    assert step5.converged


def test_old_replicas_that_are_not_ready_are_stopped_right_away() -> None:
    old = [rep("a1", "a", ready=False), rep("a2", "a", ready=False)]
    plan = plan_replicas(2, "b", old, FRESH, now=100.0)
    assert sorted(plan.stop) == ["a1", "a2"]
    assert plan.start == 2


def test_desired_zero_stops_everything() -> None:
    observed = [rep("v1a"), rep("v1b", ready=False), rep("old", "v0")]
    plan = plan_replicas(0, "v1", observed, FRESH, now=100.0)
    assert sorted(plan.stop) == ["old", "v1a", "v1b"]
    assert plan.start == 0
    assert not plan.converged

    empty = plan_replicas(0, "v1", [], plan.state, now=101.0)
    assert empty.start == 0
    assert empty.stop == []
    assert empty.converged


def test_crash_loop_next_to_a_healthy_replica_still_backs_off() -> None:
    state = FRESH
    now = 1000.0
    delays = []
    for n in range(4):
        observed = [
            rep("healthy", started_at=0.0),
            rep(f"x{n}", ready=False, exited=True, started_at=now - 2.0, exited_at=now),
        ]
        plan = plan_replicas(2, "v1", observed, state, now=now)
        delays.append(plan.state.next_start_at - now)
        state = plan.state
        now = state.next_start_at
    assert delays == [1.0, 2.0, 4.0, 8.0]


replica_fields = st.tuples(
    st.sampled_from(["a", "b"]),
    st.booleans(),  # ready
    st.booleans(),  # exited
    st.floats(min_value=0.0, max_value=1000.0),  # started_at
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=2000.0)),  # exited_at
)


@given(
    desired=st.integers(min_value=0, max_value=5),
    target=st.sampled_from(["a", "b"]),
    fields=st.lists(replica_fields, max_size=10),
    failures=st.integers(min_value=0, max_value=30),
    next_start_at=st.floats(min_value=0.0, max_value=3000.0),
    now=st.floats(min_value=0.0, max_value=3000.0),
)
def test_never_stops_needed_ready_replicas_and_never_starts_negative(
    desired: int,
    target: str,
    fields: list[tuple[str, bool, bool, float, float | None]],
    failures: int,
    next_start_at: float,
    now: float,
) -> None:
    observed = [
        ObservedReplica(f"r{i}", version, ready, exited, started_at, exited_at)
        for i, (version, ready, exited, started_at, exited_at) in enumerate(fields)
    ]
    state = ReplicaPolicyState(failures=failures, next_start_at=next_start_at)
    plan = plan_replicas(desired, target, observed, state, now)

    assert 0 <= plan.start <= desired
    assert len(plan.stop) == len(set(plan.stop))
    assert set(plan.stop) <= {r.id for r in observed}
    assert plan.state.failures >= 0
    ready_target = [r for r in observed if r.version == target and r.ready and not r.exited]
    if len(ready_target) <= desired:
        assert not {r.id for r in ready_target} & set(plan.stop)
    # Exited replicas are always cleaned up.
    assert {r.id for r in observed if r.exited} <= set(plan.stop)


def test_a_serving_replica_that_dies_is_replaced_at_once() -> None:
    # killed from outside after it had served: no crash-loop back-off
    killed = ObservedReplica(
        "a", "v1", ready=False, exited=True, started_at=0.0, exited_at=50.0, ever_ready=True
    )
    alive = ObservedReplica("b", "v1", ready=True, exited=False, started_at=0.0, ever_ready=True)
    state = ReplicaPolicyState(failures=5, next_start_at=500.0)
    plan = plan_replicas(2, "v1", [killed, alive], state, now=60.0)
    assert plan.stop == ["a"]
    assert plan.start == 1
    assert plan.state.failures == 0


def test_many_kills_of_serving_replicas_never_build_up_back_off() -> None:
    state = ReplicaPolicyState()
    now = 0.0
    for i in range(20):
        now += 5.0
        victim = ObservedReplica(f"r{i}", "v1", False, True, now - 5.0, now, ever_ready=True)
        others = [
            ObservedReplica(f"s{j}", "v1", True, False, 0.0, ever_ready=True) for j in range(2)
        ]
        plan = plan_replicas(3, "v1", [victim, *others], state, now)
        assert plan.start == 1, f"kill {i}: replaced at once"
        state = plan.state
    assert state.failures == 0


def test_a_crash_looping_revision_does_not_hold_back_another() -> None:
    """The new revision crash-loops; the stable one must still grow (a rollback, or the
    autoscaler): the back-off holds only the revision that crashes."""
    state = ReplicaPolicyState()
    for n in range(5):
        crashed = rep(f"new{n}", "v2", ready=False, exited=True, started_at=n, exited_at=n + 0.5)
        plan = plan_revisions({"v1": 2, "v2": 1}, [rep("a"), rep("b"), crashed], state, now=n + 1)
        state = plan.state
    assert state.revision == "v2"
    assert state.failures == 5
    assert plan.starts == {}  # v2 waits for its back-off
    grown = plan_revisions({"v1": 4, "v2": 1}, [rep("a"), rep("b")], state, now=6.0)
    assert grown.starts == {"v1": 2}
    assert "back-off" in grown.reason
