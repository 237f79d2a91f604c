"""The workload port in memory: a small, deterministic Kubernetes.

Nothing runs: replicas and workers are records that move along as the injected clock
moves and :meth:`MemoryWorkload.step` is called (no threads, no sleeps). What it does is
what Kubernetes' own controllers do behind the port, with the same pure policies the
platform uses elsewhere:

- a revision's replicas are created *pending*, placed on a node by
  :func:`pilothouse.policy.scheduler.schedule` (resources, priorities), *start*, and are
  *ready* ``start_seconds`` later (per model version: :meth:`set_behaviour`);
- a replica that dies is replaced like a ReplicaSet replaces a pod, with the crash-loop
  back-off of :func:`pilothouse.policy.replicas.plan_revisions` for replicas that never
  became ready (counted in ``restarts``/``failed``; ``crash_looping`` while the
  back-off holds a start, as kubelet's CrashLoopBackOff);
- replicas scaled away, or of revisions no longer named, are drained and stop after
  their grace period; ``delete_deployment`` is True once none is left;
- a gang's workers are admitted together by queue quota and fit (the same scheduler
  policy, which preempts lower-priority gangs: the victim is marked ``disrupted``), run
  until the test ends them (:meth:`finish`), and a gang whose workers all exit 0 has its
  output registered in the :class:`~pilothouse.runtime.memory.state.MemoryRegistry`
  (or reports ``output_error`` when the test arranged one with :meth:`fail_output`).

Faults and behaviour are the test's: :meth:`crash`, :meth:`finish`,
:meth:`set_behaviour`, :meth:`fail_output`, :meth:`set_nodes`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pilothouse.policy.backoff import BackoffParams
from pilothouse.policy.replicas import ObservedReplica, ReplicaPolicyState, plan_revisions
from pilothouse.policy.scheduler import Bound, NodeInfo, Pending, QueueInfo, schedule
from pilothouse.policy.scheduler import Resources as PolicyResources
from pilothouse.ports.workload import (
    GangState,
    GangTemplate,
    MemberPhase,
    MemberState,
    QueueUsage,
    RegisteredModel,
    ReplicaTemplate,
    Resources,
    RevisionState,
    RevisionTarget,
)
from pilothouse.runtime.memory.state import MemoryRegistry

DEFAULT_NODES = (NodeInfo("memory-0", PolicyResources(cpu=64_000, memory=256 * 2**30, gpu=0)),)
#: exit code of a process stopped by SIGTERM (what a stopped worker reports)
SIGTERM_EXIT = 143
#: exit code of a process killed by SIGKILL (a crash the test injects)
SIGKILL_EXIT = 137

Changed = Callable[[str, str], None]


@dataclass(frozen=True)
class ReplicaBehaviour:
    """How replicas of one model version behave once started."""

    #: seconds from start to ready
    start_seconds: float = 2.0
    #: exits this long after it starts, before it is ever ready (a model that cannot
    #: load); None: it becomes ready
    crash_after: float | None = None
    exit_code: int = 1
    message: str = "the model server exited while loading the model"


@dataclass
class _Replica:
    id: str
    deployment: str
    revision: str
    template: ReplicaTemplate
    created: float
    node: str | None = None
    placed_at: float | None = None
    ready: bool = False
    ever_ready: bool = False
    exited_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    #: draining/terminating: gone at this time (holds its node until then)
    stopping_until: float | None = None

    @property
    def alive(self) -> bool:
        return self.exited_at is None and self.stopping_until is None


@dataclass
class _Revision:
    name: str
    template: ReplicaTemplate
    desired: int = 0
    restarts: int = 0
    #: replicas that ended and are not replaced yet
    owed: int = 0
    last_failure: str = ""
    pending_reason: str = ""


@dataclass
class _Deployment:
    name: str
    revisions: dict[str, _Revision] = field(default_factory=dict)
    replicas: list[_Replica] = field(default_factory=list)
    policy: ReplicaPolicyState = field(default_factory=ReplicaPolicyState)
    reason: str = ""
    deleting: bool = False


@dataclass
class _Member:
    id: str
    rank: int
    node: str | None = None
    phase: str = MemberPhase.PENDING
    exit_code: int | None = None
    message: str = ""
    detail: str = ""
    stopping_until: float | None = None

    @property
    def holds(self) -> bool:
        """It holds its node's resources (placed and not ended)."""
        return self.node is not None and self.phase == MemberPhase.RUNNING


