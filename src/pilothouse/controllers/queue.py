"""Queue controller: records the queue as accepted. Admission by quota and priority is the
scheduler's (controllers/scheduler.py), which also writes the queue's usage into its status."""

from __future__ import annotations

from pilothouse.controllers.base import Context, Result, set_condition
from pilothouse.store.sqlite import NotFound

KIND = "Queue"


async def reconcile(ctx: Context, name: str) -> Result:
    try:
        obj = ctx.store.get(KIND, name)
    except NotFound:
        return Result()
    if obj["metadata"].get("deletionTimestamp"):
        ctx.store.remove(KIND, name)
        return Result()
    status = dict(obj.get("status") or {})
    status["observedGeneration"] = obj["metadata"]["generation"]
    status["conditions"] = set_condition(
        list(status.get("conditions") or []),
        "Ready",
        True,
        "Accepted",
        "queue accepted",
        ctx.clock(),
    )
    ctx.store.set_status(KIND, name, status)
    return Result()
