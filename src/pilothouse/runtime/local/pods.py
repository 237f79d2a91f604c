"""What the local backend runs, one process at a time: replicas and workers ("pods").

Internal to ``runtime.local``: controllers never see these (they see the workload
port's revisions and gangs). ``LocalRuntime`` starts, probes, places and stops them;
``LocalWorkload`` turns the port's desired state into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pilothouse.ports.workload import Probe as ProbeSpec
from pilothouse.ports.workload import Resources as Requests

__all__ = ["ProbeSpec", "Requests"]


@dataclass(frozen=True)
class ReplicaSpec:
    deployment: str
    revision: str
    model_name: str
    #: the exact model version (``name:version``): the replica fetches and verifies it
    model: str
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
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "model" not in fields and data.get("model_dir"):
            # written by release 0.1 (a host folder): the same version, by reference
            version = str(data.get("revision", "")).split("-", 1)[0]
            fields["model"] = f"{data.get('model_name', '')}:{version}"
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
    #: register the attempt's output as this model once every worker succeeded
    output_model: str = ""
    output_framework: str = "sklearn"
    #: the job's uid and generation (the registered model's lineage)
    uid: str = ""
    generation: int = 0


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
