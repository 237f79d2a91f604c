"""TrainingJob controller: run the worker gang, restart it with back-off, record the output.

The job's phase machine lives in ``policy.training``; this module observes the current
attempt's gang through the workload port, applies the decision (submit the next attempt,
let a failed one go) and writes the status. Admission of the whole gang, placing its
workers and registering the finished attempt's output in the registry are the workload
backend's; the controller records what it reports.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ValidationError

from pilothouse.controllers.base import (
    Context,
    Result,
    TerminalError,
    drop_condition,
    set_condition,
    timestamp,
)
from pilothouse.controllers.internal import TrainingInternal, read_status, status_of
from pilothouse.policy.backoff import BackoffParams
from pilothouse.policy.training import (
    Action,
    GangObservation,
    Phase,
    TrainingState,
    decide_training,
)
from pilothouse.ports.state import Resource
from pilothouse.ports.workload import (
    GangState,
    GangTemplate,
    MemberPhase,
    Resources,
    TrainingOutput,
)
from pilothouse.spec.resources import CheckpointPolicy, TrainingJobSpec
from pilothouse.spec.status import Condition, OutputModel, TrainingJobStatus, WorkerView

KIND = "TrainingJob"
FINAL = (Phase.SUCCEEDED, Phase.FAILED)
_ENDED = (MemberPhase.SUCCEEDED, MemberPhase.FAILED)


def _observe(gang: GangState | None, size: int) -> GangObservation | None:
    if gang is None or not gang.members:
        return None
    failed = [m for m in gang.members if m.phase == MemberPhase.FAILED]
    message = ""
    if failed:
        first = failed[0]
        what = (
            first.message
            if first.message and not first.message.startswith("exit code")
            else f"exited with code {first.exit_code}"
        )
        message = f"worker {first.rank}: {what}"
    return GangObservation(
        running=gang.count(MemberPhase.RUNNING),
        succeeded=gang.count(MemberPhase.SUCCEEDED),
        failed=len(failed),
        workers=size,
        exit_code=failed[0].exit_code if failed else None,
        message=message,
        pending=gang.count(MemberPhase.PENDING),
        disrupted=gang.disrupted,
    )


def _detail(gang: GangState | None) -> str:
    """The last lines the failed worker wrote (its own log, not another rank's)."""
    if gang is None:
        return ""
    failed = next((m for m in gang.members if m.phase == MemberPhase.FAILED and m.detail), None)
    return f" — {failed.detail}" if failed is not None else ""


def _template(obj: Resource, spec: TrainingJobSpec, attempt: int) -> GangTemplate:
    checkpoint = spec.checkpoint or CheckpointPolicy()
    return GangTemplate(
        job=obj.name,
        uid=obj.uid,
        attempt=attempt,
        workers=spec.workers,
        command=(*spec.command, *spec.args),
        env=tuple((e.name, e.value) for e in spec.env),
        working_dir=spec.working_dir,
        resources=Resources(spec.resources.cpu, spec.resources.memory, spec.resources.gpu),
        queue=spec.queue,
        priority=spec.priority,
        grace=spec.termination_grace_period,
        checkpoint_interval=checkpoint.interval,
        checkpoint_keep=checkpoint.keep,
        pass_env=tuple(spec.pass_env),
        output=TrainingOutput(spec.output.model, spec.output.framework)
        if spec.output is not None
        else None,
        generation=obj.generation,
    )


async def reconcile(ctx: Context, name: str) -> Result:
    obj = ctx.state.get(KIND, name)
    if obj is None:
        await ctx.workload.delete_gang(name)
        return Result()
    if obj.deleting:
        if await ctx.workload.delete_gang(name):
            ctx.state.finalize(KIND, name)
            return Result()
        return Result(requeue_after=0.5)

    now = ctx.clock()
    public, internal = read_status(
        obj.status,
        TrainingJobStatus,
        TrainingInternal,
        lambda why: ctx.event(KIND, name, "Warning", "StatusUnreadable", why),
    )
    try:
        spec = TrainingJobSpec.model_validate(obj.spec)
    except ValidationError as exc:
        _invalid_spec(ctx, obj, public, internal, exc, now)
        raise TerminalError(f"the spec no longer validates: {exc}") from None
    public.conditions = drop_condition(public.conditions, "Valid")
    state = TrainingState(
        phase=Phase(internal.policy_phase),
        attempt=public.attempt,
        restarts=public.restarts,
        next_start_at=internal.next_start_at,
        message=public.message,
        disruptions=public.disruptions,
    )
    gang = await ctx.workload.gang(name)
    current = gang if gang is not None and gang.attempt == state.attempt else None
    if state.phase == Phase.RESTARTING:
        # the failed attempt was let go already: what a backend still shows of it (pods
        # terminating) must not be counted as failing again
        current = None
    observed = current
    backoff = BackoffParams(
        initial=spec.restart_policy.backoff.initial,
        maximum=spec.restart_policy.backoff.max,
        multiplier=spec.restart_policy.backoff.multiplier,
    )
    decision = decide_training(
        state, _observe(current, spec.workers), spec.restart_policy.max_restarts, backoff, now
    )
    new = decision.state
    requeue = decision.requeue_after

    if decision.action == Action.START:
        await ctx.workload.apply_gang(_template(obj, spec, new.attempt))
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
        await ctx.workload.delete_gang(name)
        if current is not None and current.disrupted:
            ctx.event(KIND, name, "Warning", "Disrupted", new.message)
        else:
            ctx.event(KIND, name, "Warning", "BackOff", new.message + _detail(current))
    elif decision.action == Action.FAIL:
        await ctx.workload.delete_gang(name)
        ctx.event(KIND, name, "Warning", "Failed", new.message + _detail(current))
        public.completion_time = timestamp(now)
    elif decision.action == Action.REGISTER:
        new, requeue = _registered(ctx, name, spec, new, current, public, now)

    if decision.action != Action.NONE or new.phase != state.phase:
        # what the action changed (a gang submitted, one let go): describe what is now
        gang = await ctx.workload.gang(name)
        current = gang if gang is not None and gang.attempt == new.attempt else None
    if current is not None and new.attempt != current.attempt:
        current = None
    if current is None and new.phase in FINAL and observed is not None:
        current = observed  # let go of just now: the last observation is the final word
    _worker_status(ctx, name, spec, new, current, public, internal)
    public.phase = new.phase.value
    if new.phase == Phase.RUNNING and (current is None or not current.admitted):
        public.phase = "Pending"  # the gang waits for room: not running yet
        public.message = (current.waiting if current is not None else "") or new.message
    else:
        public.message = new.message
    public.attempt = new.attempt
    public.restarts = new.restarts
    public.disruptions = new.disruptions
    public.observed_generation = obj.generation
    internal.policy_phase = new.phase.value
    internal.next_start_at = new.next_start_at
    public.conditions = _conditions(public.conditions, new, current, public.message, now)
    ctx.state.set_status(KIND, name, status_of(public, internal))
    if new.phase in FINAL and state.phase != new.phase:
        await ctx.workload.delete_gang(name)  # they ended: let go of their records
    return Result(requeue_after=requeue)


def _invalid_spec(
    ctx: Context,
    obj: Resource,
    public: TrainingJobStatus,
    internal: TrainingInternal,
    error: ValidationError,
    now: float,
) -> None:
    """A stored spec this release no longer accepts: say so in the status (the job is left
    as it is until the spec is fixed)."""
    message = f"the spec is not valid: {error.error_count()} problem(s), first: " + str(
        error.errors()[0].get("msg", "")
    )
    public.conditions = set_condition(
        public.conditions, "Valid", False, "InvalidSpec", message, now
    )
    ctx.state.set_status(KIND, obj.name, status_of(public, internal))


def _registered(
    ctx: Context,
    name: str,
    spec: TrainingJobSpec,
    state: TrainingState,
    gang: GangState | None,
    public: TrainingJobStatus,
    now: float,
) -> tuple[TrainingState, float | None]:
    """Every worker succeeded: the attempt registers its own output (the workload backend
    reports it); record the result, or wait for it."""

    def ended(phase: Phase, message: str) -> tuple[TrainingState, float | None]:
        public.completion_time = timestamp(now)
        return replace(state, phase=phase, next_start_at=0.0, message=message), None

    if spec.output is None:
        return ended(Phase.SUCCEEDED, "completed")
    if gang is not None and gang.output is not None:
        out = gang.output
        first = public.output_model is None
        public.output_model = OutputModel(
            name=out.name, version=out.version, ref=out.ref, metrics=dict(out.metrics)
        )
        message = f"registered {out.ref}"
        if out.metrics:
            shown = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in list(out.metrics.items())[:4]
            )
            message += f" ({shown})"
        if first:
            ctx.event(KIND, name, "Normal", "ModelRegistered", message)
        return ended(Phase.SUCCEEDED, message)
    if gang is None or gang.output_error:
        why = gang.output_error if gang is not None else "the attempt's workers are gone"
        message = f"could not register the output as model '{spec.output.model}': {why}"
        ctx.event(KIND, name, "Warning", "RegistrationFailed", message)
        return ended(Phase.FAILED, message)
    waiting = f"registering the output as model '{spec.output.model}'"
    return replace(state, phase=Phase.REGISTERING, next_start_at=0.0, message=waiting), 0.5


