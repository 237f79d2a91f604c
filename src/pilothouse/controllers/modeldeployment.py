"""ModelDeployment controller: resolve the model, roll revisions out, converge replicas,
route ready ones.

Level-based: every pass reads the spec and what runs, asks the rollout policy which
revisions should run and who gets traffic (judging the new revision with the
analysis policy every interval), asks the replica policy what to start and stop,
applies that, points the deployment's endpoint at the ready replicas, and writes
status. Running it twice in a row changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import urlsplit

from pilothouse.controllers.analysis import baseline_server_metrics, run_analysis
from pilothouse.controllers.base import Context, Result, set_condition, timestamp
from pilothouse.controllers.history import History
from pilothouse.controllers.scaling import desired_replicas
from pilothouse.policy.analysis import AnalysisState, verdict_of
from pilothouse.policy.replicas import ObservedReplica, ReplicaPolicyState, plan_revisions
from pilothouse.policy.rollout import Gate, Requests, RevisionCounts, RolloutState, plan_rollout
from pilothouse.registry.local import ModelNotFound
from pilothouse.runtime.port import ProbeSpec, ReplicaSpec, ReplicaStatus, Traffic
from pilothouse.runtime.port import Requests as ResourceRequests
from pilothouse.spec.resources import ModelDeploymentSpec, Rollout
from pilothouse.store.sqlite import NotFound

KIND = "ModelDeployment"


def revision_of(
    model_version: int, template: ReplicaSpec, extra: dict[str, Any] | None = None
) -> str:
    """The model version plus a digest of everything a replica is started with (and of
    ``extra``: the spec's runtime and resources), so any change (another model, batching,
    probes, resources) rolls the replicas, and nothing else does."""
    fields: dict[str, Any] = asdict(template)
    fields.pop("revision")
    if not fields.get("pass_env"):
        fields.pop("pass_env", None)  # revisions made before the field existed stay the same
    if extra:
        fields["extra"] = extra
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:6]
    return f"{model_version}-{digest}"


async def _teardown(ctx: Context, name: str) -> None:
    replicas = await ctx.runtime.list_replicas(name)
    await asyncio.gather(*(ctx.runtime.stop_replica(r.id) for r in replicas))
    await ctx.runtime.remove_traffic(name)


async def reconcile(ctx: Context, name: str) -> Result:
    try:
        obj = ctx.store.get(KIND, name)
    except NotFound:
        await _teardown(ctx, name)
        return Result()
    if obj["metadata"].get("deletionTimestamp"):
        await _teardown(ctx, name)
        ctx.store.remove(KIND, name)
        ctx.runtime.remove_logs(KIND, name)
        return Result()

    now = ctx.clock()
    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    status: dict[str, Any] = dict(obj.get("status") or {})
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    status["observedGeneration"] = obj["metadata"]["generation"]

    try:
        version = await asyncio.to_thread(ctx.registry.resolve, spec.model)
        # a local copy the replicas can load (a no-op for a local registry)
        version = await asyncio.to_thread(ctx.registry.fetch, version)
    except ModelNotFound as exc:
        message = str(exc)
        if status.get("message") != message:
            ctx.event(KIND, name, "Warning", "ModelNotFound", message)
        status["message"] = message
        status["conditions"] = set_condition(
            conditions, "Ready", False, "ModelNotFound", message, now
        )
        status.setdefault("replicas", 0)
        status.setdefault("readyReplicas", 0)
        status["desiredReplicas"] = spec.replicas.min
        ctx.store.set_status(KIND, name, status)
        return Result(requeue_after=5.0)

    template = ReplicaSpec(
        deployment=name,
        revision="",
        model_name=version.name,
        model_dir=str(version.path),
        readiness_path=spec.probes.readiness.path,
        probe_period=spec.probes.readiness.period,
        probe_timeout=spec.probes.readiness.timeout,
        failure_threshold=spec.probes.readiness.failure_threshold,
        max_batch_size=spec.batching.max_batch_size,
        max_batch_delay=spec.batching.max_delay,
        readiness_command=tuple(spec.probes.readiness.command or ()),
        liveness=ProbeSpec(
            path=spec.probes.liveness.path,
            command=tuple(spec.probes.liveness.command or ()),
            period=spec.probes.liveness.period,
            timeout=spec.probes.liveness.timeout,
            failure_threshold=spec.probes.liveness.failure_threshold,
            initial_delay=spec.probes.liveness.initial_delay,
        ),
        requests=ResourceRequests(spec.resources.cpu, spec.resources.memory, spec.resources.gpu),
        priority=spec.priority,
        grace=spec.termination_grace_period,
        pass_env=tuple(spec.pass_env),
    )
    revision = revision_of(
        version.version,
        template,
        {
            "runtime": spec.runtime,
            "resources": spec.resources.model_dump(mode="json", by_alias=True),
        },
    )
    requests = ctx.store.requests(KIND, name)
    history = History(status.get("history") or [])
    history.record(
        revision,
        model=version.ref,
        spec=obj["spec"],
        replica_spec=asdict(replace(template, revision=revision)),
        applied_by=requests.get("appliedBy", "unknown"),
        now=now,
    )

    observed = await ctx.runtime.list_replicas(name)
    counts = _counts(observed)
    state = RolloutState.from_dict(status.get("rolloutState"))
    rollout = spec.rollout
    desired, canary_desired = await _replica_counts(ctx, name, spec, state, counts, status, now)
    gate, analysis_state, analysis_meta = await _judge(
        ctx, name, rollout, state, counts, requests, status, now
    )

    decision = plan_rollout(
        rollout,
        state,
        revision,
        desired,
        counts,
        gate,
        Requests.from_store(requests),
        now,
        canary_desired,
    )
    if decision.reset_analysis:
        analysis_state = AnalysisState()
        analysis_meta = {"revision": decision.state.canary, "since": None}
        status.pop("analysisVerdict", None)
    if decision.reset_inconclusive:
        analysis_state = AnalysisState(
            checks={k: replace(c, inconclusive=0) for k, c in analysis_state.checks.items()}
        )
    for type_, reason, message in decision.events:
        ctx.event(KIND, name, type_, reason, message)
    for rev, outcome in decision.outcomes.items():
        history.set_outcome(rev, outcome)
    state = decision.state
    if state.canary is None:
        status.pop("rolloutStableFloor", None)
    if state.canary is None and "canaryAutoscaler" in status:
        if decision.outcomes.get(revision) == "Stable" and spec.autoscaling is not None:
            status["autoscaler"] = status["canaryAutoscaler"]  # the promoted revision's state
        status.pop("canaryAutoscaler", None)

    policy_state = ReplicaPolicyState(**(status.get("replicaPolicy") or {}))
    plan = plan_revisions(
        decision.targets,
        [
            ObservedReplica(
                r.id,
                r.revision,
                r.ready,
                r.exited,
                r.started_at,
                r.exited_at,
                # stopped by the platform (drain, lost node): no crash back-off for that
                r.ever_ready or bool(r.disrupted),
            )
            for r in observed
        ],
        policy_state,
        now,
    )
    traffic = Traffic(
        weights=decision.weights,
        mirror_revision=decision.mirror_revision,
        mirror_percent=decision.mirror_percent,
        max_concurrency=spec.traffic.max_concurrency,
        queue_limit=spec.traffic.queue_limit,
        queue_timeout=spec.traffic.queue_timeout,
        max_ejection_percent=spec.traffic.max_ejection_percent,
        hold_when_empty=spec.autoscaling is not None and spec.replicas.min == 0,
        port=_port_of(status.get("url")),
    )
    by_id = {r.id: r for r in observed}
    # First point the endpoint at every ready replica that stays (and at the traffic
    # split), then stop: the endpoint is never left without a replica.
    staying = [r for r in observed if r.ready and not r.exited and r.id not in plan.stop]
    await ctx.runtime.set_traffic(name, staying, traffic)
    for replica_id in plan.stop:
        replica = by_id.get(replica_id)
        if replica is not None and replica.exited:
            if replica.disrupted:
                why = replica.disrupted
            elif replica.exit_code is None or replica.message.startswith("liveness"):
                why = replica.message
            else:
                why = f"exited with code {replica.exit_code}"
            ctx.event(
                KIND,
                name,
                "Warning",
                "ReplicaExited",
                f"replica {replica_id} {why}; replacing it",
            )
        await ctx.runtime.stop_replica(replica_id)
    for rev, count in plan.starts.items():
        replica_spec = history.replica_spec(rev)
        if replica_spec is None:
            ctx.event(KIND, name, "Warning", "RevisionUnknown", f"no template for revision {rev}")
            continue
        for _ in range(count):
            replica_id = await ctx.runtime.start_replica(replica_spec)
            ctx.event(
                KIND,
                name,
                "Normal",
                "ReplicaCreated",
                f"created replica {replica_id} of revision {rev} ({history.model(rev)}); "
                "it starts once placed on a node",
            )

    current = [r for r in await ctx.runtime.list_replicas(name) if not r.exited]
    ready = [r for r in current if r.ready]
    waiting = [r for r in current if r.pending]
    url = await ctx.runtime.set_traffic(name, ready, traffic)
    counts = _counts(current)
    stable = state.stable or revision
    serving_revision = revision if state.phase == "Healthy" else stable
    ready_serving = counts.get(serving_revision, RevisionCounts()).ready
    wanted = decision.targets.get(serving_revision, desired)
    rolled_out = state.phase == "Healthy" and stable == revision
    is_ready = rolled_out and ready_serving >= wanted and (wanted > 0 or not current)
    was_ready = (
        any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        and status.get("model") == version.ref
    )
    history.trim(rollout.revision_history_limit, keep={stable, revision})
    serving_model = history.model(serving_revision) if serving_revision != revision else version.ref
    status.update(
        {
            "url": url,
            # what serves live traffic (the stable revision during a rollout or after a
            # rollback); desiredModel/revision are what the spec asks for
            "model": serving_model,
            "modelVersion": _version_of(serving_model, version.version),
            "desiredModel": version.ref,
            "revision": revision,
            "framework": version.framework,
            "desiredReplicas": wanted,
            "replicas": len(current),
            "readyReplicas": ready_serving,
            "replicaPolicy": {
                "failures": plan.state.failures,
                "next_start_at": plan.state.next_start_at,
                "revision": plan.state.revision,
            },
            "replicaStatuses": [
                {
                    "id": r.id,
                    "revision": r.revision,
                    "node": r.node,
                    "ready": r.ready,
                    "pid": r.pid,
                    "endpoint": r.endpoint,
                    "message": r.message,
                }
                for r in current
            ],
            "message": state.message
            or (waiting[0].message if waiting and not plan.converged else plan.reason),
            "rolloutState": state.to_dict(),
            "analysisState": analysis_state.to_dict(),
            "analysisRun": analysis_meta,
            "history": history.entries,
            "rollout": _public_rollout(
                spec, state, revision, decision, counts, history, analysis_state, status
            ),
        }
    )
    if state.phase == "Degraded":
        reason, message = "RolledBack", state.message
    elif not rolled_out:
        reason = "RolloutInProgress"
        message = f"rolling out revision {revision}: {state.message or plan.reason}"
    else:
        reason = "ReplicasReady" if is_ready else "ReplicasNotReady"
        message = f"{ready_serving}/{wanted} replicas of {version.ref} ready"
    status["conditions"] = set_condition(conditions, "Ready", is_ready, reason, message, now)
    status["conditions"] = set_condition(
        status["conditions"],
        "Available",
        bool(ready),
        "Serving" if ready else "NoReadyReplica",
        f"{len(ready)} ready replica(s) behind {url}",
        now,
    )
    status["conditions"] = set_condition(
        status["conditions"],
        "Scheduled",
        not waiting,
        "Unschedulable" if waiting else "Scheduled",
        waiting[0].message if waiting else "every replica is placed",
        now,
    )
    if is_ready and not was_ready:
        ctx.event(KIND, name, "Normal", "Ready", f"{message}; serving at {url}")
    ctx.store.set_status(KIND, name, status)
    requeue = min(plan.requeue_after, decision.requeue_after) if not is_ready else 2.0
    if state.canary is not None:
        requeue = min(requeue, 1.0)
    if spec.autoscaling is not None:
        requeue = min(requeue, 1.0)  # autoscaling decisions every second
    return Result(requeue_after=requeue)


async def _replica_counts(
    ctx: Context,
    name: str,
    spec: ModelDeploymentSpec,
    state: RolloutState,
    counts: dict[str, RevisionCounts],
    status: dict[str, Any],
    now: float,
) -> tuple[int, int | None]:
    """(replicas the stable revision wants, the canary's own autoscaled count or None).

    During a canary or blue-green each revision scales on its own traffic share; the
    stable one never below what it ran when the rollout began, so a rollback finds it able
    to take all traffic back at once. Otherwise one autoscaler sees all the traffic.
    """
    stable, canary = state.stable, state.canary
    if stable is None or canary is None or spec.rollout.strategy not in ("canary", "blueGreen"):
        serving = sum(c.ready for c in counts.values())
        status.pop("canaryAutoscaler", None)
        status.pop("rolloutStableFloor", None)
        return await desired_replicas(ctx, name, spec, serving, status, now), None
    floor = status.get("rolloutStableFloor")
    if not isinstance(floor, int):
        floor = status["rolloutStableFloor"] = max(
            spec.replicas.min, counts.get(stable, RevisionCounts()).alive
        )
    desired = await desired_replicas(
        ctx,
        name,
        spec,
        counts.get(stable, RevisionCounts()).ready,
        status,
        now,
        revisions={stable},
        min_replicas=min(floor, spec.replicas.max),
    )
    if spec.autoscaling is None:
        return desired, None
    canary_desired = await desired_replicas(
        ctx,
        name,
        spec,
        counts.get(canary, RevisionCounts()).ready,
        status,
        now,
        revisions={canary},
        key="canaryAutoscaler",
        min_replicas=1,
    )
    return desired, canary_desired


async def _judge(
    ctx: Context,
    name: str,
    rollout: Rollout,
    state: RolloutState,
    counts: dict[str, RevisionCounts],
    requests: dict[str, str],
    status: dict[str, Any],
    now: float,
) -> tuple[Gate | None, AnalysisState, dict[str, Any]]:
    """The analysis gate for the rollout in progress: measured every interval once the new
    revision serves (live or mirrored traffic), otherwise the verdict the state stands at."""
    analysis_state = AnalysisState.from_dict(status.get("analysisState") or {})
    meta: dict[str, Any] = dict(status.get("analysisRun") or {})
    resume = requests.get("resume", "")
    if resume and resume != state.seen_resume:
        # resumed: measure again from here (the policy marks the request seen)
        analysis_state = AnalysisState(
            checks={k: replace(c, inconclusive=0) for k, c in analysis_state.checks.items()}
        )
    if state.canary is None or state.stable is None or not rollout.analysis.checks:
        return None, analysis_state, meta
    if meta.get("revision") != state.canary:
        meta = {"revision": state.canary, "since": None}
        analysis_state = AnalysisState()
    if counts.get(state.canary, RevisionCounts()).ready and meta.get("since") is None:
        meta["since"] = now  # the first window starts when the canary serves
        await baseline_server_metrics(ctx, name, rollout.analysis, state.canary, now, meta)
    since = meta.get("since")
    if since is not None and now >= since + rollout.analysis.interval:
        analysis_state, verdict = await run_analysis(
            ctx, name, rollout.analysis, analysis_state, state.stable, state.canary,
            since, now, meta,
        )  # fmt: skip
        meta["since"] = now
        meta["lastRun"] = timestamp(now)
    else:
        verdict = verdict_of(rollout.analysis, analysis_state)
    status["analysisVerdict"] = {"phase": verdict.phase, "message": verdict.message}
    return Gate(verdict.phase, verdict.message), analysis_state, meta


def _version_of(ref: str, default: int) -> int:
    try:
        return int(ref.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return default


def _port_of(url: Any) -> int:
    """The port of the endpoint this deployment had (kept across control-plane restarts)."""
    if not isinstance(url, str):
        return 0
    try:
        return urlsplit(url).port or 0
    except ValueError:
        return 0


def _counts(replicas: list[ReplicaStatus]) -> dict[str, RevisionCounts]:
    out: dict[str, RevisionCounts] = {}
    for r in replicas:
        if r.exited:
            continue
        c = out.get(r.revision, RevisionCounts())
        out[r.revision] = RevisionCounts(ready=c.ready + r.ready, alive=c.alive + 1)
    return out


def _public_rollout(
    spec: ModelDeploymentSpec,
    state: RolloutState,
    revision: str,
    decision: Any,
    counts: dict[str, RevisionCounts],
    history: History,
    analysis_state: AnalysisState,
    status: dict[str, Any],
) -> dict[str, Any]:
    """``status.rollout``: what `pilothouse rollout status` shows."""
    rollout = spec.rollout
    steps = rollout.canary.steps if rollout.canary is not None else None
    checks = []
    for check in rollout.analysis.checks:
        kept = analysis_state.checks.get(check.name)
        last = kept.history[-1] if kept is not None and kept.history else None
        checks.append(
            {
                "name": check.name,
                "metric": check.metric,
                "min": check.min,
                "max": check.max,
                "phase": last.phase if last else None,
                "value": last.value if last else None,
                "samples": last.samples if last else 0,
                "message": last.message if last else "",
                "successful": kept.successful if kept else 0,
                "failed": kept.failed if kept else 0,
                "consecutiveErrors": kept.consecutive_errors if kept else 0,
                "inconclusive": kept.inconclusive if kept else 0,
            }
        )
    if state.canary is None and state.phase == "Healthy":
        checks = []  # the last rollout's measurements no longer describe anything running
    verdict = status.get("analysisVerdict") or {}
    run = status.get("analysisRun") or {}
    judged = state.canary is not None or state.phase == "Degraded"
    return {
        "strategy": rollout.strategy,
        "phase": state.phase,
        "desiredRevision": revision,
        "stableRevision": state.stable,
        "canaryRevision": state.canary,
        "stableRevisionNumber": history.number(state.stable),
        "canaryRevisionNumber": history.number(state.canary),
        "step": min(state.step, len(steps) - 1)
        if steps is not None and state.canary is not None
        else None,
        "steps": len(steps) if steps is not None else None,
        "weight": round(state.weight, 1) if state.canary is not None else 0.0,
        "mirrorPercent": decision.mirror_percent if decision.mirror_revision else 0.0,
        "pauseUntil": timestamp(state.pause_until) if state.pause_until else None,
        "pausedReason": state.paused_reason,
        "startedAt": timestamp(state.started_at) if state.started_at else None,
        "message": state.message,
        "replicas": {
            rev: {
                "desired": decision.targets.get(rev, 0),
                "ready": counts.get(rev, RevisionCounts()).ready,
            }
            for rev in sorted(set(decision.targets) | set(counts))
        },
        "analysis": {
            "verdict": verdict.get("phase") if judged else None,
            "message": verdict.get("message", "") if judged else "",
            "lastRun": run.get("lastRun"),
            "checks": checks,
        },
        "abortedRevision": state.aborted,
    }
