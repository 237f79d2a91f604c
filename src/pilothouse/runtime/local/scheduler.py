"""The local backend's scheduler: admit gangs and place what waits for a node, as
kube-scheduler (with a gang-admission layer such as Kueue) does on a cluster.

Each pass reads the nodes, everything placed or waiting (replicas of deployments,
workers of training gangs) and the queues, asks ``policy.scheduler`` where each
waiting item goes (gangs all or nothing, queues' quotas, priorities, preemption of
lower-priority training), then evicts the victims (they get SIGTERM and their grace
period to checkpoint), starts what was placed, and records why the rest waits.

It runs whenever something starts waiting or room is freed (``wake``), and at least every
second while anything waits. Controllers never call it: they see its outcome in the
workload port (a gang admitted or waiting, a revision's pending replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

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
from pilothouse.runtime.local.pods import Bind, Placement, Requests
from pilothouse.runtime.local.runtime import LocalRuntime
from pilothouse.spec.resources import QueueSpec
from pilothouse.store.sqlite import Store

log = logging.getLogger("pilothouse.runtime.local.scheduler")
EventSink = Callable[[str, str, str, str, str], None]
#: the queue every job uses unless it names another; it exists without being applied
DEFAULT_QUEUE = "default"


def _resources(r: Requests) -> Resources:
    return Resources(cpu=r.cpu, memory=r.memory, gpu=r.gpu)


def queues(store: Store) -> dict[str, QueueInfo]:
    out = {DEFAULT_QUEUE: QueueInfo(DEFAULT_QUEUE)}
    for obj in store.list_objects("Queue"):
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


class LocalScheduler:
    def __init__(self, runtime: LocalRuntime, store: Store, events: EventSink) -> None:
        self.runtime = runtime
        self.store = store
        self._events = events
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: called with (owner kind, owner name) when something of it was placed
        self.on_change: Callable[[str, str], None] = lambda kind, name: None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                waiting = await self.schedule()
            except Exception:
                log.exception("scheduling pass failed; again in 1s")
                waiting = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0 if waiting else 5.0)

    async def schedule(self) -> bool:
        """One pass; True while something still waits."""
        nodes = [
            NodeInfo(
                name=n.name,
                capacity=_resources(n.capacity),
                gpu_ids=n.gpu_ids,
                schedulable=n.state == "Ready",
                state=n.state,
            )
            for n in await self.runtime.nodes()
        ]
        placements = await self.runtime.placements()
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
        known_queues = queues(self.store)
        decision = schedule(nodes, bound, waiting, known_queues) if waiting else None
        by_id = {p.id: p for p in placements}
        if decision is not None:
            for preemption in decision.preemptions:
                await self.runtime.evict(list(preemption.victims), preemption.reason)
                for owner in sorted({_owner(by_id[v]) for v in preemption.victims if v in by_id}):
                    kind, _, owner_name = owner.partition("/")
                    self._events(kind, owner_name, "Warning", "Preempted", preemption.reason)
            await self.runtime.bind(
                [Bind(b.id, b.node, tuple(b.gpus)) for b in decision.bindings], decision.pending
            )
            _report_waiting(self._events, by_id, decision.pending)
            _report_placed(self._events, self.on_change, by_id, decision.bindings)
        return bool(waiting)


def _report_placed(
    events: EventSink,
    wake: Callable[[str, str], None],
    by_id: dict[str, Placement],
    bindings: list[Binding],
) -> None:
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
            events(
                placed.owner_kind,
                placed.owner_name,
                "Normal",
                "Scheduled",
                f"{placed.role} {placed.id} placed on node {binding.node}{gpus}",
            )
        wake(placed.owner_kind, placed.owner_name)
    for members in gangs.values():
        first = members[0][0]
        where = ", ".join(
            f"{p.id} on {b.node}" + (f" (gpu {','.join(b.gpus)})" if b.gpus else "")
            for p, b in sorted(members, key=lambda m: (len(m[0].id), m[0].id))
        )
        events(first.owner_kind, first.owner_name, "Normal", "Scheduled", f"gang placed: {where}")


def _report_waiting(
    events: EventSink, by_id: dict[str, Placement], reasons: dict[str, str]
) -> None:
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
        events(
            placement.owner_kind,
            placement.owner_name,
            "Warning",
            "FailedScheduling",
            f"{placement.role} {item_id}: {reason}",
        )
