"""ModelDeployment controller: resolve the model, roll revisions out, scale them, route
traffic between them.

Level-based: every pass reads the spec and what runs of each revision (workload port),
asks the rollout policy which revisions should run with how many replicas and who gets
traffic (judging the new revision with the analysis policy every interval, on what the
data plane measured), sets the traffic split (data-plane port), asks the workload port for
those revisions, and writes the public status plus the controller's internal bookkeeping
(state port). Replacing crashed replicas, placing them on nodes and draining the ones
scaled away is the workload backend's job, as it is a Deployment's on Kubernetes. Running
the pass twice in a row changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from pilothouse.controllers.analysis import baseline_server_metrics, run_analysis
from pilothouse.controllers.base import Context, Result, TerminalError, set_condition, timestamp
from pilothouse.controllers.deployment_status import (
    conditions_of,
    public_rollout,
    revision_statuses,
)
from pilothouse.controllers.history import History
from pilothouse.controllers.internal import (
    AnalysisRun,
    DeploymentInternal,
    read_status,
    status_of,
)
from pilothouse.controllers.scaling import Scaled, desired_replicas
from pilothouse.controllers.templates import revision_of, template_of
from pilothouse.policy.analysis import AnalysisState, verdict_of
from pilothouse.policy.rollout import (
    Gate,
    Requests,
    RevisionCounts,
    RolloutDecision,
    RolloutState,
    plan_rollout,
)
from pilothouse.ports.dataplane import Traffic
from pilothouse.ports.state import ModelRef, ModelUnavailable, Resource
from pilothouse.ports.workload import RevisionState, RevisionTarget
from pilothouse.spec.resources import ModelDeploymentSpec, Rollout
from pilothouse.spec.status import ModelDeploymentStatus

KIND = "ModelDeployment"


async def _teardown(ctx: Context, name: str) -> bool:
    """Stop everything of the deployment; True once nothing runs any more."""
    gone = await ctx.workload.delete_deployment(name)
    await ctx.dataplane.remove(name)
    return gone


def _write(
    ctx: Context, name: str, public: ModelDeploymentStatus, internal: DeploymentInternal
) -> None:
    ctx.state.set_status(KIND, name, status_of(public, internal))


@dataclass
class _Pass:
    """One reconcile of one deployment: what it read, and what it has decided so far."""

    ctx: Context
    name: str
    obj: Resource
    spec: ModelDeploymentSpec
    public: ModelDeploymentStatus
    internal: DeploymentInternal
    now: float
    #: replicas the serving revision wants (autoscaled, or the spec's)
    desired: int = 0


async def reconcile(ctx: Context, name: str) -> Result:
    obj = ctx.state.get(KIND, name)
    if obj is None:
        await _teardown(ctx, name)
        return Result()
    if obj.deleting:
        if await _teardown(ctx, name):
            ctx.state.finalize(KIND, name)
            return Result()
        return Result(requeue_after=0.5)

    public, internal = read_status(
        obj.status,
        ModelDeploymentStatus,
        DeploymentInternal,
        lambda why: ctx.event(KIND, name, "Warning", "StatusUnreadable", why),
    )
    try:
        spec = ModelDeploymentSpec.model_validate(obj.spec)
    except ValidationError as exc:
        # a stored spec this release no longer accepts: say so; it runs as it was until
        # the spec is fixed (a change wakes this again)
        message = f"the spec is not valid: {exc.error_count()} problem(s), first: " + str(
            exc.errors()[0].get("msg", "")
        )
        public.conditions = set_condition(
            public.conditions, "Ready", False, "InvalidSpec", message, ctx.clock()
        )
        _write(ctx, name, public, internal)
        raise TerminalError(message) from None
    p = _Pass(ctx, name, obj, spec, public, internal, ctx.clock())
    public.observed_generation = obj.generation
    try:
        model = await ctx.state.resolve_model(p.spec.model)
    except ModelUnavailable as exc:
        _model_unavailable(p, str(exc))
        return Result(requeue_after=5.0)

    revision, history = _record_revision(p, model)
    decision = await _decide(p, revision, history)
    url = await _converge(p, decision)
    is_ready = await _describe(p, model, revision, history, decision, url)
    _write(ctx, name, public, internal)
    requeue = decision.requeue_after if not is_ready else 2.0
    if p.internal.rollout.canary is not None or p.spec.autoscaling is not None:
        requeue = min(requeue, 1.0)  # rollout steps and autoscaling decisions every second
    return Result(requeue_after=requeue)


def _model_unavailable(p: _Pass, message: str) -> None:
    """No such model version (yet): say so, and look again in a few seconds."""
    if p.public.message != message:
        p.ctx.event(KIND, p.name, "Warning", "ModelNotFound", message)
    p.public.message = message
    p.public.conditions = set_condition(
        p.public.conditions, "Ready", False, "ModelNotFound", message, p.now
    )
    p.public.desired_replicas = p.spec.replicas.min
    _write(p.ctx, p.name, p.public, p.internal)


def _record_revision(p: _Pass, model: ModelRef) -> tuple[str, History]:
    """The revision the spec asks for: its template kept, its history entry made."""
    template = template_of(p.name, p.spec, model)
    revision = revision_of(model, template, p.spec, p.internal.templates)
    p.internal.templates[revision] = template
    history = History([e.model_dump(mode="json", by_alias=True) for e in p.public.history])
    history.record(
        revision,
        model=model.ref,
        spec=p.obj.spec,
        applied_by=p.ctx.state.requests(KIND, p.name).get("appliedBy", "unknown"),
        now=p.now,
    )
    return revision, history


async def _decide(p: _Pass, revision: str, history: History) -> RolloutDecision:
    """Scale, judge the rollout in progress, and ask the rollout policy what runs."""
    ctx, name, spec, internal, public = p.ctx, p.name, p.spec, p.internal, p.public
    requests = ctx.state.requests(KIND, name)
    counts = _counts(await ctx.workload.revisions(name))
    desired, canary_desired = await _replica_counts(
        ctx, name, spec, internal, public, counts, p.now
    )
    gate = await _judge(ctx, name, spec.rollout, internal, counts, requests, p.now)
    decision = plan_rollout(
        spec.rollout,
        internal.rollout,
        revision,
        desired,
        counts,
        gate,
        Requests.from_store(requests),
        p.now,
        canary_desired,
    )
    if decision.reset_analysis:
        internal.analysis = AnalysisState()
        internal.analysis_run = AnalysisRun(revision=decision.state.canary)
    if decision.reset_inconclusive:
        internal.analysis = AnalysisState(
            checks={k: replace(c, inconclusive=0) for k, c in internal.analysis.checks.items()}
        )
    for type_, reason, message in decision.events:
        ctx.event(KIND, name, type_, reason, message)
    for rev, outcome in decision.outcomes.items():
        history.set_outcome(rev, outcome)
    state = internal.rollout = decision.state
    if state.canary is None:
        internal.stable_floor = None
        if internal.canary_autoscaler is not None or public.canary_autoscaler is not None:
            if decision.outcomes.get(revision) == "Stable" and spec.autoscaling is not None:
                # the promoted revision keeps its own autoscaler's windows
                internal.autoscaler = internal.canary_autoscaler
                public.autoscaler = public.canary_autoscaler
            internal.canary_autoscaler = None
            public.canary_autoscaler = None
    p.desired = desired
    return decision


async def _converge(p: _Pass, decision: RolloutDecision) -> str:
    """Traffic first (the data plane), then the revisions (the workload); the URL."""
    spec = p.spec
    url = await p.ctx.dataplane.set_traffic(
        p.name,
        Traffic(
            weights=decision.weights,
            mirror_revision=decision.mirror_revision,
            mirror_percent=decision.mirror_percent,
            max_concurrency=spec.traffic.max_concurrency,
            queue_limit=spec.traffic.queue_limit,
            queue_timeout=spec.traffic.queue_timeout,
            max_ejection_percent=spec.traffic.max_ejection_percent,
            hold_when_empty=spec.autoscaling is not None and spec.replicas.min == 0,
        ),
    )
    targets: dict[str, RevisionTarget] = {}
    for rev, count in decision.targets.items():
        known = p.internal.templates.get(rev)
        if known is None:
            p.ctx.event(
                KIND, p.name, "Warning", "RevisionUnknown", f"no template for revision {rev}"
            )
            continue
        targets[rev] = RevisionTarget(known, count)
    await p.ctx.workload.apply_revisions(p.name, targets)
    return url


async def _describe(
    p: _Pass,
    model: ModelRef,
    revision: str,
    history: History,
    decision: RolloutDecision,
    url: str,
) -> bool:
    """The public status from what runs now; True when the deployment is Ready."""
    public, internal, state = p.public, p.internal, p.internal.rollout
    current = await p.ctx.workload.revisions(p.name)
    counts = _counts(current)
    stable = state.stable or revision
    serving_revision = revision if state.phase == "Healthy" else stable
    ready_serving = counts.get(serving_revision, RevisionCounts()).ready
    wanted = decision.targets.get(serving_revision, p.desired)
    alive = sum(r.alive for r in current)
    rolled_out = state.phase == "Healthy" and stable == revision
    is_ready = rolled_out and ready_serving >= wanted and (wanted > 0 or not alive)
    was_ready = (
        any(c.type == "Ready" and c.status == "True" for c in public.conditions)
        and public.desired_model == model.ref
    )
    history.trim(p.spec.rollout.revision_history_limit, keep={stable, revision})
    kept = {str(e["revision"]) for e in history.entries} | set(decision.targets)
    internal.templates = {r: t for r, t in internal.templates.items() if r in kept}
    serving_model = history.model(serving_revision) if serving_revision != revision else model.ref
    serving = next((r for r in current if r.revision == serving_revision), None)
    waiting = next((r for r in current if r.pending), None)
    public.url = url
    # what serves live traffic (the stable revision during a rollout or after a rollback);
    # desiredModel/revision are what the spec asks for
    public.model = serving_model
    public.model_version = _version_of(serving_model, model.version)
    public.desired_model = model.ref
    public.revision = revision
    public.framework = model.framework
    public.desired_replicas = wanted
    public.replicas = alive
    public.ready_replicas = ready_serving
    public.revisions = revision_statuses(current, history)
    public.message = state.message or (
        serving.message
        if serving is not None and serving.message
        else (waiting.message if waiting is not None else f"{ready_serving}/{wanted} ready")
    )
    public.history = history.models()
    public.rollout = public_rollout(p.spec, state, revision, decision, counts, history, internal)
    public.conditions, message = conditions_of(
        public.conditions,
        state=state,
        rolled_out=rolled_out,
        is_ready=is_ready,
        revision=revision,
        model=model.ref,
        ready_serving=ready_serving,
        wanted=wanted,
        ready_total=sum(r.ready for r in current),
        url=url,
        waiting=waiting,
        now=p.now,
    )
    if is_ready and not was_ready:
        p.ctx.event(KIND, p.name, "Normal", "Ready", f"{message}; serving at {url}")
    return is_ready


async def _replica_counts(
    ctx: Context,
    name: str,
    spec: ModelDeploymentSpec,
    internal: DeploymentInternal,
    public: ModelDeploymentStatus,
    counts: dict[str, RevisionCounts],
    now: float,
) -> tuple[int, int | None]:
    """(replicas the stable revision wants, the canary's own autoscaled count or None).

    During a canary or blue-green each revision scales on its own traffic share; the
    stable one never below what it ran when the rollout began, so a rollback finds it able
    to take all traffic back at once. Otherwise one autoscaler sees all the traffic.
    """
    state: RolloutState = internal.rollout
    stable, canary = state.stable, state.canary
    if stable is None or canary is None or spec.rollout.strategy not in ("canary", "blueGreen"):
        serving = sum(c.ready for c in counts.values())
        internal.canary_autoscaler, public.canary_autoscaler = None, None
        internal.stable_floor = None
        scaled = await desired_replicas(
            ctx, name, spec, serving, public.autoscaler, internal.autoscaler, now
        )
        _keep(scaled, public, internal, canary=False)
        return scaled.desired, None
    if internal.stable_floor is None:
        internal.stable_floor = max(spec.replicas.min, counts.get(stable, RevisionCounts()).alive)
    scaled = await desired_replicas(
        ctx,
        name,
        spec,
        counts.get(stable, RevisionCounts()).ready,
        public.autoscaler,
        internal.autoscaler,
        now,
        revisions={stable},
        min_replicas=min(internal.stable_floor, spec.replicas.max),
    )
    _keep(scaled, public, internal, canary=False)
    if spec.autoscaling is None:
        return scaled.desired, None
    canary_scaled = await desired_replicas(
        ctx,
        name,
        spec,
        counts.get(canary, RevisionCounts()).ready,
        public.canary_autoscaler,
        internal.canary_autoscaler,
        now,
        revisions={canary},
        count_queued=False,
        min_replicas=1,
    )
    _keep(canary_scaled, public, internal, canary=True)
    return scaled.desired, canary_scaled.desired


def _keep(
    scaled: Scaled, public: ModelDeploymentStatus, internal: DeploymentInternal, *, canary: bool
) -> None:
    if canary:
        public.canary_autoscaler, internal.canary_autoscaler = scaled.public, scaled.state
    else:
        public.autoscaler, internal.autoscaler = scaled.public, scaled.state


async def _judge(
    ctx: Context,
    name: str,
    rollout: Rollout,
    internal: DeploymentInternal,
    counts: dict[str, RevisionCounts],
    requests: dict[str, str],
    now: float,
) -> Gate | None:
    """The analysis gate for the rollout in progress: measured every interval once the new
    revision serves (live or mirrored traffic), otherwise the verdict the state stands at."""
    state = internal.rollout
    resume = requests.get("resume", "")
    if resume and resume != state.seen_resume:
        # resumed: measure again from here (the policy marks the request seen)
        internal.analysis = AnalysisState(
            checks={k: replace(c, inconclusive=0) for k, c in internal.analysis.checks.items()}
        )
    if state.canary is None or state.stable is None or not rollout.analysis.checks:
        return None
    run = internal.analysis_run
    if run.revision != state.canary:
        run = internal.analysis_run = AnalysisRun(revision=state.canary)
        internal.analysis = AnalysisState()
    if counts.get(state.canary, RevisionCounts()).ready and run.since is None:
        run.since = now  # the first window starts when the canary serves
        await baseline_server_metrics(ctx, name, rollout.analysis, state.canary, now, run)
    if run.since is not None and now >= run.since + rollout.analysis.interval:
        internal.analysis, verdict = await run_analysis(
            ctx, name, rollout.analysis, internal.analysis, state.stable, state.canary,
            run.since, now, run,
        )  # fmt: skip
        run.since = now
        run.last_run = timestamp(now)
    else:
        verdict = verdict_of(rollout.analysis, internal.analysis)
    run.verdict, run.verdict_message = verdict.phase, verdict.message
    return Gate(verdict.phase, verdict.message)


def _version_of(ref: str, default: int) -> int:
    try:
        return int(ref.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


def _counts(revisions: list[RevisionState]) -> dict[str, RevisionCounts]:
    return {r.revision: RevisionCounts(ready=r.ready, alive=r.alive) for r in revisions if r.alive}
