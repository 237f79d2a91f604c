"""The resources of group ``pilothouse.dev/v1alpha1``, typed with pydantic.

The same YAML is accepted by ``pilothouse apply`` embedded and by
``kubectl apply`` once the CRDs (generated from these models) are installed,
so field names are camelCase and every object has apiVersion, kind,
metadata, spec and a server-owned status.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from pilothouse.spec.types import CpuMillis, Duration, MemoryBytes, ModelRef, Name

GROUP = "pilothouse.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Framework = Literal["sklearn", "xgboost", "lightgbm", "onnx", "custom"]


class SpecModel(BaseModel):
    """Base for every user-facing object: camelCase, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )


class ObjectMeta(SpecModel):
    """Kubernetes ObjectMeta, reduced to what pilothouse uses.

    Server-set fields (uid, generation, ...) are accepted so that the output of
    ``get -o yaml`` can be applied again, and ignored on apply.
    """

    name: Name
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None


class ResourceRequests(SpecModel):
    """What one replica or one worker needs: the scheduler places it by these."""

    cpu: CpuMillis = Field(default=1000, validate_default=False, description="CPU, e.g. '500m'")
    memory: MemoryBytes = Field(default=512 * 2**20, description="Memory, e.g. '2Gi'")
    gpu: int = Field(default=0, ge=0, description="Whole GPUs")


class EnvVar(SpecModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = ""


class Backoff(SpecModel):
    """Exponential restart backoff, the shape kubelet uses (initial, doubling, capped)."""

    initial: Duration = 1.0
    max: Duration = 60.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)

    @model_validator(mode="after")
    def _initial_not_above_max(self) -> Backoff:
        if self.initial > self.max:
            raise ValueError("initial must not be greater than max")
        return self


class RestartPolicy(SpecModel):
    max_restarts: int = Field(default=3, ge=0, le=1000)
    backoff: Backoff = Field(default_factory=Backoff)


class CheckpointPolicy(SpecModel):
    interval: Duration = 300.0
    keep: int = Field(default=3, ge=1)


class TrainingOutput(SpecModel):
    """Register what the job wrote to ``$PILOTHOUSE_OUTPUT_DIR`` as a new model version."""

    model: Name = Field(description="Registry model name the output is registered under")
    framework: Framework = "sklearn"


class TrainingJobSpec(SpecModel):
    command: list[str] = Field(min_length=1, description="Executable and arguments")
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str | None = Field(
        default=None,
        description="Directory the workers start in; relative paths are resolved against "
        "the file that declares them when applied from the CLI",
    )
    workers: int = Field(default=1, ge=1, le=1024, description="Gang size: all start or none")
    resources: ResourceRequests = Field(default_factory=ResourceRequests)
    queue: Name = "default"
    priority: int = Field(default=0, ge=-1000, le=1000)
    checkpoint: CheckpointPolicy | None = None
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    output: TrainingOutput | None = None


class Replicas(SpecModel):
    """Replica bounds. A bare integer N means min = max = N."""

    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _from_int(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"expected a replica count ≥ 0, got {value}")
            return {"min": value, "max": max(value, 1)}
        return value

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        return self


#: ``replicas: 2`` or ``replicas: {min: 1, max: 4}``; the schema says both, for the CRD too.
ReplicasField = Annotated[
    Replicas,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 1000},
                Replicas.model_json_schema(by_alias=True),
            ]
        }
    ),
]


class HttpProbe(SpecModel):
    path: str = Field(default="/v2/health/ready", pattern=r"^/")
    period: Duration = 2.0
    timeout: Duration = 1.0
    failure_threshold: int = Field(default=3, ge=1, le=100)


class Probes(SpecModel):
    readiness: HttpProbe = Field(default_factory=HttpProbe)
    liveness: HttpProbe = Field(default_factory=lambda: HttpProbe(path="/v2/health/live"))


class Batching(SpecModel):
    """Dynamic batching in each replica: concurrent requests share one model call."""

    max_batch_size: int = Field(default=64, ge=1, le=4096, description="1 turns batching off")
    max_delay: Duration = Field(
        default=0.0, description="How long a batch may wait for more requests (0: never wait)"
    )

    @model_validator(mode="after")
    def _bounded_delay(self) -> Batching:
        if self.max_delay > 1.0:
            raise ValueError("maxDelay must be at most 1s; batching should cost milliseconds")
        return self


