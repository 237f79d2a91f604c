"""The CLI against a Kubernetes cluster: ``pilothouse --kubeconfig PATH [--context CTX] [-n NS]``.

``KubeClient`` has the methods of the embedded control API's ``Client`` that the commands
use, with the same return shapes and errors (``ApiClientError`` with the code the embedded
API would answer), so ``get``, ``describe``, ``apply``, ``delete``, ``logs``, ``wait``,
``predict`` and ``rollout`` and their renderers do not know which one they talk to. It is
synchronous on the outside: one event loop per client (per command), closed with it, runs
the calls of ``pilothouse.runtime.kube.client``.

- Objects are the custom resources (``pilothouse.dev/v1alpha1``) of one namespace.
- ``apply`` is a server-side apply (field manager ``pilothouse-cli``) of every document,
  each tried with ``dryRun`` first, so that nothing is written when the API server refuses
  one of them (its 422 is shown with the field paths).
- Users' rollout requests are the annotations ``pilothouse.dev/request.<key>`` that
  ``policy.rollout.request_values`` gives, which the operator reads; an undo puts the
  earlier revision's template back into the spec, as the embedded control API does.
- Events are the ``events.k8s.io/v1`` Events about the object and about its pods; the
  pods are those labelled ``pilothouse.dev/deployment=NAME`` (replicas and routers) or, for
  a training job, those it owns; logs are their ``pods/log``.
- A prediction goes through the API server's service proxy to the Service ``NAME``, port
  80 (the routers), so it works from outside the cluster.

What the command cannot get past (no kubeconfig, an unreachable cluster, forbidden, the
CRDs not installed) is a ``ClusterError``: one line, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pilothouse.api.client import ApiClientError, Client, NotRunning
from pilothouse.policy.rollout import NothingToAct, request_values
from pilothouse.spec.resources import (
    API_VERSION,
    GROUP,
    KINDS,
    ModelDeployment,
    Resource,
    TrainingJob,
    kind_for_plural,
)

if TYPE_CHECKING:
    import aiohttp

    from pilothouse.runtime.kube.client import Kube

T = TypeVar("T")

#: the field manager of what the CLI applies and patches
FIELD_MANAGER = "pilothouse-cli"
#: users' requests to the operator (docs/kubernetes.md, "Users' requests")
REQUEST_PREFIX = "pilothouse.dev/request."
APPLIED_BY = REQUEST_PREFIX + "appliedBy"
DEPLOYMENT_LABEL = "pilothouse.dev/deployment"
COMPONENT_LABEL = "pilothouse.dev/component"
REVISION_LABEL = "pilothouse.dev/revision"
#: the port of the Service ``NAME`` in front of a deployment's routers (named ``http``)
SERVICE_PORT = 80
#: how long one prediction may take, as the embedded ``predict``
PREDICT_TIMEOUT = 30.0
#: how often ``logs --follow`` looks for pods that started since (and whether it is gone)
FOLLOW_POLL_SECONDS = 2.0
#: a write that raced with another writer (its resourceVersion changed) is tried again
CONFLICT_RETRIES = 5
INSTALL_HINT = "install them with `pilothouse kube install`"
EMBEDDED_NODES = (
    "nodes are the embedded control plane's; on a cluster use `kubectl get nodes`, "
    "`kubectl cordon` and `kubectl drain`"
)


class ClusterError(NotRunning):
    """The command cannot go on against the cluster: one line for the user, exit 1."""


@dataclass(frozen=True)
class ClusterTarget:
    """What the global options chose: the cluster of ``kubeconfig``/``context``, and the
    namespace (None: the context's, else ``default``)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


#: makes the connection (tests give a fake)
Connector = Callable[[ClusterTarget], Coroutine[Any, Any, "Kube"]]


def user() -> str:
    """``user@host``: who asked (``appliedBy``), as the embedded control API records it."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return f"{name}@{socket.gethostname()}"


# -- shapes: Kubernetes objects as the renderers read them ------------------------------------


def seconds(timestamp: Any) -> str | None:
    """A Kubernetes time (``...Z``, with or without a fraction) in whole seconds, the
    form the renderers read."""
    if not timestamp:
        return None
    text = str(timestamp)
    return text.split(".", 1)[0] + "Z" if "." in text else text


def event_row(event: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """An ``events.k8s.io/v1`` Event in the embedded control API's shape (type, reason,
    message, count, first and last time)."""
    series = event.get("series") or {}
    last = (
        series.get("lastObservedTime")
        or event.get("deprecatedLastTimestamp")
        or event.get("eventTime")
        or event.get("deprecatedFirstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
    )
    first = event.get("deprecatedFirstTimestamp") or event.get("eventTime") or last
    count = series.get("count") or event.get("deprecatedCount") or 1
    return {
        "type": event.get("type") or "Normal",
        "reason": event.get("reason") or "",
        "message": prefix + str(event.get("note") or ""),
        "count": int(count),
        "firstTimestamp": seconds(first),
        "lastTimestamp": seconds(last),
    }


def _reason(state: dict[str, Any]) -> str:
    reason, message = state.get("reason") or "", state.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def pod_row(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod in the shape of the embedded ``GET .../pods`` items that ``describe`` shows:
    its name as the id, node, phase, ready, revision (``router`` for a router), IP as the
    endpoint; restarts, waiting and termination reasons in the message."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    containers = status.get("containerStatuses") or []
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    notes = [f"{restarts} restart(s)"] if restarts else []
    exit_code: int | None = None
    for c in containers:
        state = c.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") != "ContainerCreating":
            notes.append(_reason(waiting))
        if terminated:
            exit_code = terminated.get("exitCode")
            notes.append(_reason(terminated))
    if status.get("reason") or status.get("message"):
        notes.append(_reason(status))
    component = labels.get(COMPONENT_LABEL)
    return {
        "id": meta["name"],
        "node": spec.get("nodeName"),
        "phase": "Terminating" if meta.get("deletionTimestamp") else status.get("phase"),
        "ready": ready,
        "revision": labels.get(REVISION_LABEL) or component,
        "component": component,
        "restarts": restarts,
        "pid": None,
        "endpoint": status.get("podIP"),
        "exitCode": exit_code,
        "message": "; ".join(n for n in notes if n),
    }


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as people read it: without ``managedFields`` (as kubectl shows it)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def applied_doc(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What is applied of a validated document: kind, name, labels, annotations and spec,
    in ``namespace`` (server-set metadata such as a resourceVersion left out)."""
    meta = doc.get("metadata") or {}
    out_meta: dict[str, Any] = {"name": meta["name"], "namespace": namespace}
    if meta.get("labels"):
        out_meta["labels"] = dict(meta["labels"])
    if meta.get("annotations"):
        out_meta["annotations"] = dict(meta["annotations"])
    return {
        "apiVersion": API_VERSION,
        "kind": doc["kind"],
        "metadata": out_meta,
        "spec": doc.get("spec") or {},
    }


