"""The workload port: what should run, and what does.

At the level Kubernetes works at: a deployment's *revision* should have N replicas of a
template (a ``Deployment`` per revision on Kubernetes; a set of local processes
embedded), and a training *gang* should exist, all of its workers started together once
admitted, or be gone (pods with a scheduling gate, admitted whole by queue quota and fit;
local processes embedded). What runs comes back as counts and reasons per revision and per
gang. No process ids, host paths or ports cross this port: replica endpoints stay inside
the backend and its data plane.

The backend owns what Kubernetes' own controllers do: replacing a replica that died (with
a crash-loop back-off for one that never became ready), placing replicas and admitted
gangs on nodes, preempting lower-priority training for higher-priority work, draining a
replica out of the data plane before stopping it, and registering a finished attempt's
output in the model registry. Every call returns at once; stopping things happens in the
background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Resources:
    """What one replica or worker needs on a node."""

    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    gpu: int = 0


@dataclass(frozen=True)
class Probe:
    """HTTP GET of ``path`` (2xx healthy) or ``command`` (exit 0 healthy), as kubelet does."""

    path: str = "/v2/health/ready"
    command: tuple[str, ...] = ()
    period: float = 2.0
    timeout: float = 1.0
    failure_threshold: int = 3
    initial_delay: float = 0.0


@dataclass(frozen=True)
class ReplicaTemplate:
    """How every replica of one revision starts (a pod template).

    ``model`` is an exact registry reference (``name:version``): the replica fetches and
    verifies that version itself when it starts.
    """

    deployment: str
    model: str
    model_name: str
    readiness: Probe = field(default_factory=Probe)
    liveness: Probe | None = None
    max_batch_size: int = 64
    max_batch_delay: float = 0.0
    resources: Resources = field(default_factory=Resources)
    priority: int = 0
    grace: float = 10.0
    #: variables of the platform's environment the replica gets too (names, or prefixes
    #: ending in ``*``); on Kubernetes these come from the pod's env instead
    pass_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class RevisionTarget:
    template: ReplicaTemplate
    replicas: int


@dataclass(frozen=True)
class RevisionState:
    """What runs of one revision (a Deployment's status, summed over its pods)."""

    revision: str
    #: replicas asked for (0 for a revision being scaled away)
    desired: int
    ready: int
    #: placed, not ready yet (starting, or failing their readiness probe)
    starting: int
    #: waiting for a node
    pending: int
    #: replicas that ended and are being replaced (crashed, killed, disrupted)
    failed: int = 0
    #: replacements so far (a pod's restartCount, summed)
    restarts: int = 0
    #: replicas that end before ever becoming ready: restarts are held back
    crash_looping: bool = False
    nodes: tuple[str, ...] = ()
    #: why it is not all ready (unschedulable, back-off, the last failure); "" when it is
    reason: str = ""
    message: str = ""

    @property
    def alive(self) -> int:
        """Replicas that exist: ready, starting or waiting for a node."""
        return self.ready + self.starting + self.pending


@dataclass(frozen=True)
class TrainingOutput:
    """Register the attempt's output folder as a model version once every worker succeeded."""

    model: str
    framework: str = "sklearn"


@dataclass(frozen=True)
class GangTemplate:
    """One attempt of a training job: ``workers`` processes that start together or not at all."""

    job: str
    #: the job's uid: a job deleted and applied again is another gang, and its
    #: checkpoints start afresh
    uid: str
    attempt: int
    workers: int
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    resources: Resources = field(default_factory=Resources)
    queue: str = "default"
    priority: int = 0
    grace: float = 30.0
    checkpoint_interval: float = 0.0
    checkpoint_keep: int = 3
    pass_env: tuple[str, ...] = ()
    output: TrainingOutput | None = None
    #: the job's generation (recorded with the registered model: what produced it)
    generation: int = 0


class MemberPhase:
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class MemberState:
    rank: int
    #: Pending | Running | Succeeded | Failed
    phase: str
    node: str | None = None
    exit_code: int | None = None
    #: why it waits, or how it failed
    message: str = ""
    #: the last lines a failed member wrote (as a pod's termination message falls back
    #: to the end of its log)
    detail: str = ""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    ref: str
    metrics: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class GangState:
    """What runs of a job's current attempt."""

    job: str
    attempt: int
    #: every member is placed (started, or already ended)
    admitted: bool
    members: tuple[MemberState, ...]
    #: why the gang waits to be admitted ("" once admitted)
    waiting: str = ""
    #: stopped by the platform, not by its own fault (node lost, drained, preempted)
    disrupted: str = ""
    started_at: float | None = None
    #: the output registered for this attempt, once every worker succeeded
    output: RegisteredModel | None = None
    #: why the output could not be registered (the attempt then fails)
    output_error: str = ""

    def count(self, phase: str) -> int:
        return sum(1 for m in self.members if m.phase == phase)


@dataclass(frozen=True)
class QueueUsage:
    """What a queue's admitted gangs hold, and how many workers wait in it."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    pending_workers: int = 0
    running_jobs: tuple[str, ...] = ()


class Workload(Protocol):
    """Desired and observed workloads; every call is idempotent and returns at once."""

    async def apply_revisions(self, deployment: str, targets: dict[str, RevisionTarget]) -> None:
        """The deployment's revisions and replica counts; revisions not named are scaled
        away (drained out of the data plane first)."""
        ...

    async def revisions(self, deployment: str) -> list[RevisionState]:
        """Every revision that has replicas or is asked for, oldest first."""
        ...

    async def delete_deployment(self, deployment: str) -> bool:
        """Stop every replica of the deployment; True once nothing of it runs any more."""
        ...

    async def apply_gang(self, gang: GangTemplate) -> None:
        """This attempt should run (anything of an earlier attempt is stopped first)."""
        ...

    async def gang(self, job: str) -> GangState | None:
        """The job's current attempt, or None when none exists. An attempt let go
        (``delete_gang``) is not reported any more, even while its workers still stop:
        the controller must not see a failure it already acted on a second time."""
        ...

    async def delete_gang(self, job: str) -> bool:
        """Stop the job's workers (SIGTERM, their grace period, then SIGKILL, in the
        background); True once none runs any more."""
        ...

    async def queue_usage(self) -> dict[str, QueueUsage]:
        """Per queue: what its admitted gangs hold and how many workers wait."""
        ...
