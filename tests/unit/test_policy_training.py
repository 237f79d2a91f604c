"""Unit tests for the training job state machine (pure: state, gang, now)."""

from __future__ import annotations

import pytest

from pilothouse.policy.backoff import BackoffParams, restart_delay
from pilothouse.policy.training import (
    Action,
    GangObservation,
    Phase,
    TrainingState,
    decide_training,
)

BACKOFF = BackoffParams(initial=5.0, maximum=60.0, multiplier=2.0)
NOW = 1_000.0


def gang(
    running: int = 0,
    succeeded: int = 0,
    failed: int = 0,
    workers: int = 3,
    exit_code: int | None = None,
    message: str = "",
) -> GangObservation:
    return GangObservation(running, succeeded, failed, workers, exit_code, message)


def running(attempt: int = 1, restarts: int = 0) -> TrainingState:
    return TrainingState(phase=Phase.RUNNING, attempt=attempt, restarts=restarts)


def test_pending_starts_attempt_one() -> None:
    decision = decide_training(TrainingState(), None, 3, BACKOFF, NOW)
    assert decision.action == Action.START
    assert decision.state.phase == Phase.RUNNING
    assert decision.state.attempt == 1
    assert decision.state.restarts == 0
    assert decision.requeue_after is not None


def test_all_workers_succeeded_registers() -> None:
    decision = decide_training(running(), gang(succeeded=3), 3, BACKOFF, NOW)
    assert decision.action == Action.REGISTER
    assert decision.state.phase == Phase.REGISTERING
    assert decision.state.attempt == 1


def test_registering_keeps_registering() -> None:
    state = TrainingState(phase=Phase.REGISTERING, attempt=1)
    decision = decide_training(state, gang(succeeded=3), 3, BACKOFF, NOW)
    assert decision.action == Action.REGISTER
    assert decision.state == state


def test_failed_worker_with_restarts_left_waits_out_the_backoff_then_starts() -> None:
    failed = gang(running=2, failed=1, exit_code=3, message="rank 2: CUDA out of memory")
    decision = decide_training(running(), failed, 2, BACKOFF, NOW)
    assert decision.action == Action.WAIT
    assert decision.state.phase == Phase.RESTARTING
    assert decision.state.restarts == 1
    assert decision.state.attempt == 1
    assert decision.state.next_start_at == pytest.approx(NOW + 5.0)
    assert decision.requeue_after == pytest.approx(5.0)
    assert "CUDA out of memory" in decision.state.message

    restarting = decision.state
    early = decide_training(restarting, None, 2, BACKOFF, NOW + 4.9)
    assert early.action == Action.WAIT
    assert early.state == restarting
    assert early.requeue_after == pytest.approx(0.1)

    due = decide_training(restarting, None, 2, BACKOFF, NOW + 5.0)
    assert due.action == Action.START
    assert due.state.phase == Phase.RUNNING
    assert due.state.attempt == 2
    assert due.state.restarts == 1


def test_second_failure_backs_off_longer() -> None:
    decision = decide_training(running(attempt=2, restarts=1), gang(failed=1), 3, BACKOFF, NOW)
    assert decision.state.phase == Phase.RESTARTING
    assert decision.state.restarts == 2
    assert decision.state.next_start_at == pytest.approx(NOW + 10.0)


def test_failure_with_no_restarts_left_fails_with_the_worker_message() -> None:
    failed = gang(running=2, failed=1, exit_code=1, message="ValueError: bad learning rate")
    decision = decide_training(running(attempt=3, restarts=2), failed, 2, BACKOFF, NOW)
    assert decision.action == Action.FAIL
    assert decision.state.phase == Phase.FAILED
    assert decision.requeue_after is None
    assert "ValueError: bad learning rate" in decision.state.message
    assert decision.state.restarts == 2