def _worker_status(
    ctx: Context,
    name: str,
    spec: TrainingJobSpec,
    new: TrainingState,
    gang: GangState | None,
    public: TrainingJobStatus,
    internal: TrainingInternal,
) -> None:
    """The workers of the current attempt, and a Started event once they were placed."""
    if gang is None:
        if new.phase not in FINAL:
            public.workers = []
        return  # an ended job keeps the last word on its workers
    ended = new.phase in FINAL
    public.workers = [
        WorkerView(
            rank=m.rank,
            attempt=gang.attempt,
            # the job ended: a worker still running was stopped with its gang
            phase=m.phase if not ended or m.phase in _ENDED else MemberPhase.FAILED,
            node=m.node,
            exit_code=m.exit_code,
            message=m.message
            if not ended or m.phase in _ENDED
            else f"stopped: attempt {gang.attempt} ended",
        )
        for m in gang.members
    ]
    if gang.admitted and internal.scheduled_attempt != gang.attempt:
        # placed and started (perhaps already ended: a fast gang is never seen running)
        internal.scheduled_attempt = gang.attempt
        if public.start_time is None and gang.started_at is not None:
            public.start_time = timestamp(gang.started_at)
        nodes = sorted({m.node for m in gang.members if m.node})
        ctx.event(
            KIND,
            name,
            "Normal",
            "Started",
            f"attempt {gang.attempt}: started {spec.workers} worker(s) on {', '.join(nodes)}",
        )


