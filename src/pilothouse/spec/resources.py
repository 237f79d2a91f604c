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


#: a variable of the control plane's environment: a name, or a prefix ending in ``*``
PassEnvName = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
]
PASS_ENV_DESCRIPTION = (
    "Variables of the control plane's own environment its processes get too: names, or "
    "prefixes ending in '*' (e.g. AWS_*). Without them a process sees only what the platform "
    "and the spec set, plus PATH, HOME, USER, the locale (LANG, LC_*, TZ), TMPDIR, "
    "VIRTUAL_ENV, PYTHONPATH, LD_LIBRARY_PATH, the trusted CAs (SSL_CERT_FILE, "
    "REQUESTS_CA_BUNDLE, ...), thread settings (OMP_*, MKL_NUM_THREADS, "
    "OPENBLAS_NUM_THREADS), CUDA_* and the platform's own PILOTHOUSE_* settings (not its "
    "registry's): no credentials, no proxies"
)


def _pass_env_field() -> Any:
    return Field(default_factory=list, max_length=256, description=PASS_ENV_DESCRIPTION)


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
    pass_env: list[PassEnvName] = _pass_env_field()
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
    termination_grace_period: Duration = Field(
        default=30.0,
        description="After SIGTERM (preemption, drain, delete) how long workers may take to "
        "checkpoint and exit before SIGKILL",
    )


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


class Probe(SpecModel):
    """An HTTP GET of ``path`` on the replica (2xx = healthy) or, when ``command`` is set,
    that command instead (exit 0 = healthy), every ``period``; ``failureThreshold``
    failures in a row count."""

    path: str = Field(default="/v2/health/ready", pattern=r"^/")
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Run this instead of the HTTP GET (exit 0 = healthy); "
        "PILOTHOUSE_REPLICA_ENDPOINT is set to host:port",
    )
    period: Duration = 2.0
    timeout: Duration = 1.0
    failure_threshold: int = Field(default=3, ge=1, le=100)
    initial_delay: Duration = Field(
        default=0.0,
        description="Liveness only: failures count from this long after the start "
        "(0: from the first success, so a slow model load is never killed)",
    )

    @model_validator(mode="after")
    def _positive_times(self) -> Probe:
        if self.period <= 0 or self.timeout <= 0:
            raise ValueError("period and timeout must be greater than 0")
        return self


#: the name it had when probes were HTTP only
HttpProbe = Probe


class Probes(SpecModel):
    readiness: Probe = Field(default_factory=Probe)
    liveness: Probe = Field(default_factory=lambda: Probe(path="/v2/health/live"))


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
            # The policy (policy/autoscaler.py) takes exactly this range: equal
            # windows are Knative's 100 %, a panic mode that only holds replicas.
            raise ValueError(
                f"panicWindow must be at least 1s and at most stableWindow "
                f"({self.stable_window:g}s), got {self.panic_window:g}s"
            )
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
    max_ejection_percent: float = Field(
        default=50.0,
        ge=0,
        le=100,
        description="At most this share of one revision's replicas is ejected at once as "
        "outliers (never the last one); 0 turns ejection off",
    )


#: the spec fields a revision is made of (a change to any of them rolls out a new revision;
#: ``rollout undo`` puts them back)
TEMPLATE_FIELDS = ("model", "runtime", "resources", "probes", "batching", "passEnv")

#: metrics the rollout analysis computes itself, per revision, every interval
ANALYSIS_METRICS: dict[str, str] = {
    "errorRate": "share of the new revision's requests answered with a 5xx or not at all "
    "(0..1); a request that failed on the stable revision too is not counted, nor a 4xx",
    "latencyP50": "median request latency of the new revision, seconds",
    "latencyP99": "99th percentile request latency of the new revision, seconds",
    "agreement": "share of mirrored requests where the new revision predicts the same label "
    "as the stable one (scores are labelled at 0.5; vectors by argmax)",
    "scoreDifference": "mean absolute difference between the new and the stable revision's "
    "scores on the same mirrored requests",
    "psi": "population stability index of the new revision's scores against the stable's",
    "ks": "Kolmogorov-Smirnov statistic of the new revision's scores against the stable's",
}
#: the values each metric can take (a bound outside can never be met)
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "errorRate": (0.0, 1.0),
    "agreement": (0.0, 1.0),
    "ks": (0.0, 1.0),
    "latencyP50": (0.0, 1e12),
    "latencyP99": (0.0, 1e12),
    "scoreDifference": (0.0, 1e12),
    "psi": (0.0, 1e12),
}
#: a check may also name ``server:METRIC``, one of the model server's own Prometheus metrics
SERVER_METRIC_PREFIX = "server:"
#: the metrics every pilothouse model server exports (``server:NAME`` must be one of them)
SERVER_METRICS = (
    "pilothouse_model_requests_total",
    "pilothouse_model_request_duration_seconds_sum",
    "pilothouse_model_request_duration_seconds_count",
    "pilothouse_model_inflight_requests",
    "pilothouse_model_load_seconds",
    "pilothouse_model_batch_rows_sum",
    "pilothouse_model_batch_rows_count",
)
#: model checks compare predictions on the same requests: they need mirrored traffic
MIRROR_METRICS = frozenset({"agreement", "scoreDifference"})


