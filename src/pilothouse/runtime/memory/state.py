"""The state port in memory: resources, status, events, users' requests, model references.

It behaves like the API server a controller talks to: ``apply`` bumps ``generation``
only when the spec changes, a status write never touches the spec, ``delete`` marks the
object ``deleting`` (a finalizer holds it) until the controller calls ``finalize``.
Model references resolve against a :class:`MemoryRegistry`, which the in-memory
workload also registers training outputs in.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pilothouse.ports.state import ModelRef, ModelUnavailable, Resource
from pilothouse.ports.workload import RegisteredModel
from pilothouse.spec.types import split_model_ref

STAGES = ("staging", "production", "archived")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    framework: str
    stage: str | None = None
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class MemoryRegistry:
    """Model versions by name, numbered 1, 2, … per name (as the registry numbers them)."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, ModelVersion]] = {}

    def add(
        self,
        name: str,
        version: int | None = None,
        framework: str = "sklearn",
        stage: str | None = None,
        metrics: dict[str, float | int | str] | None = None,
        lineage: dict[str, str] | None = None,
    ) -> ModelVersion:
        """Register a version (the next number when ``version`` is None)."""
        versions = self._models.setdefault(name, {})
        number = version if version is not None else max(versions, default=0) + 1
        if number in versions:
            raise ValueError(f"model {name}:{number} is already registered")
        added = ModelVersion(
            name, number, framework, None, dict(metrics or {}), dict(lineage or {})
        )
        versions[number] = added
        if stage is not None:
            self.set_stage(name, number, stage)
        return versions[number]

    def set_stage(self, name: str, version: int, stage: str | None) -> None:
        """Move a version to a stage; the version that held staging/production is archived."""
        if stage is not None and stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        versions = self._models[name]
        if stage in ("staging", "production"):
            for number, other in versions.items():
                if other.stage == stage and number != version:
                    versions[number] = replace(other, stage="archived")
        versions[version] = replace(versions[version], stage=stage)

    def versions(self, name: str) -> list[ModelVersion]:
        return [v for _, v in sorted(self._models.get(name, {}).items())]

    def resolve(self, ref: str) -> ModelRef:
        """``name``/``name:latest`` -> newest, ``name:N`` -> N, ``name@stage`` -> newest there."""
        try:
            name, version, stage = split_model_ref(ref)
        except ValueError as exc:
            raise ModelUnavailable(str(exc)) from None
        candidates = self.versions(name)
        if version is not None:
            candidates = [v for v in candidates if v.version == int(version)]
            if not candidates:
                raise ModelUnavailable(f"model '{name}' has no version {version}")
        elif stage is not None:
            candidates = [v for v in candidates if v.stage == stage]
        if not candidates:
            what = f"in stage '{stage}'" if stage else "registered"
            raise ModelUnavailable(f"model '{name}' has no version {what}")
        found = candidates[-1]
        return ModelRef(found.name, found.version, found.framework)

    def register_output(
        self, name: str, framework: str | None, lineage: dict[str, str]
    ) -> RegisteredModel:
        """A training attempt's output, registered once per (job uid, attempt)."""
        for existing in self.versions(name):
            if (
                existing.lineage.get("trainingJobUid") == lineage.get("trainingJobUid")
                and existing.lineage.get("attempt") == lineage.get("attempt")
                and "trainingJobUid" in lineage
            ):
                return RegisteredModel(existing.name, existing.version, existing.ref)
        added = self.add(name, framework=framework or "sklearn", lineage=lineage)
        return RegisteredModel(added.name, added.version, added.ref, dict(added.metrics))


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    name: str
    type: str
    reason: str
    message: str


@dataclass
class _Stored:
    resource: Resource
    requests: dict[str, str] = field(default_factory=dict)


class MemoryState:
    """Resources in a dict; every read returns a copy, as a client reading the API would."""

    def __init__(self, clock: Callable[[], float], registry: MemoryRegistry | None = None) -> None:
        self.clock = clock
        self.registry = registry if registry is not None else MemoryRegistry()
        self._objects: dict[tuple[str, str], _Stored] = {}
        self._uids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.events: list[Event] = []
        #: status writes to objects that no longer exist (an API server answers 404)
        self.lost_writes: list[tuple[str, str]] = []

    # --- what users (the API, the harness) do -----------------------------------------

    def apply(
        self, kind: str, name: str, spec: dict[str, Any], applied_by: str = "test"
    ) -> Resource:
        """Create or update an object; ``generation`` moves only when the spec changes."""
        key = (kind, name)
        stored = self._objects.get(key)
        spec = copy.deepcopy(spec)
        if stored is None or stored.resource.deleting:
            if stored is not None:
                raise ValueError(f"{kind} '{name}' is being deleted")
            resource = Resource(kind, name, f"uid-{next(self._uids)}", 1, spec)
            stored = self._objects[key] = _Stored(resource)
        elif stored.resource.spec != spec:
            stored.resource = replace(
                stored.resource, spec=spec, generation=stored.resource.generation + 1
            )
        stored.requests["appliedBy"] = applied_by
        return self._copy(stored.resource)

    def delete(self, kind: str, name: str) -> bool:
        """Mark the object deleting (its finalizer holds it until ``finalize``)."""
        stored = self._objects.get((kind, name))
        if stored is None:
            return False
        stored.resource = replace(stored.resource, deleting=True)
        return True

    def request(self, kind: str, name: str, values: dict[str, str]) -> None:
        """Record users' requests (``promote``, ``abort``, …) for the controller."""
        stored = self._objects.get((kind, name))
        if stored is None:
            raise KeyError(f"{kind} '{name}' not found")
        if stored.resource.deleting:
            raise ValueError(f"{kind} '{name}' is being deleted")
        stored.requests.update(values)

    def token(self) -> str:
        """A fresh request token (a nonce: a repeated request is a new request)."""
        return f"t{next(self._tokens)}"

    def add_model(
        self,
        name: str,
        version: int | None = None,
        framework: str = "sklearn",
        stage: str | None = None,
    ) -> ModelRef:
        added = self.registry.add(name, version, framework, stage)
        return ModelRef(added.name, added.version, added.framework)

    # --- the port ---------------------------------------------------------------------

    def get(self, kind: str, name: str) -> Resource | None:
        stored = self._objects.get((kind, name))
        return None if stored is None else self._copy(stored.resource)

    def list(self, kind: str) -> list[Resource]:
        return [self._copy(s.resource) for (k, _), s in sorted(self._objects.items()) if k == kind]

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        stored = self._objects.get((kind, name))
        if stored is None:
            self.lost_writes.append((kind, name))
            return
        stored.resource = replace(stored.resource, status=copy.deepcopy(status))

    def finalize(self, kind: str, name: str) -> None:
        stored = self._objects.get((kind, name))
        if stored is not None and stored.resource.deleting:
            del self._objects[(kind, name)]

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(self.clock(), kind, name, type_, reason, message))

    def requests(self, kind: str, name: str) -> dict[str, str]:
        stored = self._objects.get((kind, name))
        return {} if stored is None else dict(stored.requests)

    async def resolve_model(self, ref: str) -> ModelRef:
        return self.registry.resolve(ref)

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _copy(resource: Resource) -> Resource:
        return replace(
            resource, spec=copy.deepcopy(resource.spec), status=copy.deepcopy(resource.status)
        )