def _conditions(
    conditions: list[Condition],
    new: TrainingState,
    gang: GangState | None,
    message: str,
    now: float,
) -> list[Condition]:
    """As a Kubernetes Job's: Complete and Failed appear only once true, and nothing
    contradicts the phase (an ended job says neither that it runs nor that it waits)."""
    out = conditions
    waits = new.phase == Phase.RUNNING and (gang is None or not gang.admitted)
    if new.phase != Phase.RUNNING:
        out = drop_condition(out, "Scheduled")  # nothing is placed, or waits to be
    if new.phase in FINAL:
        out = set_condition(out, "Running", False, new.phase.value, new.message, now)
    elif new.phase == Phase.REGISTERING:
        # every worker ended; the output is being registered
        out = set_condition(out, "Running", False, "Registering", new.message, now)
    else:
        if new.phase == Phase.RUNNING and gang is not None:
            out = set_condition(
                out,
                "Scheduled",
                not waits,
                "Unschedulable" if waits else "Scheduled",
                message if waits else "every worker is placed",
                now,
            )
        if waits:
            out = set_condition(out, "Running", False, "Unschedulable", message, now)
        elif new.phase == Phase.RESTARTING:
            # between attempts nothing runs: the back-off (or a disruption) says why
            out = set_condition(out, "Running", False, "BackOff", new.message, now)
        else:
            out = set_condition(out, "Running", True, new.phase.value, new.message, now)
    if new.phase == Phase.SUCCEEDED:
        out = set_condition(out, "Complete", True, "Succeeded", new.message, now)
    else:
        out = drop_condition(out, "Complete")
    if new.phase == Phase.FAILED:
        out = set_condition(out, "Failed", True, "Failed", new.message, now)
    else:
        out = drop_condition(out, "Failed")
    return out
