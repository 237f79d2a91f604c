"""A deployment's replica template and revision id, from its spec and resolved model.

The revision id is the model version plus a digest of everything a replica starts with
(and of the spec's runtime and resources), so any such change (another model, batching,
probes, resources) makes a new revision and rolls the replicas, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from pilothouse.ports.state import ModelRef
from pilothouse.ports.workload import Probe, ReplicaTemplate, Resources
from pilothouse.spec.resources import ModelDeploymentSpec


def template_of(name: str, spec: ModelDeploymentSpec, model: ModelRef) -> ReplicaTemplate:
    readiness, liveness = spec.probes.readiness, spec.probes.liveness
    return ReplicaTemplate(
        deployment=name,
        model=model.ref,
        model_name=model.name,
        readiness=Probe(
            path=readiness.path,
            command=tuple(readiness.command or ()),
            period=readiness.period,
            timeout=readiness.timeout,
            failure_threshold=readiness.failure_threshold,
        ),
        liveness=Probe(
            path=liveness.path,
            command=tuple(liveness.command or ()),
            period=liveness.period,
            timeout=liveness.timeout,
            failure_threshold=liveness.failure_threshold,
            initial_delay=liveness.initial_delay,
        ),
        max_batch_size=spec.batching.max_batch_size,
        max_batch_delay=spec.batching.max_delay,
        resources=Resources(spec.resources.cpu, spec.resources.memory, spec.resources.gpu),
        priority=spec.priority,
        grace=spec.termination_grace_period,
        pass_env=tuple(spec.pass_env),
    )


def revision_of(
    model: ModelRef,
    template: ReplicaTemplate,
    spec: ModelDeploymentSpec,
    known: dict[str, ReplicaTemplate] | None = None,
) -> str:
    """The revision of ``template``: a revision already ``known`` with the same template
    keeps its id (ids made by an older release, or before a field was added, stay the
    same: no rollout on upgrade); otherwise a new id from the fields that differ from
    their defaults (adding a field with a default changes no id)."""
    for revision, other in (known or {}).items():
        if other == template and revision.split("-", 1)[0] == str(model.version):
            return revision
    shown: dict[str, Any] = _set_fields(template)
    shown["extra"] = {
        "runtime": spec.runtime,
        "resources": spec.resources.model_dump(mode="json", by_alias=True),
    }
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:6]
    return f"{model.version}-{digest}"


def _set_fields(value: Any) -> Any:
    """A dataclass as a dict of the fields that differ from their defaults (recursively)."""
    if not is_dataclass(value) or isinstance(value, type):
        return list(value) if isinstance(value, tuple) else value
    out: dict[str, Any] = {}
    for f in fields(value):
        current = getattr(value, f.name)
        if f.default is not MISSING and current == f.default:
            continue
        if f.default_factory is not MISSING and current == f.default_factory():
            continue
        out[f.name] = _set_fields(current)
    return out
