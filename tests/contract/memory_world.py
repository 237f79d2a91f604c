"""The memory world: the real controllers against the in-memory ports, on a fake clock.

A tiny deterministic driver stands in for ``controllers.manager.Manager``: every key whose
requeue is due on the fake clock is reconciled (in sorted order), keys woken by a change
(an apply, a user's request, the workload reporting that something ran or ended) are
due at once, and everything is revisited every ``RESYNC_EVERY`` seconds. Time jumps to
the next thing that happens (a requeue, a replica turning ready, a grace period ending),
at most ``TICK`` seconds at a time so the data plane measures every second. A reconcile
that raises fails the test (the manager would only log it); controllers that keep waking
each other at one instant fail it too.
"""

from __future__ import annotations

import json
from typing import Any

from pilothouse.controllers.base import Context, TerminalError
from pilothouse.controllers.manager import RECONCILERS, RESYNC_EVERY
from pilothouse.policy.scheduler import NodeInfo, QueueInfo, Quota
from pilothouse.policy.scheduler import Resources as PolicyResources
from pilothouse.ports.workload import GangState, RevisionState
from pilothouse.runtime.memory import (
    MemoryDataPlane,
    MemoryRegistry,
    MemoryState,
    MemoryWorkload,
    ReplicaBehaviour,
)
from pilothouse.spec.resources import KINDS, QueueSpec
from tests.contract.harness import (
    NODE_CPU,
    NODE_MEMORY,
    NODE_NAME,
    Condition,
    document,
    holds,
    rollout_requests,
)

#: the longest jump of the clock (the data plane measures per second)
TICK = 0.5
#: reconcile passes at one instant before the driver calls it a hot loop
MAX_PASSES = 100
START = 1_700_000_000.0
#: one node with room for everything the tests run (queues' quotas are what limit gangs)
NODES = (NodeInfo(NODE_NAME, PolicyResources(cpu=NODE_CPU * 1000, memory=NODE_MEMORY)),)
#: how a replica of a broken model version behaves: it exits a second after it starts
BROKEN = ReplicaBehaviour(crash_after=1.0, message="could not load the model")