@dataclass
class _Gang:
    template: GangTemplate
    created: float
    members: list[_Member]
    admitted: bool = False
    waiting: str = ""
    disrupted: str = ""
    started_at: float | None = None
    output: RegisteredModel | None = None
    output_error: str = ""

    @property
    def key(self) -> str:
        return f"{self.template.job}#{self.template.attempt}"


class MemoryWorkload:
    """Implements :class:`pilothouse.ports.workload.Workload` in memory."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        registry: MemoryRegistry | None = None,
        nodes: Sequence[NodeInfo] = DEFAULT_NODES,
        queues: Callable[[], Mapping[str, QueueInfo]] | None = None,
        start_seconds: float = 2.0,
        stop_seconds: float | None = None,
        backoff: BackoffParams | None = None,
        on_change: Changed | None = None,
    ) -> None:
        """``stop_seconds``: how long a stopped replica or worker takes to go (None: its
        whole grace period); ``queues``: the queues' quotas and priorities (the
        ``default`` queue, unlimited, when None); ``on_change(kind, name)``: told when
        what runs of a deployment or a job changed (a watch)."""
        self.clock = clock
        self.registry = registry if registry is not None else MemoryRegistry()
        self.nodes = list(nodes)
        self.queues = queues
        self.default_behaviour = ReplicaBehaviour(start_seconds=start_seconds)
        self.stop_seconds = stop_seconds
        self.backoff = backoff or BackoffParams()
        self.on_change = on_change
        self._behaviour: dict[str, ReplicaBehaviour] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._gangs: dict[str, _Gang] = {}
        #: earlier attempts (or deleted jobs) whose workers are still stopping
        self._leftovers: list[_Gang] = []
        self._output_errors: dict[str, str] = {}
        self._ids = itertools.count(1)

    # --- what the test does -----------------------------------------------------------

    def set_behaviour(self, model: str, behaviour: ReplicaBehaviour) -> None:
        """How replicas of ``model`` (``name:version``, or a name for all its versions)
        behave from their next start on."""
        self._behaviour[model] = behaviour
        self.step()

    def set_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        self.nodes = list(nodes)
        self.step()

    def crash(
        self, deployment: str, revision: str, n: int = 1, ever_ready: bool = True
    ) -> list[str]:
        """Kill ``n`` replicas of a revision: ready ones (``ever_ready``) or ones still
        starting; returns their ids. Raises ValueError when there are not that many."""
        self.step()
        dep = self._deployments.get(deployment)
        candidates = [
            r
            for r in (dep.replicas if dep is not None else [])
            if r.revision == revision
            and r.alive
            and r.node is not None
            and (r.ready if ever_ready else not r.ready)
        ]
        if len(candidates) < n:
            what = "ready" if ever_ready else "starting"
            raise ValueError(
                f"{deployment}/{revision} has {len(candidates)} {what} replica(s), not {n}"
            )
        now = self.clock()
        for replica in candidates[:n]:
            replica.ready = False
            replica.exited_at = now
            replica.exit_code = SIGKILL_EXIT
            replica.message = f"replica {replica.id} was killed (exit code {SIGKILL_EXIT})"
        self.step(force_notify=(("ModelDeployment", deployment),))
        return [r.id for r in candidates[:n]]

    def finish(
        self, job: str, rank: int, code: int = 0, message: str = "", detail: str = ""
    ) -> None:
        """Worker ``rank`` of the job's current attempt exits with ``code`` (``detail``:
        the last lines it wrote)."""
        self.step()
        gang = self._gangs.get(job)
        if gang is None or not gang.admitted:
            raise ValueError(f"job {job} has no admitted gang")
        member = gang.members[rank]
        if member.phase != MemberPhase.RUNNING or member.stopping_until is not None:
            raise ValueError(f"worker {rank} of {job} is not running ({member.phase})")
        member.phase = MemberPhase.SUCCEEDED if code == 0 else MemberPhase.FAILED
        member.exit_code = code
        member.message = message or ("" if code == 0 else f"exit code {code}")
        member.detail = detail
        self.step(force_notify=(("TrainingJob", job),))

    def fail_output(self, job: str, message: str) -> None:
        """The job's output cannot be registered (a missing or unreadable folder)."""
        self._output_errors[job] = message

    def ready_replicas(self, deployment: str) -> dict[str, int]:
        """Ready replicas per revision (the data plane's endpoints)."""
        dep = self._deployments.get(deployment)
        out: dict[str, int] = {}
        for r in dep.replicas if dep is not None else []:
            if r.ready and r.alive:
                out[r.revision] = out.get(r.revision, 0) + 1
        return out

    def template(self, deployment: str, revision: str) -> ReplicaTemplate | None:
        """The template a revision's replicas start from (None: not known here)."""
        dep = self._deployments.get(deployment)
        found = dep.revisions.get(revision) if dep is not None else None
        return found.template if found is not None else None

    def next_change(self) -> float | None:
        """When something moves along by itself next (for a driver that jumps ahead)."""
        times: list[float] = []
        for dep in self._deployments.values():
            for r in dep.replicas:
                if r.stopping_until is not None:
                    times.append(r.stopping_until)
                elif r.alive and r.placed_at is not None and not r.ready:
                    behaviour = self._behaviour_of(r.template)
                    delay = (
                        behaviour.crash_after
                        if behaviour.crash_after is not None
                        else behaviour.start_seconds
                    )
                    times.append(r.placed_at + delay)
            if dep.policy.next_start_at > self.clock():
                times.append(dep.policy.next_start_at)
        for gang in [*self._gangs.values(), *self._leftovers]:
            times.extend(m.stopping_until for m in gang.members if m.stopping_until is not None)
        return min(times) if times else None

    # --- the port: deployments --------------------------------------------------------

    async def apply_revisions(self, deployment: str, targets: dict[str, RevisionTarget]) -> None:
        dep = self._deployments.setdefault(deployment, _Deployment(deployment))
        dep.deleting = False
        for name, revision in dep.revisions.items():
            if name not in targets:
                revision.desired = 0
        for name, target in targets.items():
            known = dep.revisions.get(name)
            if known is None:
                dep.revisions[name] = _Revision(name, target.template, max(0, target.replicas))
            else:
                known.template = target.template
                known.desired = max(0, target.replicas)
        self.step()

    async def revisions(self, deployment: str) -> list[RevisionState]:
        self.step()
        dep = self._deployments.get(deployment)
        if dep is None:
            return []
        now = self.clock()
        out = []
        for revision in dep.revisions.values():
            mine = [r for r in dep.replicas if r.revision == revision.name]
            alive = [r for r in mine if r.alive]
            if not mine and revision.desired == 0:
                continue
            ready = sum(1 for r in alive if r.ready)
            starting = sum(1 for r in alive if r.node is not None and not r.ready)
            pending = sum(1 for r in alive if r.node is None)
            missing = max(0, revision.desired - len(alive))
            failed = min(revision.owed, missing)
            # CrashLoopBackOff: its replicas ended before they were ever ready, and the
            # back-off holds the next start (as kubelet reports it)
            looping = (
                dep.policy.revision == revision.name
                and dep.policy.failures > 0
                and now < dep.policy.next_start_at
            )
            if pending:
                reason, message = "Unschedulable", revision.pending_reason or "waiting for a node"
            elif looping:
                reason = "CrashLoopBackOff"
                message = (
                    f"back-off {dep.policy.next_start_at - now:.1f}s restarting replicas that "
                    f"exit before they are ready; last: {revision.last_failure}"
                )
            elif failed:
                reason, message = "ReplicaFailed", revision.last_failure
            else:
                reason, message = "", ""
            out.append(
                RevisionState(
                    revision=revision.name,
                    desired=revision.desired,
                    ready=ready,
                    starting=starting,
                    pending=pending,
                    failed=failed,
                    restarts=revision.restarts,
                    crash_looping=looping,
                    nodes=tuple(sorted({r.node for r in alive if r.node is not None})),
                    reason=reason,
                    message=message,
                )
            )
        return out

    async def delete_deployment(self, deployment: str) -> bool:
        dep = self._deployments.get(deployment)
        if dep is None:
            return True
        dep.deleting = True
        for revision in dep.revisions.values():
            revision.desired = 0
        self.step()
        if dep.replicas:
            return False
        del self._deployments[deployment]
        return True

    # --- the port: gangs --------------------------------------------------------------

    async def apply_gang(self, gang: GangTemplate) -> None:
        current = self._gangs.get(gang.job)
        if (
            current is not None
            and current.template.uid == gang.uid
            and current.template.attempt == gang.attempt
        ):
            return
        now = self.clock()
        if current is not None:
            self._stop_gang(current, now, "replaced by attempt " + str(gang.attempt))
            if any(m.stopping_until is not None for m in current.members):
                self._leftovers.append(current)
        self._gangs[gang.job] = _Gang(
            template=gang,
            created=now,
            members=[
                _Member(id=f"w/{gang.job}/{gang.attempt}/{rank}", rank=rank)
                for rank in range(gang.workers)
            ],
        )
        self.step()

    async def gang(self, job: str) -> GangState | None:
        self.step()
        gang = self._gangs.get(job)
        if gang is None:
            return None
        return GangState(
            job=job,
            attempt=gang.template.attempt,
            admitted=gang.admitted,
            members=tuple(
                MemberState(
                    rank=m.rank,
                    phase=m.phase,
                    node=m.node,
                    exit_code=m.exit_code,
                    message=m.message if m.phase != MemberPhase.PENDING else gang.waiting,
                    detail=m.detail,
                )
                for m in gang.members
            ),
            waiting="" if gang.admitted else gang.waiting,
            disrupted=gang.disrupted,
            started_at=gang.started_at,
            output=gang.output,
            output_error=gang.output_error,
        )

    async def delete_gang(self, job: str) -> bool:
        gang = self._gangs.pop(job, None)
        now = self.clock()
        if gang is not None:
            self._stop_gang(gang, now, "deleted")
            if any(m.stopping_until is not None for m in gang.members):
                self._leftovers.append(gang)
        self.step()
        return not any(g.template.job == job for g in self._leftovers)

    async def queue_usage(self) -> dict[str, QueueUsage]:
        self.step()
        totals: dict[str, list[int]] = {}
        pending: dict[str, int] = {}
        running: dict[str, set[str]] = {}
        for gang in [*self._gangs.values(), *self._leftovers]:
            queue = gang.template.queue
            totals.setdefault(queue, [0, 0, 0])
            for m in gang.members:
                if m.holds:
                    r = gang.template.resources
                    totals[queue][0] += r.cpu
                    totals[queue][1] += r.memory
                    totals[queue][2] += r.gpu
                    running.setdefault(queue, set()).add(gang.template.job)
                elif m.phase == MemberPhase.PENDING and not gang.admitted:
                    pending[queue] = pending.get(queue, 0) + 1
        return {
            queue: QueueUsage(
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                pending_workers=pending.get(queue, 0),
                running_jobs=tuple(sorted(running.get(queue, set()))),
            )
            for queue, (cpu, memory, gpu) in sorted(totals.items())
        }

    # --- moving the world along -------------------------------------------------------

    def step(self, force_notify: Sequence[tuple[str, str]] = ()) -> None:
        """Move everything along to the clock's now: replicas start, become ready or crash,
        stopped things go, ReplicaSets replace and scale, the scheduler places. Idempotent
        at one instant."""
        now = self.clock()
        changed: set[tuple[str, str]] = set(force_notify)
        for dep in list(self._deployments.values()):
            if self._progress_replicas(dep, now):
                changed.add(("ModelDeployment", dep.name))
        for gang in [*self._gangs.values(), *self._leftovers]:
            if self._progress_gang(gang, now):
                changed.add(("TrainingJob", gang.template.job))
        self._leftovers = [
            g for g in self._leftovers if any(m.stopping_until is not None for m in g.members)
        ]
        for dep in list(self._deployments.values()):
            if self._replica_sets(dep, now):
                changed.add(("ModelDeployment", dep.name))
        changed |= self._schedule(now)
        if self.on_change is not None:
            for kind, name in sorted(changed):
                self.on_change(kind, name)

    def _behaviour_of(self, template: ReplicaTemplate) -> ReplicaBehaviour:
        return (
            self._behaviour.get(template.model)
            or self._behaviour.get(template.model_name)
            or self.default_behaviour
        )

    def _stop_time(self, grace: float) -> float:
        return grace if self.stop_seconds is None else min(grace, self.stop_seconds)

    def _progress_replicas(self, dep: _Deployment, now: float) -> bool:
        changed = False
        kept = []
        for r in dep.replicas:
            if r.stopping_until is not None and now >= r.stopping_until:
                changed = True
                continue
            kept.append(r)
            if not r.alive or r.placed_at is None or r.ready:
                continue
            behaviour = self._behaviour_of(r.template)
            if behaviour.crash_after is not None:
                if now >= r.placed_at + behaviour.crash_after:
                    r.exited_at = r.placed_at + behaviour.crash_after
                    r.exit_code = behaviour.exit_code
                    r.message = (
                        f"replica {r.id} exited with code {behaviour.exit_code} before it "
                        f"was ready: {behaviour.message}"
                    )
                    changed = True
            elif now >= r.placed_at + behaviour.start_seconds:
                r.ready = r.ever_ready = True
                changed = True
        dep.replicas = kept
        return changed

    def _replica_sets(self, dep: _Deployment, now: float) -> bool:
        """What a ReplicaSet per revision does: replace what died, scale to the target."""
        targets = {name: r.desired for name, r in dep.revisions.items()}
        observed = [
            ObservedReplica(
                id=r.id,
                version=r.revision,
                ready=r.ready,
                exited=r.exited_at is not None,
                started_at=r.placed_at if r.placed_at is not None else r.created,
                exited_at=r.exited_at,
                ever_ready=r.ever_ready,
            )
            for r in dep.replicas
            if r.stopping_until is None
        ]
        plan = plan_revisions(targets, observed, dep.policy, now, self.backoff)
        dep.policy = plan.state
        dep.reason = plan.reason
        by_id = {r.id: r for r in dep.replicas}
        changed = False
        for replica_id in plan.stop:
            r = by_id[replica_id]
            revision = dep.revisions[r.revision]
            changed = True
            if r.exited_at is not None:
                dep.replicas.remove(r)
                revision.owed += 1
                revision.last_failure = r.message
            elif r.node is None:
                dep.replicas.remove(r)  # never placed: nothing to stop
            else:
                r.ready = False  # drained out of the data plane first
                r.stopping_until = now + self._stop_time(r.template.grace)
        for name, count in plan.starts.items():
            revision = dep.revisions[name]
            for _ in range(count):
                dep.replicas.append(
                    _Replica(
                        id=f"r/{dep.name}/{name}/{next(self._ids)}",
                        deployment=dep.name,
                        revision=name,
                        template=revision.template,
                        created=now,
                    )
                )
            replaced = min(revision.owed, count)
            revision.restarts += replaced
            revision.owed -= replaced
            changed = True
        for revision in dep.revisions.values():
            alive = sum(1 for r in dep.replicas if r.alive and r.revision == revision.name)
            revision.owed = min(revision.owed, max(0, revision.desired - alive))
        # forget revisions nothing runs of and nobody asks for
        for name in [
            n
            for n, rev in dep.revisions.items()
            if rev.desired == 0 and not any(r.revision == n for r in dep.replicas)
        ]:
            del dep.revisions[name]
        return changed

    def _progress_gang(self, gang: _Gang, now: float) -> bool:
        changed = False
        for m in gang.members:
            if m.stopping_until is not None and now >= m.stopping_until:
                m.stopping_until = None
                m.phase = MemberPhase.FAILED
                m.exit_code = SIGTERM_EXIT
                changed = True
        if (
            gang.template.output is not None
            and gang.output is None
            and not gang.output_error
            and gang.members
            and all(m.phase == MemberPhase.SUCCEEDED for m in gang.members)
        ):
            error = self._output_errors.get(gang.template.job)
            if error is not None:
                gang.output_error = error
            else:
                lineage = {
                    "trainingJob": gang.template.job,
                    "trainingJobUid": gang.template.uid,
                    "generation": str(gang.template.generation),
                    "attempt": str(gang.template.attempt),
                }
                gang.output = self.registry.register_output(
                    gang.template.output.model, gang.template.output.framework, lineage
                )
            changed = True
        return changed

    def _stop_gang(self, gang: _Gang, now: float, why: str) -> None:
        for m in gang.members:
            if m.phase == MemberPhase.PENDING:
                m.phase = MemberPhase.FAILED
                m.message = f"not started: {why}"
            elif m.phase == MemberPhase.RUNNING and m.stopping_until is None:
                m.stopping_until = now + self._stop_time(gang.template.grace)

    def _queue_infos(self) -> Mapping[str, QueueInfo]:
        queues = dict(self.queues()) if self.queues is not None else {}
        queues.setdefault("default", QueueInfo("default"))
        return queues

    def _schedule(self, now: float) -> set[tuple[str, str]]:
        """One scheduling pass over everything waiting for a node."""
        bound: list[Bound] = []
        pending: list[Pending] = []
        replicas: dict[str, tuple[_Deployment, _Replica]] = {}
        members: dict[str, tuple[_Gang, _Member]] = {}
        for dep in self._deployments.values():
            for r in dep.replicas:
                if r.exited_at is not None:
                    continue
                requests = _policy_resources(r.template.resources)
                owner = f"ModelDeployment/{dep.name}"
                replicas[r.id] = (dep, r)
                if r.node is not None:
                    bound.append(
                        Bound(
                            id=r.id,
                            node=r.node,
                            requests=requests,
                            owner=owner,
                            priority=r.template.priority,
                            terminating=r.stopping_until is not None,
                        )
                    )
                elif r.stopping_until is None:
                    pending.append(
                        Pending(
                            id=r.id,
                            requests=requests,
                            owner=owner,
                            priority=r.template.priority,
                            created=r.created,
                        )
                    )
        for gang in [*self._leftovers, *self._gangs.values()]:
            t = gang.template
            requests = _policy_resources(t.resources)
            for m in gang.members:
                members[m.id] = (gang, m)
                owner = f"TrainingJob/{t.job}"
                if m.holds and m.node is not None:
                    bound.append(
                        Bound(
                            id=m.id,
                            node=m.node,
                            requests=requests,
                            owner=owner,
                            gang=gang.key,
                            queue=t.queue,
                            priority=t.priority,
                            preemptible=True,
                            terminating=m.stopping_until is not None,
                        )
                    )
                elif not gang.admitted and m.phase == MemberPhase.PENDING:
                    pending.append(
                        Pending(
                            id=m.id,
                            requests=requests,
                            owner=owner,
                            gang=gang.key,
                            gang_size=len(gang.members),
                            queue=t.queue,
                            priority=t.priority,
                            created=gang.created,
                            spread=False,
                            preemptible=True,
                        )
                    )
        if not pending:
            return set()
        decision = schedule(self.nodes, bound, pending, self._queue_infos())
        changed: set[tuple[str, str]] = set()
        for preemption in decision.preemptions:
            for victim in preemption.victims:
                if victim in members:
                    gang, _ = members[victim]
                    if not gang.disrupted:
                        gang.disrupted = preemption.reason
                        self._stop_gang(gang, now, preemption.reason)
                        for m in gang.members:
                            m.message = f"preempted: {preemption.reason}"
                        changed.add(("TrainingJob", gang.template.job))
                elif victim in replicas:
                    dep, r = replicas[victim]
                    r.ready = False
                    r.stopping_until = now + self._stop_time(r.template.grace)
                    r.message = f"replica {r.id} preempted: {preemption.reason}"
                    changed.add(("ModelDeployment", dep.name))
        placed: set[str] = set()
        for binding in decision.bindings:
            if binding.id in replicas:
                dep, r = replicas[binding.id]
                r.node = binding.node
                r.placed_at = now
                changed.add(("ModelDeployment", dep.name))
            elif binding.id in members:
                gang, m = members[binding.id]
                m.node = binding.node
                placed.add(gang.key)
        for gang in [*self._gangs.values()]:
            if gang.key in placed and all(m.node is not None for m in gang.members):
                gang.admitted = True
                gang.waiting = ""
                gang.started_at = now
                for m in gang.members:
                    m.phase = MemberPhase.RUNNING
                changed.add(("TrainingJob", gang.template.job))
        for item, reason in decision.pending.items():
            if item in replicas:
                dep, r = replicas[item]
                revision = dep.revisions.get(r.revision)
                if revision is not None and revision.pending_reason != reason:
                    revision.pending_reason = reason
                    changed.add(("ModelDeployment", dep.name))
            elif item in members:
                gang, _ = members[item]
                if not gang.admitted and gang.waiting != reason:
                    gang.waiting = reason
                    changed.add(("TrainingJob", gang.template.job))
        return changed


def _policy_resources(r: Resources) -> PolicyResources:
    return PolicyResources(cpu=r.cpu, memory=r.memory, gpu=r.gpu)
