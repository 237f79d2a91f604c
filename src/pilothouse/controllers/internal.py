"""Each controller's private bookkeeping, kept in ``status.internal`` with a version.

Rollout progress, autoscaler windows, analysis counters, the replica templates of past
revisions, back-off clocks: what a controller needs to continue where it was after a
restart, and nothing a user reads. It is one field, read and written only through the
models below; a field renamed or reshaped is a new ``version`` plus a step in
``_MIGRATIONS``, so a status written by an older release is migrated on read instead of
failing every reconcile. A status that cannot be read at all is reported and started
afresh (the controller records a warning event), never a reconcile loop failing forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)
from pydantic.alias_generators import to_camel

from pilothouse.policy.analysis import AnalysisState
from pilothouse.policy.autoscaler import AutoscalerState
from pilothouse.policy.rollout import RolloutState
from pilothouse.ports.workload import ReplicaTemplate

INTERNAL_VERSION = 2


class _Internal(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)


class AnalysisRun(_Internal):
    """The analysis window in progress."""

    revision: str | None = None
    since: float | None = None
    last_run: str | None = None
    #: server metric -> [value, when read] (counters' increase is measured between reads)
    server: dict[str, tuple[float, float]] = Field(default_factory=dict)
    verdict: str | None = None
    verdict_message: str = ""


class DeploymentInternal(_Internal):
    version: int = INTERNAL_VERSION
    rollout: RolloutState = Field(default_factory=RolloutState)
    analysis: AnalysisState = Field(default_factory=AnalysisState)
    analysis_run: AnalysisRun = Field(default_factory=lambda: AnalysisRun())
    autoscaler: AutoscalerState | None = None
    canary_autoscaler: AutoscalerState | None = None
    #: the stable revision's replicas when the rollout began (its floor until it ends)
    stable_floor: int | None = None
    #: revision -> the template its replicas start from (any revision can run again).
    #: The port's ReplicaTemplate is stored as it is: a field renamed or reshaped there is
    #: a new INTERNAL_VERSION with a migration (a field added with a default is not)
    templates: dict[str, ReplicaTemplate] = Field(default_factory=dict)

    @field_validator("analysis", mode="before")
    @classmethod
    def _analysis(cls, value: Any) -> AnalysisState:
        if isinstance(value, AnalysisState):
            return value
        return AnalysisState.from_dict(value or {})

    @field_serializer("analysis")
    def _analysis_out(self, value: AnalysisState) -> dict[str, Any]:
        return value.to_dict()


class TrainingInternal(_Internal):
    version: int = INTERNAL_VERSION
    #: the state machine's own phase (status.phase is what users see)
    policy_phase: str = "Pending"
    next_start_at: float = 0.0
    #: the attempt whose start was reported (Started event, startTime)
    scheduled_attempt: int = 0


def _deployment_v1(status: dict[str, Any]) -> dict[str, Any]:
    """Release 0.1 kept the bookkeeping in top-level status fields."""
    history = status.get("history") or []
    templates = {}
    for entry in history:
        spec = entry.get("replicaSpec") if isinstance(entry, dict) else None
        if isinstance(spec, dict) and entry.get("revision"):
            templates[entry["revision"]] = _template_v1(spec)
    run = dict(status.get("analysisRun") or {})
    verdict = status.get("analysisVerdict") or {}
    return {
        "version": 2,
        "rollout": status.get("rolloutState") or {},
        "analysis": status.get("analysisState") or {},
        "analysisRun": {
            **run,
            "verdict": verdict.get("phase"),
            "verdictMessage": verdict.get("message", ""),
        },
        "autoscaler": (status.get("autoscaler") or {}).get("state"),
        "canaryAutoscaler": (status.get("canaryAutoscaler") or {}).get("state"),
        "stableFloor": status.get("rolloutStableFloor"),
        "templates": templates,
    }


def _template_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A 0.1 ReplicaSpec (host model path, flat probe fields) as a ReplicaTemplate; the
    model reference comes from the model name and the version in the revision id."""
    version = str(spec.get("revision", "")).split("-", 1)[0]
    return {
        "deployment": spec.get("deployment", ""),
        "model": f"{spec.get('model_name', '')}:{version}",
        "model_name": spec.get("model_name", ""),
        "readiness": {
            "path": spec.get("readiness_path", "/v2/health/ready"),
            "command": spec.get("readiness_command") or (),
            "period": spec.get("probe_period", 2.0),
            "timeout": spec.get("probe_timeout", 1.0),
            "failure_threshold": spec.get("failure_threshold", 3),
        },
        "liveness": spec.get("liveness"),
        "max_batch_size": spec.get("max_batch_size", 64),
        "max_batch_delay": spec.get("max_batch_delay", 0.0),
        "resources": spec.get("requests") or {},
        "priority": spec.get("priority", 0),
        "grace": spec.get("grace", 10.0),
        "pass_env": spec.get("pass_env") or (),
    }


