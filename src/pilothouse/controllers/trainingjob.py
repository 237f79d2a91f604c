"""TrainingJob controller: run the worker gang, restart it with backoff, register the output.

The job's phase machine lives in ``policy.training``; this module only
observes workers, applies the decision and persists the policy state in the
job's status (so a restarted daemon continues where it was).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from pilothouse.controllers.base import Context, Result, set_condition, tail, timestamp
from pilothouse.policy.backoff import BackoffParams
from pilothouse.policy.training import (
    Action,
    GangObservation,
    Phase,
    TrainingState,
    decide_training,
)
from pilothouse.registry.local import RegistryError
from pilothouse.runtime.port import Requests, WorkerSpec, WorkerStatus
from pilothouse.spec.resources import CheckpointPolicy, QueueSpec, TrainingJobSpec
from pilothouse.store.sqlite import NotFound

KIND = "TrainingJob"


def _observe(workers: list[WorkerStatus], attempt: int, size: int) -> GangObservation | None:
    current = [w for w in workers if w.attempt == attempt]
    if not current:
        return None
    disrupted = next((w.disrupted for w in current if w.disrupted), "")
    failed = [
        w for w in current if not w.running and not w.pending and w.exit_code not in (None, 0)
    ]
    return GangObservation(
        running=sum(1 for w in current if w.running),
        succeeded=sum(1 for w in current if not w.running and w.exit_code == 0),
        failed=len(failed),
        workers=size,
        exit_code=failed[0].exit_code if failed else None,
        message=(
            f"worker {failed[0].rank}: "
            + (
                failed[0].message
                if failed[0].message and not failed[0].message.startswith("exit code")
                else f"exited with code {failed[0].exit_code}"
            )
        )
        if failed
        else "",
        pending=sum(1 for w in current if w.pending),
        disrupted=disrupted,
    )


def _failure_detail(ctx: Context, name: str, observed: list[WorkerStatus]) -> str:
    """The last lines the failed worker wrote (its own log, not another rank's)."""
    failed = [w for w in observed if not w.running and w.exit_code not in (None, 0)]
    if not failed:
        return ""
    wanted = f"worker-{failed[0].rank}.log"
    for path in ctx.runtime.log_files(KIND, name):
        if path.name == wanted:
            lines = [
                line
                for line in tail(str(path), 12).split(" | ")
                if line and not line.startswith("--- pilothouse:")
            ]
            return " | ".join(lines[-3:])
    return ""


def _state(status: dict[str, Any]) -> TrainingState:
    return TrainingState(
        # status.phase is what users see (Pending while the gang waits for nodes);
        # policyPhase is the state machine's own
        phase=Phase(status.get("policyPhase", status.get("phase", Phase.PENDING))),
        attempt=int(status.get("attempt", 0)),
        restarts=int(status.get("restarts", 0)),
        next_start_at=float(status.get("nextStartAt", 0.0)),
        message=str(status.get("message", "")),
        disruptions=int(status.get("disruptions", 0)),
    )


def _queue_priority(ctx: Context, queue: str) -> int:
    try:
        return int(QueueSpec.model_validate(ctx.store.get("Queue", queue)["spec"]).priority)
    except NotFound:
        return 0


def _gang(
    ctx: Context, name: str, obj: dict[str, Any], spec: TrainingJobSpec, attempt: int
) -> list[WorkerSpec]:
    env = {e.name: e.value for e in spec.env}
    checkpoint = spec.checkpoint or CheckpointPolicy()
    requests = Requests(spec.resources.cpu, spec.resources.memory, spec.resources.gpu)
    queue_priority = _queue_priority(ctx, spec.queue)
    return [
        WorkerSpec(
            job=name,
            attempt=attempt,
            rank=rank,
            world_size=spec.workers,
            command=[*spec.command, *spec.args],
            env=env,
            working_dir=spec.working_dir,
            requests=requests,
            queue=spec.queue,
            priority=spec.priority,
            queue_priority=queue_priority,
            grace=spec.termination_grace_period,
            checkpoint_id=str(obj["metadata"]["uid"]),
            checkpoint_interval=checkpoint.interval,
            checkpoint_keep=checkpoint.keep,
            pass_env=tuple(spec.pass_env),
        )
        for rank in range(spec.workers)
    ]


async def reconcile(ctx: Context, name: str) -> Result:
    try:
        obj = ctx.store.get(KIND, name)
    except NotFound:
        await ctx.runtime.stop_workers(name)
        return Result()
    if obj["metadata"].get("deletionTimestamp"):
        await ctx.runtime.stop_workers(name)
        ctx.store.remove(KIND, name)
        ctx.runtime.remove_logs(KIND, name)
        return Result()

    now = ctx.clock()
    spec = TrainingJobSpec.model_validate(obj["spec"])
    status: dict[str, Any] = dict(obj.get("status") or {})
    state = _state(status)
    workers = await ctx.runtime.list_workers(name)
    gang = _observe(workers, state.attempt, spec.workers)
    backoff = BackoffParams(
        initial=spec.restart_policy.backoff.initial,
        maximum=spec.restart_policy.backoff.max,
        multiplier=spec.restart_policy.backoff.multiplier,
    )
    decision = decide_training(state, gang, spec.restart_policy.max_restarts, backoff, now)
    new = decision.state

    observed = [w for w in workers if w.attempt == state.attempt]
    if decision.action == Action.START:
        await ctx.runtime.stop_workers(name)  # the previous attempt's leftovers, if any
        await ctx.runtime.start_gang(_gang(ctx, name, obj, spec, new.attempt))
        ctx.event(
            KIND,
            name,
            "Normal",
            "Submitted",
            f"attempt {new.attempt}: "
            + (
                f"{spec.workers} workers waiting to be placed together"
                if spec.workers > 1
                else "the worker is waiting to be placed"
            ),
        )
    elif new.phase == Phase.RESTARTING and state.phase == Phase.RUNNING:
        await ctx.runtime.stop_workers(name)
        if gang is not None and gang.disrupted:
            ctx.event(KIND, name, "Warning", "Disrupted", new.message)
        else:
            detail = _failure_detail(ctx, name, observed)
            ctx.event(
                KIND, name, "Warning", "BackOff", new.message + (f" — {detail}" if detail else "")
            )
    elif decision.action == Action.FAIL:
        await ctx.runtime.stop_workers(name)
        detail = _failure_detail(ctx, name, observed)
        ctx.event(KIND, name, "Warning", "Failed", new.message + (f" — {detail}" if detail else ""))
        status["completionTime"] = timestamp(now)
    elif decision.action == Action.REGISTER:
        # copying and hashing the output is file I/O: keep it off the event loop
        new = await asyncio.to_thread(_register, ctx, name, obj, spec, new, status, now)

    current = [w for w in await ctx.runtime.list_workers(name) if w.attempt == new.attempt]
    if not current and new.phase in (Phase.SUCCEEDED, Phase.FAILED):
        # their records were let go: the last observation is the final word on them
        current = [w for w in workers if w.attempt == new.attempt]
    waiting = [w for w in current if w.pending]
    gang_waits = new.phase == Phase.RUNNING and bool(current) and len(waiting) == len(current)
    status.update(
        {
            "phase": Phase.PENDING.value if gang_waits else new.phase.value,
            "policyPhase": new.phase.value,
            "attempt": new.attempt,
            "restarts": new.restarts,
            "nextStartAt": new.next_start_at,
            "message": new.message,
            "disruptions": new.disruptions,
            "outputDir": str(ctx.runtime.output_dir(name, new.attempt, obj["metadata"]["uid"])),
            "observedGeneration": obj["metadata"]["generation"],
        }
    )
    if current or new.phase not in (Phase.SUCCEEDED, Phase.FAILED):
        status["workers"] = [
            {
                "rank": w.rank,
                "attempt": w.attempt,
                "node": w.node,
                "pid": w.pid,
                "running": w.running,
                "pending": w.pending,
                "exitCode": w.exit_code,
                **({"message": w.message} if w.message else {}),
            }
            for w in current
        ]
    if waiting and new.phase == Phase.RUNNING:
        status["message"] = waiting[0].message or new.message
    if current and not waiting and status.get("scheduledAttempt") != new.attempt:
        # placed and started (perhaps already ended: a fast gang is never seen running)
        status["scheduledAttempt"] = new.attempt
        status.setdefault("startTime", timestamp(min(w.started_at for w in current)))
        nodes = sorted({w.node for w in current if w.node})
        ctx.event(
            KIND,
            name,
            "Normal",
            "Started",
            f"attempt {new.attempt}: started {spec.workers} worker(s) on {', '.join(nodes)}",
        )
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    if new.phase == Phase.RUNNING and current:
        conditions = set_condition(
            conditions,
            "Scheduled",
            not waiting,
            "Unschedulable" if waiting else "Scheduled",
            status["message"] if waiting else "every worker is placed",
            now,
        )
    running = new.phase in (Phase.RUNNING, Phase.RESTARTING, Phase.REGISTERING)
    if gang_waits:
        conditions = set_condition(
            conditions, "Running", False, "Unschedulable", status["message"], now
        )
    else:
        conditions = set_condition(
            conditions, "Running", running, new.phase.value, new.message, now
        )
    conditions = set_condition(
        conditions, "Complete", new.phase == Phase.SUCCEEDED, new.phase.value, new.message, now
    )
    conditions = set_condition(
        conditions, "Failed", new.phase == Phase.FAILED, new.phase.value, new.message, now
    )
    status["conditions"] = conditions
    ctx.store.set_status(KIND, name, status)
    if new.phase in (Phase.SUCCEEDED, Phase.FAILED) and state.phase != new.phase:
        await ctx.runtime.stop_workers(name)  # they ended: let go of their records
    return Result(requeue_after=decision.requeue_after)


def _register(
    ctx: Context,
    name: str,
    obj: dict[str, Any],
    spec: TrainingJobSpec,
    state: TrainingState,
    status: dict[str, Any],
    now: float,
) -> TrainingState:
    """Register the output once (idempotent by job uid + attempt), then succeed."""
    status["completionTime"] = timestamp(now)
    if spec.output is None:
        return replace(state, phase=Phase.SUCCEEDED, next_start_at=0.0, message="completed")
    uid = obj["metadata"]["uid"]
    existing = [
        v
        for v in ctx.registry.versions(spec.output.model)
        if v.lineage.get("trainingJobUid") == uid and v.lineage.get("attempt") == state.attempt
    ]
    try:
        version = (
            existing[0]
            if existing
            else ctx.registry.register(
                spec.output.model,
                ctx.runtime.output_dir(name, state.attempt, uid),
                framework=spec.output.framework,
                lineage={
                    "trainingJob": name,
                    "trainingJobUid": uid,
                    "generation": obj["metadata"]["generation"],
                    "attempt": state.attempt,
                    "command": [*spec.command, *spec.args],
                    "workingDir": spec.working_dir,
                },
            )
        )
    except (RegistryError, OSError, ValueError) as exc:
        message = f"could not register the output as model '{spec.output.model}': {exc}"
        ctx.event(KIND, name, "Warning", "RegistrationFailed", message)
        return replace(state, phase=Phase.FAILED, next_start_at=0.0, message=message)
    status["outputModel"] = {
        "name": version.name,
        "version": version.version,
        "ref": version.ref,
        "metrics": version.metrics,
    }
    message = f"registered {version.ref}"
    if version.metrics:
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(version.metrics.items())[:4]
        )
        message += f" ({shown})"
    if not existing:
        ctx.event(KIND, name, "Normal", "ModelRegistered", message)
    return replace(state, phase=Phase.SUCCEEDED, next_start_at=0.0, message=message)
