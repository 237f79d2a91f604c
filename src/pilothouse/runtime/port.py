"""The runtime port: what controllers may ask of the world, and what they observe.

``runtime.local`` implements it with processes, probes and the embedded router;
``runtime.kube`` will implement it with Kubernetes objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Requests:
    """What one replica or worker needs on a node."""

    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    gpu: int = 0


@dataclass(frozen=True)
class ProbeSpec:
    """HTTP GET of ``path`` (2xx healthy) or ``command`` (exit 0 healthy)."""

    path: str = "/v2/health/ready"
    command: tuple[str, ...] = ()
    period: float = 2.0
    timeout: float = 1.0
    failure_threshold: int = 3
    initial_delay: float = 0.0


@dataclass(frozen=True)
class ReplicaSpec:
    deployment: str
    revision: str
    model_name: str
    model_dir: str
    readiness_path: str = "/v2/health/ready"
    probe_period: float = 2.0
    probe_timeout: float = 1.0
    failure_threshold: int = 3
    max_batch_size: int = 64
    max_batch_delay: float = 0.0
    readiness_command: tuple[str, ...] = ()
    liveness: ProbeSpec | None = None
    requests: Requests = field(default_factory=Requests)
    priority: int = 0
    grace: float = 10.0
    #: variables of the control plane's environment the replica gets too (names, or
    #: prefixes ending in ``*``); nothing else of it but what every process gets
    pass_env: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaSpec:
        """Back from ``dataclasses.asdict`` (as stored in JSON); TypeError if it does not fit."""
        fields = dict(data)
        if isinstance(fields.get("requests"), dict):
            fields["requests"] = Requests(**fields["requests"])
        if isinstance(fields.get("liveness"), dict):
            live = dict(fields["liveness"])
            live["command"] = tuple(live.get("command") or ())
            fields["liveness"] = ProbeSpec(**live)
        if "readiness_command" in fields:
            fields["readiness_command"] = tuple(fields["readiness_command"] or ())
        if "pass_env" in fields:
            fields["pass_env"] = tuple(fields["pass_env"] or ())
        return cls(**fields)


@dataclass(frozen=True)
class ReplicaStatus:
    id: str
    revision: str
    ready: bool
    exited: bool
    started_at: float
    endpoint: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    exited_at: float | None = None
    message: str = ""
    ever_ready: bool = False
    #: waiting for a node (``message`` says why); not started, holds nothing
    pending: bool = False
    node: str | None = None
    #: stopped by the platform, not by its own fault (node lost, drained, preempted)
    disrupted: str = ""


@dataclass(frozen=True)
class WorkerSpec:
    job: str
    attempt: int
    rank: int
    world_size: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    requests: Requests = field(default_factory=Requests)
    queue: str = "default"
    priority: int = 0
    queue_priority: int = 0
    grace: float = 30.0
    #: names the job's checkpoint folder (PILOTHOUSE_CHECKPOINT_DIR), which survives
    #: attempts: the job's uid, so a new job of the same name starts afresh
    checkpoint_id: str = ""
    checkpoint_interval: float = 0.0
    checkpoint_keep: int = 3
    #: variables of the control plane's environment the worker gets too (as ReplicaSpec)
    pass_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    job: str
    attempt: int
    rank: int
    running: bool
    exit_code: int | None
    started_at: float
    finished_at: float | None = None
    pid: int | None = None
    message: str = ""
    output_dir: str = ""
    #: waiting for a node (``message`` says why)
    pending: bool = False
    node: str | None = None
    #: stopped by the platform, not by its own fault (node lost, drained, preempted)
    disrupted: str = ""


@dataclass(frozen=True)
class NodeStatus:
    """A node as the runtime sees it (capacity, and whether it takes new work)."""

    name: str
    address: str
    capacity: Requests
    gpu_ids: tuple[str, ...] = ()
    #: Ready | Cordoned | Draining | Lost
    state: str = "Ready"
    virtual: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """One replica or worker: waiting for a node (``node`` None) or placed on one."""

    id: str
    owner_kind: str
    owner_name: str
    role: str
    requests: Requests
    created: float
    node: str | None = None
    gpus: tuple[str, ...] = ()
    #: Pending | Starting | Running | Terminating
    phase: str = "Pending"
    reason: str = ""
    gang: str | None = None
    gang_size: int = 1
    queue: str | None = None
    priority: int = 0
    queue_priority: int = 0
    preemptible: bool = False
    spread: bool = True


@dataclass(frozen=True)
class Bind:
    id: str
    node: str
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Traffic:
    """How a deployment's endpoint spreads and limits traffic (runtime-neutral).

    The embedded router has its own TrafficPolicy with the same fields; this copy
    keeps controllers independent of the router (runtime.kube maps it to its own
    objects), which the import-linter contract enforces.
    """

    weights: dict[str, float] = field(default_factory=dict)
    mirror_revision: str | None = None
    mirror_percent: float = 0.0
    max_concurrency: int = 0
    queue_limit: int = 256
    queue_timeout: float = 10.0
    hold_when_empty: bool = False
    #: at most this share of one revision's replicas ejected as outliers at once
    max_ejection_percent: float = 50.0
    #: the endpoint's port to keep (after a control-plane restart), if it is free; 0: any
    port: int = 0


@dataclass(frozen=True)
class LoadSample:
    """One second of one revision's traffic, as the data plane measured it."""

    time: float
    seconds: float
    concurrency: float
    requests: int
    errors: int
    cpu: float | None = None
    #: latency histogram of the second: upper bounds (seconds) and requests per bound
    latency_bounds: tuple[float, ...] = ()
    latency_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class DeploymentLoad:
    revisions: dict[str, list[LoadSample]]
    #: requests waiting for a replica (scale from zero, or every replica busy)
    queued: int = 0