class AnalysisCheck(SpecModel):
    """One measurement taken every analysis interval, with its pass band and limits."""

    name: Name
    metric: str = Field(
        description="errorRate, latencyP50, latencyP99, agreement, scoreDifference, psi, ks, "
        "or server:METRIC (a metric the model server exports)"
    )
    min: float | None = Field(default=None, description="Fail when the value is below this")
    max: float | None = Field(default=None, description="Fail when the value is above this")
    failure_limit: int = Field(
        default=0, ge=0, le=100, description="Failed measurements tolerated before rollback"
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=100,
        description="Measurements in a row that could not be taken before rollback",
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Measurements in a row without enough data before the rollout pauses",
    )

    @model_validator(mode="after")
    def _known_metric_and_bounds(self) -> AnalysisCheck:
        if self.metric.startswith(SERVER_METRIC_PREFIX):
            server_metric = self.metric[len(SERVER_METRIC_PREFIX) :]
            if server_metric not in SERVER_METRICS:
                raise ValueError(
                    f"metric: unknown model server metric {server_metric!r}; expected one of: "
                    + ", ".join(SERVER_METRICS)
                )
        elif self.metric not in ANALYSIS_METRICS:
            raise ValueError(
                f"metric: unknown metric {self.metric!r}; expected one of: "
                + ", ".join(ANALYSIS_METRICS)
                + f", or {SERVER_METRIC_PREFIX}METRIC"
            )
        if self.min is None and self.max is None:
            raise ValueError("a check needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        for bound in (self.min, self.max):
            if bound is not None and not -1e12 <= bound <= 1e12:
                raise ValueError("min and max must be finite numbers within ±1e12")
        low, high = METRIC_RANGES.get(self.metric, (-1e12, 1e12))
        what = f"between {low:g} and {high:g}" if high < 1e12 else f"at least {low:g}"
        if self.min is not None and self.min > high:
            raise ValueError(f"min: {self.metric} is {what}, so min {self.min:g} can never pass")
        if self.max is not None and self.max < low:
            raise ValueError(f"max: {self.metric} is {what}, so max {self.max:g} can never pass")
        return self


class Analysis(SpecModel):
    """How the new revision is judged while it takes traffic."""

    interval: Duration = Field(default=10.0, description="Time between measurements")
    min_samples: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests (or mirrored pairs) a measurement needs; fewer is inconclusive",
    )
    mirror_percent: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Share of the stable revision's requests copied to the new revision "
        "(responses discarded) so model checks compare both on the same inputs",
    )
    checks: list[AnalysisCheck] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _consistent(self) -> Analysis:
        if not 1.0 <= self.interval <= 3600.0:
            raise ValueError("interval must be between 1s and 1h")
        names = [c.name for c in self.checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique; repeated: {', '.join(duplicates)}")
        return self


class Pause(SpecModel):
    duration: Duration | None = Field(
        default=None, description="How long to hold this weight; empty: until promoted"
    )

    @model_validator(mode="after")
    def _bounded(self) -> Pause:
        if self.duration is not None and self.duration > 86400.0:
            raise ValueError("duration must be at most 24h")
        return self


class CanaryStep(SpecModel):
    """Exactly one of: ``setWeight: N`` (percent of live traffic to the new revision) or
    ``pause: {duration: 30s}`` (``pause: {}`` waits for ``pilothouse rollout promote``)."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    pause: Pause | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryStep:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("a step is exactly one of setWeight or pause")
        return self


def _default_canary_steps() -> list[CanaryStep]:
    return [
        CanaryStep(set_weight=10),
        CanaryStep(pause=Pause(duration=30.0)),
        CanaryStep(set_weight=50),
        CanaryStep(pause=Pause(duration=30.0)),
        CanaryStep(set_weight=100),
    ]


class CanaryStrategy(SpecModel):
    steps: list[CanaryStep] = Field(
        default_factory=_default_canary_steps, min_length=1, max_length=100
    )

    @model_validator(mode="after")
    def _ends_at_100(self) -> CanaryStrategy:
        weights = [s.set_weight for s in self.steps if s.set_weight is not None]
        if not weights or weights[-1] != 100:
            raise ValueError(
                "steps must end at setWeight: 100 (the last setWeight is "
                f"{weights[-1] if weights else 'missing'})"
            )
        return self


class BlueGreenStrategy(SpecModel):
    preview_mirror_percent: float = Field(
        default=100.0,
        ge=0.0,
        le=100.0,
        description="Share of live requests mirrored to the new revision before the switch",
    )
    auto_promote: bool = Field(
        default=True,
        description="Switch by itself after autoPromotionDelay; false: wait for "
        "`pilothouse rollout promote`",
    )
    auto_promotion_delay: Duration = Field(
        default=30.0,
        description="How long the new revision runs beside the old (with passing analysis) "
        "before all traffic switches",
    )
    scale_down_delay: Duration = Field(
        default=30.0,
        description="How long the old revision stays up after the switch, for instant rollback",
    )

    @model_validator(mode="after")
    def _bounded(self) -> BlueGreenStrategy:
        for field_name in ("auto_promotion_delay", "scale_down_delay"):
            value = getattr(self, field_name)
            if value is not None and value > 86400.0:
                raise ValueError(f"{to_camel(field_name)} must be at most 24h")
        return self


#: ``1`` replica or ``25%`` of the desired count
SurgeValue = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 1000},
                {"type": "string", "pattern": r"^\s*0*(100|[1-9]?[0-9])%\s*$"},
            ]
        }
    ),
]


def _surge(value: int | str, field_name: str) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{field_name}: expected a count or a percentage like '25%', got {value}")
    if isinstance(value, int):
        if value < 0 or value > 1000:
            raise ValueError(f"{field_name} must be between 0 and 1000, got {value}")
        return
    text = value.strip()
    if not text.endswith("%") or not text[:-1].isdigit() or int(text[:-1]) > 100:
        raise ValueError(
            f"{field_name}: expected a count or a percentage like '25%', got {value!r}"
        )


class RollingStrategy(SpecModel):
    max_surge: SurgeValue = Field(
        default="25%", description="Replicas above the desired count during the roll"
    )
    max_unavailable: SurgeValue = Field(
        default=0, description="Replicas below the desired count during the roll"
    )

    @model_validator(mode="after")
    def _valid(self) -> RollingStrategy:
        _surge(self.max_surge, "maxSurge")
        _surge(self.max_unavailable, "maxUnavailable")
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self


def resolve_surge(value: int | str, desired: int, *, round_up: bool) -> int:
    """A count or a percentage of ``desired`` (surge rounds up, unavailable down, as Kubernetes)."""
    if isinstance(value, int):
        return value
    percent = int(value.strip()[:-1])
    whole, rest = divmod(percent * desired, 100)
    return whole + (1 if round_up and rest else 0)


class Rollout(SpecModel):
    """How a change to the deployment's model or settings reaches traffic."""

    strategy: Literal["rolling", "canary", "blueGreen"] = "rolling"
    rolling: RollingStrategy | None = None
    canary: CanaryStrategy | None = None
    blue_green: BlueGreenStrategy | None = None
    analysis: Analysis = Field(default_factory=Analysis)
    revision_history_limit: int = Field(default=10, ge=1, le=100)
    progress_deadline: Duration = Field(
        default=600.0,
        description="Roll back a new revision that has no ready replica this long after "
        "its rollout began",
    )

    @model_validator(mode="after")
    def _one_strategy(self) -> Rollout:
        if not 10.0 <= self.progress_deadline <= 86400.0:
            raise ValueError("progressDeadline must be between 10s and 24h")
        for name, block in (
            ("rolling", self.rolling),
            ("canary", self.canary),
            ("blueGreen", self.blue_green),
        ):
            if block is not None and name != self.strategy:
                raise ValueError(
                    f"{name} settings given but strategy is {self.strategy!r}; "
                    f"set strategy: {name} or remove the {name} block"
                )
        if self.rolling is None and self.strategy == "rolling":
            self.rolling = RollingStrategy()
        if self.canary is None and self.strategy == "canary":
            self.canary = CanaryStrategy()
        if self.blue_green is None and self.strategy == "blueGreen":
            self.blue_green = BlueGreenStrategy()
        mirrored = [c.name for c in self.analysis.checks if c.metric in MIRROR_METRICS]
        mirror = (
            self.blue_green.preview_mirror_percent
            if self.blue_green is not None
            else self.analysis.mirror_percent
        )
        if mirrored and mirror <= 0:
            where = (
                "blueGreen.previewMirrorPercent"
                if self.blue_green is not None
                else "analysis.mirrorPercent"
            )
            raise ValueError(
                f"check(s) {', '.join(mirrored)} compare predictions on mirrored requests: "
                f"set {where} above 0"
            )
        return self


def _replica_requests() -> ResourceRequests:
    return ResourceRequests.model_validate({"cpu": "250m", "memory": "256Mi"})


class ModelDeploymentSpec(SpecModel):
    model: ModelRef = Field(description="'name', 'name:VERSION', 'name:latest' or 'name@STAGE'")
    runtime: Literal["auto", "sklearn", "xgboost", "lightgbm", "onnx", "custom"] = "auto"
    pass_env: list[PassEnvName] = _pass_env_field()
    resources: ResourceRequests = Field(
        default_factory=_replica_requests,
        description="What one replica needs (default cpu 250m, memory 256Mi)",
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Replicas may preempt training jobs of a lower priority to get room",
    )
    termination_grace_period: Duration = Field(
        default=10.0, description="How long a stopped replica may take to finish its requests"
    )
    replicas: ReplicasField = Field(default_factory=Replicas)
    probes: Probes = Field(default_factory=Probes)
    batching: Batching = Field(default_factory=Batching)
    autoscaling: Autoscaling | None = None
    traffic: TrafficLimits = Field(default_factory=TrafficLimits)
    rollout: Rollout = Field(default_factory=Rollout)


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
