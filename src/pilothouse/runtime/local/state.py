"""SqliteState: the state port with the embedded SQLite store and the model registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from pilothouse.ports.state import ModelRef, ModelUnavailable, Resource
from pilothouse.registry.local import BaseRegistry, RegistryError
from pilothouse.store.sqlite import NotFound, Store


def _resource(doc: dict[str, Any]) -> Resource:
    meta = doc["metadata"]
    return Resource(
        kind=doc["kind"],
        name=meta["name"],
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 1),
        spec=doc.get("spec") or {},
        status=doc.get("status") or {},
        deleting=bool(meta.get("deletionTimestamp")),
    )


class SqliteState:
    def __init__(
        self,
        store: Store,
        registry: BaseRegistry,
        on_finalize: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        #: forget what the backend kept of a deleted object (its logs)
        self.on_finalize = on_finalize or (lambda kind, name: None)

    def get(self, kind: str, name: str) -> Resource | None:
        try:
            return _resource(self.store.get(kind, name))
        except NotFound:
            return None

    def list(self, kind: str) -> list[Resource]:
        return [_resource(doc) for doc in self.store.list_objects(kind)]

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing left to describe
            self.store.set_status(kind, name, status)

    def finalize(self, kind: str, name: str) -> None:
        self.store.remove(kind, name)
        self.on_finalize(kind, name)

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.store.record_event(kind, name, type_, reason, message)

    def requests(self, kind: str, name: str) -> dict[str, str]:
        return self.store.requests(kind, name)

    async def resolve_model(self, ref: str) -> ModelRef:
        try:
            version = await asyncio.to_thread(self.registry.resolve, ref)
        except RegistryError as exc:
            raise ModelUnavailable(str(exc)) from None
        return ModelRef(version.name, version.version, version.framework)
