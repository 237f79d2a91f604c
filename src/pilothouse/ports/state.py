"""The state port: resources, their status, events, users' requests, model references.

Embedded it is SQLite (and the model registry's index); on Kubernetes it is custom
resources with the status subresource (``observedGeneration``, conditions), ``Events``,
annotations for users' requests (promote, abort, undo), and the registry's index read
from object storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Resource:
    """One stored object: the parts a controller reads."""

    kind: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    #: being deleted: the controller finalizes it (stops what runs), then calls ``finalize``
    deleting: bool = False


@dataclass(frozen=True)
class ModelRef:
    """A model reference resolved to one exact version of the registry."""

    name: str
    version: int
    framework: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class ModelUnavailable(LookupError):
    """The reference names no model version (yet): the deployment waits for one."""


class State(Protocol):
    def get(self, kind: str, name: str) -> Resource | None: ...

    def list(self, kind: str) -> list[Resource]: ...

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        """Replace the status (the status subresource: the spec is never touched)."""
        ...

    def finalize(self, kind: str, name: str) -> None:
        """What ran of a deleted object is gone: let the object go."""
        ...

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None: ...

    def requests(self, kind: str, name: str) -> dict[str, str]:
        """Users' requests to the controller (``promote``, ``abort``, ``resume``, …: a token
        that changes with each request) and who applied the spec (``appliedBy``)."""
        ...

    async def resolve_model(self, ref: str) -> ModelRef:
        """``name:version``, ``name@stage`` or ``name`` (the newest) -> one exact version;
        ModelUnavailable when there is none."""
        ...
