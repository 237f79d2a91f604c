"""How many replicas of which model version to start or stop, given what runs.

A deployment converges to ``desired`` ready replicas of ``version``. Replicas of
another version are kept until enough new ones are ready (surge first, never
drop below what serves), so changing the model never leaves the endpoint empty.
A replica that served and then died is replaced at once; one that exits before
it ever became ready is a crash loop, replaced after a backoff that grows with
each such crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    #: the revision whose replicas crash-loop (the back-off holds only its starts)
    revision: str = ""


@dataclass(frozen=True)
class ReplicaPlan:
    start: int
    stop: list[str] = field(default_factory=list)
    state: ReplicaPolicyState = field(default_factory=ReplicaPolicyState)
    reason: str = ""
    converged: bool = False
    requeue_after: float = 1.0
    #: revision -> replicas to start
    starts: dict[str, int] = field(default_factory=dict)


def plan_replicas(
    desired: int,
    version: str,
    observed: list[ObservedReplica],
    state: ReplicaPolicyState,
    now: float,
    backoff: BackoffParams | None = None,
) -> ReplicaPlan:
    """Converge on ``desired`` of ``version``, keeping other versions until it serves."""
    alive = [r for r in observed if not r.exited]
    ready_current = sum(1 for r in alive if r.version == version and r.ready)
    old = [r for r in alive if r.version != version]
    keep_old = bool(old) and ready_current < desired and any(r.ready for r in old)
    targets = {version: desired}
    if keep_old:
        for replica in old:
            targets[replica.version] = targets.get(replica.version, 0) + 1
    plan = plan_revisions(targets, observed, state, now, backoff)
    start = plan.starts.get(version, 0)
    converged = plan.converged and not old
    return replace(
        plan,
        start=start,
        converged=converged,
        reason="converged" if converged else plan.reason,
        requeue_after=5.0 if converged else plan.requeue_after,
    )


def plan_revisions(
    targets: dict[str, int],
    observed: list[ObservedReplica],
    state: ReplicaPolicyState,
    now: float,
    backoff: BackoffParams | None = None,
) -> ReplicaPlan:
    """Converge each revision on its own replica count; revisions not named are stopped.

    Which revisions run and how many is the rollout's decision (policy.rollout); this
    only starts and stops replicas, and backs off restarting replicas that crash before
    they ever became ready.
    """
    params = backoff or BackoffParams()
    stop: list[str] = []
    failures = state.failures
    next_start_at = state.next_start_at
    looping = state.revision
    for replica in (r for r in observed if r.exited):
        stop.append(replica.id)
        if replica.ever_ready:
            # A replica that served and then died (killed, out of memory, machine
            # trouble) proved the revision can start: replace it at once, as a
            # ReplicaSet replaces a lost pod. Back-off is for crash loops only.
            failures = 0
            next_start_at = min(next_start_at, now)
            continue
        exited_at = replica.exited_at if replica.exited_at is not None else now
        if looping and replica.version != looping:
            failures, next_start_at = 0, 0.0  # another revision's crashes start afresh
        looping = replica.version
        failures = failures_after_exit(failures, exited_at - replica.started_at, params)
        next_start_at = max(next_start_at, now + restart_delay(failures, params))
    # The crash count is not reset by readiness: a replica that crashes soon after
    # becoming ready must keep backing off. Only a run longer than ``reset_after``
    # resets it (failures_after_exit), as kubelet does.
    alive = [r for r in observed if not r.exited]
    starts: dict[str, int] = {}
    missing_total = 0
    ready_total = wanted_total = 0
    for revision, wanted in targets.items():
        current = [r for r in alive if r.version == revision]
        surplus = len(current) - wanted
        if surplus > 0:
            # too many: the not-ready ones first, then the newest
            ranked = sorted(current, key=lambda r: (r.ready, -r.started_at))
            stop.extend(r.id for r in ranked[:surplus])
        missing = max(0, wanted - len(current))
        if missing:
            starts[revision] = missing
            missing_total += missing
        ready_total += min(wanted, sum(1 for r in current if r.ready))
        wanted_total += wanted
    stop.extend(r.id for r in alive if targets.get(r.version, 0) == 0 and r.id not in stop)
    reason = ""
    if missing_total and now < next_start_at:
        held = {r: n for r, n in starts.items() if not looping or r == looping}
        if held:
            starts = {r: n for r, n in starts.items() if r not in held}
            reason = f"back-off restarting crashed replicas ({next_start_at - now:.1f}s left)"
    converged = not stop and not missing_total and ready_total == wanted_total
    if not reason:
        reason = "converged" if converged else f"{ready_total}/{wanted_total} ready"
    # keep watching during a back-off (another replica may die meanwhile), at most 1 s apart
    waiting = missing_total and now < next_start_at and bool(reason)
    requeue = min(1.0, max(0.2, next_start_at - now)) if waiting else 1.0
    return ReplicaPlan(
        start=sum(starts.values()),
        stop=stop,
        state=ReplicaPolicyState(failures=failures, next_start_at=next_start_at, revision=looping),
        reason=reason,
        converged=converged,
        requeue_after=5.0 if converged else requeue,
        starts=starts,
    )
