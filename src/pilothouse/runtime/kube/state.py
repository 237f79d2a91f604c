"""KubeState: the state port over custom resources.

Reads come from the informer cache (never from the API server in a reconcile). Status
goes through the status subresource: ``set_status`` returns at once and a writer task
sends the newest status of each object, one write at a time per object, skipping a
status equal to the one last written; until the informer shows it, ``get`` answers with
the status this operator wrote, so a reconcile always reads its own writes. Users'
requests (promote, abort, ...) are annotations ``pilothouse.dev/request.<key>``. Events
are ``events.k8s.io`` Events. ModelDeployments carry no finalizer: their children have
owner references and the garbage collector removes them, so ``finalize`` has nothing to
let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

from pilothouse.ports.state import ModelRef, ModelUnavailable, Resource
from pilothouse.registry.local import RegistryError
from pilothouse.registry.objectstore import ObjectStoreRegistry
from pilothouse.runtime.kube.client import Kube, KubeError
from pilothouse.runtime.kube.events import EventRecorder
from pilothouse.runtime.kube.informer import Informer
from pilothouse.runtime.kube.objects import GROUP_VERSION, REQUEST_PREFIX

#: the field manager `pilothouse --kubeconfig ... apply` writes with (cli/kubeclient.py)
CLI_FIELD_MANAGER = "pilothouse-cli"

log = logging.getLogger("pilothouse.operator.state")

Key = tuple[str, str]


def resource(obj: dict[str, Any], status: dict[str, Any] | None = None) -> Resource:
    meta = obj["metadata"]
    return Resource(
        kind=obj["kind"],
        name=meta["name"],
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 1),
        spec=copy.deepcopy(obj.get("spec") or {}),
        status=copy.deepcopy(status if status is not None else obj.get("status") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def applied_by(obj: dict[str, Any]) -> str:
    """Who last changed the spec: the newest field manager that owns part of it."""
    newest = ("", "")
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        if "f:spec" not in fields:
            continue
        when = str(entry.get("time") or "")
        if when >= newest[0]:
            newest = (when, str(entry.get("manager") or ""))
    return newest[1] or "unknown"


class KubeState:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        informers: dict[str, Informer],
        recorder: EventRecorder,
        registry: str = "",
        cache: Path | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.informers = informers
        self.recorder = recorder
        self.registry_uri = registry
        self._cache = cache or Path(tempfile.mkdtemp(prefix="pilothouse-operator-"))
        self._registry: ObjectStoreRegistry | None = None
        #: the status this operator wrote last, per object (uid, status), until replaced
        self._ours: dict[Key, tuple[str, dict[str, Any]]] = {}
        #: statuses to send, newest only
        self._pending: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._sent: dict[Key, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- reads ----------------------------------------------------------------------

    def _object(self, kind: str, name: str) -> dict[str, Any] | None:
        informer = self.informers.get(kind)
        return None if informer is None else informer.get(name, self.namespace)

    def get(self, kind: str, name: str) -> Resource | None:
        obj = self._object(kind, name)
        if obj is None:
            return None
        ours = self._ours.get((kind, name))
        uid = str(obj["metadata"].get("uid") or "")
        if ours is not None and ours[0] == uid:
            if obj.get("status") == ours[1]:
                del self._ours[(kind, name)]  # the cache caught up: it is the truth again
            return resource(obj, ours[1])
        return resource(obj)

    def list(self, kind: str) -> list[Resource]:
        informer = self.informers.get(kind)
        if informer is None:
            return []
        out = []
        for obj in informer.list():
            res = self.get(kind, obj["metadata"]["name"])
            if res is not None:
                out.append(res)
        return out

    def requests(self, kind: str, name: str) -> dict[str, str]:
        obj = self._object(kind, name)
        if obj is None:
            return {}
        annotations = obj["metadata"].get("annotations") or {}
        out = {
            key[len(REQUEST_PREFIX) :]: str(value)
            for key, value in annotations.items()
            if key.startswith(REQUEST_PREFIX)
        }
        # the CLI says who applied (user@host) when it made the newest change to the spec;
        # a later kubectl or GitOps change is recorded under its own field manager
        newest = applied_by(obj)
        if newest != CLI_FIELD_MANAGER or "appliedBy" not in out:
            out["appliedBy"] = newest
        return out

    # -- writes ---------------------------------------------------------------------

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        obj = self._object(kind, name)
        if obj is None:
            return  # deleted meanwhile: nothing left to describe
        uid = str(obj["metadata"].get("uid") or "")
        value = copy.deepcopy(status)
        self._ours[(kind, name)] = (uid, value)
        if self._sent.get((kind, name)) == value:
            self._pending.pop((kind, name), None)  # an older one queued must not win
            return
        self._pending[(kind, name)] = (uid, value)
        self._idle.clear()
        self._wake.set()

    def finalize(self, kind: str, name: str) -> None:
        """Nothing to let go: no finalizer is set (owner references clean up)."""
        self._ours.pop((kind, name), None)
        self._sent.pop((kind, name), None)

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        obj = self._object(kind, name)
        if obj is None:
            obj = {
                "apiVersion": GROUP_VERSION,
                "kind": kind,
                "metadata": {"name": name, "namespace": self.namespace},
            }
        self.recorder.record(obj, type_, reason, message)

    async def resolve_model(self, ref: str) -> ModelRef:
        if not self.registry_uri:
            raise ModelUnavailable("the operator was started without --registry")
        if self._registry is None:
            self._registry = ObjectStoreRegistry(self.registry_uri, self._cache)
        try:
            version = await asyncio.to_thread(self._registry.resolve, ref)
        except RegistryError as exc:
            raise ModelUnavailable(str(exc)) from None
        except OSError as exc:
            raise ModelUnavailable(
                f"the registry {self.registry_uri} cannot be read: {exc}"
            ) from None
        return ModelRef(version.name, version.version, version.framework)

    # -- the status writer ----------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="status-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            results = await asyncio.gather(
                *(self._write(key, uid, status) for key, (uid, status) in batch.items()),
                return_exceptions=True,
            )
            for (key, (uid, status)), result in zip(batch.items(), results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("%s/%s: status not written (%s); retrying", *key, result)
                    self._pending.setdefault(key, (uid, status))
            if self._pending:
                await asyncio.sleep(0.5)  # back off before retrying failed writes
                self._wake.set()
            else:
                self._idle.set()

    async def _write(self, key: Key, uid: str, status: dict[str, Any]) -> None:
        kind, name = key
        patch = [
            # only the object this status was computed for: a new one of the same name
            # (deleted and applied again) gets its own
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/status", "value": status},
        ]
        try:
            await self.kube.patch(
                GROUP_VERSION,
                kind,
                self.namespace,
                name,
                patch,
                patch_type="json",
                subresource="status",
            )
        except KubeError as exc:
            if exc.status == 404:  # gone: nothing left to describe
                return
            if exc.status == 422 and "/metadata/uid" in exc.message:
                return  # another object of the same name now: it gets its own status
            if exc.status == 422:  # the server refuses this status: say so, do not retry
                log.error("%s/%s: the API server refused the status: %s", kind, name, exc)
                return
            raise
        self._sent[key] = status
