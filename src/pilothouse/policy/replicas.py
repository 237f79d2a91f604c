"""How many replicas of which model version to start or stop, given what runs.

A deployment converges to ``desired`` ready replicas of ``version``. Replicas of
another version are kept until enough new ones are ready (surge first, never
drop below what serves), so changing the model never leaves the endpoint empty.
A replica that served and then died is replaced at once; one that exits before
it ever became ready is a crash loop, replaced after a backoff that grows with
each such crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pilothouse.policy.backoff import BackoffParams, failures_after_exit, restart_delay


@dataclass(frozen=True)
class ObservedReplica:
    id: str
    version: str
    ready: bool
    exited: bool
    started_at: float
    exited_at: float | None = None
    #: it passed its readiness probe at least once (it could start and serve)
    ever_ready: bool = False


@dataclass(frozen=True)
class ReplicaPolicyState:
    """Persisted by the caller between decisions (in the deployment's status)."""

    failures: int = 0
    next_start_at: float = 0.0


@dataclass(frozen=True)
class ReplicaPlan:
    start: int
    stop: list[str] = field(default_factory=list)
    state: ReplicaPolicyState = field(default_factory=ReplicaPolicyState)
    reason: str = ""
    converged: bool = False
    requeue_after: float = 1.0


def plan_replicas(
    desired: int,
    version: str,
    observed: list[ObservedReplica],
    state: ReplicaPolicyState,
    now: float,
    backoff: BackoffParams | None = None,
) -> ReplicaPlan:
    """Decide which replicas to start and stop to converge on ``desired`` of ``version``."""
    params = backoff or BackoffParams()
    stop: list[str] = []
    failures = state.failures
    next_start_at = state.next_start_at
    crashed = [r for r in observed if r.exited]
    for replica in crashed:
        stop.append(replica.id)
        if replica.ever_ready:
            # A replica that served and then died (killed, out of memory, machine
            # trouble) proved the revision can start: replace it at once, as a
            # ReplicaSet replaces a lost pod. Back-off is for crash loops only.
            failures = 0
            next_start_at = min(next_start_at, now)
            continue
        exited_at = replica.exited_at if replica.exited_at is not None else now
        ran_for = exited_at - replica.started_at
        failures = failures_after_exit(failures, ran_for, params)
        next_start_at = max(next_start_at, now + restart_delay(failures, params))
    alive = [r for r in observed if not r.exited]
    current = [r for r in alive if r.version == version]
    old = [r for r in alive if r.version != version]
    ready_current = [r for r in current if r.ready]
    # The crash count is not reset by readiness: a replica that crashes soon
    # after becoming ready must keep backing off. Only a run longer than
    # ``reset_after`` resets it (failures_after_exit), as kubelet does.

    # Too many of the current version: stop the not-ready ones first, then the newest.
    surplus = len(current) - desired
    if surplus > 0:
        ranked = sorted(current, key=lambda r: (r.ready, -r.started_at))
        stop.extend(r.id for r in ranked[:surplus])

    # Old versions go only once the new version alone serves the desired count
    # (or when nothing of the old version is ready anyway).
    if old and (len(ready_current) >= desired or not any(r.ready for r in old)):
        stop.extend(r.id for r in old)

    missing = max(0, desired - len(current))
    start = missing
    reason = ""
    if missing and now < next_start_at:
        start = 0
        reason = f"back-off restarting crashed replicas ({next_start_at - now:.1f}s left)"
    converged = (
        not stop and start == 0 and not missing and len(ready_current) == desired and not old
    )
    if not reason:
        reason = "converged" if converged else f"{len(ready_current)}/{desired} ready"
    # keep watching during a back-off (another replica may die meanwhile), at most 1 s apart
    requeue = min(1.0, max(0.2, next_start_at - now)) if (missing and start == 0) else 1.0
    return ReplicaPlan(
        start=start,
        stop=stop,
        state=ReplicaPolicyState(failures=failures, next_start_at=next_start_at),
        reason=reason,
        converged=converged,
        requeue_after=5.0 if converged else requeue,
    )