def causes(body: Any, document: int, fallback: str) -> list[dict[str, Any]]:
    """The field causes of an API server's refusal (``details.causes`` of its Status), as
    the embedded control API's 422 lists them (document number, field, message)."""
    status = body if isinstance(body, dict) else {}
    found = (status.get("details") or {}).get("causes") or []
    out = [
        {
            "source": "cluster",
            "document": document,
            "field": c.get("field") or "",
            "message": c.get("message") or c.get("reason") or "",
        }
        for c in found
        if isinstance(c, dict)
    ]
    return out or [{"source": "cluster", "document": document, "field": "", "message": fallback}]


def refused(found: list[dict[str, Any]], what: str) -> ApiClientError:
    """One 422 naming every refused field (the first five in the message), nothing applied."""
    lines = "; ".join(
        f"document {c['document']}: {c['field'] or '(document)'}: {c['message']}" for c in found[:5]
    )
    return ApiClientError(
        422,
        {
            "reason": "Invalid",
            "message": f"{len(found)} {what}, nothing applied: {lines}",
            "details": {"causes": found},
        },
    )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# -- the client ---------------------------------------------------------------------------------


class KubeClient(Client):
    """The embedded ``Client``'s methods against the custom resources of one namespace."""

    def __init__(self, target: ClusterTarget, connect: Connector | None = None) -> None:
        # deliberately not Client.__init__: there is no control API to talk HTTP to
        self.target = target
        self._runner = asyncio.Runner()
        self._served: set[str] | None = None
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._closed = False
        try:
            self._kube: Kube = self._runner.run((connect or _connect)(target))
        except BaseException:
            self._runner.close()
            raise
        self.namespace = self._kube.namespace
        self.url = str(getattr(self._kube.api.configuration, "host", "") or "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self._kube.close())
        finally:
            self._runner.close()

    # -- one call ---------------------------------------------------------------------

    def _run(self, call: Coroutine[Any, Any, T], verb: str, resource: str) -> T:
        """Run one call on the client's loop. A KubeError becomes what the embedded client
        would raise (ApiClientError with the Status body), or a ClusterError when the
        command cannot go on; ``verb`` and ``resource`` say what was asked (for a 403)."""
        from pilothouse.runtime.kube.client import KubeError

        try:
            return self._runner.run(call)
        except KubeError as exc:
            raise self._error(exc, verb, resource) from exc

    def _error(self, exc: Any, verb: str, resource: str) -> Exception:
        status, message = int(exc.status), _one_line(exc.message)
        where = f" at {self.url}" if self.url else ""
        if status == 0:
            return ClusterError(f"cannot reach the cluster{where}: {message}")
        if status == 401:
            return ClusterError(
                f"the cluster{where} does not accept the kubeconfig's credentials "
                f"(401 Unauthorized): {message}"
            )
        if status == 403:
            # the API server's message names the user, verb and resource after its prefix
            text = message.split(" is forbidden: ", 1)[-1]
            if f"cannot {verb}" not in text:
                text = f"may not {verb} {resource} in namespace {self.namespace!r}: {text}"
            return ClusterError(f"forbidden: {text}")
        body = exc.body if isinstance(exc.body, dict) else {}
        return ApiClientError(status, {**body, "message": message or exc.reason, "code": status})

    def _check_served(self, cls: type[Resource]) -> None:
        """A ClusterError when the cluster does not serve the kind (404 on the group or no
        such resource in it): the CRDs are not installed."""
        if self._served is None:
            try:
                found = self._run(
                    self._kube.request("GET", f"/apis/{API_VERSION}"), "get", f"/apis/{API_VERSION}"
                )
            except ApiClientError as exc:
                if exc.code != 404:
                    raise
                found = {}
            self._served = {str(r.get("name")) for r in (found or {}).get("resources") or []}
        if cls.PLURAL not in self._served:
            raise ClusterError(
                f"the pilothouse CRDs are not installed in this cluster ({cls.PLURAL}.{GROUP} "
                f"is not served); {INSTALL_HINT}"
            )

    def _not_found(self, cls: type[Resource], name: str) -> ApiClientError:
        """The embedded API's 404 for a missing object, once the kind is known to be served."""
        self._check_served(cls)
        return ApiClientError(
            404,
            {
                "reason": "NotFound",
                "message": f"{cls.KIND} '{name}' not found in namespace '{self.namespace}'",
            },
        )

    # -- objects ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        raise ClusterError(
            "`pilothouse status` describes the embedded control plane; against a cluster use "
            "`pilothouse get modeldeployments` and `pilothouse get trainingjobs`"
        )

    def list_objects(self, plural: str) -> list[dict[str, Any]]:
        cls = _kind(plural)
        try:
            items = self._run(
                self._kube.list(API_VERSION, cls.KIND, self.namespace), "list", _resource(cls)
            )
        except ApiClientError as exc:
            if exc.code == 404:
                self._check_served(cls)
            raise
        return sorted((strip(i) for i in items), key=lambda o: str(o["metadata"]["name"]))

    def _read(self, cls: type[Resource], name: str) -> dict[str, Any] | None:
        obj = self._run(
            self._kube.get(API_VERSION, cls.KIND, self.namespace, name), "get", _resource(cls)
        )
        if obj is not None:
            obj.setdefault("apiVersion", API_VERSION)
            obj.setdefault("kind", cls.KIND)
            self._objects[(cls.KIND, name)] = obj
        return obj

    def get(self, plural: str, name: str) -> dict[str, Any]:
        cls = _kind(plural)
        obj = self._read(cls, name)
        if obj is None:
            raise self._not_found(cls, name)
        return strip(obj)

    def delete(self, plural: str, name: str) -> dict[str, Any]:
        """Ask for the deletion; what runs of it goes first (foreground propagation), so
        ``delete --wait`` waits until its pods are gone too."""
        cls = _kind(plural)
        obj = self.get(plural, name)
        propagation = "Background" if cls.KIND == "Queue" else "Foreground"
        deleted = self._run(
            self._kube.delete(API_VERSION, cls.KIND, self.namespace, name, propagation=propagation),
            "delete",
            _resource(cls),
        )
        if not deleted:
            raise self._not_found(cls, name)
        return obj

    def apply(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Server-side apply of validated documents, all or none: each is applied with
        ``dryRun`` first, and a refusal (422, with its field paths) stops before anything
        is written. A ModelDeployment whose spec changes records who applied it
        (``pilothouse.dev/request.appliedBy``), as the embedded control API does."""
        problems: list[dict[str, Any]] = []
        for number, item in enumerate(items, start=1):
            stated = (item.get("metadata") or {}).get("namespace")
            if stated not in (None, "", "default", self.namespace):
                problems.append(
                    {
                        "source": "request",
                        "document": number,
                        "field": "metadata.namespace",
                        "message": f"is {stated!r} but this command works in namespace "
                        f"{self.namespace!r} (-n)",
                    }
                )
        if problems:
            raise refused(problems, "invalid field(s)")
        docs = [applied_doc(item, self.namespace) for item in items]
        classes = [KINDS[doc["kind"]] for doc in docs]
        for cls in classes:
            self._check_served(cls)
        before = [
            self._read(cls, d["metadata"]["name"]) for cls, d in zip(classes, docs, strict=True)
        ]
        found: list[dict[str, Any]] = []
        tried: list[dict[str, Any]] = []
        for number, (cls, doc) in enumerate(zip(classes, docs, strict=True), start=1):
            try:
                tried.append(self._apply_one(cls, doc, dry_run=True))
            except ApiClientError as exc:
                if exc.code not in (400, 422):
                    raise
                tried.append({})
                found.extend(causes(exc.body, number, str(exc)))
        if found:
            raise refused(found, "field(s) refused by the cluster")
        who = user()
        results = []
        for cls, doc, old, trial in zip(classes, docs, before, tried, strict=True):
            if cls is ModelDeployment:
                self._set_applied_by(doc, old, trial, who)
            new = self._apply_one(cls, doc, dry_run=False)
            if old is None:
                result = "created"
            elif new["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
                result = "unchanged"
            else:
                result = "configured"
            results.append({"kind": cls.KIND, "name": doc["metadata"]["name"], "result": result})
        return results

    @staticmethod
    def _set_applied_by(
        doc: dict[str, Any], old: dict[str, Any] | None, trial: dict[str, Any], who: str
    ) -> None:
        """Who applied it, in the same write as the spec (the operator records it in the
        revision's history): this user when the spec changes (a new generation), else the
        value it has, so that an unchanged apply changes nothing."""
        annotations = doc["metadata"].setdefault("annotations", {})
        generation = (trial.get("metadata") or {}).get("generation")
        if old is None or generation != old["metadata"].get("generation"):
            annotations[APPLIED_BY] = who
            return
        previous = (old["metadata"].get("annotations") or {}).get(APPLIED_BY)
        if previous is not None:
            annotations[APPLIED_BY] = previous
        elif not annotations:
            del doc["metadata"]["annotations"]

    def _apply_one(self, cls: type[Resource], doc: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        from pilothouse.runtime.kube.client import APPLY_PATCH

        name = doc["metadata"]["name"]
        query = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            query["dryRun"] = "All"
        applied: dict[str, Any] = self._run(
            self._kube.request(
                "PATCH",
                self._kube.path(API_VERSION, cls.KIND, self.namespace, name),
                query=query,
                body=doc,
                content_type=APPLY_PATCH,
            ),
            "patch",
            _resource(cls),
        )
        return applied

    # -- what runs of an object ---------------------------------------------------------

    def _object(self, cls: type[Resource], name: str) -> dict[str, Any]:
        """The object as this command last read it (read now if it has not)."""
        obj = self._objects.get((cls.KIND, name))
        if obj is None:
            self.get(cls.PLURAL, name)
            obj = self._objects[(cls.KIND, name)]
        return obj

    async def _list_pods(self, cls: type[Resource], name: str, uid: str | None) -> list[Any]:
        """A deployment's pods by its label (replicas, then routers), a training job's by
        owner (its uid); by name within each."""
        if cls is ModelDeployment:
            pods = await self._kube.list(
                "v1", "Pod", self.namespace, label_selector=f"{DEPLOYMENT_LABEL}={name}"
            )
        elif cls is TrainingJob and uid:
            pods = [
                p
                for p in await self._kube.list("v1", "Pod", self.namespace)
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
            ]
        else:
            pods = []
        return sorted(
            pods,
            key=lambda p: (
                (p["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == "router",
                p["metadata"]["name"],
            ),
        )

    def _pod_objects(self, cls: type[Resource], name: str) -> list[dict[str, Any]]:
        key = (cls.KIND, name)
        if key not in self._pods:
            uid = self._object(cls, name)["metadata"].get("uid")
            self._pods[key] = self._run(self._list_pods(cls, name, uid), "list", "pods")
        return self._pods[key]

    def pods(self, plural: str, name: str) -> list[dict[str, Any]]:
        cls = _kind(plural)
        return [pod_row(p) for p in self._pod_objects(cls, name)]

    def events(self, plural: str, name: str) -> list[dict[str, Any]]:
        """The ``events.k8s.io/v1`` Events about the object (this incarnation of it), and
        those about its pods (``pod/NAME:`` before their message), oldest first."""
        cls = _kind(plural)
        obj = self._object(cls, name)
        uid = obj["metadata"].get("uid")
        rows = [
            event_row(e)
            for e in self._events(f"regarding.kind={cls.KIND},regarding.name={name}")
            if (e.get("regarding") or {}).get("uid") in (None, "", uid)
        ]
        if cls in (ModelDeployment, TrainingJob):
            names = {p["metadata"]["name"] for p in self._pod_objects(cls, name)}
            if names:
                for event in self._events("regarding.kind=Pod"):
                    pod = (event.get("regarding") or {}).get("name")
                    if pod in names:
                        rows.append(event_row(event, f"pod/{pod}: "))
        rows.sort(key=lambda r: str(r.get("lastTimestamp") or ""))
        return rows

    def _events(self, field_selector: str) -> list[dict[str, Any]]:
        try:
            return self._run(
                self._kube.list(
                    "events.k8s.io/v1", "Event", self.namespace, field_selector=field_selector
                ),
                "list",
                "events.events.k8s.io",
            )
        except ClusterError as exc:
            if "forbidden" in str(exc):
                return []  # a courtesy of describe: not being allowed to read them is fine
            raise

    # -- rollouts -----------------------------------------------------------------------

    def rollout_action(self, name: str, action: str, **fields: Any) -> dict[str, Any]:
        """Record a user's request on the ModelDeployment as the operator reads it: the
        annotations ``pilothouse.dev/request.<key>`` of ``request_values``, for the canary
        and the aborted revision of the status it was read with (a status that changed
        meanwhile is read again). An undo puts an earlier revision's template back."""
        if action == "undo":
            return self._undo(name, fields.get("toRevision"))
        full = fields.get("full", False) if action == "promote" else False
        if not isinstance(full, bool):
            raise ApiClientError(400, {"message": f"full: expected true or false, got {full!r}"})
        for attempt in range(1, CONFLICT_RETRIES + 1):
            obj = self.get(ModelDeployment.PLURAL, name)
            rollout = (obj.get("status") or {}).get("rollout") or {}
            try:
                values = request_values(
                    action,
                    rollout.get("canaryRevision"),
                    rollout.get("abortedRevision"),
                    str(time.time_ns()),
                    full=full,
                )
            except NothingToAct as exc:  # the same answer as the embedded API's
                raise ApiClientError(
                    409, {"reason": "Conflict", "message": f"modeldeployment '{name}' has {exc}"}
                ) from None
            patch = {
                "metadata": {
                    "resourceVersion": obj["metadata"].get("resourceVersion"),
                    "annotations": {REQUEST_PREFIX + k: v for k, v in values.items()},
                }
            }
            try:
                return self._patch(name, patch, "merge")
            except ApiClientError as exc:
                if exc.code != 409 or attempt == CONFLICT_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _patch(self, name: str, patch: Any, patch_type: str) -> dict[str, Any]:
        cls = ModelDeployment
        try:
            patched = self._run(
                self._kube.patch(
                    API_VERSION, cls.KIND, self.namespace, name, patch, patch_type=patch_type
                ),
                "patch",
                _resource(cls),
            )
        except ApiClientError as exc:
            if exc.code == 404:
                raise self._not_found(cls, name) from exc
            raise
        return strip(patched)

    def _undo(self, name: str, to_revision: Any) -> dict[str, Any]:
        """The embedded control API's undo (api/rollouts.py) on the cluster: the earlier
        revision's template becomes the spec, in one JSON patch on the resourceVersion it
        was computed from, with ``pilothouse.dev/request.appliedBy`` saying who went back,
        and a ``RolloutUndone`` Event."""
        from pilothouse.api.apply import validate_documents
        from pilothouse.api.errors import ApiError
        from pilothouse.api.rollouts import _undo_target, _with_template

        if to_revision is not None and (
            not isinstance(to_revision, int) or isinstance(to_revision, bool)
        ):
            raise ApiClientError(
                400, {"message": f"toRevision: expected a revision number, got {to_revision!r}"}
            )
        for attempt in range(1, CONFLICT_RETRIES + 1):
            obj = self.get(ModelDeployment.PLURAL, name)
            status = obj.get("status") or {}
            current = (status.get("rollout") or {}).get("desiredRevision")
            try:
                target = _undo_target(name, list(status.get("history") or []), current, to_revision)
                if target.get("revision") == current:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"revision {target.get('number')} ({target.get('model')}) is what "
                        f"modeldeployment '{name}' already runs; nothing to undo",
                    )
                [resource] = validate_documents([_with_template(obj, target)], "undo")
            except ApiError as exc:
                raise ApiClientError(
                    exc.code,
                    {"reason": exc.reason, "message": exc.message, "details": exc.details or {}},
                ) from None
            spec = resource.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
            annotations = dict(obj["metadata"].get("annotations") or {})
            annotations[APPLIED_BY] = f"{user()} (undo to revision {target.get('number')})"
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": obj["metadata"].get("resourceVersion"),
                },
                {"op": "replace", "path": "/spec", "value": spec},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ]
            try:
                updated = self._patch(name, patch, "json")
            except ApiClientError as exc:
                # the test failed (it changed since it was read; 422 or 409): read it again
                if exc.code not in (409, 422) or attempt == CONFLICT_RETRIES:
                    raise
                continue
            self._record_undo(updated, target)
            return updated
        raise AssertionError("unreachable")

    def _record_undo(self, obj: dict[str, Any], target: dict[str, Any]) -> None:
        """The ``RolloutUndone`` Event (best effort: not being allowed to write events does
        not make the undo fail)."""
        meta = obj["metadata"]
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # named as client-go names events: OBJECT.NANOSECONDS-IN-HEX
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": self.namespace},
            "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "reportingController": "pilothouse.dev/cli",
            "reportingInstance": (socket.gethostname() or "cli")[:128],
            "action": "Undo",
            "reason": "RolloutUndone",
            "type": "Normal",
            "note": f"{user()} went back to revision {target.get('number')} "
            f"({target.get('model')})",
            "regarding": {
                "apiVersion": API_VERSION,
                "kind": ModelDeployment.KIND,
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
        }
        with contextlib.suppress(ClusterError, ApiClientError):
            self._run(self._kube.create(event), "create", "events.events.k8s.io")

    # -- logs -----------------------------------------------------------------------------

    def logs(self, plural: str, name: str, follow: bool = False, tail: int = -1) -> Iterator[str]:
        """The logs of the object's pods (``pods/log``), one pod after another, each line
        prefixed with ``[POD]`` when there are several; with ``follow``, the new lines of
        every pod (those that start meanwhile included) until the object is gone."""
        cls = _kind(plural)
        pods = self._pod_objects(cls, name)
        if not follow:
            for pod in pods:
                mark = f"[{pod['metadata']['name']}] " if len(pods) > 1 else ""
                text = self._run(self._log_text(pod, tail), "get", "pods/log")
                yield from (mark + line for line in text.splitlines())
            return
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = self._runner.get_loop()
        task = loop.create_task(self._follow(cls, name, pods, tail, queue))
        try:
            while (followed := self._run(_next(queue, task), "get", "pods/log")) is not None:
                yield followed
        finally:
            task.cancel()
            self._runner.run(_settle(task))

    def _log_query(self, pod: dict[str, Any], tail: int, follow: bool) -> dict[str, str]:
        containers = (pod.get("spec") or {}).get("containers") or []
        query = {"container": str(containers[0]["name"])} if containers else {}
        if tail >= 0:
            query["tailLines"] = str(tail)
        if follow:
            query["follow"] = "true"
        return query

    @contextlib.asynccontextmanager
    async def _log(
        self, pod: dict[str, Any], tail: int, follow: bool
    ) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """The ``pods/log`` response (text, not JSON); None while its container has not
        started (the API server answers 400: nothing to show yet)."""
        import aiohttp

        from pilothouse.runtime.kube.client import _error

        meta = pod["metadata"]
        path = self._kube.path("v1", "Pod", meta.get("namespace") or self.namespace, meta["name"])
        limit = aiohttp.ClientTimeout(total=None if follow else 60, sock_connect=30)
        async with self._kube._open(
            "GET", f"{path}/log", self._log_query(pod, tail, follow), None, None, limit
        ) as response:
            if response.status == 400:
                yield None
                return
            if not 200 <= response.status < 300:
                raise _error(response.status, response.reason, await response.read())
            yield response

    async def _log_text(self, pod: dict[str, Any], tail: int) -> str:
        async with self._log(pod, tail, follow=False) as response:
            if response is None:
                return ""
            return (await response.read()).decode("utf-8", "replace")

    async def _follow(
        self,
        cls: type[Resource],
        name: str,
        pods: list[dict[str, Any]],
        tail: int,
        queue: asyncio.Queue[str | None],
    ) -> None:
        """Stream every pod's log into ``queue`` (None at the end); look for new pods and
        whether the object is still there every FOLLOW_POLL_SECONDS."""
        streams: dict[str, asyncio.Task[bool]] = {}
        uid = self._object(cls, name)["metadata"].get("uid")

        async def stream(pod: dict[str, Any], lines: int) -> bool:
            """False when the container had not started (then it is tried again)."""
            mark = f"[{pod['metadata']['name']}] "
            async with self._log(pod, lines, follow=True) as response:
                if response is None:
                    return False
                buffer = b""
                # chunks, not readline: a line may be longer than the read buffer
                async for chunk in response.content.iter_any():
                    *lines_, buffer = (buffer + chunk).split(b"\n")
                    for line in lines_:
                        await queue.put(mark + line.decode("utf-8", "replace").rstrip("\r"))
                if buffer:
                    await queue.put(mark + buffer.decode("utf-8", "replace"))
            return True

        def start(found: list[dict[str, Any]], lines: int) -> None:
            for pod in found:
                pod_name = pod["metadata"]["name"]
                running = streams.get(pod_name)
                if running is None or _not_started(running):
                    streams[pod_name] = asyncio.create_task(stream(pod, lines))

        try:
            start(pods, tail)
            while True:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                for task in streams.values():
                    if task.done() and not task.cancelled() and (error := task.exception()):
                        raise error
                if await self._kube.get(API_VERSION, cls.KIND, self.namespace, name) is None:
                    return
                start(await self._list_pods(cls, name, uid), -1)
        finally:
            for task in streams.values():
                task.cancel()
            await asyncio.gather(*streams.values(), return_exceptions=True)
            await queue.put(None)

    # -- predictions ----------------------------------------------------------------------

    def predict(self, deployment: str, path: str, payload: Any) -> tuple[int, Any]:
        """POST ``payload`` to ``path`` (``/v1/models/...``) of the deployment's routers
        through the API server's service proxy (Service ``NAME``, port 80): the router's
        status and JSON body. The API server's own refusals (no such Service, no ready
        router, forbidden) are a ClusterError."""
        from pilothouse.runtime.kube.client import KubeError

        # services/NAME:PORT/proxy/..., the ":" as kubectl sends it (not percent-encoded)
        from pilothouse.runtime.kube.objects import service_name

        service = self._kube.path("v1", "Service", self.namespace, service_name(deployment))
        proxy = f"{service}:{SERVICE_PORT}"
        try:
            body = self._runner.run(
                self._kube.request(
                    "POST",
                    f"{proxy}/proxy{path}",
                    body=payload,
                    content_type="application/json",
                    timeout=PREDICT_TIMEOUT,
                )
            )
        except KubeError as exc:
            answer = exc.body
            if exc.status == 0 or exc.status in (401, 403):
                raise self._error(exc, "create", "services/proxy") from exc
            if isinstance(answer, dict) and answer.get("kind") == "Status":
                # the API server's answer, not the router's
                raise ClusterError(
                    f"modeldeployment/{deployment}: the API server's service proxy answered "
                    f"{exc.status}: {_one_line(exc.message)}"
                ) from exc
            return exc.status, answer if answer is not None else {"error": exc.message}
        except ValueError as exc:  # a 2xx answer that is not JSON: not a router's
            raise ClusterError(
                f"modeldeployment/{deployment}: the answer through the service proxy is not "
                f"JSON: {exc}"
            ) from exc
        return 200, body

    # -- what only the embedded control plane has -------------------------------------------

    def nodes(self) -> dict[str, Any]:
        raise ClusterError(EMBEDDED_NODES)

    def node(self, name: str) -> dict[str, Any]:
        raise ClusterError(EMBEDDED_NODES)

    def node_action(self, name: str, action: str) -> dict[str, Any]:
        raise ClusterError(EMBEDDED_NODES)


