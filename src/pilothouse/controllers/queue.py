"""Queue controller: records the queue as accepted and what its gangs use.

Admission by quota and priority is the workload backend's (the same pure
``policy.scheduler`` embedded; gated pods admitted by the operator on Kubernetes); this
controller writes each queue's usage, as the workload port reports it, into its status.
"""

from __future__ import annotations

from pydantic import ValidationError

from pilothouse.controllers.base import Context, Result, set_condition
from pilothouse.ports.workload import QueueUsage
from pilothouse.spec.quantity import format_bytes, format_cpu_millis
from pilothouse.spec.status import QueueStatus, QueueUsed

KIND = "Queue"


async def reconcile(ctx: Context, name: str) -> Result:
    obj = ctx.state.get(KIND, name)
    if obj is None:
        return Result()
    if obj.deleting:
        ctx.state.finalize(KIND, name)
        return Result()
    try:
        status = QueueStatus.model_validate(obj.status)
    except ValidationError:
        status = QueueStatus()
    usage = (await ctx.workload.queue_usage()).get(name, QueueUsage())
    new = status.model_copy(
        update={
            "observed_generation": obj.generation,
            "used": QueueUsed(
                cpu=format_cpu_millis(usage.cpu), memory=format_bytes(usage.memory), gpu=usage.gpu
            ),
            "pending_workers": usage.pending_workers,
            "running_jobs": list(usage.running_jobs),
        }
    )
    new.conditions = set_condition(
        new.conditions, "Ready", True, "Accepted", "queue accepted", ctx.clock()
    )
    if new != status:
        ctx.state.set_status(KIND, name, new.model_dump(mode="json", by_alias=True))
    # usage changes with the gangs in it: look again every few seconds
    return Result(requeue_after=2.0)
