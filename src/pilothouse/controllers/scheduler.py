"""Scheduler controller: place what waits for a node, as kube-scheduler does.

Each pass reads the nodes, everything placed or waiting (replicas of deployments,
workers of training gangs) and the queues, asks ``policy.scheduler`` where each
waiting item goes (gangs all or nothing, queues' quotas, priorities, preemption of
lower-priority training), then tells the runtime to evict the victims (they get
SIGTERM and their grace period to checkpoint), to start what was placed, and why
the rest waits. It writes each queue's usage into the queue's status.

It is one key (``Scheduler/cluster``), woken whenever something starts waiting or
room is freed, and at least every second while anything waits.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pilothouse.controllers.base import Context, Result, set_condition
from pilothouse.policy.scheduler import (
    Binding,
    Bound,
    NodeInfo,
    Pending,
    QueueInfo,
    Quota,
    Resources,
    schedule,
)
from pilothouse.runtime.port import Bind, Placement, Requests
from pilothouse.spec.quantity import format_bytes, format_cpu_millis
from pilothouse.spec.resources import QueueSpec

KIND = "Scheduler"
KEY = "cluster"
#: the queue every job uses unless it names another; it exists without being applied
DEFAULT_QUEUE = "default"


def _resources(r: Requests) -> Resources:
    return Resources(cpu=r.cpu, memory=r.memory, gpu=r.gpu)


def queues(ctx: Context) -> dict[str, QueueInfo]:
    out = {DEFAULT_QUEUE: QueueInfo(DEFAULT_QUEUE)}
    for obj in ctx.store.list_objects("Queue"):
        if obj["metadata"].get("deletionTimestamp"):
            continue
        spec = QueueSpec.model_validate(obj.get("spec") or {})
        quota = spec.quota
        limited = quota.cpu is not None or quota.memory is not None or quota.gpu is not None
        out[obj["metadata"]["name"]] = QueueInfo(
            name=obj["metadata"]["name"],
            quota=Quota(cpu=quota.cpu, memory=quota.memory, gpu=quota.gpu) if limited else None,
            weight=spec.weight,
            priority=spec.priority,
        )
    return out


def _owner(p: Placement) -> str:
    return f"{p.owner_kind}/{p.owner_name}"


async def reconcile(ctx: Context, name: str) -> Result:
    nodes = [
        NodeInfo(
            name=n.name,
            capacity=_resources(n.capacity),
            gpu_ids=n.gpu_ids,
            schedulable=n.state == "Ready",
            state=n.state,
        )
        for n in await ctx.runtime.nodes()
    ]
    placements = await ctx.runtime.placements()
    bound = [
        Bound(
            id=p.id,
            node=p.node,
            requests=_resources(p.requests),
            gpus=p.gpus,
            owner=_owner(p),
            gang=p.gang,
            queue=p.queue,
            priority=p.priority,
            queue_priority=p.queue_priority,
            preemptible=p.preemptible,
            terminating=p.phase == "Terminating",
        )
        for p in placements
        if p.node is not None
    ]
    waiting = [
        Pending(
            id=p.id,
            requests=_resources(p.requests),
            owner=_owner(p),
            gang=p.gang,
            gang_size=p.gang_size,
            queue=p.queue,
            priority=p.priority,
            queue_priority=p.queue_priority,
            created=p.created,
            spread=p.spread,
            preemptible=p.preemptible,
        )
        for p in placements
        if p.node is None
    ]
    known_queues = queues(ctx)
    decision = schedule(nodes, bound, waiting, known_queues) if waiting else None
    by_id = {p.id: p for p in placements}
    if decision is not None:
        for preemption in decision.preemptions:
            await ctx.runtime.evict(list(preemption.victims), preemption.reason)
            for owner in sorted({_owner(by_id[v]) for v in preemption.victims if v in by_id}):
                kind, _, owner_name = owner.partition("/")
                ctx.event(kind, owner_name, "Warning", "Preempted", preemption.reason)
        await ctx.runtime.bind(
            [Bind(b.id, b.node, tuple(b.gpus)) for b in decision.bindings], decision.pending
        )
        _report_waiting(ctx, by_id, decision.pending)
        _report_placed(ctx, by_id, decision.bindings)
    _queue_status(ctx, known_queues, await ctx.runtime.placements())
    return Result(requeue_after=1.0 if waiting else 5.0)


def _report_placed(ctx: Context, by_id: dict[str, Placement], bindings: list[Binding]) -> None:
    """A Scheduled event per replica, one per gang (all its workers at once), and wake the
    owners so they see their items start."""
    gangs: dict[str, list[tuple[Placement, Binding]]] = defaultdict(list)
    for binding in bindings:
        placed = by_id.get(binding.id)
        if placed is None:
            continue
        gpus = f" (gpu {','.join(binding.gpus)})" if binding.gpus else ""
        if placed.gang is not None:
            gangs[placed.gang].append((placed, binding))
        else:
            ctx.event(
                placed.owner_kind,
                placed.owner_name,
                "Normal",
                "Scheduled",
                f"{placed.role} {placed.id} placed on node {binding.node}{gpus}",
            )
        if ctx.trigger is not None:
            ctx.trigger(placed.owner_kind, placed.owner_name)
    for members in gangs.values():
        first = members[0][0]
        where = ", ".join(
            f"{p.id} on {b.node}" + (f" (gpu {','.join(b.gpus)})" if b.gpus else "")
            for p, b in sorted(members, key=lambda m: (len(m[0].id), m[0].id))
        )
        ctx.event(
            first.owner_kind, first.owner_name, "Normal", "Scheduled", f"gang placed: {where}"
        )


def _report_waiting(ctx: Context, by_id: dict[str, Placement], reasons: dict[str, str]) -> None:
    """One FailedScheduling event per owner and reason (events of the same reason are
    counted, not repeated), the way kube-scheduler reports an unschedulable pod."""
    seen: set[tuple[str, str]] = set()
    for item_id, reason in reasons.items():
        placement = by_id.get(item_id)
        if placement is None or placement.reason == reason:
            continue  # already reported
        key = (_owner(placement), reason)
        if key in seen:
            continue
        seen.add(key)
        ctx.event(
            placement.owner_kind,
            placement.owner_name,
            "Warning",
            "FailedScheduling",
            f"{placement.role} {item_id}: {reason}",
        )


def _queue_status(ctx: Context, known: dict[str, QueueInfo], placements: list[Placement]) -> None:
    """Each applied queue's use of its quota, and how many workers wait in it."""
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    waiting: dict[str, int] = defaultdict(int)
    running_jobs: dict[str, set[str]] = defaultdict(set)
    for p in placements:
        if p.queue is None:
            continue
        if p.node is None:
            waiting[p.queue] += 1
            continue
        totals = used[p.queue]
        totals[0] += p.requests.cpu
        totals[1] += p.requests.memory
        totals[2] += p.requests.gpu
        running_jobs[p.queue].add(p.owner_name)
    for obj in ctx.store.list_objects("Queue"):
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp") or name not in known:
            continue
        cpu, memory, gpu = used.get(name, [0, 0, 0])
        status: dict[str, Any] = dict(obj.get("status") or {})
        new = {
            "used": {"cpu": format_cpu_millis(cpu), "memory": format_bytes(memory), "gpu": gpu},
            "pendingWorkers": waiting.get(name, 0),
            "runningJobs": sorted(running_jobs.get(name, set())),
        }
        if all(status.get(k) == v for k, v in new.items()):
            continue
        status.update(new)
        status["conditions"] = set_condition(
            list(status.get("conditions") or []),
            "Ready",
            True,
            "Accepted",
            "queue accepted",
            ctx.clock(),
        )
        ctx.store.set_status("Queue", name, status)
