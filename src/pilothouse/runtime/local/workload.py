"""LocalWorkload: the workload port with local processes (what a cluster's own
controllers do for Deployments and Jobs).

Per deployment it keeps each revision at its replica count the way a ReplicaSet does
(``policy.replicas``: a replica that served and died is replaced at once, one that dies
before it ever became ready backs off), drains replicas out of the router before they
stop, and keeps the router's endpoints to the ready replicas (an EndpointSlice). A gang's
workers are handed to the local scheduler, which admits them whole; once every worker of
an attempt succeeded, the attempt's output is registered in the model registry here,
beside the processes that wrote it, and reported in the gang's state.

It acts when asked (``apply_revisions``), when one of its processes changes (a replica
turned ready or ended: ``observe``), and when a crash-loop back-off ends; then it wakes
the owner's controller (``on_change``), as an informer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pilothouse.policy.replicas import ObservedReplica, ReplicaPolicyState, plan_revisions
from pilothouse.ports.workload import (
    GangState,
    GangTemplate,
    MemberPhase,
    MemberState,
    QueueUsage,
    RegisteredModel,
    RevisionState,
    RevisionTarget,
)
from pilothouse.registry.local import BaseRegistry, RegistryError
from pilothouse.runtime.local.pods import ReplicaSpec, ReplicaStatus, WorkerSpec, WorkerStatus
from pilothouse.runtime.local.runtime import LocalRuntime
from pilothouse.spec.resources import QueueSpec
from pilothouse.store.sqlite import NotFound, Store

log = logging.getLogger("pilothouse.runtime.local")

DEPLOYMENT = "ModelDeployment"
JOB = "TrainingJob"
EventSink = Callable[[str, str, str, str, str], None]


@dataclass
class _Deployment:
    targets: dict[str, RevisionTarget]
    policy: ReplicaPolicyState
    #: revision -> replicas replaced so far
    restarts: dict[str, int]
    reason: str = ""
    #: revision -> how its last replica to fail ended (with the last line it wrote)
    last_failure: dict[str, str] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


def replica_spec(revision: str, target: RevisionTarget) -> ReplicaSpec:
    t = target.template
    return ReplicaSpec(
        deployment=t.deployment,
        revision=revision,
        model_name=t.model_name,
        model=t.model,
        readiness_path=t.readiness.path,
        probe_period=t.readiness.period,
        probe_timeout=t.readiness.timeout,
        failure_threshold=t.readiness.failure_threshold,
        max_batch_size=t.max_batch_size,
        max_batch_delay=t.max_batch_delay,
        readiness_command=t.readiness.command,
        liveness=t.liveness,
        requests=t.resources,
        priority=t.priority,
        grace=t.grace,
        pass_env=t.pass_env,
    )


class LocalWorkload:
    def __init__(
        self,
        runtime: LocalRuntime,
        store: Store,
        registry: BaseRegistry,
        *,
        events: EventSink | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.registry = registry
        self._events = events or store.record_event
        self._deployments: dict[str, _Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._converging: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: (job, job uid, attempt) -> the registered output, or why it could not be
        self._outputs: dict[tuple[str, str, int], RegisteredModel | str] = {}
        self._registering: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        #: wakes the owner's controller (set by the daemon)
        self.on_change: Callable[[str, str], None] = lambda kind, name: None

    # -- events from the processes ---------------------------------------------------------

    def observe(self, kind: str, name: str) -> None:
        """One of the owner's processes changed (ready, unready, ended)."""
        if kind == DEPLOYMENT and name in self._deployments:
            self._soon(name)
        else:
            self.on_change(kind, name)

    def _soon(self, deployment: str) -> None:
        if deployment in self._converging:
            return
        self._converging.add(deployment)

        async def run() -> None:
            try:
                await self._converge(deployment)
            except Exception:
                # the controller is woken all the same: its next apply converges again
                log.exception("%s: converging its replicas failed", deployment)
            finally:
                self._converging.discard(deployment)
                self.on_change(DEPLOYMENT, deployment)

        task = asyncio.get_running_loop().create_task(run(), name=f"converge-{deployment}")
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    # -- revisions -------------------------------------------------------------------------

    async def apply_revisions(self, deployment: str, targets: dict[str, RevisionTarget]) -> None:
        state = self._deployments.get(deployment)
        if state is None:
            state = self._deployments[deployment] = _Deployment(
                dict(targets), ReplicaPolicyState(), {}
            )
        state.targets = dict(targets)
        await self._converge(deployment)

    async def _converge(self, deployment: str) -> None:
        async with self._locks[deployment]:
            state = self._deployments.get(deployment)
            if state is None:
                return
            observed = await self.runtime.list_replicas(deployment)
            now = time.time()
            plan = plan_revisions(
                {rev: t.replicas for rev, t in state.targets.items()},
                [
                    ObservedReplica(
                        r.id,
                        r.revision,
                        r.ready,
                        r.exited,
                        r.started_at,
                        r.exited_at,
                        # stopped by the platform (drain, lost node): no crash back-off
                        r.ever_ready or bool(r.disrupted),
                    )
                    for r in observed
                ],
                state.policy,
                now,
            )
            state.policy = plan.state
            state.reason = plan.reason if "back-off" in plan.reason else ""
            by_id = {r.id: r for r in observed}
            # the endpoint first goes to every ready replica that stays, then replicas stop:
            # it is never left without one
            staying = [r for r in observed if r.ready and not r.exited and r.id not in plan.stop]
            self.runtime.set_backends(deployment, staying)
            for replica_id in plan.stop:
                replica = by_id.get(replica_id)
                if replica is not None and replica.exited:
                    state.restarts[replica.revision] = state.restarts.get(replica.revision, 0) + 1
                    said = self._last_words(deployment, replica_id)
                    ended = f"replica {replica_id} {_why(replica)}" + (f": {said}" if said else "")
                    state.last_failure[replica.revision] = ended
                    self._events(
                        DEPLOYMENT, deployment, "Warning", "ReplicaExited", f"{ended}; replacing it"
                    )
                await self.runtime.stop_replica(replica_id)
            for rev, count in plan.starts.items():
                target = state.targets.get(rev)
                if target is None:
                    continue
                spec = replica_spec(rev, target)
                for _ in range(count):
                    replica_id = await self.runtime.start_replica(spec)
                    self._events(
                        DEPLOYMENT,
                        deployment,
                        "Normal",
                        "ReplicaCreated",
                        f"created replica {replica_id} of revision {rev} "
                        f"({target.template.model}); it starts once placed on a node",
                    )
            ready = [r for r in await self.runtime.list_replicas(deployment) if r.ready]
            self.runtime.set_backends(deployment, ready)
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            if plan.state.next_start_at > now:
                # a crash-loop back-off holds starts: look again when it ends
                delay = plan.state.next_start_at - now
                state.timer = asyncio.get_running_loop().call_later(
                    delay + 0.01, self._soon, deployment
                )

    def _last_words(self, deployment: str, replica_id: str) -> str:
        """The last line a replica wrote (a model server says why it could not serve)."""
        for path in self.runtime.log_files(DEPLOYMENT, deployment):
            if path.name == f"{replica_id}.log":
                lines = [line for line in last_lines(path, 5) if line.strip()]
                return lines[-1].strip()[:300] if lines else ""
        return ""

    async def revisions(self, deployment: str) -> list[RevisionState]:
        state = self._deployments.get(deployment)
        targets = state.targets if state is not None else {}
        replicas = await self.runtime.list_replicas(deployment)
        by_revision: dict[str, list[ReplicaStatus]] = defaultdict(list)
        for r in replicas:
            by_revision[r.revision].append(r)
        order = [*dict.fromkeys([*(r.revision for r in replicas), *targets])]
        out = []
        now = time.time()
        for rev in order:
            mine = by_revision.get(rev, [])
            alive = [r for r in mine if not r.exited]
            pending = [r for r in alive if r.pending]
            ready = [r for r in alive if r.ready]
            failed = [r for r in mine if r.exited]
            looping = (
                state is not None
                and state.policy.revision == rev
                and state.policy.failures > 0
                and state.policy.next_start_at > now
            )
            if pending:
                reason, message = "Unschedulable", pending[0].message
            elif looping and state is not None:
                reason, message = "CrashLoopBackOff", state.reason
                if rev in state.last_failure:
                    message += f"; last failure: {state.last_failure[rev]}"
            elif failed:
                reason, message = "ReplicaFailed", f"replica {failed[0].id} {_why(failed[0])}"
            else:
                reason, message = "", ""
            out.append(
                RevisionState(
                    revision=rev,
                    desired=targets[rev].replicas if rev in targets else 0,
                    ready=len(ready),
                    starting=len(alive) - len(ready) - len(pending),
                    pending=len(pending),
                    failed=len(failed),
                    restarts=state.restarts.get(rev, 0) if state is not None else 0,
                    crash_looping=looping,
                    nodes=tuple(sorted({r.node for r in alive if r.node})),
                    reason=reason,
                    message=message,
                )
            )
        return out

    async def delete_deployment(self, deployment: str) -> bool:
        # after any converge in progress (it could otherwise start a replica of a deployment
        # that is gone); a converge that waits for the lock finds no state and does nothing
        async with self._locks[deployment]:
            state = self._deployments.pop(deployment, None)
            if state is not None and state.timer is not None:
                state.timer.cancel()
            for replica in await self.runtime.list_replicas(deployment):
                await self.runtime.stop_replica(replica.id)
            self.runtime.set_backends(deployment, [])
        self._locks.pop(deployment, None)
        return self.runtime.running_count(DEPLOYMENT, deployment) == 0

    # -- gangs -----------------------------------------------------------------------------

    def _queue_priority(self, queue: str) -> int:
        try:
            return int(QueueSpec.model_validate(self.store.get("Queue", queue)["spec"]).priority)
        except NotFound:
            return 0

    async def apply_gang(self, gang: GangTemplate) -> None:
        # anything of an earlier attempt goes first (its room is freed in the background)
        await self.runtime.stop_workers(gang.job, keep_attempt=gang.attempt)
        queue_priority = self._queue_priority(gang.queue)
        await self.runtime.start_gang(
            [
                WorkerSpec(
                    job=gang.job,
                    attempt=gang.attempt,
                    rank=rank,
                    world_size=gang.workers,
                    command=list(gang.command),
                    env=dict(gang.env),
                    working_dir=gang.working_dir,
                    requests=gang.resources,
                    queue=gang.queue,
                    priority=gang.priority,
                    queue_priority=queue_priority,
                    grace=gang.grace,
                    checkpoint_id=gang.uid,
                    checkpoint_interval=gang.checkpoint_interval,
                    checkpoint_keep=gang.checkpoint_keep,
                    pass_env=gang.pass_env,
                    output_model=gang.output.model if gang.output is not None else "",
                    output_framework=gang.output.framework
                    if gang.output is not None
                    else "sklearn",
                    uid=gang.uid,
                    generation=gang.generation,
                )
                for rank in range(gang.workers)
            ]
        )

    async def gang(self, job: str) -> GangState | None:
        workers = await self.runtime.list_workers(job)
        if not workers:
            return None
        attempt = max(w.attempt for w in workers)
        current = [w for w in workers if w.attempt == attempt]
        members = tuple(self._member(job, w) for w in current)
        admitted = all(not w.pending for w in current)
        waiting = next((w.message for w in current if w.pending), "")
        started = [w.started_at for w in current if not w.pending]
        output: RegisteredModel | None = None
        output_error = ""
        spec = self.runtime.worker_spec(current[0].id)
        if (
            spec is not None
            and spec.output_model
            and all(m.phase == MemberPhase.SUCCEEDED for m in members)
        ):
            result = self._output(spec)
            if isinstance(result, RegisteredModel):
                output = result
            elif isinstance(result, str):
                output_error = result
        return GangState(
            job=job,
            attempt=attempt,
            admitted=admitted,
            members=members,
            waiting="" if admitted else waiting,
            disrupted=next((w.disrupted for w in current if w.disrupted), ""),
            started_at=min(started) if started and admitted else None,
            output=output,
            output_error=output_error,
        )

    def _member(self, job: str, w: WorkerStatus) -> MemberState:
        if w.pending:
            phase = MemberPhase.PENDING
        elif w.running:
            phase = MemberPhase.RUNNING
        elif w.exit_code == 0:
            phase = MemberPhase.SUCCEEDED
        else:
            phase = MemberPhase.FAILED
        detail = ""
        if phase == MemberPhase.FAILED:
            detail = self._log_tail(job, w.rank)
        return MemberState(
            rank=w.rank,
            phase=phase,
            node=w.node,
            exit_code=w.exit_code,
            message=w.message,
            detail=detail,
        )

    def _log_tail(self, job: str, rank: int) -> str:
        wanted = f"worker-{rank}.log"
        for path in self.runtime.log_files(JOB, job):
            if path.name == wanted:
                lines = [
                    line
                    for line in last_lines(path, 12)
                    if line.strip() and not line.startswith("--- pilothouse:")
                ]
                return " | ".join(lines[-3:])
        return ""

    def _output(self, spec: WorkerSpec) -> RegisteredModel | str | None:
        """The attempt's registered output; registration starts on the first ask."""
        key = (spec.job, spec.uid, spec.attempt)
        if key in self._outputs:
            return self._outputs[key]
        if key not in self._registering:
            self._registering[key] = asyncio.get_running_loop().create_task(
                self._register(spec), name=f"register-{spec.job}-a{spec.attempt}"
            )
        return None

    async def _register(self, spec: WorkerSpec) -> None:
        key = (spec.job, spec.uid, spec.attempt)
        try:
            result: RegisteredModel | str = await asyncio.to_thread(self._register_output, spec)
        except Exception as exc:  # reported in the gang's state, never lost
            log.exception("registering the output of %s attempt %d", spec.job, spec.attempt)
            result = f"{type(exc).__name__}: {exc}"
        self._outputs[key] = result
        self._registering.pop(key, None)
        self.on_change(JOB, spec.job)

    def _register_output(self, spec: WorkerSpec) -> RegisteredModel | str:
        """Register once (idempotent by job uid + attempt: a restarted daemon finds it)."""
        existing = [
            v
            for v in self.registry.versions(spec.output_model)
            if v.lineage.get("trainingJobUid") == spec.uid
            and v.lineage.get("attempt") == spec.attempt
        ]
        try:
            version = (
                existing[0]
                if existing
                else self.registry.register(
                    spec.output_model,
                    self.runtime.output_dir(spec.job, spec.attempt, spec.uid),
                    framework=spec.output_framework,
                    lineage={
                        "trainingJob": spec.job,
                        "trainingJobUid": spec.uid,
                        "generation": spec.generation,
                        "attempt": spec.attempt,
                        "command": list(spec.command),
                        "workingDir": spec.working_dir,
                    },
                )
            )
        except (RegistryError, OSError, ValueError) as exc:
            return str(exc)
        return RegisteredModel(
            name=version.name, version=version.version, ref=version.ref, metrics=version.metrics
        )

    async def delete_gang(self, job: str) -> bool:
        await self.runtime.stop_workers(job)
        # the controller has recorded the output of an attempt it lets go (or never will)
        for key in [k for k in self._outputs if k[0] == job]:
            del self._outputs[key]
        return self.runtime.running_count(JOB, job) == 0

    async def queue_usage(self) -> dict[str, QueueUsage]:
        used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        jobs: dict[str, set[str]] = defaultdict(set)
        for p in await self.runtime.placements():
            if p.queue is None or p.phase == "Terminating":
                continue
            totals = used[p.queue]
            if p.node is None:
                totals[3] += 1
                continue
            totals[0] += p.requests.cpu
            totals[1] += p.requests.memory
            totals[2] += p.requests.gpu
            jobs[p.queue].add(p.owner_name)
        return {
            queue: QueueUsage(cpu, memory, gpu, pending, tuple(sorted(jobs.get(queue, ()))))
            for queue, (cpu, memory, gpu, pending) in used.items()
        }

    async def close(self) -> None:
        for state in self._deployments.values():
            if state.timer is not None:
                state.timer.cancel()
        for task in [*self._registering.values(), *self._tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def last_lines(path: Path, count: int) -> list[str]:
    """The last lines of a log (its last 4 KiB at most)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-count:]


def _why(replica: ReplicaStatus) -> str:
    if replica.disrupted:
        return replica.disrupted
    if replica.exit_code is None or replica.message.startswith("liveness"):
        return replica.message
    return f"exited with code {replica.exit_code}"