class Autoscaling(SpecModel):
    """Per-revision horizontal autoscaling, Knative style: a calm stable window and a
    short panic window that meets bursts within seconds."""

    metric: Literal["concurrency", "rps", "cpu"] = Field(
        default="concurrency", description="concurrency: requests in flight; rps; cpu: cores"
    )
    target: float = Field(default=4.0, gt=0, le=100000, description="Metric value per replica")
    stable_window: Duration = 60.0
    panic_window: Duration = 6.0
    panic_threshold: float = Field(default=2.0, gt=1.0, le=100.0)
    max_scale_up_rate: float = Field(default=1000.0, gt=1.0, le=10000.0)
    max_scale_down_rate: float = Field(default=2.0, gt=1.0, le=10000.0)
    scale_to_zero_grace: Duration = 30.0

    @model_validator(mode="after")
    def _windows(self) -> Autoscaling:
        if not 6.0 <= self.stable_window <= 3600.0:
            raise ValueError("stableWindow must be between 6s and 1h")
        if not 1.0 <= self.panic_window <= self.stable_window:
            raise ValueError("panicWindow must be at least 1s and at most stableWindow")
        if self.scale_to_zero_grace > 3600.0:
            raise ValueError("scaleToZeroGrace must be at most 1h")
        return self


class TrafficLimits(SpecModel):
    """What the router does when replicas are busy: bounded waiting, then 503."""

    max_concurrency: int = Field(
        default=0,
        ge=0,
        le=100000,
        description="Requests one replica may have in flight (0: no limit)",
    )
    queue_limit: int = Field(default=256, ge=0, le=100000)
    queue_timeout: Duration = 10.0


class ModelDeploymentSpec(SpecModel):
    model: ModelRef = Field(description="'name', 'name:VERSION', 'name:latest' or 'name@STAGE'")
    runtime: Literal["auto", "sklearn", "xgboost", "lightgbm", "onnx", "custom"] = "auto"
    resources: ResourceRequests = Field(default_factory=ResourceRequests)
    replicas: ReplicasField = Field(default_factory=Replicas)
    probes: Probes = Field(default_factory=Probes)
    batching: Batching = Field(default_factory=Batching)
    autoscaling: Autoscaling | None = None
    traffic: TrafficLimits = Field(default_factory=TrafficLimits)


class QueueQuota(SpecModel):
    cpu: CpuMillis | None = None
    memory: MemoryBytes | None = None
    gpu: int | None = Field(default=None, ge=0)


class QueueSpec(SpecModel):
    quota: QueueQuota = Field(default_factory=QueueQuota)
    weight: float = Field(default=1.0, gt=0, le=1000, description="Fair-share weight")
    priority: int = Field(default=0, ge=-1000, le=1000)


class Resource(SpecModel):
    """Common envelope: apiVersion, kind, metadata, spec, status."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]

    api_version: Literal["pilothouse.dev/v1alpha1"] = Field(
        default="pilothouse.dev/v1alpha1", alias="apiVersion"
    )
    metadata: ObjectMeta
    status: dict[str, Any] | None = Field(default=None, description="Set by the control plane")

    def key(self) -> tuple[str, str]:
        return (self.KIND, self.metadata.name)


class TrainingJob(Resource):
    KIND: ClassVar[str] = "TrainingJob"
    PLURAL: ClassVar[str] = "trainingjobs"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("tj", "trainingjob", "job", "jobs")
    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec


class ModelDeployment(Resource):
    KIND: ClassVar[str] = "ModelDeployment"
    PLURAL: ClassVar[str] = "modeldeployments"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("md", "modeldeployment", "deployment", "deploy")
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec


class Queue(Resource):
    KIND: ClassVar[str] = "Queue"
    PLURAL: ClassVar[str] = "queues"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("q", "queue")
    kind: Literal["Queue"] = "Queue"
    spec: QueueSpec = Field(default_factory=QueueSpec)


KINDS: dict[str, type[Resource]] = {cls.KIND: cls for cls in (TrainingJob, ModelDeployment, Queue)}


def kind_for(word: str) -> type[Resource]:
    """Resolve what a user typed (``md``, ``modeldeployments``, ``ModelDeployment``) to a kind."""
    needle = word.lower()
    for cls in KINDS.values():
        if needle in (cls.KIND.lower(), cls.PLURAL, *cls.SHORT_NAMES):
            return cls
    known = ", ".join(sorted(c.PLURAL for c in KINDS.values()))
    raise KeyError(f"unknown resource type {word!r}; expected one of: {known}")


def kind_for_plural(plural: str) -> type[Resource] | None:
    for cls in KINDS.values():
        if plural == cls.PLURAL:
            return cls
    return None
