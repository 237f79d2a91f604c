"""Progressive rollouts: which revisions run, how many replicas each, and who gets traffic.

Pure: a function of (rollout spec, the revision the spec asks for, what runs, the
analysis verdict, user requests, now) that returns the decision and the rollout's
own state, which the controller persists in ``status.rollout``.

- The revision that serves before a change is the *stable* one; the changed one is
  the *canary* (whatever the strategy). The stable revision is never scaled down
  until the canary is promoted, so a rollback is instant: all traffic goes back to
  it at once and the canary is scaled to zero.
- ``canary`` walks its steps (setWeight, pause); pauses end when their time is up
  *and* the analysis passes; the rollout is promoted after the last step only when
  the analysis passes.
- ``blueGreen`` runs the canary at full size beside the stable revision with mirrored
  traffic, switches all traffic at once, then keeps the old revision for
  ``scaleDownDelay`` (rollback stays instant) before promoting.
- ``rolling`` replaces replicas by ``maxSurge``/``maxUnavailable`` (traffic follows
  the replicas); with analysis checks the last old replica waits for a pass.
- A failed analysis or an abort rolls back; the failed revision is remembered and
  not retried until the spec changes or the user asks to retry. An inconclusive
  analysis (too little data) pauses the rollout until measurements are conclusive
  again or the user resumes (measure again) or promotes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from pilothouse.spec.resources import Rollout, resolve_surge

Phase = Literal["Healthy", "Progressing", "Paused", "Degraded"]
GateVerdict = Literal["Passing", "Pending", "Inconclusive", "Failed"]


@dataclass(frozen=True)
class RevisionCounts:
    ready: int = 0
    alive: int = 0


@dataclass(frozen=True)
class Gate:
    """The analysis verdict as the rollout needs it (None: no checks configured)."""

    verdict: GateVerdict
    message: str = ""


@dataclass(frozen=True)
class Requests:
    """What users asked for (promote, abort, pause, ...); see the control API."""

    #: the revision whose rollout the user paused (True: whatever rollout runs)
    pause: bool | str = False
    resume: str = ""
    promote: str = ""  # "REVISION|stepN|nonce" or "REVISION|full|nonce"
    abort: str = ""  # "REVISION|nonce"
    retry: str = ""  # "REVISION|nonce"

    @classmethod
    def from_store(cls, values: dict[str, str]) -> Requests:
        return cls(
            pause=_pause(values.get("pause", "")),
            resume=values.get("resume", ""),
            promote=values.get("promote", ""),
            abort=values.get("abort", ""),
            retry=values.get("retry", ""),
        )


class NothingToAct(ValueError):
    """The action needs a rollout in progress (or an aborted one, to retry), and there is none."""


#: actions on the rollout in progress (they need a canary)
ON_CANARY = ("promote", "abort", "pause", "resume")


def request_values(
    action: str,
    canary: str | None,
    aborted: str | None,
    nonce: str,
    *,
    full: bool = False,
) -> dict[str, str]:
    """What a user's ``action`` records for the controller (read back by
    ``Requests.from_store``); ``nonce`` makes each request new. NothingToAct when there is
    no rollout for it."""
    if action in ON_CANARY and not canary:
        raise NothingToAct(f"no rollout in progress to {action}")
    if action == "promote":
        step = "full" if full else "next"
        # promoting also ends a pause (as `kubectl argo rollouts promote` does)
        return {"promote": f"{canary}|{step}|{nonce}", "pause": "false", "resume": nonce}
    if action == "abort":
        return {"abort": f"{canary}|{nonce}"}
    if action == "pause":
        return {"pause": str(canary)}
    if action == "resume":
        return {"pause": "false", "resume": nonce}
    if action != "retry":
        raise ValueError(f"unknown rollout action {action!r}")
    if not aborted:
        raise NothingToAct("no aborted or rolled back rollout to retry")
    return {"retry": f"{aborted}|{nonce}"}


def _pause(value: str) -> bool | str:
    if value in ("", "false"):
        return False
    return True if value == "true" else value


@dataclass(frozen=True)
class RolloutState:
    """Persisted in ``status.rollout`` (as camelCase JSON by the controller)."""

    stable: str | None = None
    canary: str | None = None
    phase: Phase = "Healthy"
    step: int = 0
    step_started_at: float = 0.0
    pause_until: float | None = None
    weight: float = 0.0
    started_at: float | None = None
    preview_ready_at: float | None = None
    #: when the new revision first had a ready replica (the progress deadline ends there)
    canary_ready_at: float | None = None
    switched_at: float | None = None
    old_target: int | None = None
    aborted: str | None = None
    paused_reason: str | None = None
    message: str = ""
    seen_promote: str = ""
    seen_resume: str = ""
    seen_retry: str = ""
    seen_abort: str = ""
    #: the user promoted fully: promote as soon as the canary has its replicas
    promote_full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RolloutState:
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class RolloutDecision:
    state: RolloutState
    #: revision -> replicas it should run; revisions left out are stopped
    targets: dict[str, int]
    #: revision -> live traffic share; empty: every ready replica alike
    weights: dict[str, float] = field(default_factory=dict)
    mirror_revision: str | None = None
    mirror_percent: float = 0.0
    #: (type, reason, message) events to record
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: analyse the canary against the stable revision this pass
    analyse: bool = False
    #: a new rollout started: forget the previous analysis
    reset_analysis: bool = False
    #: the user resumed: forget the consecutive inconclusive counts
    reset_inconclusive: bool = False
    #: revision -> history outcome to record (Stable, Superseded, RolledBack, Aborted)
    outcomes: dict[str, str] = field(default_factory=dict)
    requeue_after: float = 1.0


def _fresh(state: RolloutState, **fields: Any) -> RolloutState:
    """A new state that remembers which user requests were already handled."""
    return RolloutState(
        seen_promote=state.seen_promote,
        seen_resume=state.seen_resume,
        seen_retry=state.seen_retry,
        seen_abort=state.seen_abort,
        **fields,
    )


def _canary_size(desired: int, weight: float) -> int:
    return max(1, math.ceil(desired * weight / 100.0)) if desired > 0 else 1


def plan_rollout(
    spec: Rollout,
    state: RolloutState,
    desired_revision: str,
    desired: int,
    observed: dict[str, RevisionCounts],
    gate: Gate | None,
    requests: Requests,
    now: float,
    canary_desired: int | None = None,
) -> RolloutDecision:
    """Decide the next step of the deployment's rollout.

    ``desired`` is the replica count the deployment wants (static or autoscaled for
    the stable revision); ``canary_desired`` the canary's own autoscaled count, if
    it autoscales on its own traffic.
    """
    events: list[tuple[str, str, str]] = []
    outcomes: dict[str, str] = {}
    reset_inconclusive = False
    if requests.resume and requests.resume != state.seen_resume:
        reset_inconclusive = True
        if state.paused_reason is not None:
            events.append(("Normal", "RolloutResumed", "resumed by the user"))
        state = replace(state, seen_resume=requests.resume, paused_reason=None)
    if requests.retry and requests.retry != state.seen_retry:
        state = replace(state, seen_retry=requests.retry)
        if state.aborted and requests.retry.split("|")[0] == state.aborted:
            events.append(("Normal", "RolloutRetried", f"retrying revision {state.aborted}"))
            state = replace(state, aborted=None)

    def done(decision: RolloutDecision) -> RolloutDecision:
        return replace(
            decision,
            events=events + decision.events,
            outcomes={**outcomes, **decision.outcomes},
            reset_inconclusive=reset_inconclusive or decision.reset_inconclusive,
        )

    # First revision: nothing to protect, it simply becomes the stable one.
    if state.stable is None:
        state = replace(state, stable=desired_revision, phase="Healthy", message="")
        return done(
            RolloutDecision(
                state, {desired_revision: desired}, outcomes={desired_revision: "Stable"}
            )
        )
    stable = state.stable

    # The spec asks for the stable revision (never changed, or changed back): no rollout.
    if desired_revision == stable:
        if state.canary is not None:
            events.append(
                (
                    "Normal",
                    "RolloutAbandoned",
                    f"the spec is back at stable revision {stable}; "
                    f"revision {state.canary} is scaled down",
                )
            )
            outcomes[state.canary] = "Superseded"
        state = _fresh(state, stable=stable, phase="Healthy")
        return done(RolloutDecision(state, {stable: desired}))

    # The spec asks for a revision that failed: stay on the stable one until told otherwise.
    if desired_revision == state.aborted:
        state = replace(
            state,
            canary=None,
            phase="Degraded",
            weight=0.0,
            message=state.message
            or f"revision {desired_revision} was rolled back; apply a change or retry",
        )
        return done(_rollback_targets(spec, state, stable, desired_revision, desired, observed))

    # A new revision (or another one than the rollout in progress): start over.
    if state.canary != desired_revision:
        if state.canary is not None:
            outcomes[state.canary] = "Superseded"
        events.append(
            (
                "Normal",
                "RolloutStarted",
                f"rolling out revision {desired_revision} ({spec.strategy}); "
                f"stable revision {stable} keeps serving",
            )
        )
        state = _fresh(
            state,
            stable=stable,
            canary=desired_revision,
            phase="Progressing",
            step=0,
            step_started_at=now,
            started_at=now,
        )
        decision = _progress(spec, state, desired, observed, gate, requests, now, canary_desired)
        return done(
            replace(
                decision,
                reset_analysis=True,
                outcomes={desired_revision: "Progressing", **decision.outcomes},
            )
        )

    canary = state.canary
    if requests.promote and requests.promote != state.seen_promote:
        revision, _, rest = requests.promote.partition("|")
        if revision == canary and rest.partition("|")[0] == "full" and not state.promote_full:
            # promote --full skips the steps and the analysis (a failing one included)
            state = replace(state, promote_full=True, seen_promote=requests.promote)
            events.append(("Normal", "RolloutPromotedByUser", "promoted fully by the user"))
    if requests.abort and requests.abort != state.seen_abort:
        state = replace(state, seen_abort=requests.abort)
        if requests.abort.split("|")[0] == canary:
            return done(_rollback(spec, state, desired, observed, "aborted by the user", "Aborted"))
    if gate is not None and gate.verdict == "Failed" and not state.promote_full:
        return done(
            _rollback(
                spec, state, desired, observed, f"analysis failed: {gate.message}", "RolledBack"
            )
        )
    started = state.started_at if state.started_at is not None else now
    canary_ready = observed.get(canary, RevisionCounts()).ready
    if canary_ready and state.canary_ready_at is None:
        state = replace(state, canary_ready_at=now)
    if state.canary_ready_at is None and now - started > spec.progress_deadline:
        # never ready since the rollout began (a restart of a revision that was ready
        # once is the replica policy's business, not a reason to roll back)
        why = f"revision {canary} had no ready replica within {spec.progress_deadline:g}s"
        return done(_rollback(spec, state, desired, observed, why, "RolledBack"))
    return done(_progress(spec, state, desired, observed, gate, requests, now, canary_desired))


def _rollback(
    spec: Rollout,
    state: RolloutState,
    desired: int,
    observed: dict[str, RevisionCounts],
    why: str,
    outcome: str,
) -> RolloutDecision:
    assert state.stable is not None
    assert state.canary is not None
    message = f"rolled back revision {state.canary} to {state.stable}: {why}"
    new_state = replace(
        state,
        canary=None,
        phase="Degraded",
        weight=0.0,
        aborted=state.canary,
        pause_until=None,
        paused_reason=None,
        promote_full=False,
        message=message,
    )
    decision = _rollback_targets(spec, new_state, state.stable, state.canary, desired, observed)
    return replace(
        decision,
        events=[("Warning", "RolledBack", message)],
        outcomes={state.canary: outcome},
        requeue_after=0.5,
    )


def _rollback_targets(
    spec: Rollout,
    state: RolloutState,
    stable: str,
    failed: str,
    desired: int,
    observed: dict[str, RevisionCounts],
) -> RolloutDecision:
    """After a rollback: all traffic to the stable revision. A rolling update had already
    scaled it down, so there the failed revision's replicas stay up (without traffic while
    any stable replica is ready: wrong answers are worse than slow ones) until the stable
    revision is back to what may be unavailable — a last resort, not a traffic target."""
    if spec.strategy == "rolling" and spec.rolling is not None:
        unavailable = resolve_surge(spec.rolling.max_unavailable, desired, round_up=False)
        stable_ready = observed.get(stable, RevisionCounts()).ready
        failed_alive = observed.get(failed, RevisionCounts()).alive
        if stable_ready < desired - unavailable and failed_alive:
            keep = min(failed_alive, max(0, desired - stable_ready))
            weights = {stable: 100.0} if stable_ready else {}
            return RolloutDecision(
                state, {stable: desired, failed: keep}, weights=weights, requeue_after=0.5
            )
    return RolloutDecision(state, {stable: desired}, weights={stable: 100.0})


def _promote(
    state: RolloutState,
    desired: int,
    canary_desired: int | None,
    observed: dict[str, RevisionCounts],
) -> RolloutDecision:
    """Make the canary the stable revision — once it has the replicas to carry all
    traffic; until then both run and the traffic split stays as it is."""
    stable, canary = state.stable, state.canary
    assert stable is not None
    assert canary is not None
    size = max(canary_desired if canary_desired is not None else desired, desired)
    ready = observed.get(canary, RevisionCounts()).ready
    if ready < size and desired > 0:
        message = f"promoting: waiting for revision {canary} ({ready}/{size} ready)"
        weights = {stable: 100.0 - state.weight, canary: state.weight} if ready else {stable: 100.0}
        return RolloutDecision(
            replace(state, message=message), {stable: desired, canary: size}, weights=weights
        )
    message = f"revision {canary} promoted; it is now the stable revision"
    new_state = _fresh(state, stable=canary, phase="Healthy", message=message)
    return RolloutDecision(
        new_state,
        {canary: size},
        weights={canary: 100.0},
        events=[("Normal", "RolloutPromoted", message)],
        outcomes={canary: "Stable", stable: "Superseded"},
        requeue_after=0.5,
    )


def _gate_open(gate: Gate | None) -> bool:
    return gate is None or gate.verdict == "Passing"


def _waiting_message(gate: Gate | None) -> str:
    if gate is None:
        return ""
    return f"waiting for the analysis to pass ({gate.verdict}: {gate.message})"


def _promote_request(requests: Requests, state: RolloutState) -> tuple[bool, bool, str]:
    """(skip the current wait?, promote fully?, the request seen) for a new promote request
    ("REVISION|next|nonce" or "REVISION|full|nonce"; each nonce acts once)."""
    if not requests.promote or requests.promote == state.seen_promote:
        return False, False, state.seen_promote
    revision, _, rest = requests.promote.partition("|")
    if revision != state.canary:
        return False, False, requests.promote
    kind = rest.partition("|")[0]
    return True, kind == "full", requests.promote


def _progress(
    spec: Rollout,
    state: RolloutState,
    desired: int,
    observed: dict[str, RevisionCounts],
    gate: Gate | None,
    requests: Requests,
    now: float,
    canary_desired: int | None,
) -> RolloutDecision:
    assert state.stable is not None
    assert state.canary is not None
    step_promote, full_promote, seen = _promote_request(requests, state)
    state = replace(state, seen_promote=seen)
    events: list[tuple[str, str, str]] = []
    if full_promote and not state.promote_full:
        state = replace(state, promote_full=True)
        events.append(("Normal", "RolloutPromotedByUser", "promoted fully by the user"))
    if state.promote_full:
        # skip the remaining steps and the analysis; _promote still waits for the canary
        # to have its replicas before the stable revision goes
        decision = _promote(state, desired, canary_desired, observed)
        return replace(decision, events=events + decision.events)
    inconclusive = gate is not None and gate.verdict == "Inconclusive"
    paused = requests.pause is True or requests.pause == state.canary
    was_held = state.paused_reason is not None
    if paused:
        state = replace(state, phase="Paused", paused_reason="paused by the user")
    elif inconclusive and not state.paused_reason:
        assert gate is not None
        state = replace(
            state,
            phase="Paused",
            paused_reason=f"analysis inconclusive: {gate.message}; "
            "`pilothouse rollout resume` to measure again, or promote",
        )
    elif not inconclusive:
        state = replace(state, phase="Progressing", paused_reason=None)
    if step_promote and not paused and state.phase == "Paused":
        # promote ends a pause for lack of data: the user takes the decision
        state = replace(state, phase="Progressing", paused_reason=None)
    held = state.phase == "Paused"
    if held and not was_held:
        events.append(("Normal", "RolloutPaused", state.paused_reason or "paused"))
    elif was_held and not held:
        events.append(("Normal", "RolloutResumed", "the rollout goes on"))
    if step_promote:
        events.append(("Normal", "RolloutPromotedByUser", "promoted past the current wait"))
    if spec.strategy == "blueGreen":
        decision = _blue_green(spec, state, desired, observed, gate, step_promote, held, now)
    elif spec.strategy == "rolling":
        decision = _rolling(spec, state, desired, observed, gate, held)
    else:
        decision = _canary(
            spec, state, desired, observed, gate, step_promote, held, now, canary_desired
        )
    return replace(decision, events=events + decision.events)


def _canary(
    spec: Rollout,
    state: RolloutState,
    desired: int,
    observed: dict[str, RevisionCounts],
    gate: Gate | None,
    step_promote: bool,
    held: bool,
    now: float,
    canary_desired: int | None,
) -> RolloutDecision:
    assert spec.canary is not None
    assert state.stable is not None
    assert state.canary is not None
    stable, canary = state.stable, state.canary
    steps = spec.canary.steps
    canary_ready = observed.get(canary, RevisionCounts()).ready
    message = ""
    # Walk as many steps as are complete now (setWeight completes once the canary is up).
    sizing_weight = state.weight
    while not held and state.step < len(steps):
        step = steps[state.step]
        if step.set_weight is not None:
            weight = float(step.set_weight)
            needed = _sized(desired, weight, canary_desired)
            sizing_weight = max(state.weight, weight)
            if weight > 0 and canary_ready < needed:
                # the canary gets its new share only once it has the replicas for it
                message = f"waiting for revision {canary} to be ready ({canary_ready}/{needed})"
                break
            state = _next_step(replace(state, weight=weight), now)
            sizing_weight = weight
            continue
        assert step.pause is not None
        if step_promote:
            state, step_promote = _next_step(state, now), False
            continue
        if step.pause.duration is None:
            message = f"paused at step {state.step + 1}/{len(steps)} until promoted"
            state = replace(state, phase="Paused")  # shown only; the next pass re-derives it
            break
        until = state.step_started_at + step.pause.duration
        state = replace(state, pause_until=until)
        if now < until:
            message = f"step {state.step + 1}/{len(steps)}: holding {state.weight:g}% for {until - now:.0f}s more"
            break
        if not _gate_open(gate):
            message = _waiting_message(gate)
            break
        state = _next_step(state, now)
    if not held and state.step >= len(steps):
        if _gate_open(gate) or step_promote:
            return _promote(state, desired, canary_desired, observed)
        message = _waiting_message(gate)
    if held:
        message = state.paused_reason or "paused"
    weight = state.weight
    targets = {stable: desired, canary: _sized(desired, sizing_weight, canary_desired)}
    weights = {stable: 100.0 - weight, canary: weight} if canary_ready else {stable: 100.0}
    # Mirror the stable revision's requests to the canary; once the canary takes all live
    # traffic, mirror its requests to the stable revision instead, so model checks keep
    # comparing both on the same inputs until promotion.
    mirror = spec.analysis.mirror_percent
    mirror_to = canary if weight < 100.0 else stable
    state = replace(state, message=message)
    return RolloutDecision(
        state,
        targets,
        weights=weights,
        mirror_revision=mirror_to if mirror > 0 else None,
        mirror_percent=mirror,
        analyse=canary_ready > 0,
    )


def _sized(desired: int, weight: float, canary_desired: int | None) -> int:
    """The canary's replicas for a traffic share: that share of the stable revision's count
    (what the traffic it takes over needed there), or what its own autoscaler asks, if more."""
    return max(_canary_size(desired, weight), canary_desired or 0)


def _next_step(state: RolloutState, now: float) -> RolloutState:
    return replace(state, step=state.step + 1, step_started_at=now, pause_until=None)


def _blue_green(
    spec: Rollout,
    state: RolloutState,
    desired: int,
    observed: dict[str, RevisionCounts],
    gate: Gate | None,
    step_promote: bool,
    held: bool,
    now: float,
) -> RolloutDecision:
    assert spec.blue_green is not None
    assert state.stable is not None
    assert state.canary is not None
    settings = spec.blue_green
    stable, canary = state.stable, state.canary
    size = max(desired, 1)
    canary_ready = observed.get(canary, RevisionCounts()).ready
    targets = {stable: desired, canary: size}
    mirror = settings.preview_mirror_percent
    if state.switched_at is None:
        if canary_ready < size:
            state = replace(
                state, message=f"preview: waiting for revision {canary} ({canary_ready}/{size})"
            )
        else:
            if state.preview_ready_at is None:
                state = replace(state, preview_ready_at=now)
            ready_at = state.preview_ready_at if state.preview_ready_at is not None else now
            delay = settings.auto_promotion_delay if settings.auto_promote else None
            due = delay is not None and now >= ready_at + delay
            if held:
                state = replace(state, message=state.paused_reason or "paused")
            elif (due and _gate_open(gate)) or step_promote:
                state = replace(state, switched_at=now, weight=100.0)
                return RolloutDecision(
                    replace(state, message=f"switched all traffic to revision {canary}"),
                    targets,
                    weights={canary: 100.0},
                    mirror_revision=stable if mirror > 0 else None,
                    mirror_percent=mirror,
                    events=[
                        (
                            "Normal",
                            "RolloutSwitched",
                            f"all traffic switched to revision {canary}; revision {stable} "
                            f"stays up {settings.scale_down_delay:g}s for instant rollback",
                        )
                    ],
                    analyse=True,
                    requeue_after=0.5,
                )
            elif delay is None:
                state = replace(state, message="preview ready; waiting for promote")
            elif not due:
                left = ready_at + delay - now
                state = replace(state, message=f"preview: switching in {left:.0f}s")
            else:
                state = replace(state, message=_waiting_message(gate))
        return RolloutDecision(
            state,
            targets,
            weights={stable: 100.0},
            mirror_revision=canary if mirror > 0 else None,
            mirror_percent=mirror,
            analyse=canary_ready > 0,
        )
    # switched: the old revision waits scaleDownDelay, ready to take traffic back — and
    # takes it back at once while the new one has no ready replica
    live = {canary: 100.0} if canary_ready else {stable: 100.0}
    switched_at = state.switched_at
    if not held and now >= switched_at + settings.scale_down_delay and _gate_open(gate):
        return _promote(state, desired, None, observed)
    left = max(0.0, switched_at + settings.scale_down_delay - now)
    message = (
        (state.paused_reason or "paused")
        if held
        else f"switched; revision {stable} scales down in {left:.0f}s"
    )
    state = replace(state, message=message)
    return RolloutDecision(
        state,
        targets,
        weights=live,
        mirror_revision=stable if mirror > 0 else None,
        mirror_percent=mirror,
        analyse=True,
    )


def _rolling(
    spec: Rollout,
    state: RolloutState,
    desired: int,
    observed: dict[str, RevisionCounts],
    gate: Gate | None,
    held: bool,
) -> RolloutDecision:
    assert spec.rolling is not None
    assert state.stable is not None
    assert state.canary is not None
    stable, canary = state.stable, state.canary
    surge = resolve_surge(spec.rolling.max_surge, desired, round_up=True)
    unavailable = resolve_surge(spec.rolling.max_unavailable, desired, round_up=False)
    if surge == 0 and unavailable == 0:
        surge = 1
    new_ready = observed.get(canary, RevisionCounts()).ready
    old_target = state.old_target if state.old_target is not None else desired
    if not held:
        # old replicas go as new ones become ready, never below desired - maxUnavailable
        old_target = max(0, min(old_target, desired - unavailable - new_ready))
        if spec.analysis.checks and not _gate_open(gate) and desired > 0:
            old_target = max(old_target, 1)  # the last old replica waits for the analysis
    new_target = min(desired, max(0, desired + surge - old_target))
    if held:
        new_target = min(new_target, max(new_ready, 1))
    state = replace(state, old_target=old_target, weight=100.0 * new_ready / max(1, desired))
    if not held and old_target == 0 and new_ready >= desired:
        return _promote(state, desired, None, observed)
    message = state.paused_reason if held else f"{new_ready}/{desired} replicas of {canary} ready"
    if not held and old_target == 1 and new_ready >= desired and gate is not None:
        message = _waiting_message(gate)
    return RolloutDecision(
        replace(state, message=message or ""),
        {stable: old_target, canary: new_target},
        mirror_revision=canary if spec.analysis.mirror_percent > 0 and new_ready else None,
        mirror_percent=spec.analysis.mirror_percent,
        analyse=new_ready > 0,
    )
