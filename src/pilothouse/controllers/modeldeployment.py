"""ModelDeployment controller: resolve the model, converge replicas, route ready ones.

Level-based: every pass reads the spec and what runs, asks the replica policy
what to start and stop, applies that, points the deployment's endpoint at the
ready replicas, and writes status. Running it twice in a row changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, replace
from typing import Any

from pilothouse.controllers.base import Context, Result, set_condition
from pilothouse.controllers.scaling import desired_replicas
from pilothouse.policy.replicas import ObservedReplica, ReplicaPolicyState, plan_replicas
from pilothouse.registry.local import ModelNotFound
from pilothouse.runtime.port import ReplicaSpec, Traffic
from pilothouse.spec.resources import ModelDeploymentSpec
from pilothouse.store.sqlite import NotFound

KIND = "ModelDeployment"


def revision_of(model_version: int, template: ReplicaSpec) -> str:
    """The model version plus a digest of everything a replica is started with, so any
    change (another model, batching, probes) rolls the replicas, and nothing else does."""
    fields = asdict(template)
    fields.pop("revision")
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
        return Result()

    now = ctx.clock()
    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    status: dict[str, Any] = dict(obj.get("status") or {})
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    status["observedGeneration"] = obj["metadata"]["generation"]
    desired = spec.replicas.min

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
        status["desiredReplicas"] = desired
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
    )
    revision = revision_of(version.version, template)
    observed = await ctx.runtime.list_replicas(name)
    ready_now = sum(1 for r in observed if r.ready and not r.exited and r.revision == revision)
    desired = await desired_replicas(ctx, name, spec, ready_now, status, now)
    policy_state = ReplicaPolicyState(**(status.get("replicaPolicy") or {}))
    plan = plan_replicas(
        desired,
        revision,
        [
            ObservedReplica(
                r.id, r.revision, r.ready, r.exited, r.started_at, r.exited_at, r.ever_ready
            )
            for r in observed
        ],
        policy_state,
        now,
    )
    traffic = Traffic(
        max_concurrency=spec.traffic.max_concurrency,
        queue_limit=spec.traffic.queue_limit,
        queue_timeout=spec.traffic.queue_timeout,
        hold_when_empty=spec.autoscaling is not None and spec.replicas.min == 0,
    )
    by_id = {r.id: r for r in observed}
    if plan.stop:
        # First point the endpoint at every ready replica that stays (new ones
        # included), then stop: the endpoint is never left without a replica.
        staying = [r for r in observed if r.ready and not r.exited and r.id not in plan.stop]
        await ctx.runtime.set_traffic(name, staying, traffic)
    for replica_id in plan.stop:
        replica = by_id.get(replica_id)
        if replica is not None and replica.exited:
            ctx.event(
                KIND,
                name,
                "Warning",
                "ReplicaExited",
                f"replica {replica_id} exited with code {replica.exit_code}; replacing it",
            )
        await ctx.runtime.stop_replica(replica_id)
    for _ in range(plan.start):
        replica_id = await ctx.runtime.start_replica(replace(template, revision=revision))
        ctx.event(
            KIND, name, "Normal", "ReplicaStarted", f"started replica {replica_id} of {version.ref}"
        )

    current = [r for r in await ctx.runtime.list_replicas(name) if not r.exited]
    ready = [r for r in current if r.ready]
    url = await ctx.runtime.set_traffic(name, ready, traffic)
    ready_current = [r for r in ready if r.revision == revision]
    is_ready = len(ready_current) >= desired and (desired > 0 or not current)
    was_ready = status.get("readyReplicas") == desired and status.get("model") == version.ref
    status.update(
        {
            "url": url,
            "model": version.ref,
            "modelVersion": version.version,
            "revision": revision,
            "framework": version.framework,
            "desiredReplicas": desired,
            "replicas": len(current),
            "readyReplicas": len(ready_current),
            "replicaPolicy": {
                "failures": plan.state.failures,
                "next_start_at": plan.state.next_start_at,
            },
            "replicaStatuses": [
                {
                    "id": r.id,
                    "revision": r.revision,
                    "ready": r.ready,
                    "pid": r.pid,
                    "endpoint": r.endpoint,
                    "message": r.message,
                }
                for r in current
            ],
            "message": plan.reason,
        }
    )
    reason = "ReplicasReady" if is_ready else "ReplicasNotReady"
    message = f"{len(ready_current)}/{desired} replicas of {version.ref} ready"
    status["conditions"] = set_condition(conditions, "Ready", is_ready, reason, message, now)
    status["conditions"] = set_condition(
        status["conditions"],
        "Available",
        bool(ready),
        "Serving" if ready else "NoReadyReplica",
        f"{len(ready)} ready replica(s) behind {url}",
        now,
    )
    if is_ready and not was_ready:
        ctx.event(KIND, name, "Normal", "Ready", f"{message}; serving at {url}")
    ctx.store.set_status(KIND, name, status)
    requeue = plan.requeue_after if not is_ready else 2.0
    if spec.autoscaling is not None:
        requeue = min(requeue, 1.0)  # autoscaling decisions every second
    return Result(requeue_after=requeue)
