"""What a ModelDeployment's public status says: its revisions, its rollout, its conditions.

Pure functions of what the controller decided and observed; ``modeldeployment`` writes
the result.
"""

from __future__ import annotations

from pilothouse.controllers.base import set_condition, timestamp
from pilothouse.controllers.history import History
from pilothouse.controllers.internal import DeploymentInternal
from pilothouse.policy.rollout import RevisionCounts, RolloutDecision, RolloutState
from pilothouse.ports.workload import RevisionState
from pilothouse.spec.resources import ModelDeploymentSpec
from pilothouse.spec.status import (
    AnalysisStatus,
    CheckStatus,
    Condition,
    RevisionReplicas,
    RevisionStatus,
    RolloutStatus,
)


def revision_statuses(current: list[RevisionState], history: History) -> list[RevisionStatus]:
    return [
        RevisionStatus(
            revision=r.revision,
            model=history.model(r.revision),
            desired=r.desired,
            ready=r.ready,
            starting=r.starting,
            pending=r.pending,
            failed=r.failed,
            restarts=r.restarts,
            crash_looping=r.crash_looping,
            nodes=list(r.nodes),
            reason=r.reason,
            message=r.message,
        )
        for r in current
    ]


def conditions_of(
    conditions: list[Condition],
    *,
    state: RolloutState,
    rolled_out: bool,
    is_ready: bool,
    revision: str,
    model: str,
    ready_serving: int,
    wanted: int,
    ready_total: int,
    url: str,
    waiting: RevisionState | None,
    now: float,
) -> tuple[list[Condition], str]:
    """Ready (the spec's revision serves with all its replicas), Available (something
    serves), Scheduled (every replica has a node); and the Ready message."""
    if state.phase == "Degraded":
        reason, message = "RolledBack", state.message
    elif not rolled_out:
        reason = "RolloutInProgress"
        message = (
            f"rolling out revision {revision}: {state.message or f'{ready_serving}/{wanted} ready'}"
        )
    else:
        reason = "ReplicasReady" if is_ready else "ReplicasNotReady"
        message = f"{ready_serving}/{wanted} replicas of {model} ready"
    out = set_condition(conditions, "Ready", is_ready, reason, message, now)
    out = set_condition(
        out,
        "Available",
        ready_total > 0,
        "Serving" if ready_total else "NoReadyReplica",
        f"{ready_total} ready replica(s) behind {url}",
        now,
    )
    out = set_condition(
        out,
        "Scheduled",
        waiting is None,
        "Unschedulable" if waiting is not None else "Scheduled",
        (waiting.message or waiting.reason) if waiting is not None else "every replica is placed",
        now,
    )
    return out, message


def public_rollout(
    spec: ModelDeploymentSpec,
    state: RolloutState,
    revision: str,
    decision: RolloutDecision,
    counts: dict[str, RevisionCounts],
    history: History,
    internal: DeploymentInternal,
) -> RolloutStatus:
    """``status.rollout``: what `pilothouse rollout status` shows."""
    rollout = spec.rollout
    steps = rollout.canary.steps if rollout.canary is not None else None
    checks = []
    for check in rollout.analysis.checks:
        kept = internal.analysis.checks.get(check.name)
        last = kept.history[-1] if kept is not None and kept.history else None
        checks.append(
            CheckStatus(
                name=check.name,
                metric=check.metric,
                min=check.min,
                max=check.max,
                phase=last.phase if last else None,
                value=last.value if last else None,
                samples=last.samples if last else 0,
                message=last.message if last else "",
                successful=kept.successful if kept else 0,
                failed=kept.failed if kept else 0,
                consecutive_errors=kept.consecutive_errors if kept else 0,
                inconclusive=kept.inconclusive if kept else 0,
            )
        )
    if state.canary is None and state.phase == "Healthy":
        checks = []  # the last rollout's measurements no longer describe anything running
    run = internal.analysis_run
    judged = state.canary is not None or state.phase == "Degraded"
    return RolloutStatus(
        strategy=rollout.strategy,
        phase=state.phase,
        desired_revision=revision,
        stable_revision=state.stable,
        canary_revision=state.canary,
        stable_revision_number=history.number(state.stable),
        canary_revision_number=history.number(state.canary),
        step=min(state.step, len(steps) - 1)
        if steps is not None and state.canary is not None
        else None,
        steps=len(steps) if steps is not None else None,
        weight=round(state.weight, 1) if state.canary is not None else 0.0,
        mirror_percent=decision.mirror_percent if decision.mirror_revision else 0.0,
        pause_until=timestamp(state.pause_until) if state.pause_until else None,
        paused_reason=state.paused_reason,
        started_at=timestamp(state.started_at) if state.started_at else None,
        message=state.message,
        replicas={
            rev: RevisionReplicas(
                desired=decision.targets.get(rev, 0),
                ready=counts.get(rev, RevisionCounts()).ready,
            )
            for rev in sorted(set(decision.targets) | set(counts))
        },
        analysis=AnalysisStatus(
            verdict=run.verdict if judged else None,
            message=run.verdict_message if judged else "",
            last_run=run.last_run,
            checks=checks,
        ),
        aborted_revision=state.aborted,
    )
