"""What a training job does next, given its phase, its worker gang and the clock.

Phases follow Kubernetes Jobs: Pending -> Running -> Succeeded | Failed, with
Restarting (waiting out a backoff) between failed attempts while restarts remain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from pilothouse.policy.backoff import BackoffParams, restart_delay


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    REGISTERING = "Registering"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Action(StrEnum):
    NONE = "none"
    START = "start"
    WAIT = "wait"
    REGISTER = "register"
    FAIL = "fail"


@dataclass(frozen=True)
class GangObservation:
    """What the runtime reports about the current attempt's workers."""

    running: int
    succeeded: int
    failed: int
    workers: int
    exit_code: int | None = None
    message: str = ""
    #: workers waiting for a node (the gang starts when all are placed)
    pending: int = 0
    #: the platform stopped the gang (node lost, drained, preempted): not the job's failure
    disrupted: str = ""


@dataclass(frozen=True)
class TrainingState:
    phase: Phase = Phase.PENDING
    attempt: int = 0
    restarts: int = 0
    next_start_at: float = 0.0
    message: str = ""
    #: attempts ended by the platform (not counted against maxRestarts)
    disruptions: int = 0


@dataclass(frozen=True)
class TrainingDecision:
    action: Action
    state: TrainingState
    requeue_after: float | None


def decide_training(
    state: TrainingState,
    gang: GangObservation | None,
    max_restarts: int,
    backoff: BackoffParams,
    now: float,
) -> TrainingDecision:
    """One step of the training job state machine; pure."""
    if state.phase in (Phase.SUCCEEDED, Phase.FAILED):
        return TrainingDecision(Action.NONE, state, None)
    if state.phase == Phase.REGISTERING:
        return TrainingDecision(Action.REGISTER, state, 1.0)
    if state.phase == Phase.PENDING or (state.phase == Phase.RESTARTING and gang is None):
        if now < state.next_start_at:
            return TrainingDecision(Action.WAIT, state, state.next_start_at - now)
        started = TrainingState(
            phase=Phase.RUNNING,
            attempt=state.attempt + 1,
            restarts=state.restarts,
            message=f"attempt {state.attempt + 1} submitted",
            disruptions=state.disruptions,
        )
        return TrainingDecision(Action.START, started, 0.5)
    # Running (or Restarting with a gang still reported): look at the workers.
    if gang is None:
        # Workers that vanish (lost node, killed from outside) count as a failed
        # attempt: they use up a restart, so a job cannot restart forever.
        gang = GangObservation(
            running=0,
            succeeded=0,
            failed=1,
            workers=1,
            message=f"the workers of attempt {state.attempt} are gone",
        )
    if gang.disrupted:
        # Not the job's fault: restart at once, from its newest checkpoint, without using
        # up a restart (as a Job's pod failure policy ignores disruptions).
        again = TrainingState(
            phase=Phase.RESTARTING,
            attempt=state.attempt,
            restarts=state.restarts,
            next_start_at=now,
            message=f"attempt {state.attempt} disrupted ({gang.disrupted}); restarting",
            disruptions=state.disruptions + 1,
        )
        return TrainingDecision(Action.WAIT, again, 0.0)
    if gang.failed:
        detail = gang.message or f"exit code {gang.exit_code}"
        if state.restarts >= max_restarts:
            failed = TrainingState(
                phase=Phase.FAILED,
                attempt=state.attempt,
                restarts=state.restarts,
                message=f"failed after {state.restarts} restart(s): {detail}",
                disruptions=state.disruptions,
            )
            return TrainingDecision(Action.FAIL, failed, None)
        delay = restart_delay(state.restarts + 1, backoff)
        again = TrainingState(
            phase=Phase.RESTARTING,
            attempt=state.attempt,
            restarts=state.restarts + 1,
            next_start_at=now + delay,
            message=f"attempt {state.attempt} failed ({detail}); restarting in {delay:.0f}s",
            disruptions=state.disruptions,
        )
        # The caller stops the rest of the gang: it restarts together.
        return TrainingDecision(Action.WAIT, again, delay)
    if gang.succeeded == gang.workers:
        done = TrainingState(
            phase=Phase.REGISTERING,
            attempt=state.attempt,
            restarts=state.restarts,
            message="all workers succeeded",
            disruptions=state.disruptions,
        )
        return TrainingDecision(Action.REGISTER, done, 0.0)
    if gang.pending:
        waiting = replace(state, message=f"attempt {state.attempt}: waiting to be placed")
        return TrainingDecision(Action.NONE, waiting, 1.0)
    if gang.running and not gang.pending and state.message != f"attempt {state.attempt} running":
        running = replace(state, message=f"attempt {state.attempt} running")
        return TrainingDecision(Action.NONE, running, 1.0)
    return TrainingDecision(Action.NONE, state, 1.0)
