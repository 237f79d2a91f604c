"""The public status of each kind: camelCase, documented, stable.

Controllers write these models (``model_dump(by_alias=True)``); the CRDs carry their
schema (``pilothouse kube crds``), so ``kubectl get -o yaml`` and ``pilothouse get`` show
the same fields. A controller's own bookkeeping (rollout progress, autoscaler windows,
back-off clocks) is not part of this API: it lives in the one ``internal`` field, which
carries its own version and is read and written through the controller's typed models
(``controllers/internal.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class StatusModel(BaseModel):
    """Base of every status part: camelCase, unknown fields ignored (a newer writer's
    additions never break an older reader)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


INTERNAL_DESCRIPTION = (
    "The controller's own bookkeeping, with its own schema version: not an API; it may "
    "change between releases (migrated by the controller)."
)


class Condition(StatusModel):
    """A Kubernetes condition: lastTransitionTime moves only when status changes."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class RevisionStatus(StatusModel):
    """What runs of one revision (its replicas, summed)."""

    revision: str
    model: str = Field(
        default="", description="The model version this revision serves (name:version)"
    )
    desired: int = 0
    ready: int = 0
    starting: int = 0
    pending: int = Field(default=0, description="Replicas waiting for a node")
    failed: int = Field(default=0, description="Replicas that ended and are being replaced")
    restarts: int = 0
    crash_looping: bool = False
    nodes: list[str] = Field(default_factory=list)
    reason: str = ""
    message: str = ""


class ScaleDecision(StatusModel):
    time: str
    from_: int = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: int
    reason: str = ""


class AutoscalerStatus(StatusModel):
    metric: str
    target: float
    stable_window: float
    panic_window: float
    stable_average: float = 0.0
    panic_average: float = 0.0
    in_panic: bool = False
    queued: int = 0
    ready_replicas: int = 0
    desired_replicas: int = 0
    reason: str = ""
    last_decisions: list[ScaleDecision] = Field(default_factory=list)


class HistoryEntry(StatusModel):
    """One revision that ran: from what change, and how it ended (like a ReplicaSet)."""

    number: int
    revision: str
    model: str
    template: dict[str, Any] = Field(
        default_factory=dict, description="The spec fields the revision was made from"
    )
    created_at: str = ""
    deployed_at: str = ""
    applied_by: str = ""
    cause: str = ""
    outcome: str = "Progressing"


class CheckStatus(StatusModel):
    name: str
    metric: str
    min: float | None = None
    max: float | None = None
    phase: str | None = None
    value: float | None = None
    samples: int = 0
    message: str = ""
    successful: int = 0
    failed: int = 0
    consecutive_errors: int = 0
    inconclusive: int = 0


class AnalysisStatus(StatusModel):
    verdict: str | None = None
    message: str = ""
    last_run: str | None = None
    checks: list[CheckStatus] = Field(default_factory=list)


class RevisionReplicas(StatusModel):
    desired: int = 0
    ready: int = 0


class RolloutStatus(StatusModel):
    """What ``pilothouse rollout status`` shows."""

    strategy: str
    phase: str
    desired_revision: str | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    stable_revision_number: int | None = None
    canary_revision_number: int | None = None
    step: int | None = None
    steps: int | None = None
    weight: float = 0.0
    mirror_percent: float = 0.0
    pause_until: str | None = None
    paused_reason: str | None = None
    started_at: str | None = None
    message: str = ""
    replicas: dict[str, RevisionReplicas] = Field(default_factory=dict)
    analysis: AnalysisStatus = Field(default_factory=AnalysisStatus)
    aborted_revision: str | None = None


class ModelDeploymentStatus(StatusModel):
    observed_generation: int | None = None
    url: str | None = Field(default=None, description="The deployment's endpoint")
    model: str | None = Field(default=None, description="The model version serving live traffic")
    model_version: int | None = None
    desired_model: str | None = Field(
        default=None, description="The model version the spec asks for"
    )
    revision: str | None = Field(default=None, description="The revision the spec asks for")
    framework: str | None = None
    desired_replicas: int = 0
    replicas: int = Field(default=0, description="Replicas of every revision that run or start")
    ready_replicas: int = Field(default=0, description="Ready replicas of the serving revision")
    revisions: list[RevisionStatus] = Field(default_factory=list)
    message: str = ""
    history: list[HistoryEntry] = Field(default_factory=list)
    rollout: RolloutStatus | None = None
    autoscaler: AutoscalerStatus | None = None
    canary_autoscaler: AutoscalerStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    internal: dict[str, Any] = Field(default_factory=dict, description=INTERNAL_DESCRIPTION)


class WorkerView(StatusModel):
    rank: int
    attempt: int
    phase: str = Field(description="Pending | Running | Succeeded | Failed")
    node: str | None = None
    exit_code: int | None = None
    message: str = ""


class OutputModel(StatusModel):
    name: str
    version: int
    ref: str
    metrics: dict[str, Any] = Field(default_factory=dict)


class TrainingJobStatus(StatusModel):
    observed_generation: int | None = None
    phase: Literal["Pending", "Running", "Restarting", "Registering", "Succeeded", "Failed"] = (
        "Pending"
    )
    attempt: int = 0
    restarts: int = 0
    disruptions: int = Field(default=0, description="Attempts ended by the platform (not counted)")
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    workers: list[WorkerView] = Field(default_factory=list)
    output_model: OutputModel | None = None
    conditions: list[Condition] = Field(default_factory=list)
    internal: dict[str, Any] = Field(default_factory=dict, description=INTERNAL_DESCRIPTION)


class QueueUsed(StatusModel):
    cpu: str = "0"
    memory: str = "0"
    gpu: int = 0


class QueueStatus(StatusModel):
    observed_generation: int | None = None
    used: QueueUsed = Field(default_factory=QueueUsed)
    pending_workers: int = 0
    running_jobs: list[str] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


#: kind -> its status model (the CRDs' status schema)
STATUS_MODELS: dict[str, type[StatusModel]] = {
    "ModelDeployment": ModelDeploymentStatus,
    "TrainingJob": TrainingJobStatus,
    "Queue": QueueStatus,
}