@dataclass(frozen=True)
class ResponseSample:
    """A recent successful live response of one revision (for prediction analysis)."""

    time: float
    revision: str
    body: bytes


@dataclass(frozen=True)
class MirrorPair:
    """One mirrored request: the serving revision's answer and the mirror's, same input."""

    time: float
    primary_revision: str
    primary_status: int
    primary_body: bytes
    mirror_revision: str
    mirror_status: int
    mirror_body: bytes


@dataclass(frozen=True)
class Responses:
    samples: list[ResponseSample] = field(default_factory=list)
    mirrors: list[MirrorPair] = field(default_factory=list)


class Runtime(Protocol):
    """Everything a controller can do to the world; every call is idempotent or keyed."""

    async def start_replica(self, spec: ReplicaSpec) -> str: ...

    async def stop_replica(self, replica_id: str) -> None: ...

    async def list_replicas(self, deployment: str) -> list[ReplicaStatus]: ...

    async def set_traffic(
        self, deployment: str, ready: list[ReplicaStatus], traffic: Traffic | None = None
    ) -> str:
        """Route the deployment's endpoint to these replicas; returns the endpoint URL."""
        ...

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        """Per-revision load samples newer than ``since`` (wall-clock seconds)."""
        ...

    async def responses(self, deployment: str, since: float) -> Responses:
        """Recent live responses and mirrored pairs newer than ``since``."""
        ...

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        """The Prometheus text of each ready replica of a revision (unreadable ones left out)."""
        ...

    async def remove_traffic(self, deployment: str) -> None: ...

    async def start_gang(self, specs: list[WorkerSpec]) -> None:
        """Submit a job attempt's workers; they start together once the scheduler places
        all of them (``bind``), or none."""
        ...

    async def list_workers(self, job: str) -> list[WorkerStatus]: ...

    async def stop_workers(self, job: str) -> None: ...

    def output_dir(self, job: str, attempt: int, incarnation: str = "") -> Path:
        """Where an attempt's workers write (``incarnation``: the job's uid, so a job deleted
        and applied again never shares a folder with its predecessor)."""
        ...

    # -- scheduling: the scheduler controller places what waits -------------------------

    async def nodes(self) -> list[NodeStatus]: ...

    async def placements(self) -> list[Placement]:
        """Everything that waits for a node or holds room on one."""
        ...

    async def bind(self, bindings: list[Bind], reasons: dict[str, str]) -> None:
        """Start what was placed; record why the rest waits."""
        ...

    async def evict(self, ids: list[str], reason: str) -> None:
        """Stop these (SIGTERM, then SIGKILL after their grace period) as a disruption:
        their owners replace them without counting it as their failure."""
        ...

    def log_files(self, kind: str, name: str) -> list[Path]: ...

    def remove_logs(self, kind: str, name: str) -> None:
        """Forget the logs of a deleted object (a new one of the same name starts empty)."""
        ...