async def _next(queue: asyncio.Queue[str | None], task: asyncio.Task[None]) -> str | None:
    """The next followed line; None at the end (the follower always ends with it), or what
    the follower raised."""
    line = await queue.get()
    if line is None:
        await asyncio.wait({task})
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return line


def _not_started(task: asyncio.Task[bool]) -> bool:
    """Whether a log stream ended because its container had not started yet."""
    return task.done() and not task.cancelled() and task.exception() is None and not task.result()


async def _settle(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(BaseException):
        await task


async def _connect(target: ClusterTarget) -> Kube:
    """``runtime.kube.client.connect``; a kubeconfig it cannot use is one line."""
    from pilothouse.runtime.kube.client import KubeConfigError, connect

    try:
        return await connect(target.kubeconfig, target.context, target.namespace)
    except KubeConfigError as exc:
        raise ClusterError(_one_line(exc)) from exc


def _kind(plural: str) -> type[Resource]:
    cls = kind_for_plural(plural)
    if cls is None:
        known = ", ".join(sorted(c.PLURAL for c in KINDS.values()))
        raise ApiClientError(
            404, {"message": f"unknown resource type '{plural}'; expected one of: {known}"}
        )
    return cls


def _resource(cls: type[Resource]) -> str:
    return f"{cls.PLURAL}.{GROUP}"


__all__ = ["ClusterError", "ClusterTarget", "KubeClient", "event_row", "pod_row"]
