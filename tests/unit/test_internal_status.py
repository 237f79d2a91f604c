"""The controllers' internal status: typed, versioned, migrated from release 0.1."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from pilothouse.controllers.internal import (
    INTERNAL_VERSION,
    DeploymentInternal,
    InternalUnreadable,
    dump,
    read_deployment,
    read_training,
)
from pilothouse.controllers.templates import revision_of, template_of
from pilothouse.policy.autoscaler import AutoscalerState
from pilothouse.ports.state import ModelRef
from pilothouse.ports.workload import Probe, ReplicaTemplate, Resources
from pilothouse.spec.resources import ModelDeploymentSpec

#: a ModelDeployment status as release 0.1 wrote it (bookkeeping in top-level fields)
RELEASE_0_1 = {
    "readyReplicas": 2,
    "rolloutState": {"stable": "3-abcdef", "canary": "4-012345", "phase": "Progressing", "step": 1},
    "replicaPolicy": {"failures": 0, "next_start_at": 0.0, "revision": ""},
    "analysisState": {
        "checks": {"errors": {"successful": 2, "failed": 1, "inconclusive": 0, "history": []}}
    },
    "analysisRun": {"revision": "4-012345", "since": 100.0, "server": {"x_total": [5.0, 99.0]}},
    "analysisVerdict": {"phase": "Running", "message": "1 of 3"},
    "autoscaler": {"metric": "rps", "state": {"max_panic_replicas": 3, "last_active_at": 50.0}},
    "rolloutStableFloor": 2,
    "history": [
        {
            "number": 1,
            "revision": "3-abcdef",
            "model": "fraud:3",
            "replicaSpec": {
                "deployment": "fraud",
                "revision": "3-abcdef",
                "model_name": "fraud",
                "model_dir": "/home/x/registry/fraud/3",
                "readiness_path": "/v2/health/ready",
                "probe_period": 2.0,
                "probe_timeout": 1.0,
                "failure_threshold": 3,
                "max_batch_size": 32,
                "max_batch_delay": 0.0,
                "readiness_command": [],
                "liveness": None,
                "requests": {"cpu": 500, "memory": 0, "gpu": 0},
                "priority": 0,
                "grace": 10.0,
            },
        }
    ],
}


def test_release_0_1_bookkeeping_is_migrated_into_typed_fields() -> None:
    internal = read_deployment(RELEASE_0_1)
    assert internal.version == INTERNAL_VERSION
    assert internal.rollout.stable == "3-abcdef"
    assert internal.rollout.canary == "4-012345"
    assert internal.rollout.step == 1
    assert internal.analysis.checks["errors"].failed == 1
    assert internal.analysis_run.since == 100.0
    assert internal.analysis_run.server == {"x_total": (5.0, 99.0)}
    assert internal.analysis_run.verdict == "Running"
    assert internal.autoscaler == AutoscalerState(max_panic_replicas=3, last_active_at=50.0)
    assert internal.stable_floor == 2
    template = internal.templates["3-abcdef"]
    # the host folder of 0.1 becomes a reference the replica fetches itself
    assert template.model == "fraud:3"
    assert template.resources == Resources(cpu=500)
    assert template.max_batch_size == 32


def test_what_is_written_reads_back_the_same() -> None:
    internal = DeploymentInternal(
        stable_floor=3,
        autoscaler=AutoscalerState(panic_started_at=7.0),
        templates={
            "1-aaaaaa": ReplicaTemplate(
                deployment="d",
                model="m:1",
                model_name="m",
                readiness=Probe(path="/ready", command=("true",)),
                resources=Resources(cpu=250, memory=2**20),
            )
        },
    )
    again = read_deployment({"internal": dump(internal)})
    assert again == internal


def test_a_newer_version_is_refused_not_misread() -> None:
    with pytest.raises(InternalUnreadable, match="version 99"):
        read_deployment({"internal": {"version": 99, "rollout": {}}})


def test_malformed_bookkeeping_is_refused_with_the_field() -> None:
    with pytest.raises(InternalUnreadable, match="stableFloor"):
        read_deployment({"internal": {"version": INTERNAL_VERSION, "stableFloor": "many"}})


def test_training_bookkeeping_of_release_0_1() -> None:
    internal = read_training(
        {"phase": "Pending", "policyPhase": "Restarting", "nextStartAt": 12.5, "attempt": 2}
    )
    assert internal.policy_phase == "Restarting"
    assert internal.next_start_at == 12.5
    assert read_training({}).policy_phase == "Pending"


def test_an_upgrade_keeps_the_revision_of_an_unchanged_spec() -> None:
    """A deployment written by 0.1 (another revision hash) does not roll on upgrade: the
    migrated template of its stable revision equals today's, so its id is kept."""
    spec = ModelDeploymentSpec.model_validate(
        {"model": "fraud:3", "batching": {"maxBatchSize": 32}, "resources": {"cpu": "500m"}}
    )
    model = ModelRef("fraud", 3, "sklearn")
    today = template_of("fraud", spec, model)
    assert today.liveness is not None
    written_by_0_1 = {
        "deployment": "fraud",
        "revision": "3-abcdef",
        "model_name": "fraud",
        "model_dir": "/home/u/.pilothouse/models/fraud/3",
        "readiness_path": today.readiness.path,
        "probe_period": today.readiness.period,
        "probe_timeout": today.readiness.timeout,
        "failure_threshold": today.readiness.failure_threshold,
        "max_batch_size": 32,
        "max_batch_delay": 0.0,
        "readiness_command": [],
        "liveness": {**asdict(today.liveness), "command": []},
        "requests": asdict(today.resources),
        "priority": today.priority,
        "grace": today.grace,
    }
    status = {
        "rolloutState": {"stable": "3-abcdef", "phase": "Healthy"},
        "history": [
            {"number": 1, "revision": "3-abcdef", "model": "fraud:3", "replicaSpec": written_by_0_1}
        ],
    }
    known = read_deployment(status).templates
    assert revision_of(model, today, spec, known) == "3-abcdef"
    changed = ModelDeploymentSpec.model_validate(
        {"model": "fraud:3", "batching": {"maxBatchSize": 16}, "resources": {"cpu": "500m"}}
    )
    other = template_of("fraud", changed, model)
    assert revision_of(model, other, changed, known) != "3-abcdef"


def test_a_field_left_at_its_default_does_not_change_the_revision() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": "fraud:3"})
    model = ModelRef("fraud", 3, "sklearn")
    template = template_of("fraud", spec, model)
    assert template.pass_env == ()
    # the id is made of the fields set: a new field with a default changes nothing
    assert revision_of(model, template, spec) == revision_of(
        model, replace(template, pass_env=()), spec
    )
    assert revision_of(model, template, spec) != revision_of(
        model, replace(template, pass_env=("AWS_*",)), spec
    )
