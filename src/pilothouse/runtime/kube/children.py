"""Applying a ModelDeployment's children: level-based, and never over someone else's object.

An object is sent (server-side apply, one field manager) when it changed, when the
informer that watches its kind no longer has it, or when REAPPLY seconds passed since it
was last sent: a no-op apply is cheap, and it puts back what someone deleted or edited by
hand. Before the first apply of a name in this process the object is read: one of that
name that this ModelDeployment does not control (a user's own Service, another
deployment's child) is never taken over — the reconcile fails with ``ChildConflict``,
which the controller reports as an Event, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from pilothouse.runtime.kube.client import Kube
from pilothouse.runtime.kube.informer import Informer

#: seconds after which an unchanged child is applied again anyway
REAPPLY = 60.0

Key = tuple[str, str]


class ChildConflict(RuntimeError):
    """An object of a child's name exists and belongs to something else."""


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def controller_uid(obj: dict[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return None


class Applier:
    def __init__(
        self,
        kube: Kube,
        field_manager: str,
        watched: dict[str, Informer] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.kube = kube
        self.field_manager = field_manager
        #: kind -> the informer that has every child of that kind (label-selected)
        self.watched = watched or {}
        self.clock = clock
        self._sent: dict[Key, tuple[str, float]] = {}

    def _missing(self, kind: str, name: str, namespace: str) -> bool:
        informer = self.watched.get(kind)
        return informer is not None and informer.get(name, namespace) is None

    async def check_ours(self, obj: dict[str, Any]) -> None:
        """Refuse a name taken by an object this child's owner does not control."""
        meta = obj["metadata"]
        found = await self.kube.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if found is None:
            return
        owner = next(r for r in meta["ownerReferences"] if r.get("controller"))
        if controller_uid(found) != owner["uid"]:
            raise ChildConflict(
                f"{obj['kind']} {meta['namespace']}/{meta['name']} already exists and is not"
                f" managed by {owner['kind']} {owner['name']}: rename one of them"
            )

    async def apply(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (obj["kind"], meta["name"])
        digest = _digest(obj)
        sent = self._sent.get(key)
        if (
            sent is not None
            and sent[0] == digest
            and self.clock() - sent[1] < REAPPLY
            and not self._missing(obj["kind"], meta["name"], meta["namespace"])
        ):
            return
        if sent is None:
            await self.check_ours(obj)
        await self.kube.apply(obj, field_manager=self.field_manager, force=True)
        self._sent[key] = (digest, self.clock())

    def sent(self, kind: str, name: str, obj: dict[str, Any]) -> None:
        """``obj`` was written another way (created): count it as sent."""
        self._sent[(kind, name)] = (_digest(obj), self.clock())

    def forget(self, kind: str, name: str) -> None:
        self._sent.pop((kind, name), None)
