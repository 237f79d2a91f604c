"""Unit tests for the rollout state machine (pure: spec, state, revision, what runs, gate,
requests, now), driven through whole rollouts against a simulated world.

``Sim`` plays the controller: every tick it calls ``plan_rollout`` with what runs, hands
the decision's targets to ``plan_revisions`` (as the controller does), starts and stops
replicas accordingly, and a started replica becomes ready after its revision's start
delay. Time moves one second a tick, as the controller requeues about every second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilothouse.policy.replicas import ObservedReplica, ReplicaPolicyState, plan_revisions
from pilothouse.policy.rollout import (
    Gate,
    GateVerdict,
    NothingToAct,
    Requests,
    RevisionCounts,
    RolloutDecision,
    RolloutState,
    plan_rollout,
    request_values,
)
from pilothouse.spec.resources import (
    Analysis,
    AnalysisCheck,
    BlueGreenStrategy,
    CanaryStep,
    CanaryStrategy,
    Pause,
    RollingStrategy,
    Rollout,
    resolve_surge,
)

R1, R2, R3 = "1-aaaaaa", "2-bbbbbb", "3-cccccc"

CHECKS = Analysis(checks=[AnalysisCheck(name="errors", metric="errorRate", max=0.05)])
PASSING = Gate("Passing", "all 1 checks passing")
PENDING = Gate("Pending", "waiting for check errors: no measurement yet")
FAILED = Gate("Failed", "check errors failed: errorRate 0.31 > max 0.05 (1 of 0 allowed failures)")
INCONCLUSIVE = Gate(
    "Inconclusive",
    "check errors inconclusive: 4 measurements in a row without enough data (3 allowed)",
)


def canary(*steps: CanaryStep, analysis: Analysis | None = None) -> Rollout:
    strategy = CanaryStrategy(steps=list(steps)) if steps else CanaryStrategy()
    return Rollout(strategy="canary", canary=strategy, analysis=analysis or Analysis())


def weight(n: int) -> CanaryStep:
    return CanaryStep(set_weight=n)


def pause(seconds: float | None = None) -> CanaryStep:
    return CanaryStep(pause=Pause(duration=seconds))


def blue_green(
    auto: float | None = 20.0,
    scale_down: float = 15.0,
    mirror: float = 100.0,
    analysis: Analysis | None = None,
) -> Rollout:
    return Rollout(
        strategy="blueGreen",
        blue_green=BlueGreenStrategy(
            auto_promote=auto is not None,
            auto_promotion_delay=auto if auto is not None else 30.0,
            scale_down_delay=scale_down,
            preview_mirror_percent=mirror,
        ),
        analysis=analysis or Analysis(),
    )


def rolling(
    surge: int | str = "25%", unavailable: int | str = 0, analysis: Analysis | None = None
) -> Rollout:
    return Rollout(
        strategy="rolling",
        rolling=RollingStrategy(max_surge=surge, max_unavailable=unavailable),
        analysis=analysis or Analysis(),
    )


# --------------------------------------------------------------------------- the simulator


@dataclass
class Replica:
    id: str
    revision: str
    started_at: float
    ready_at: float


@dataclass
class Tick:
    now: float
    observed: dict[str, RevisionCounts]
    decision: RolloutDecision
    #: replicas per revision right after the decision was applied: (ready, alive)
    after: dict[str, RevisionCounts]


@dataclass
class Sim:
    spec: Rollout
    desired: int = 4
    #: seconds from start to ready, per revision (default 2)
    delays: dict[str, float] = field(default_factory=dict)
    revision: str = R1
    gate: Gate | None = None
    requests: Requests = field(default_factory=Requests)
    now: float = 0.0
    state: RolloutState = field(default_factory=RolloutState)
    replicas: list[Replica] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: revision -> the last history outcome recorded for it (as History.set_outcome)
    outcomes: dict[str, str] = field(default_factory=dict)
    _next_id: int = 0

    @classmethod
    def serving(cls, spec: Rollout, desired: int = 4, **kwargs: object) -> Sim:
        """A world where ``R1`` is the stable revision with ``desired`` ready replicas."""
        sim = cls(spec, desired, **kwargs)  # type: ignore[arg-type]
        sim.run_until(lambda _: sim.counts(R1).ready == desired, limit=60)
        assert sim.state.stable == R1
        sim.events.clear()
        return sim

    def counts(self, revision: str) -> RevisionCounts:
        return self.observed().get(revision, RevisionCounts())

    def observed(self) -> dict[str, RevisionCounts]:
        out: dict[str, RevisionCounts] = {}
        for r in self.replicas:
            c = out.get(r.revision, RevisionCounts())
            ready = r.ready_at <= self.now
            out[r.revision] = RevisionCounts(ready=c.ready + ready, alive=c.alive + 1)
        return out

    def tick(self, dt: float = 1.0) -> RolloutDecision:
        observed = self.observed()
        decision = plan_rollout(
            self.spec,
            self.state,
            self.revision,
            self.desired,
            observed,
            self.gate,
            self.requests,
            self.now,
        )
        check_decision(decision)
        self._apply(decision.targets)
        self.ticks.append(Tick(self.now, observed, decision, self.observed()))
        self.state = decision.state
        self.events.extend(decision.events)
        self.outcomes.update(decision.outcomes)
        self.now += dt
        return decision

    def run(self, seconds: float) -> list[RolloutDecision]:
        return [self.tick() for _ in range(int(seconds))]

    def run_until(
        self, done: Callable[[RolloutDecision], bool], limit: int = 600
    ) -> RolloutDecision:
        for _ in range(limit):
            decision = self.tick()
            if done(decision):
                return decision
        raise AssertionError(f"not reached in {limit} ticks; state: {self.state}")

    def _apply(self, targets: dict[str, int]) -> None:
        observed = [
            ObservedReplica(
                r.id,
                r.revision,
                ready=r.ready_at <= self.now,
                exited=False,
                started_at=r.started_at,
                ever_ready=r.ready_at <= self.now,
            )
            for r in self.replicas
        ]
        plan = plan_revisions(targets, observed, ReplicaPolicyState(), self.now)
        stop = set(plan.stop)
        self.replicas = [r for r in self.replicas if r.id not in stop]
        for revision, count in plan.starts.items():
            for _ in range(count):
                self._next_id += 1
                delay = self.delays.get(revision, 2.0)
                self.replicas.append(
                    Replica(f"r{self._next_id}", revision, self.now, self.now + delay)
                )


def check_decision(decision: RolloutDecision) -> None:
    """What holds for every decision, whatever the strategy."""
    if decision.weights:
        assert math.isclose(sum(decision.weights.values()), 100.0), decision.weights
        assert all(w >= 0 for w in decision.weights.values()), decision.weights
        assert set(decision.weights) <= set(decision.targets), decision
    assert all(n >= 0 for n in decision.targets.values()), decision.targets
    if decision.mirror_revision is not None:
        assert 0 < decision.mirror_percent <= 100
        assert decision.mirror_revision in decision.targets
    if decision.state.phase == "Degraded":
        assert decision.state.canary is None
        if decision.state.aborted in decision.targets:
            # only a rolling rollback keeps the failed replicas, and only until the
            # stable revision serves again; never with a weight of their own
            assert decision.state.aborted not in decision.weights, decision


def reasons(events: list[tuple[str, str, str]]) -> list[str]:
    return [reason for _, reason, _ in events]


def ticks_at(sim: Sim, step: int, revision: str = R2) -> list[Tick]:
    return [
        t
        for t in sim.ticks
        if t.decision.state.canary == revision and t.decision.state.step == step
    ]


# --------------------------------------------------------------------------- first revision


def test_first_revision_becomes_stable_without_a_rollout() -> None:
    sim = Sim(canary(), desired=3)
    first = sim.tick()
    assert first.state.stable == R1
    assert first.state.canary is None
    assert first.state.phase == "Healthy"
    assert first.targets == {R1: 3}
    assert first.weights == {}
    assert first.outcomes == {R1: "Stable"}
    assert first.events == []
    assert not first.reset_analysis
    again = sim.run(5)
    assert all(d.targets == {R1: 3} and d.outcomes == {} and d.events == [] for d in again)
    assert sim.counts(R1).ready == 3


@pytest.mark.parametrize("spec", [canary(), blue_green(), rolling()], ids=lambda s: s.strategy)
def test_first_revision_is_stable_whatever_the_strategy(spec: Rollout) -> None:
    sim = Sim.serving(spec, desired=2)
    assert sim.state.phase == "Healthy"
    assert sim.ticks[-1].decision.targets == {R1: 2}
    assert sim.outcomes == {R1: "Stable"}


def test_state_round_trips_through_a_dict() -> None:
    state = RolloutState(stable=R1, canary=R2, phase="Paused", step=3, weight=50.0)
    assert RolloutState.from_dict(state.to_dict()) == state
    assert RolloutState.from_dict({**state.to_dict(), "fromTheFuture": 1}) == state
    assert RolloutState.from_dict(None) == RolloutState()
    assert RolloutState.from_dict({}) == RolloutState()


def test_requests_from_the_store() -> None:
    requests = Requests.from_store({"pause": "true", "promote": f"{R2}|step1|9", "x": "y"})
    assert requests == Requests(pause=True, promote=f"{R2}|step1|9")
    assert Requests.from_store({"pause": "false"}) == Requests()


# --------------------------------------------------------------------------- canary


def test_canary_walks_its_steps_and_is_promoted() -> None:
    # default steps: setWeight 10, pause 30s, setWeight 50, pause 30s, setWeight 100
    sim = Sim.serving(canary(), desired=4)
    start = sim.now
    sim.revision = R2
    first = sim.tick()
    assert reasons(first.events) == ["RolloutStarted"]
    assert R2 in first.events[0][2]
    assert R1 in first.events[0][2]
    assert first.reset_analysis
    assert first.outcomes == {R2: "Progressing"}
    assert first.state.phase == "Progressing"
    assert (first.state.stable, first.state.canary) == (R1, R2)
    assert first.state.step == 0
    assert first.targets == {R1: 4, R2: 1}
    assert first.weights == {R1: 100.0}  # no live traffic before a canary replica is ready
    assert not first.analyse

    promoted = sim.run_until(lambda d: d.state.canary is None)

    # step 1: 10% (one replica of four), held 30s from the moment the canary served
    at_10 = ticks_at(sim, 1)
    assert at_10[0].now == start + 2  # the canary replica took 2s to become ready
    assert {t.decision.weights[R2] for t in at_10} == {10.0}
    assert {t.decision.weights[R1] for t in at_10} == {90.0}
    assert {t.decision.targets[R2] for t in at_10} == {1}
    assert at_10[0].decision.state.pause_until == at_10[0].now + 30
    assert "holding 10%" in at_10[0].decision.state.message
    assert len(at_10) == 30
    assert all(t.decision.analyse for t in at_10)
    # step 3: 50% (two replicas of four), held 30s from the moment both served
    at_50 = ticks_at(sim, 3)
    assert {t.decision.weights[R2] for t in at_50} == {50.0}
    assert {t.decision.targets[R2] for t in at_50} == {2}
    assert len(at_50) == 30
    assert at_50[0].observed[R2].ready == 2  # from the tick the second replica served
    # the stable revision keeps its full size until the promotion
    for t in sim.ticks:
        if t.decision is not promoted and t.decision.state.canary == R2:
            assert t.decision.targets[R1] == 4
    # promoted once all four canary replicas serve (setWeight 100)
    assert promoted.state.stable == R2
    assert promoted.state.phase == "Healthy"
    assert promoted.targets == {R2: 4}
    assert promoted.weights == {R2: 100.0}
    assert sim.ticks[-1].observed[R2].ready == 4
    assert reasons(promoted.events) == ["RolloutPromoted"]
    assert promoted.outcomes == {R2: "Stable", R1: "Superseded"}
    assert sim.outcomes == {R1: "Superseded", R2: "Stable"}
    # the old revision is gone on the next pass and nothing changes any more
    after = sim.run(5)
    assert all(d.targets == {R2: 4} and not d.events and not d.outcomes for d in after)
    assert sim.counts(R1) == RevisionCounts()


def test_canary_weight_waits_for_the_canary_to_be_sized() -> None:
    """A setWeight step completes once the canary is up: its live share never exceeds
    what its ready replicas are sized for (the previous weight is kept meanwhile)."""
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.canary is None)
    for t in sim.ticks:
        share = t.decision.weights.get(R2, 0.0)
        if t.decision.state.canary == R2 and share > 0:
            needed = math.ceil(sim.desired * share / 100.0)
            ready = t.observed.get(R2, RevisionCounts()).ready
            assert ready >= needed, (
                f"t={t.now}: {share:g}% of live traffic on {ready} ready canary "
                f"replica(s), sized for {needed}; weights {t.decision.weights}"
            )


def test_canary_replica_counts_follow_the_weight() -> None:
    sim = Sim.serving(canary(weight(20), pause(5), weight(60), pause(5), weight(100)), desired=5)
    sim.revision = R2
    sim.run_until(lambda d: d.state.canary is None)
    sizes = {step: {t.decision.targets[R2] for t in ticks_at(sim, step)} for step in (1, 3)}
    assert sizes == {1: {1}, 3: {3}}  # ceil(5 * 20%), ceil(5 * 60%)


def test_canary_weight_zero_step_runs_one_replica() -> None:
    sim = Sim.serving(canary(weight(0), pause(5), weight(100)), desired=3)
    sim.revision = R2
    sim.tick()
    at_0 = sim.run(3)
    assert all(d.targets[R2] == 1 for d in at_0)
    assert all(d.weights.get(R2, 0.0) == 0.0 for d in at_0)
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R2


def test_pause_without_duration_waits_for_a_promote_of_that_step() -> None:
    sim = Sim.serving(canary(weight(20), pause(), weight(100)), desired=5)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    held = sim.run(600)
    assert all(d.state.step == 1 and d.weights == {R1: 80.0, R2: 20.0} for d in held)
    assert held[-1].state.message == "paused at step 2/3 until promoted"
    assert held[-1].state.pause_until is None
    # a promote of another revision does nothing
    for stale in (f"{R3}|next|1", f"{R1}|next|2"):
        sim.requests = Requests(promote=stale)
        assert sim.tick().state.step == 1
        assert sim.state.seen_promote == stale
    sim.requests = Requests(promote=f"{R2}|next|4")
    moved = sim.tick()
    assert moved.state.step == 2
    assert moved.targets[R2] == 5
    assert moved.state.seen_promote == f"{R2}|next|4"
    promoted = sim.run_until(lambda d: d.state.canary is None, limit=10)
    assert promoted.state.stable == R2


def test_a_promote_request_is_acted_on_once() -> None:
    sim = Sim.serving(canary(weight(10), pause(), weight(50), pause(), weight(100)), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(promote=f"{R2}|step1|1")
    sim.run_until(lambda d: d.state.step == 3, limit=10)
    # the same request seen again (it stays in the store) does not pass step 3
    held = sim.run(30)
    assert all(d.state.step == 3 for d in held)
    sim.requests = Requests(promote=f"{R2}|step3|2")
    assert sim.run_until(lambda d: d.state.canary is None, limit=10).state.stable == R2


def test_promote_of_the_current_step_cuts_a_timed_pause_short() -> None:
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.run(5)
    sim.requests = Requests(promote=f"{R2}|step1|1")
    moved = sim.tick()
    assert moved.state.step == 2
    assert moved.targets[R2] == 2
    # the next pause is not cut short by the same request
    sim.run_until(lambda d: d.state.step == 4, limit=50)
    assert len(ticks_at(sim, 3)) == 30


def test_promote_full_promotes_at_once() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PENDING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(promote=f"{R2}|full|1")
    first = sim.tick()
    # skips the steps and the (pending) analysis, but keeps the stable revision until the
    # canary has the replicas to carry all traffic
    assert reasons(first.events) == ["RolloutPromotedByUser"]
    assert first.targets == {R1: 4, R2: 4}
    promoted = sim.run_until(lambda d: d.state.canary is None, limit=20)
    assert reasons(promoted.events) == ["RolloutPromoted"]
    assert sim.counts(R2).ready == 4
    assert promoted.state.stable == R2
    assert promoted.state.phase == "Healthy"
    assert promoted.targets == {R2: 4}
    assert promoted.weights == {R2: 100.0}
    assert promoted.outcomes == {R2: "Stable", R1: "Superseded"}


@pytest.mark.parametrize("spec", [canary(), blue_green(), rolling()], ids=lambda s: s.strategy)
def test_promote_full_never_leaves_the_endpoint_without_a_ready_replica(spec: Rollout) -> None:
    """The controller points the endpoint at the ready replicas of the targets and stops
    the rest: a full promote before the new revision serves must not stop the old one."""
    sim = Sim.serving(spec, desired=4, delays={R2: 10.0})
    sim.revision = R2
    sim.tick()
    sim.requests = Requests(promote=f"{R2}|full|1")
    for _ in range(15):
        sim.tick()
        serving = sum(c.ready for c in sim.ticks[-1].after.values())
        assert serving > 0, f"t={sim.ticks[-1].now}: no ready replica; {sim.ticks[-1].decision}"
    assert sim.state.stable == R2


def test_promotion_waits_for_a_passing_gate_at_the_last_step() -> None:
    sim = Sim.serving(canary(weight(50), pause(5), weight(100), analysis=CHECKS), desired=2)
    sim.gate = PASSING
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 2)
    sim.gate = PENDING
    held = sim.run(120)
    assert all(d.state.canary == R2 and d.state.step == 3 for d in held[5:])
    assert all(d.weights == {R1: 0.0, R2: 100.0} for d in held[5:])
    assert all(d.targets == {R1: 2, R2: 2} for d in held)
    assert (
        held[-1].state.message == f"waiting for the analysis to pass (Pending: {PENDING.message})"
    )
    assert held[-1].state.phase == "Progressing"
    sim.gate = PASSING
    promoted = sim.tick()
    assert promoted.state.stable == R2
    assert promoted.outcomes == {R2: "Stable", R1: "Superseded"}


def test_a_timed_pause_also_waits_for_a_passing_gate() -> None:
    sim = Sim.serving(canary(weight(10), pause(10), weight(100), analysis=CHECKS), desired=4)
    sim.gate = PENDING
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    held = sim.run(60)
    assert all(d.state.step == 1 for d in held)
    assert "waiting for the analysis to pass" in held[-1].state.message
    sim.gate = PASSING
    assert sim.tick().state.step == 2


def test_without_checks_there_is_no_gate_to_wait_for() -> None:
    sim = Sim.serving(canary(weight(50), pause(3), weight(100)), desired=2)
    sim.revision = R2
    promoted = sim.run_until(lambda d: d.state.canary is None, limit=20)
    assert promoted.state.stable == R2
    assert all("analysis" not in t.decision.state.message for t in sim.ticks)


def test_mirror_percent_copies_traffic_to_the_canary_until_it_takes_all() -> None:
    analysis = Analysis(mirror_percent=25.0)
    sim = Sim.serving(canary(weight(10), pause(5), weight(100), analysis=analysis), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.canary is None)
    for t in sim.ticks:
        if t.decision.state.canary != R2:
            continue
        if t.decision.state.weight < 100:
            assert (t.decision.mirror_revision, t.decision.mirror_percent) == (R2, 25.0)
        else:
            assert t.decision.mirror_revision is None


# --------------------------------------------------------------------------- rollback


def test_a_failed_gate_rolls_back_at_once() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 3)
    assert sim.counts(R2).ready == 2
    sim.gate = FAILED
    back = sim.tick()
    assert back.weights == {R1: 100.0}
    assert back.targets == {R1: 4}
    assert back.state.phase == "Degraded"
    assert back.state.canary is None
    assert back.state.stable == R1
    assert back.state.aborted == R2
    assert back.state.weight == 0.0
    [(type_, reason, message)] = back.events
    assert (type_, reason) == ("Warning", "RolledBack")
    assert FAILED.message in message
    assert R2 in message
    assert R1 in message
    assert back.state.message == message
    assert back.outcomes == {R2: "RolledBack"}
    assert sim.outcomes[R2] == "RolledBack"
    # instant: the stable revision never stopped serving
    assert sim.ticks[-1].after == {R1: RevisionCounts(ready=4, alive=4)}


def test_a_rolled_back_revision_is_not_retried_until_asked() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=3, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = FAILED
    message = sim.tick().state.message
    sim.gate = None  # the controller judges no canary: no gate any more
    later = sim.run(120)
    for d in later:
        assert d.targets == {R1: 3}
        assert d.weights == {R1: 100.0}
        assert d.state.phase == "Degraded"
        assert d.state.aborted == R2
        assert d.state.message == message
        assert d.events == []
        assert d.outcomes == {}
        assert not d.reset_analysis
    # a retry of another revision changes nothing
    sim.requests = Requests(retry=f"{R3}|1")
    assert sim.tick().state.phase == "Degraded"
    # a retry of the rolled back one starts it again from step 0
    sim.requests = Requests(retry=f"{R2}|2")
    retried = sim.tick()
    assert reasons(retried.events) == ["RolloutRetried", "RolloutStarted"]
    assert retried.state.aborted is None
    assert (retried.state.canary, retried.state.step, retried.state.phase) == (R2, 0, "Progressing")
    assert retried.reset_analysis
    assert retried.outcomes == {R2: "Progressing"}
    assert retried.targets == {R1: 3, R2: 1}
    # the same retry request seen again does nothing more
    sim.gate = PASSING
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R2
    assert "RolloutRetried" not in reasons(sim.events[sim.events.index(retried.events[0]) + 1 :])


def test_a_change_after_a_rollback_rolls_out_again() -> None:
    sim = Sim.serving(canary(weight(50), pause(5), weight(100)), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(abort=R2)
    assert sim.tick().state.aborted == R2
    sim.revision = R3
    started = sim.tick()
    assert started.state.canary == R3
    assert started.state.aborted is None
    assert started.state.phase == "Progressing"
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R3


def test_the_spec_back_at_the_stable_revision_after_a_rollback_is_healthy() -> None:
    sim = Sim.serving(canary(), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(abort=R2)
    sim.tick()
    sim.revision = R1
    healthy = sim.tick()
    assert healthy.state.phase == "Healthy"
    assert healthy.state.aborted is None
    assert healthy.state.message == ""
    assert healthy.targets == {R1: 2}


def test_abort_rolls_back_with_outcome_aborted() -> None:
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(abort=R2)
    back = sim.tick()
    assert back.state.phase == "Degraded"
    assert back.state.aborted == R2
    assert back.targets == {R1: 4}
    assert back.weights == {R1: 100.0}
    assert back.outcomes == {R2: "Aborted"}
    [(type_, reason, message)] = back.events
    assert (type_, reason) == ("Warning", "RolledBack")
    assert "aborted by the user" in message
    assert sim.run(10)[-1].state.phase == "Degraded"


def test_an_abort_of_another_revision_is_ignored() -> None:
    sim = Sim.serving(canary(), desired=2)
    sim.revision = R2
    sim.requests = Requests(abort=R3)
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R2


def test_a_retry_after_an_abort_is_not_aborted_again() -> None:
    """The store keeps the abort request (``abort: REVISION``, no nonce) after the user
    retries that revision; the retried rollout must run, not be aborted a second time."""
    sim = Sim.serving(canary(), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(abort=R2)
    assert sim.tick().state.aborted == R2
    sim.requests = Requests(abort=R2, retry=f"{R2}|1")
    retried = sim.run(10)
    assert retried[0].state.canary == R2
    assert all(d.state.phase != "Degraded" for d in retried), [
        (d.state.phase, d.state.message) for d in retried
    ]
    assert reasons(sim.events).count("RolledBack") == 1


# --------------------------------------------------------------------------- pause, inconclusive


def test_a_user_pause_holds_the_step() -> None:
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(pause=True)
    held = sim.run(120)  # far past the 30s pause
    for d in held:
        assert d.state.phase == "Paused"
        assert d.state.paused_reason == "paused by the user"
        assert d.state.message == "paused by the user"
        assert d.state.step == 1
        assert d.weights == {R1: 90.0, R2: 10.0}
        assert d.targets == {R1: 4, R2: 1}
        assert d.state.canary == R2
    sim.requests = Requests(pause=False, resume="1")
    resumed = sim.tick()
    assert resumed.state.phase == "Progressing"
    assert resumed.state.paused_reason is None
    assert resumed.reset_inconclusive
    assert resumed.state.step == 2  # the pause's time is long over
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R2


def test_a_user_pause_holds_the_last_step_even_when_passing() -> None:
    sim = Sim.serving(canary(weight(100), analysis=CHECKS), desired=2, gate=PENDING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(pause=True)
    sim.tick()
    sim.gate = PASSING
    assert all(d.state.canary == R2 and d.state.phase == "Paused" for d in sim.run(20))
    sim.requests = Requests(resume="1")
    assert sim.tick().state.stable == R2


def test_a_failed_gate_rolls_back_while_paused() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(pause=True)
    sim.run(10)
    sim.gate = FAILED
    back = sim.tick()
    assert back.state.phase == "Degraded"
    assert back.state.paused_reason is None
    assert back.targets == {R1: 4}
    assert back.outcomes == {R2: "RolledBack"}


def test_an_abort_works_while_paused() -> None:
    sim = Sim.serving(canary(), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.requests = Requests(pause=True)
    sim.run(3)
    sim.requests = Requests(pause=True, abort=R2)
    assert sim.tick().outcomes == {R2: "Aborted"}


def test_an_inconclusive_gate_pauses_until_resumed() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = INCONCLUSIVE
    held = sim.run(90)
    for d in held:
        assert d.state.phase == "Paused"
        assert d.state.paused_reason is not None
        assert INCONCLUSIVE.message in d.state.paused_reason
        assert "resume" in d.state.paused_reason
        assert d.state.step == 1
        assert d.weights == {R1: 90.0, R2: 10.0}
        assert d.targets == {R1: 4, R2: 1}
    # resume: the controller forgets the inconclusive counts; on that pass the gate it
    # computed is still the old one, from the next pass on the analysis measures afresh
    sim.requests = Requests(resume="1")
    resumed = sim.tick()
    assert resumed.reset_inconclusive
    assert resumed.state.seen_resume == "1"
    sim.gate = PENDING
    after = sim.tick()
    assert after.state.phase == "Progressing"
    assert after.state.paused_reason is None
    assert not after.reset_inconclusive  # the resume was seen once
    sim.gate = PASSING
    assert sim.run_until(lambda d: d.state.canary is None).state.stable == R2


def test_a_resume_with_a_fresh_gate_continues_at_once() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = INCONCLUSIVE
    sim.run(40)
    sim.gate = PASSING
    sim.requests = Requests(resume="1")
    resumed = sim.tick()
    assert resumed.state.phase == "Progressing"
    assert resumed.state.paused_reason is None
    assert resumed.state.step == 2


def test_promote_ends_an_inconclusive_pause_and_skips_the_step() -> None:
    """The control API sends promote with resume (and pause=false): the user takes the
    decision the analysis could not, as `kubectl argo rollouts promote` does."""
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = INCONCLUSIVE
    assert sim.run(5)[-1].state.phase == "Paused"
    sim.requests = Requests(promote=f"{R2}|step1|9", resume="9")
    promoted = sim.tick()
    assert promoted.state.phase == "Progressing"
    assert promoted.state.step == 2
    assert promoted.reset_inconclusive


def test_a_failed_gate_rolls_back_an_inconclusive_pause() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=4, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = INCONCLUSIVE
    sim.run(5)
    sim.gate = FAILED
    assert sim.tick().state.phase == "Degraded"


# --------------------------------------------------------------------------- spec changes


def test_the_spec_back_at_the_stable_revision_abandons_the_canary() -> None:
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 3)
    sim.revision = R1
    back = sim.tick()
    assert back.targets == {R1: 4}
    assert back.state == RolloutState(stable=R1, phase="Healthy")
    assert reasons(back.events) == ["RolloutAbandoned"]
    assert back.events[0][0] == "Normal"
    assert R2 in back.events[0][2]
    assert back.outcomes == {R2: "Superseded"}
    assert sim.ticks[-1].after == {R1: RevisionCounts(ready=4, alive=4)}
    assert all(d.targets == {R1: 4} and not d.events for d in sim.run(5))


def test_a_newer_revision_during_a_rollout_starts_over() -> None:
    sim = Sim.serving(canary(), desired=4)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 3)
    sim.revision = R3
    restarted = sim.tick()
    assert restarted.reset_analysis
    assert (restarted.state.stable, restarted.state.canary) == (R1, R3)
    assert restarted.state.step == 0
    assert restarted.state.phase == "Progressing"
    assert restarted.targets == {R1: 4, R3: 1}
    assert restarted.weights == {R1: 100.0}
    assert restarted.outcomes == {R2: "Superseded", R3: "Progressing"}
    assert reasons(restarted.events) == ["RolloutStarted"]
    assert R3 in restarted.events[0][2]
    promoted = sim.run_until(lambda d: d.state.canary is None)
    assert promoted.state.stable == R3
    assert promoted.outcomes == {R3: "Stable", R1: "Superseded"}
    assert sim.outcomes == {R1: "Superseded", R2: "Superseded", R3: "Stable"}


def test_a_newer_revision_forgets_a_pause_and_its_paused_reason() -> None:
    sim = Sim.serving(canary(analysis=CHECKS), desired=2, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.step == 1)
    sim.gate = INCONCLUSIVE
    sim.run(3)
    sim.gate = None
    sim.revision = R3
    restarted = sim.tick()
    assert restarted.state.phase == "Progressing"
    assert restarted.state.paused_reason is None


# --------------------------------------------------------------------------- blue-green


def test_blue_green_previews_switches_and_promotes() -> None:
    sim = Sim.serving(blue_green(auto=20, scale_down=15, analysis=CHECKS), desired=3)
    sim.gate = PASSING
    start = sim.now
    sim.revision = R2
    first = sim.tick()
    assert reasons(first.events) == ["RolloutStarted"]
    assert first.reset_analysis
    # preview: the new revision at full size, mirrored traffic, no live weight
    assert first.targets == {R1: 3, R2: 3}
    assert first.weights == {R1: 100.0}
    assert (first.mirror_revision, first.mirror_percent) == (R2, 100.0)
    switched = sim.run_until(lambda d: d.state.switched_at is not None)
    ready_at = start + 2
    assert switched.state.preview_ready_at == ready_at
    assert sim.ticks[-1].now == ready_at + 20
    for t in sim.ticks[-23:-1]:
        assert t.decision.weights == {R1: 100.0}
        assert t.decision.targets == {R1: 3, R2: 3}
        assert t.decision.mirror_revision == R2
    assert reasons(switched.events) == ["RolloutSwitched"]
    assert switched.weights == {R2: 100.0}
    assert switched.targets == {R1: 3, R2: 3}
    assert switched.mirror_revision == R1  # the old one is compared on mirrored requests
    assert switched.analyse
    # the old revision stays up scaleDownDelay, then the new one is promoted
    promoted = sim.run_until(lambda d: d.state.canary is None)
    assert sim.ticks[-1].now == ready_at + 20 + 15
    for t in sim.ticks[-16:-1]:
        assert t.decision.weights == {R2: 100.0}
        assert t.decision.targets == {R1: 3, R2: 3}
        assert t.after[R1].ready == 3
    assert promoted.state.stable == R2
    assert promoted.targets == {R2: 3}
    assert promoted.outcomes == {R2: "Stable", R1: "Superseded"}


def test_blue_green_waits_for_the_whole_preview_to_be_ready() -> None:
    sim = Sim.serving(blue_green(auto=0), desired=3, delays={R2: 10.0})
    sim.revision = R2
    waiting = sim.run(10)
    assert all(d.state.switched_at is None for d in waiting)
    assert "preview: waiting for revision" in waiting[-1].state.message
    assert sim.tick().state.switched_at is not None


def test_blue_green_switch_waits_for_a_passing_gate() -> None:
    sim = Sim.serving(blue_green(auto=5, analysis=CHECKS), desired=2, gate=PENDING)
    sim.revision = R2
    held = sim.run(60)
    assert all(d.state.switched_at is None and d.weights == {R1: 100.0} for d in held)
    assert "waiting for the analysis to pass" in held[-1].state.message
    sim.gate = PASSING
    assert sim.tick().weights == {R2: 100.0}


def test_blue_green_scale_down_waits_for_a_passing_gate() -> None:
    sim = Sim.serving(blue_green(auto=1, scale_down=5, analysis=CHECKS), desired=2, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.switched_at is not None)
    sim.gate = PENDING
    held = sim.run(30)
    assert all(d.state.canary == R2 and d.targets == {R1: 2, R2: 2} for d in held)
    sim.gate = PASSING
    assert sim.tick().state.stable == R2


def test_blue_green_rollback_after_the_switch_returns_all_traffic() -> None:
    sim = Sim.serving(blue_green(auto=5, scale_down=30, analysis=CHECKS), desired=3, gate=PASSING)
    sim.revision = R2
    sim.run_until(lambda d: d.state.switched_at is not None)
    sim.run(10)
    sim.gate = FAILED
    back = sim.tick()
    assert back.weights == {R1: 100.0}
    assert back.targets == {R1: 3}
    assert back.mirror_revision is None
    assert back.state.phase == "Degraded"
    assert back.state.aborted == R2
    assert back.outcomes == {R2: "RolledBack"}
    assert sim.ticks[-1].after == {R1: RevisionCounts(ready=3, alive=3)}


def test_blue_green_without_auto_promotion_waits_for_promote() -> None:
    sim = Sim.serving(blue_green(auto=None, scale_down=5), desired=2)
    sim.revision = R2
    held = sim.run(300)
    assert all(d.state.switched_at is None and d.weights == {R1: 100.0} for d in held)
    assert held[-1].state.message == "preview ready; waiting for promote"
    sim.requests = Requests(promote=f"{R2}|next|1")
    switched = sim.tick()
    assert switched.weights == {R2: 100.0}
    assert reasons(switched.events) == ["RolloutPromotedByUser", "RolloutSwitched"]
    promoted = sim.run_until(lambda d: d.state.canary is None, limit=10)
    assert promoted.state.stable == R2


def test_blue_green_user_pause_holds_the_preview() -> None:
    sim = Sim.serving(blue_green(auto=3), desired=2, requests=Requests(pause=True))
    sim.revision = R2
    held = sim.run(60)
    assert all(d.state.switched_at is None and d.state.phase == "Paused" for d in held)
    assert held[-1].state.message == "paused by the user"
    sim.requests = Requests(resume="1")
    assert sim.tick().weights == {R2: 100.0}


def test_blue_green_user_pause_after_the_switch_keeps_the_old_revision() -> None:
    """Paused after the switch: the old revision stays up (rollback stays instant) and the
    new one is not promoted until resumed."""
    sim = Sim.serving(blue_green(auto=2, scale_down=10), desired=2)
    sim.revision = R2
    sim.run_until(lambda d: d.state.switched_at is not None)
    sim.requests = Requests(pause=True)
    held = sim.run(40)
    for d in held:
        assert d.state.canary == R2, f"promoted while paused: {d.state}"
        assert d.state.phase == "Paused"
        assert d.targets == {R1: 2, R2: 2}
    sim.requests = Requests(resume="1")
    assert sim.tick().state.stable == R2


# --------------------------------------------------------------------------- rolling


ROLLING_BOUNDS = [
    (4, "25%", 0),
    (4, 0, 1),
    (5, 1, 1),
    (3, 0, "50%"),
    (6, "50%", "50%"),
    (1, "25%", 0),
    (2, 2, 0),
    (10, "10%", "10%"),
]


@pytest.mark.parametrize(("desired", "surge", "unavailable"), ROLLING_BOUNDS)
def test_rolling_keeps_within_surge_and_unavailable(
    desired: int, surge: int | str, unavailable: int | str
) -> None:
    sim = Sim.serving(rolling(surge, unavailable), desired=desired, delays={R2: 3.0})
    max_surge = resolve_surge(surge, desired, round_up=True)
    max_unavailable = resolve_surge(unavailable, desired, round_up=False)
    if max_surge == 0 and max_unavailable == 0:
        max_surge = 1
    sim.revision = R2
    promoted = sim.run_until(lambda d: d.state.canary is None, limit=200)
    assert promoted.state.stable == R2
    for t in sim.ticks:
        if t.decision.state.canary != R2:
            continue
        alive = sum(c.alive for c in t.after.values())
        ready = sum(c.ready for c in t.after.values())
        assert alive <= desired + max_surge, (t.now, t.after)
        assert ready >= desired - max_unavailable, (t.now, t.after)
        assert t.decision.weights == {}  # traffic follows the ready replicas
    assert sim.run(5)[-1].targets == {R2: desired}
    assert sim.observed() == {R2: RevisionCounts(ready=desired, alive=desired)}


def test_rolling_keeps_the_old_replicas_while_the_new_are_not_ready() -> None:
    sim = Sim.serving(rolling("25%", 0), desired=4, delays={R2: 1000.0})
    sim.revision = R2
    held = sim.run(120)
    for d in held:
        assert d.targets == {R1: 4, R2: 1}
        assert d.state.phase == "Progressing"
    assert sim.counts(R1).ready == 4
    assert held[-1].state.message == f"0/4 replicas of {R2} ready"


def test_rolling_with_checks_keeps_the_last_old_replica_until_passing() -> None:
    sim = Sim.serving(rolling(1, 0, analysis=CHECKS), desired=3, gate=PENDING)
    sim.revision = R2
    sim.run_until(lambda _: sim.counts(R2).ready == 3, limit=60)
    held = sim.run(60)
    for d in held:
        assert d.targets == {R1: 1, R2: 3}
        assert d.state.canary == R2
    assert "waiting for the analysis to pass" in held[-1].state.message
    assert sim.counts(R1).ready == 1
    sim.gate = PASSING
    promoted = sim.tick()
    assert promoted.state.stable == R2
    assert promoted.targets == {R2: 3}
    assert promoted.outcomes == {R2: "Stable", R1: "Superseded"}


def test_rolling_rolls_back_on_a_failed_gate() -> None:
    sim = Sim.serving(rolling(1, 0, analysis=CHECKS), desired=3, gate=PENDING)
    sim.revision = R2
    sim.run_until(lambda _: sim.counts(R2).ready >= 1, limit=60)
    sim.gate = FAILED
    back = sim.tick()
    assert back.targets == {R1: 3}
    assert back.outcomes == {R2: "RolledBack"}
    sim.gate = None
    sim.run_until(lambda _: sim.counts(R1).ready == 3, limit=10)
    assert sim.observed() == {R1: RevisionCounts(ready=3, alive=3)}


def test_rolling_pause_holds_the_replicas() -> None:
    sim = Sim.serving(rolling(1, 0), desired=4)
    sim.revision = R2
    sim.run_until(lambda _: sim.counts(R2).ready == 2)
    sim.requests = Requests(pause=True)
    held = sim.run(30)
    assert all(d.state.phase == "Paused" and d.state.canary == R2 for d in held)
    assert held[-1].targets == held[0].targets
    assert held[-1].state.message == "paused by the user"
    sim.requests = Requests(resume="1")
    assert sim.run_until(lambda d: d.state.canary is None, limit=30).state.stable == R2


def test_rolling_to_a_new_revision_while_scaled_to_zero_records_it_as_stable() -> None:
    sim = Sim.serving(rolling(), desired=2)
    sim.desired = 0
    sim.run(3)
    sim.revision = R2
    decision = sim.tick()
    assert decision.state.stable == R2  # nothing to replace: promoted at once
    assert decision.state.canary is None
    assert decision.outcomes == {R2: "Stable", R1: "Superseded"}


# --------------------------------------------------------------------------- properties

_VERDICTS: list[GateVerdict] = ["Passing", "Passing", "Pending", "Inconclusive", "Failed"]


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from(["canary", "blueGreen", "rolling"]),
    desired=st.integers(1, 6),
    stable_delay=st.integers(0, 5),
    canary_delay=st.integers(0, 5),
    checked=st.booleans(),
    verdicts=st.lists(st.sampled_from(_VERDICTS), min_size=1, max_size=30),
    surge=st.sampled_from([0, 1, 2, "25%", "50%"]),
    unavailable=st.sampled_from([0, 1, "25%", "50%"]),
)
def test_rollout_invariants(
    strategy: str,
    desired: int,
    stable_delay: int,
    canary_delay: int,
    checked: bool,
    verdicts: list[GateVerdict],
    surge: int | str,
    unavailable: int | str,
) -> None:
    analysis = CHECKS if checked else Analysis()
    if strategy == "canary":
        spec = canary(weight(25), pause(3), weight(60), pause(2), weight(100), analysis=analysis)
    elif strategy == "blueGreen":
        spec = blue_green(auto=3, scale_down=4, analysis=analysis)
    else:
        if surge in (0, "0%") and unavailable in (0, "0%"):
            surge = 1
        spec = rolling(surge, unavailable, analysis=analysis)
    delays = {R1: float(stable_delay), R2: float(canary_delay)}
    sim = Sim.serving(spec, desired=desired, delays=delays)
    sim.revision = R2
    for i in range(90):
        sim.gate = Gate(verdicts[i % len(verdicts)], "x") if checked else None
        before = sim.state
        decision = sim.tick()
        after = sim.ticks[-1].after
        state = decision.state
        if strategy != "rolling" or state.phase == "Degraded" or state.canary is None:
            # the stable revision (the old one until promoted, the new one after) keeps
            # its full size; for rolling only before the roll and after a rollback
            assert decision.targets.get(state.stable or "", 0) >= desired, decision
        if state.phase == "Degraded":
            if strategy == "rolling" and R2 in decision.targets:
                # a rolling rollback keeps failed replicas only while the stable
                # revision is short of desired - maxUnavailable ready replicas
                unavailable = resolve_surge(
                    spec.rolling.max_unavailable,  # type: ignore[union-attr]
                    desired,
                    round_up=False,
                )
                observed = sim.ticks[-1].observed.get(R1, RevisionCounts()).ready
                assert observed < desired - unavailable, decision
                # live traffic only to the stable revision while it has a ready replica
                assert decision.weights == ({R1: 100.0} if observed else {}), decision
            else:
                assert R2 not in decision.targets
                assert decision.weights == {R1: 100.0}
        if strategy == "rolling" and state.canary == R2 and before.canary == R2:
            max_surge = resolve_surge(spec.rolling.max_surge, desired, round_up=True)  # type: ignore[union-attr]
            max_unavailable = resolve_surge(
                spec.rolling.max_unavailable,  # type: ignore[union-attr]
                desired,
                round_up=False,
            )
            if max_surge == 0 and max_unavailable == 0:
                max_surge = 1
            assert sum(c.alive for c in after.values()) <= desired + max_surge
            assert sum(c.ready for c in after.values()) >= desired - max_unavailable
        if state.stable == R2:
            assert decision.targets == {R2: desired}
            assert state.canary is None
            assert state.phase == "Healthy"
    if sim.state.phase != "Degraded" and not checked:
        assert sim.state.stable == R2  # without checks nothing holds it for 90 s


# --------------------------------------------------------------------------- progress deadline


def test_a_revision_never_ready_is_rolled_back_after_the_progress_deadline() -> None:
    spec = canary()
    spec = spec.model_copy(update={"progress_deadline": 30.0})
    sim = Sim.serving(spec, desired=2, delays={R2: 1e9})  # R2 never becomes ready
    sim.revision = R2
    held = sim.run(29)
    assert all(d.state.canary == R2 for d in held)
    rolled = sim.run_until(lambda d: d.state.phase == "Degraded", limit=5)
    assert "no ready replica within 30s" in rolled.state.message
    assert rolled.outcomes == {R2: "RolledBack"}


def test_a_restart_of_a_revision_that_was_ready_is_not_a_missed_deadline() -> None:
    """A daemon restart replaces every replica: the new revision has none ready for a
    moment, long after the rollout began. That is no reason to roll it back."""
    spec = canary(pause(), weight(100)).model_copy(update={"progress_deadline": 30.0})
    sim = Sim.serving(spec, desired=2)
    sim.revision = R2
    sim.run(60)  # held at the pause without duration, R2 ready
    assert sim.state.canary_ready_at is not None
    sim.replicas = [r for r in sim.replicas if r.revision != R2]  # all of R2 lost
    for decision in sim.run(5):
        assert decision.state.phase != "Degraded", decision.state.message


def test_a_pause_belongs_to_the_rollout_it_was_asked_for() -> None:
    sim = Sim.serving(canary(), desired=2, requests=Requests(pause=R2))
    sim.revision = R3  # another rollout than the paused one
    assert all(d.state.phase == "Progressing" for d in sim.run(5))
    sim.requests = Requests(pause=R3)
    assert sim.tick().state.phase == "Paused"


def test_a_users_request_reads_back_as_it_was_meant() -> None:
    promoted = Requests.from_store(request_values("promote", "2-b", None, "n1", full=True))
    assert promoted.promote == "2-b|full|n1"
    assert promoted.pause is False
    assert promoted.resume == "n1"
    assert Requests.from_store(request_values("pause", "2-b", None, "n2")).pause == "2-b"
    assert Requests.from_store(request_values("retry", None, "2-b", "n3")).retry == "2-b|n3"
    with pytest.raises(NothingToAct, match="no rollout in progress to abort"):
        request_values("abort", None, None, "n4")
    with pytest.raises(NothingToAct, match="retry"):
        request_values("retry", "2-b", None, "n5")