def _training_v1(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 2,
        "policyPhase": status.get("policyPhase", status.get("phase", "Pending")),
        "nextStartAt": status.get("nextStartAt", 0.0),
        "scheduledAttempt": status.get("scheduledAttempt", 0),
    }


_MIGRATIONS: dict[str, dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    # version found -> a function of the whole status giving the next version's internal
    "deployment": {1: _deployment_v1},
    "training": {1: _training_v1},
}


class InternalUnreadable(ValueError):
    """The internal status could not be read (it is started afresh; the caller reports)."""


def _migrated(status: dict[str, Any], family: str) -> dict[str, Any]:
    raw = status.get("internal")
    if not isinstance(raw, dict) or not raw:
        # no internal field: written by release 0.1 (version 1), or a brand-new object
        raw = _MIGRATIONS[family][1](status) if status else {}
        return raw
    version = raw.get("version", 1)
    if not isinstance(version, int) or version > INTERNAL_VERSION:
        raise InternalUnreadable(
            f"status.internal has version {version!r}; this pilothouse reads up to "
            f"{INTERNAL_VERSION}"
        )
    while version < INTERNAL_VERSION:
        step = _MIGRATIONS[family].get(version)
        if step is None:
            raise InternalUnreadable(f"no migration from status.internal version {version}")
        raw = step({**status, "internal": raw})
        version = raw.get("version", version + 1)
    return raw


def read_deployment(status: dict[str, Any]) -> DeploymentInternal:
    try:
        return DeploymentInternal.model_validate(_migrated(status, "deployment"))
    except (ValidationError, ValueError) as exc:
        raise InternalUnreadable(str(exc)) from None


def read_training(status: dict[str, Any]) -> TrainingInternal:
    try:
        return TrainingInternal.model_validate(_migrated(status, "training"))
    except (ValidationError, ValueError) as exc:
        raise InternalUnreadable(str(exc)) from None


def dump(internal: BaseModel) -> dict[str, Any]:
    return internal.model_dump(mode="json", by_alias=True)


Public = TypeVar("Public", bound=BaseModel)
Private = TypeVar("Private", DeploymentInternal, TrainingInternal)
_READERS: dict[type[BaseModel], Callable[[dict[str, Any]], BaseModel]] = {
    DeploymentInternal: read_deployment,
    TrainingInternal: read_training,
}


def read_status(
    status: dict[str, Any],
    public_model: type[Public],
    internal_model: type[Private],
    report: Callable[[str], None],
) -> tuple[Public, Private]:
    """An object's status as last written: its public part and the controller's
    bookkeeping; a part that cannot be read is reported and started afresh."""
    try:
        public = public_model.model_validate(status)
    except ValidationError as exc:
        report(f"status reset: {exc}")
        public = public_model()
    try:
        internal = internal_model.model_validate(_READERS[internal_model](status))
    except InternalUnreadable as exc:
        report(f"bookkeeping reset: {exc}")
        internal = internal_model()
    return public, internal


def status_of(public: BaseModel, internal: BaseModel) -> dict[str, Any]:
    """What the controller writes: the public fields and its versioned bookkeeping."""
    status = public.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["internal"] = dump(internal)
    return status