def test_failure_without_message_reports_the_exit_code() -> None:
    decision = decide_training(running(), gang(failed=1, exit_code=137), 0, BACKOFF, NOW)
    assert decision.action == Action.FAIL
    assert "137" in decision.state.message


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED])
@pytest.mark.parametrize("observed", [None, gang(failed=1), gang(succeeded=3)])
def test_terminal_phases_do_nothing(phase: Phase, observed: GangObservation | None) -> None:
    state = TrainingState(phase=phase, attempt=2, restarts=1, message="done")
    decision = decide_training(state, observed, 3, BACKOFF, NOW)
    assert decision.action == Action.NONE
    assert decision.state == state
    assert decision.requeue_after is None


def test_partial_gang_keeps_waiting() -> None:
    state = running()
    decision = decide_training(state, gang(running=1, succeeded=2), 3, BACKOFF, NOW)
    assert decision.action == Action.NONE
    assert decision.state.phase == Phase.RUNNING
    assert decision.state.attempt == state.attempt
    assert decision.state.message == "attempt 1 running"
    again = decide_training(decision.state, gang(running=1, succeeded=2), 3, BACKOFF, NOW)
    assert again.state == decision.state


def test_gang_disappearing_while_running_restarts() -> None:
    decision = decide_training(running(attempt=2, restarts=1), None, 3, BACKOFF, NOW)
    assert decision.action == Action.WAIT
    assert decision.state.phase == Phase.RESTARTING
    assert decision.state.attempt == 2
    assert decision.state.restarts == 2, "vanished workers use up a restart"
    assert decision.state.next_start_at == NOW + restart_delay(2, BACKOFF)
    assert "gone" in decision.state.message

    again = decide_training(decision.state, None, 3, BACKOFF, decision.state.next_start_at)
    assert again.action == Action.START
    assert again.state.attempt == 3


def test_gang_disappearing_without_restarts_left_fails() -> None:
    decision = decide_training(running(attempt=4, restarts=3), None, 3, BACKOFF, NOW)
    assert decision.action == Action.FAIL
    assert decision.state.phase == Phase.FAILED
    assert "gone" in decision.state.message


def test_a_disrupted_gang_restarts_at_once_without_using_a_restart() -> None:
    state = running(attempt=2, restarts=3)
    observed = GangObservation(0, 0, 1, 3, 143, "exit code 143", disrupted="node gpu-1 lost")
    decision = decide_training(state, observed, 3, BACKOFF, NOW)
    # maxRestarts (3) is used up, yet a disruption is not the job's failure
    assert decision.state.phase == Phase.RESTARTING
    assert decision.state.restarts == 3
    assert decision.state.disruptions == 1
    assert decision.state.next_start_at == NOW
    assert "node gpu-1 lost" in decision.state.message
    again = decide_training(decision.state, None, 3, BACKOFF, NOW)
    assert again.action == Action.START
    assert again.state.attempt == 3
    assert again.state.disruptions == 1


def test_a_failure_after_disruptions_still_counts_and_fails_at_the_limit() -> None:
    state = TrainingState(phase=Phase.RUNNING, attempt=4, restarts=1, disruptions=2)
    decision = decide_training(state, gang(failed=1, exit_code=1), 1, BACKOFF, NOW)
    assert decision.action == Action.FAIL
    assert decision.state.disruptions == 2
    assert "failed after 1 restart" in decision.state.message


def test_a_gang_waiting_for_a_node_says_so_then_says_it_runs() -> None:
    waiting = GangObservation(0, 0, 0, 2, pending=2)
    decision = decide_training(running(), waiting, 3, BACKOFF, NOW)
    assert decision.action == Action.NONE
    assert decision.state.message == "attempt 1: waiting to be placed"
    # the controller shows the scheduler's reason in the same message
    shown = TrainingState(
        phase=Phase.RUNNING, attempt=1, message="waiting to be placed: gang of 2 x (gpu 2)"
    )
    placed = decide_training(shown, GangObservation(2, 0, 0, 2), 3, BACKOFF, NOW)
    assert placed.state.message == "attempt 1 running"
    assert placed.state.phase == Phase.RUNNING
