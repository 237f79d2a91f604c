"""The control API: Kubernetes-shaped resource paths over the embedded store.

``/apis/pilothouse.dev/v1alpha1/{plural}[/{name}]`` lists, reads, applies
(PUT) and deletes; ``POST /apis/pilothouse.dev/v1alpha1/apply`` applies a
batch atomically (what ``pilothouse apply -f`` uses). Every request but
``/healthz`` needs the bearer token. Bad requests get a 4xx ``Status`` body
naming what was wrong; nothing is half-applied.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pilothouse import __version__
from pilothouse.api.errors import (
    ApiError,
    handle_api_error,
    handle_method,
    handle_not_found,
    handle_store_error,
    status_body,
)
from pilothouse.api.openapi import openapi_document
from pilothouse.policy.scheduler import NodeInfo, Resources, check_fits
from pilothouse.registry.local import BaseRegistry, ModelNotFound
from pilothouse.runtime.port import NodeStatus
from pilothouse.spec.loader import validate_document
from pilothouse.spec.quantity import format_bytes, format_cpu_millis
from pilothouse.spec.resources import (
    API_VERSION,
    KINDS,
    TEMPLATE_FIELDS,
    ModelDeployment,
    Queue,
    QueueSpec,
    Resource,
    TrainingJob,
    kind_for_plural,
)
from pilothouse.store.sqlite import Conflict, NotFound, Store

PREFIX = f"/apis/{API_VERSION}"
MAX_BODY = 4 * 2**20
ROLLOUT_ACTIONS = ("promote", "abort", "pause", "resume", "retry", "undo")
USER_HEADER = "x-pilothouse-user"


class TokenAuth(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        if len(token) < 32:
            raise ValueError("refusing to serve the control API with a short or empty token")
        self.token = token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token
        ):
            body = status_body(
                401, "Unauthorized", "missing or wrong bearer token (see $PILOTHOUSE_HOME/token)"
            )
            return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def resource_doc(resource: Resource) -> dict[str, Any]:
    """The stored form of a validated resource: canonical spec, user metadata only."""
    dumped = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = dumped["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": resource.KIND,
        "metadata": {
            "name": meta["name"],
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        },
        "spec": dumped.get("spec") or {},
    }


def _kind(plural: str) -> type[Resource]:
    cls = kind_for_plural(plural)
    if cls is None:
        known = ", ".join(sorted(c.PLURAL for c in KINDS.values()))
        raise ApiError(
            404, "NotFound", f"unknown resource type '{plural}'; expected one of: {known}"
        )
    return cls


async def _json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, "RequestEntityTooLarge", f"request body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body, parse_constant=_no_constant)
        # lone surrogates ("\ud800") parse but can never be stored or returned as UTF-8
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(
            400, "BadRequest", "request body holds text that is not valid Unicode"
        ) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, 5000-digit integers
        raise ApiError(400, "BadRequest", f"request body is not valid JSON: {exc}") from exc
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(items: list[Any], source: str) -> list[Resource]:
    resources: list[Resource] = []
    errors: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for number, item in enumerate(items, start=1):
        resource, problems = validate_document(item, source, number)
        errors.extend(p.as_dict() for p in problems)
        if resource is not None:
            if resource.key() in seen:
                errors.append(
                    {
                        "source": source,
                        "document": number,
                        "field": "metadata.name",
                        "message": f"duplicate {resource.KIND} '{resource.metadata.name}'",
                    }
                )
            seen.add(resource.key())
            resources.append(resource)
    if errors:
        raise _invalid(errors)
    return resources


def _invalid(errors: list[dict[str, Any]]) -> ApiError:
    """422 listing every invalid field (the first five in the message)."""
    lines = "; ".join(f"document {e['document']}: {e['field']}: {e['message']}" for e in errors[:5])
    return ApiError(
        422,
        "Invalid",
        f"{len(errors)} invalid field(s), nothing applied: {lines}",
        {"causes": errors},
    )


def _user(request: Request) -> str:
    user = request.headers.get(USER_HEADER, "").strip()
    return user[:120] if user and user.isprintable() else "api"


def create_app(
    store: Store,
    *,
    token: str,
    on_change: Callable[[str, str], None],
    log_files: Callable[[str, str], list[Path]],
    info: Callable[[], dict[str, Any]],
    registry: BaseRegistry | None = None,
    nodes: Callable[[], list[NodeStatus]] | None = None,
    node_view: Callable[[], dict[str, Any]] | None = None,
    node_action: Callable[[str, str], Awaitable[str]] | None = None,
) -> Starlette:
    def check_placement(resources: list[Resource]) -> None:
        """Refuse at apply what could never run: requests larger than any node, a gang
        larger than the cluster, a queue that does not exist (nothing is stored)."""
        if nodes is None:
            return
        cluster = [
            NodeInfo(
                name=n.name,
                capacity=Resources(n.capacity.cpu, n.capacity.memory, n.capacity.gpu),
                gpu_ids=n.gpu_ids,
                schedulable=n.state == "Ready",
                state=n.state,
            )
            for n in nodes()
        ]
        quotas: dict[str, Any] = {
            q["metadata"]["name"]: QueueSpec.model_validate(q.get("spec") or {}).quota
            for q in store.list_objects(Queue.KIND)
            if not q["metadata"].get("deletionTimestamp")
        }
        quotas.update({r.metadata.name: r.spec.quota for r in resources if isinstance(r, Queue)})
        applied = sorted(quotas)
        queues = {"default", *quotas}
        errors: list[dict[str, Any]] = []
        for number, resource in enumerate(resources, start=1):
            try:
                stored = store.get(resource.KIND, resource.metadata.name)
            except NotFound:
                stored = None
            if stored is not None and stored.get("spec") == resource_doc(resource)["spec"]:
                continue  # unchanged: applying it again must not fail on today's nodes
            if isinstance(resource, TrainingJob):
                spec = resource.spec
                count, field = spec.workers, "spec.resources"
                if spec.queue not in queues:
                    errors.append(
                        {
                            "source": "request",
                            "document": number,
                            "field": "spec.queue",
                            "message": f"queue '{spec.queue}' does not exist (applied queues: "
                            f"{', '.join(applied) or 'none'}; 'default' needs no Queue object); "
                            "apply the Queue first or in the same batch",
                        }
                    )
                quota = quotas.get(spec.queue)
                r = spec.resources
                over = [
                    f"{dim} {shown(total)} in all but queue '{spec.queue}' allows {shown(limit)}"
                    for dim, total, limit, shown in (
                        ("cpu", r.cpu * count, quota.cpu if quota else None, format_cpu_millis),
                        ("memory", r.memory * count, quota.memory if quota else None, format_bytes),
                        ("gpu", r.gpu * count, quota.gpu if quota else None, str),
                    )
                    if limit is not None and total > limit
                ]
                if over:
                    errors.append(
                        {
                            "source": "request",
                            "document": number,
                            "field": "spec.workers" if count > 1 else "spec.resources",
                            "message": f"can never start: {count} worker(s) need "
                            + "; ".join(over),
                        }
                    )
            elif isinstance(resource, ModelDeployment):
                count, field = 1, "spec.resources"
            else:
                continue
            r = resource.spec.resources
            problem = check_fits(Resources(r.cpu, r.memory, r.gpu), count, cluster)
            if problem is not None:
                if count > 1 and "gang" in problem:
                    field = "spec.workers"
                errors.append(
                    {"source": "request", "document": number, "field": field, "message": problem}
                )
        if errors:
            raise _invalid(errors)

    def check_models(resources: list[Resource]) -> dict[int, str]:
        """A deployment that already serves must not be moved to a model that does not exist:
        reject the change at apply. A new deployment may wait for its model to be trained:
        accepted, with a warning (document number -> text)."""
        warnings: dict[int, str] = {}
        if registry is None:
            return warnings
        errors: list[dict[str, Any]] = []
        for number, resource in enumerate(resources, start=1):
            if not isinstance(resource, ModelDeployment):
                continue
            try:
                current: dict[str, Any] | None = store.get(resource.KIND, resource.metadata.name)
            except NotFound:
                current = None
            serving = current is not None and (current.get("status") or {}).get("revision")
            try:
                registry.resolve(resource.spec.model)
            except ModelNotFound as exc:
                if not serving:
                    warnings[number] = (
                        f"{exc.args[0] if exc.args else exc}; it starts once that version "
                        "is registered"
                    )
                    continue
                errors.append(
                    {
                        "source": "request",
                        "document": number,
                        "field": "spec.model",
                        "message": f"{exc.args[0] if exc.args else exc}; the running revision "
                        "is left as it is",
                    }
                )
        if errors:
            raise _invalid(errors)
        return warnings

    def apply(resources: list[Resource], user: str = "api") -> list[dict[str, Any]]:
        check_placement(resources)
        warnings = check_models(resources)
        outcomes = store.apply([resource_doc(r) for r in resources])
        for resource, outcome in zip(resources, outcomes, strict=True):
            if isinstance(resource, ModelDeployment) and outcome.value != "unchanged":
                store.set_requests(resource.KIND, resource.metadata.name, {"appliedBy": user})
        for resource in resources:
            on_change(resource.KIND, resource.metadata.name)
        return [
            {"kind": r.KIND, "name": r.metadata.name, "result": o.value}
            | ({"warning": warnings[n]} if n in warnings else {})
            for n, (r, o) in enumerate(zip(resources, outcomes, strict=True), start=1)
        ]

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def version(_: Request) -> Response:
        return JSONResponse({"version": __version__, "apiVersion": API_VERSION})

    async def openapi(_: Request) -> Response:
        return JSONResponse(openapi_document())

    async def status(_: Request) -> Response:
        return JSONResponse(info())

    async def prometheus(_: Request) -> Response:
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        from pilothouse.router.metrics import REGISTRY

        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def list_objects(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        items = store.list_objects(cls.KIND)
        return JSONResponse({"apiVersion": API_VERSION, "kind": f"{cls.KIND}List", "items": items})

    async def get_object(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        return JSONResponse(store.get(cls.KIND, name))

    async def put_object(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        body = await _json(request)
        if isinstance(body, dict):
            body.setdefault("kind", cls.KIND)
            body.setdefault("apiVersion", API_VERSION)
        [resource] = _validate([body], "request")
        if resource.KIND != cls.KIND or resource.metadata.name != name:
            raise ApiError(
                400,
                "BadRequest",
                f"body is {resource.KIND} '{resource.metadata.name}' but the path names "
                f"{cls.KIND} '{name}'",
            )
        [result] = apply([resource], _user(request))
        code = 201 if result["result"] == "created" else 200
        return JSONResponse(
            store.get(cls.KIND, name), code, headers={"X-Apply-Result": result["result"]}
        )

    async def apply_batch(request: Request) -> Response:
        body = await _json(request)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("items"), list)
            or not body["items"]
        ):
            raise ApiError(
                400, "BadRequest", 'expected {"items": [resource, ...]} with at least one item'
            )
        resources = _validate(body["items"], "request")
        return JSONResponse({"results": apply(resources, _user(request))})

    async def rollout_action(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        if cls is not ModelDeployment:
            raise ApiError(404, "NotFound", f"{cls.PLURAL} have no rollouts")
        body = await _json(request)
        if not isinstance(body, dict) or body.get("action") not in ROLLOUT_ACTIONS:
            raise ApiError(
                400,
                "BadRequest",
                f"action: expected one of {', '.join(ROLLOUT_ACTIONS)}, got "
                f"{body.get('action') if isinstance(body, dict) else body!r}",
            )
        action = str(body["action"])
        obj = store.get(cls.KIND, name)
        status = obj.get("status") or {}
        rollout = status.get("rollout") or {}
        canary = rollout.get("canaryRevision")
        nonce = str(time.time_ns())
        if action == "undo":
            return JSONResponse(undo(obj, body.get("toRevision"), _user(request)))
        if action in ("promote", "abort", "pause", "resume") and not canary:
            raise ApiError(
                409, "Conflict", f"modeldeployment '{name}' has no rollout in progress to {action}"
            )
        if action == "promote":
            full = body.get("full", False)
            if not isinstance(full, bool):
                raise ApiError(400, "BadRequest", f"full: expected true or false, got {full!r}")
            step = "full" if full else "next"
            # promoting also ends a pause (as `kubectl argo rollouts promote` does)
            store.set_requests(
                cls.KIND,
                name,
                {"promote": f"{canary}|{step}|{nonce}", "pause": "false", "resume": nonce},
            )
        elif action == "abort":
            store.set_requests(cls.KIND, name, {"abort": f"{canary}|{nonce}"})
        elif action == "pause":
            store.set_requests(cls.KIND, name, {"pause": str(canary)})
        elif action == "resume":
            store.set_requests(cls.KIND, name, {"pause": "false", "resume": nonce})
        elif action == "retry":
            aborted = rollout.get("abortedRevision")
            if not aborted:
                raise ApiError(
                    409,
                    "Conflict",
                    f"modeldeployment '{name}' has no aborted or rolled back rollout to retry",
                )
            store.set_requests(cls.KIND, name, {"retry": f"{aborted}|{nonce}"})
        on_change(cls.KIND, name)
        return JSONResponse(store.get(cls.KIND, name))

    def undo(obj: dict[str, Any], to_revision: Any, user: str) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        history = list((obj.get("status") or {}).get("history") or [])
        if to_revision is not None and (
            not isinstance(to_revision, int) or isinstance(to_revision, bool)
        ):
            raise ApiError(
                400, "BadRequest", f"toRevision: expected a revision number, got {to_revision!r}"
            )
        current = (obj.get("status") or {}).get("rollout", {}).get("desiredRevision")
        if to_revision is None:
            earlier = [
                h
                for h in history
                if h.get("revision") != current
                and h.get("outcome") not in ("RolledBack", "Aborted")
            ]
            if not earlier:
                raise ApiError(
                    409, "Conflict", f"modeldeployment '{name}' has no earlier revision to undo to"
                )
            target = earlier[-1]
        else:
            found = [h for h in history if h.get("number") == to_revision]
            if not found:
                known = ", ".join(str(h.get("number")) for h in history) or "none"
                raise ApiError(
                    409,
                    "Conflict",
                    f"toRevision: modeldeployment '{name}' has no revision {to_revision} "
                    f"(known: {known})",
                )
            target = found[0]
        if target.get("revision") == current:
            raise ApiError(
                409,
                "Conflict",
                f"revision {target.get('number')} ({target.get('model')}) is what "
                f"modeldeployment '{name}' already runs; nothing to undo",
            )
        spec = dict(obj["spec"])
        for key in TEMPLATE_FIELDS:
            spec.pop(key, None)
        spec.update(target.get("template") or {})
        document = {
            "apiVersion": API_VERSION,
            "kind": ModelDeployment.KIND,
            "metadata": {
                "name": name,
                "labels": obj["metadata"].get("labels") or {},
                "annotations": obj["metadata"].get("annotations") or {},
            },
            "spec": spec,
        }
        [resource] = _validate([document], "undo")
        apply([resource], f"{user} (undo to revision {target.get('number')})")
        store.record_event(
            ModelDeployment.KIND,
            name,
            "Normal",
            "RolloutUndone",
            f"{user} went back to revision {target.get('number')} ({target.get('model')})",
        )
        return store.get(ModelDeployment.KIND, name)

    async def delete_object(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        if cls is Queue:
            users = [
                j["metadata"]["name"]
                for j in store.list_objects(TrainingJob.KIND)
                if (j.get("spec") or {}).get("queue", "default") == name
                and (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not j["metadata"].get("deletionTimestamp")
            ]
            if users:
                raise ApiError(
                    409,
                    "Conflict",
                    f"queue '{name}' is in use by trainingjob(s) {', '.join(sorted(users))}; "
                    "delete them or wait until they finish",
                )
        obj = store.mark_deleted(cls.KIND, name)
        on_change(cls.KIND, name)
        return JSONResponse(obj, 202)

    async def events(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        store.get(cls.KIND, name)
        return JSONResponse({"items": [e.as_dict() for e in store.events(cls.KIND, name)]})

    async def logs(request: Request) -> Response:
        cls = _kind(request.path_params["plural"])
        name = request.path_params["name"]
        store.get(cls.KIND, name)
        follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
        tail_param = request.query_params.get("tail", "-1")
        try:
            tail_lines = int(tail_param)
        except ValueError as exc:
            raise ApiError(
                400, "BadRequest", f"tail: expected an integer, got {tail_param!r}"
            ) from exc
        return StreamingResponse(
            _stream_logs(store, cls.KIND, name, log_files, follow, tail_lines),
            media_type="text/plain; charset=utf-8",
        )

    async def list_nodes(_: Request) -> Response:
        return JSONResponse(node_view() if node_view is not None else {"items": [], "pending": []})

    def _node(name: str) -> dict[str, Any]:
        view = node_view() if node_view is not None else {"items": []}
        for node in view["items"]:
            if node["name"] == name:
                return dict(node)
        known = ", ".join(n["name"] for n in view["items"]) or "none"
        raise ApiError(404, "NotFound", f"node '{name}' not found; nodes: {known}")

    async def get_node(request: Request) -> Response:
        return JSONResponse(_node(request.path_params["name"]))

    async def act_on_node(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("cordon", "uncordon", "drain", "fail"):
            raise ApiError(
                404,
                "NotFound",
                f"unknown node action '{action}'; expected cordon, uncordon, drain or fail",
            )
        before = _node(name)
        if node_action is None:
            raise ApiError(409, "Conflict", "this control plane has no nodes to act on")
        try:
            message = await node_action(name, action)
        except KeyError as exc:
            raise ApiError(404, "NotFound", str(exc.args[0] if exc.args else exc)) from exc
        except ValueError as exc:
            raise ApiError(409, "Conflict", str(exc)) from exc
        evicted = before["items"] if action in ("drain", "fail") else []
        return JSONResponse({"node": _node(name), "message": message, "evicted": evicted})

    routes = [
        Route("/healthz", healthz),
        Route("/api/v1/nodes", list_nodes),
        Route("/api/v1/nodes/{name}", get_node),
        Route("/api/v1/nodes/{name}/{action}", act_on_node, methods=["POST"]),
        Route("/version", version),
        Route("/openapi.json", openapi),
        Route("/status", status),
        Route("/metrics", prometheus),
        Route(f"{PREFIX}/apply", apply_batch, methods=["POST"]),
        Route(f"{PREFIX}/{{plural}}", list_objects),
        Route(f"{PREFIX}/{{plural}}/{{name}}", get_object, methods=["GET"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}", put_object, methods=["PUT"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}", delete_object, methods=["DELETE"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}/events", events),
        Route(f"{PREFIX}/{{plural}}/{{name}}/log", logs),
        Route(f"{PREFIX}/{{plural}}/{{name}}/rollout", rollout_action, methods=["POST"]),
    ]
    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: handle_api_error,
        NotFound: handle_store_error,
        Conflict: handle_store_error,
        404: handle_not_found,
        405: handle_method,
    }
    return Starlette(
        routes=routes,
        middleware=[Middleware(TokenAuth, token=token)],
        exception_handlers=exception_handlers,
    )


async def _stream_logs(
    store: Store,
    kind: str,
    name: str,
    log_files: Callable[[str, str], list[Path]],
    follow: bool,
    tail_lines: int,
) -> AsyncIterator[bytes]:
    """Every log file of the object (prefixed when several), then new lines while following."""
    files = log_files(kind, name)
    prefix = len(files) > 1
    offsets: dict[Path, int] = {}
    for path in files:
        data = path.read_bytes()
        lines = data.splitlines(keepends=True)
        if tail_lines >= 0:
            lines = lines[-tail_lines:] if tail_lines else []
        for line in lines:
            yield (f"[{path.stem}] ".encode() if prefix else b"") + line
        offsets[path] = len(data)
    if not follow:
        return
    deadline = time.monotonic() + 24 * 3600
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        try:
            store.get(kind, name)
        except NotFound:
            return
        for path in log_files(kind, name):
            size = path.stat().st_size
            start = offsets.get(path, 0)
            if size <= start:
                continue
            with path.open("rb") as handle:
                handle.seek(start)
                chunk = handle.read(size - start)
            offsets[path] = size
            for line in chunk.splitlines(keepends=True):
                yield (f"[{path.stem}] ".encode() if len(offsets) > 1 else b"") + line


def daemon_info(
    started: float, url: str, store: Store, processes: Callable[[], int]
) -> dict[str, Any]:
    return {
        "version": __version__,
        "pid": os.getpid(),
        "url": url,
        "uptimeSeconds": round(time.time() - started, 1),
        "resources": {cls.PLURAL: len(store.list_objects(cls.KIND)) for cls in KINDS.values()},
        "processes": processes(),
    }