Key = tuple[str, str]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class MemoryWorld:
    name = "memory"

    def __init__(self, *, watch: bool = True, replica_start_seconds: float = 2.0) -> None:
        """``watch``: the workload wakes a deployment's or a job's controller when what
        runs of it changed (as an informer on Pods/Deployments would); without it the
        controllers see changes only when their requeue or the resync comes (they are
        level-based: they must converge all the same)."""
        if not watch:
            self.name = "memory-unwatched"
        self.clock = FakeClock(START)
        self.registry = MemoryRegistry()
        self.state = MemoryState(self.clock, self.registry)
        self.workload = MemoryWorkload(
            self.clock,
            registry=self.registry,
            nodes=NODES,
            queues=self._queues,
            start_seconds=replica_start_seconds,
            on_change=self._wake if watch else None,
        )
        self._model_errors: dict[str, float] = {}
        self.dataplane = MemoryDataPlane(
            self.clock, ready=self.workload.ready_replicas, error_rate=self._error_rate
        )
        self.ctx = Context(self.state, self.workload, self.dataplane, self.clock)
        self.ctx.trigger = self._wake
        self._due: dict[Key, float] = {}
        self._next_resync = START
        self.terminal_errors: list[tuple[Key, str]] = []

    def now(self) -> float:
        return self.clock()

    # --- what users do ----------------------------------------------------------------

    async def apply(self, doc: str | dict[str, Any]) -> None:
        data = document(doc)
        kind = data["kind"]
        # validated as `pilothouse apply` validates it (and with its defaults left out:
        # the object keeps what the user wrote)
        KINDS[kind].model_validate(data)
        name = data["metadata"]["name"]
        self.state.apply(kind, name, dict(data.get("spec") or {}))
        self._wake(kind, name)
        await self._settle()

    async def delete(self, kind: str, name: str) -> None:
        self.state.delete(kind, name)
        self._wake(kind, name)
        await self._settle()

    async def request(self, kind: str, name: str, action: str, *, full: bool = False) -> None:
        found = self.state.get(kind, name)
        if found is None:
            raise KeyError(f"{kind} {name} not found")
        rollout = dict(found.status.get("rollout") or {})
        self.state.request(
            kind, name, rollout_requests(action, rollout, self.state.token(), full=full)
        )
        self._wake(kind, name)
        await self._settle()

    async def add_model(
        self,
        name: str,
        *,
        framework: str = "sklearn",
        stage: str | None = None,
        broken: bool = False,
        error_rate: float = 0.0,
    ) -> str:
        added = self.registry.add(name, framework=framework, stage=stage)
        if broken:
            self.workload.set_behaviour(added.ref, BROKEN)
        if error_rate:
            self._model_errors[added.ref] = error_rate
        return added.ref

    # --- time -------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        end = self.clock() + seconds
        await self._settle()
        while self.clock() < end:
            await self._tick(end)

    def seconds(self, hold: float) -> float:
        return hold

    async def until(self, condition: Condition, within: float, what: str) -> None:
        end = self.clock() + within
        await self._settle()
        while not await holds(condition):
            if self.clock() >= end:
                raise AssertionError(f"{what}: not within {within:g}s\n{self.describe()}")
            await self._tick(end)

    # --- what the world does ----------------------------------------------------------

    async def crash_replicas(self, deployment: str, revision: str, n: int = 1) -> None:
        self.workload.crash(deployment, revision, n, ever_ready=True)
        await self._settle()

    async def finish_worker(self, job: str, rank: int, code: int = 0) -> None:
        self.workload.finish(job, rank, code, detail="" if code == 0 else "Traceback: boom")
        await self._settle()

    async def break_output(self, job: str) -> None:
        self.workload.fail_output(job, "the output folder is empty")

    async def offer_load(self, deployment: str, rps: float) -> None:
        self.dataplane.offer(deployment, rps)
        await self._settle()

    # --- observation ------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.state.get(kind, name)
        if found is None:
            return None
        return {
            "kind": found.kind,
            "metadata": {"name": found.name, "uid": found.uid, "generation": found.generation},
            "spec": found.spec,
            "status": found.status,
            "deleting": found.deleting,
        }

    def events(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        return [
            (e.type, e.reason, e.message)
            for e in self.state.events
            if e.kind == kind and e.name == name
        ]

    async def revisions(self, deployment: str) -> list[RevisionState]:
        return await self.workload.revisions(deployment)

    async def gang(self, job: str) -> GangState | None:
        return await self.workload.gang(job)

    def weights(self, deployment: str) -> dict[str, float]:
        return self.dataplane.shares(deployment)

    def describe(self) -> str:
        lines = [f"t={self.clock() - START:.1f}s"]
        for kind in RECONCILERS:
            for obj in self.state.list(kind):
                status = {k: v for k, v in obj.status.items() if k not in ("internal", "history")}
                lines.append(
                    f"{kind}/{obj.name} gen={obj.generation} deleting={obj.deleting} "
                    f"status={json.dumps(status, sort_keys=True, default=str)}"
                )
        lines.extend(
            f"  event {e.time - START:.1f}s {e.kind}/{e.name} {e.type} {e.reason}: {e.message}"
            for e in self.state.events[-25:]
        )
        if self.terminal_errors:
            lines.append(f"terminal errors: {self.terminal_errors}")
        return "\n".join(lines)

    async def close(self) -> None:
        return None

    # --- the driver -------------------------------------------------------------------

    def _wake(self, kind: str, name: str) -> None:
        self._due[(kind, name)] = self.clock()

    def _queues(self) -> dict[str, QueueInfo]:
        out: dict[str, QueueInfo] = {}
        for obj in self.state.list("Queue"):
            if obj.deleting:
                continue
            spec = QueueSpec.model_validate(obj.spec)
            quota = spec.quota
            limited = quota.cpu is not None or quota.memory is not None or quota.gpu is not None
            out[obj.name] = QueueInfo(
                obj.name,
                Quota(quota.cpu, quota.memory, quota.gpu) if limited else None,
                spec.weight,
                spec.priority,
            )
        return out

    def _error_rate(self, deployment: str, revision: str) -> float:
        template = self.workload.template(deployment, revision)
        return self._model_errors.get(template.model, 0.0) if template is not None else 0.0

    async def _tick(self, limit: float) -> None:
        now = self.clock()
        times = [limit, now + TICK, self._next_resync]
        times.extend(t for t in self._due.values() if t > now)
        change = self.workload.next_change()
        if change is not None and change > now:
            times.append(change)
        self.clock.now = max(now, min(times))
        await self._settle()

    async def _settle(self) -> None:
        """Move the world to now, then reconcile every key that is due."""
        for _ in range(MAX_PASSES):
            self.workload.step()
            self.dataplane.step()
            now = self.clock()
            if now >= self._next_resync:
                for kind in RECONCILERS:
                    for obj in self.state.list(kind):
                        self._due.setdefault((kind, obj.name), now)
                self._next_resync = now + RESYNC_EVERY
            due = sorted(k for k, t in self._due.items() if t <= now)
            if not due:
                return
            for key in due:
                self._due.pop(key, None)
                await self._reconcile(key)
        raise AssertionError(
            f"controllers keep waking each other at one instant: {sorted(self._due)}\n"
            + self.describe()
        )

    async def _reconcile(self, key: Key) -> None:
        kind, name = key
        try:
            result = await RECONCILERS[kind](self.ctx, name)
        except TerminalError as exc:
            self.terminal_errors.append((key, str(exc)))
            return
        if result.requeue_after is not None:
            due = self.clock() + result.requeue_after
            current = self._due.get(key)
            self._due[key] = due if current is None else min(current, due)
