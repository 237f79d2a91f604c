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
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

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
from pilothouse.spec.types import name_problem
from pilothouse.store.sqlite import Conflict, NotFound, Store

PREFIX = f"/apis/{API_VERSION}"
MAX_BODY = 4 * 2**20
#: request bodies nested deeper than this are refused (validation and storage recurse)
MAX_JSON_DEPTH = 100
#: integers must fit in 64 bits (SQLite, Kubernetes and most clients stop there); the
#: stdlib parser is used with this check because orjson turns larger ones into floats
MAX_JSON_NUMBER = 2**63
#: blocks read backwards from the end of a log file for ``?tail=N``
TAIL_BLOCK = 64 * 1024
#: at most this much of one file is read back for a tail (a file without newlines)
MAX_TAIL_BYTES = 16 * 2**20
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


async def _body(request: Request) -> bytes:
    """The request body, refused once it exceeds ``MAX_BODY`` (never held beyond that)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "RequestEntityTooLarge", f"request body larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(
                413, "RequestEntityTooLarge", f"request body larger than {MAX_BODY} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _NumberTooLarge(ValueError):
    pass


def _checked_int(text: str) -> int:
    """JSON integers must fit in 64 bits: refused while parsing, before any big-number
    arithmetic (a 4 MiB integer would otherwise be converted, or silently become a float
    with orjson)."""
    digits = text.removeprefix("-")
    if len(digits) > 19 or not -MAX_JSON_NUMBER <= (value := int(text)) < MAX_JSON_NUMBER:
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(digits)} digits)"
        raise _NumberTooLarge(
            f"integer {shown} is too large; expected an integer between -2^63 and 2^63-1"
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; expected a finite number")


def parse_json_object(body: bytes, expected: str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; ``ApiError`` 400 naming what was
    expected for anything else: not UTF-8, not JSON, NaN or Infinity, an integer beyond
    64 bits, nested deeper than ``MAX_JSON_DEPTH``, text that is not valid Unicode (lone
    surrogates), another top-level type."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            "BadRequest",
            f"request body is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset "
            f"{exc.start}); expected {expected} as JSON",
        ) from exc
    try:
        data = json.loads(text, parse_int=_checked_int, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ApiError(
            400,
            "BadRequest",
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels; expected {expected}",
        ) from exc
    except _NumberTooLarge as exc:
        raise ApiError(400, "BadRequest", f"request body: {exc}; expected {expected}") from exc
    except ValueError as exc:  # JSONDecodeError, NaN, integers beyond the digit limit
        raise ApiError(
            400, "BadRequest", f"request body is not valid JSON: {exc}; expected {expected}"
        ) from exc
    unusable = json_problem(data)
    if unusable is not None:
        raise ApiError(400, "BadRequest", f"request body: {unusable}; expected {expected}")
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "BadRequest",
            f"request body is a JSON {_json_type(data)}; expected {expected} (a JSON object)",
        )
    return data


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def _not_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_problem(data: Any) -> str | None:
    """What makes parsed JSON unusable here, or None: nesting deeper than
    ``MAX_JSON_DEPTH``, an integer beyond 64 bits, text with lone surrogates (``"\\ud800"``
    parses, but can never be stored or sent back as UTF-8).

    Iterative, so a document near the parser's own depth limit cannot exhaust the stack.
    """
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        where = path or "the top level"
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return (
                    f"nested deeper than {MAX_JSON_DEPTH} levels (at {where}); expected at "
                    f"most {MAX_JSON_DEPTH} levels of objects and arrays"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _not_unicode(key):
                    return f"{where}: a key holds text that is not valid Unicode"
                child = (
                    f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
                )
                stack.append((item, depth + 1, child))
        elif isinstance(value, str):
            if _not_unicode(value):
                return f"{where}: text that is not valid Unicode (a lone surrogate)"
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not -MAX_JSON_NUMBER <= value < MAX_JSON_NUMBER
        ):
            return f"{where}: integer {value} is too large; expected 64-bit integers"
    return None


async def _json(request: Request, expected: str) -> dict[str, Any]:
    return parse_json_object(await _body(request), expected)


def _name_segment_problem(raw: str, what: str) -> str | None:
    problem = name_problem(unquote(raw))
    return f"{what}: {problem}" if problem else None


def path_problem(raw_path: str) -> str | None:
    """Why a request path cannot be served (a segment that decodes to '/', '.' or '..',
    or an object or node name that is not a valid name), or None.

    Checked on the raw (still percent-encoded) path, before routing: an encoded '/' in
    a name could otherwise move the request onto another object's path.
    """
    segments = raw_path.split("?", 1)[0].split("/")
    prefix = PREFIX.split("/")
    problem: str | None = None
    if segments[: len(prefix)] == prefix:
        rest = segments[len(prefix) :]
        if len(rest) >= 2 and rest[0] != "apply" and (rest[1] or len(rest) > 2):
            problem = _name_segment_problem(rest[1], "metadata.name")
    elif segments[:4] == ["", "api", "v1", "nodes"] and (
        len(segments) > 5 or (len(segments) == 5 and segments[4])
    ):
        problem = _name_segment_problem(segments[4], "node name")
    if problem is not None:
        return problem
    for segment in segments:
        decoded = unquote(segment)
        if decoded != segment and ("/" in decoded or decoded in (".", "..")):
            return f"path segment {decoded!r} holds '/' or is a dot segment; expected a name"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            return f"path segment {decoded!r} holds control characters; expected a name"
    return None


class ValidPathNames:
    """Refuse, with 400, a request whose path names an object or node by an invalid name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope["path"])
            problem = path_problem(path)
            if problem is not None:
                response = JSONResponse(status_body(400, "BadRequest", problem), 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        body = await _json(request, f"a {cls.KIND} object (apiVersion, kind, metadata, spec)")
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
        body = await _json(request, '{"items": [resource, ...]}')
        if not isinstance(body.get("items"), list) or not body["items"]:
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
        body = await _json(request, '{"action": "' + "|".join(ROLLOUT_ACTIONS) + '", ...}')
        if body.get("action") not in ROLLOUT_ACTIONS:
            raise ApiError(
                400,
                "BadRequest",
                f"action: expected one of {', '.join(ROLLOUT_ACTIONS)}, got {body.get('action')!r}",
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
        body = await _body(request)
        if body.strip():
            options = parse_json_object(body, "an empty body or {} (node actions take no options)")
            if options:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"unknown field(s) {', '.join(sorted(options))}; expected an empty body "
                    "or {} (node actions take no options)",
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
        # the token first (401 before anything else), then names in the path (400)
        middleware=[Middleware(TokenAuth, token=token), Middleware(ValidPathNames)],
        exception_handlers=exception_handlers,
    )


def backup_of(path: Path) -> Path:
    """The rotated copy of a log (``X.log`` -> ``X.log.1``, one backup).

    The runtime rotates in place: ``X.log`` keeps its inode and loses its older part,
    ``X.log.1`` is replaced atomically by that older part, and ``X.log`` may begin in
    the middle of the line ``X.log.1`` ends with (read as one stream, they are whole).
    """
    return path.with_name(path.name + ".1")


#: what a log cursor remembers of the bytes sent last, to find its place after a rotation
SIGNATURE_BYTES = 4096
#: how much of a rotated copy is searched for that place (the end of it)
MAX_RESUME_BYTES = 64 * 2**20


def _lines(data: bytes) -> list[bytes]:
    """Split on b"\\n" only (a carriage return is part of a line), keeping the ends."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _tail(handle: IO[bytes], end: int, count: int) -> tuple[list[bytes], bool]:
    """The last ``count`` lines of ``handle[:end]``, read backwards in blocks from ``end``
    (never more of the file than those lines and one block, at most ``MAX_TAIL_BYTES``);
    and whether they are all the file holds (the first one starts at its first byte)."""
    if count <= 0 or end <= 0:
        return [], end <= 0
    position = end
    blocks: list[bytes] = []
    newlines = 0
    while position > 0 and end - position < MAX_TAIL_BYTES:
        step = min(TAIL_BLOCK, position)
        position -= step
        handle.seek(position)
        block = handle.read(step)
        blocks.append(block)
        newlines += block.count(b"\n")
        if newlines > count:  # count + 1 newlines: the last `count` lines are complete
            break
    lines = _lines(b"".join(reversed(blocks)))
    if position > 0:
        lines = lines[1:]  # the first piece may start mid-line
    return lines[-count:], position == 0 and len(lines) <= count


def tail_lines(handle: IO[bytes], end: int, count: int) -> list[bytes]:
    """The last ``count`` lines of ``handle[:end]`` (see ``_tail``)."""
    return _tail(handle, end, count)[0]


def _chunks(handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    handle.seek(start)
    left = end - start
    while left > 0:
        block = handle.read(min(TAIL_BLOCK, left))
        if not block:
            return
        left -= len(block)
        yield block


def _prefixed(chunks: Iterator[bytes], prefix: bytes) -> Iterator[bytes]:
    """Whole lines, each with ``prefix`` (an unfinished last line is sent as it is)."""
    if not prefix:
        yield from chunks
        return
    pending = b""
    for chunk in chunks:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield b"".join(prefix + line for line in _lines(pending[:cut]))
            pending = pending[cut:]
    if pending:
        yield prefix + pending


def _open(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def _identity(handle: IO[bytes] | None) -> tuple[int, int, int] | None:
    if handle is None:
        return None
    info = os.fstat(handle.fileno())
    return info.st_ino, info.st_size, info.st_mtime_ns


@dataclass
class LogCursor:
    """Where following a log goes on from: the offset in ``X.log``, which ``X.log.1`` was
    there, and the last bytes sent (to find the place again after a rotation)."""

    offset: int = 0
    backup: tuple[int, int, int] | None = None
    sent: bytes = b""
    block: int = 4096

    def advance(self, data: bytes) -> None:
        self.sent = (self.sent + data)[-SIGNATURE_BYTES:]


def _ending(handle: IO[bytes], end: int, size: int) -> bytes:
    start = max(0, end - size)
    handle.seek(start)
    return handle.read(end - start)


def read_log(
    path: Path, tail: int, prefix: bytes = b""
) -> tuple[list[bytes], Iterator[bytes], LogCursor]:
    """What a log request sends first for one log file and its rotated copy.

    Returns the lines of a tail (``tail >= 0``) or, without tail, a stream of the backup
    then the file (as one stream: a line cut by the rotation is whole again); and the
    cursor following continues from.
    """
    current = _open(path)
    backup = _open(backup_of(path))
    cursor = LogCursor(backup=_identity(backup))
    if current is None:
        if backup is not None:
            backup.close()
        return [], iter(()), cursor
    info = os.fstat(current.fileno())
    end = cursor.offset = info.st_size
    cursor.block = info.st_blksize or 4096
    cursor.advance(_ending(current, end, SIGNATURE_BYTES))
    if backup is not None and len(cursor.sent) < SIGNATURE_BYTES:
        before = _ending(backup, os.fstat(backup.fileno()).st_size, SIGNATURE_BYTES)
        cursor.sent = (before + cursor.sent)[-SIGNATURE_BYTES:]
    if tail >= 0:
        with current:
            lines, whole = _tail(current, end, tail)
        if backup is not None:
            with backup:
                if whole and tail > 0:
                    # one more than missing: its last line may go on at the start of X.log
                    size = os.fstat(backup.fileno()).st_size
                    earlier = tail_lines(backup, size, tail - len(lines) + 1)
                    if earlier and lines and not earlier[-1].endswith(b"\n"):
                        lines = [*earlier[:-1], earlier[-1] + lines[0], *lines[1:]]
                    else:
                        lines = earlier + lines
                    lines = lines[-tail:]
        return [prefix + line for line in lines], iter(()), cursor

    def everything() -> Iterator[bytes]:
        with current:
            if backup is None:
                yield from _prefixed(_chunks(current, 0, end), prefix)
                return
            with backup:
                size = os.fstat(backup.fileno()).st_size
                both = itertools.chain(_chunks(backup, 0, size), _chunks(current, 0, end))
                yield from _prefixed(both, prefix)

    return [], everything(), cursor


def _resume(
    current: IO[bytes], size: int, backup: IO[bytes] | None, cursor: LogCursor
) -> tuple[bytes, int]:
    """After a rotation: what of ``X.log.1`` is still unsent, and where in ``X.log`` to go
    on, found from the last bytes sent (the runtime cuts whole blocks off the front of
    ``X.log``; a copy-then-truncate or a rename-style rotation is found the same way)."""
    sent = cursor.sent
    old = b""
    if backup is not None:  # at most the rotation limit (one rotation's worth of log)
        old = _ending(backup, os.fstat(backup.fileno()).st_size, MAX_RESUME_BYTES)
    if not sent:
        return old, 0  # nothing was sent yet: all of it
    if old.endswith(sent):
        return b"", 0  # everything up to the cut was sent: X.log from its start
    # X.log lost a multiple of the block size from its front; what of it we had sent
    # is a prefix of it that ends the signature
    k = cursor.offset % cursor.block
    head = _ending(current, min(size, len(sent)), len(sent))
    while 0 < k <= min(size, len(sent)):
        if head[:k] == sent[-k:]:
            return b"", k
        k += cursor.block
    # the rotated copy holds what was sent last, and more after it
    signature = sent[-min(len(sent), 512) :]
    found = old.rfind(signature) if old else -1
    if found >= 0:
        return old[found + len(signature) :], 0
    # or it begins inside what was sent (a small file renamed or copied whole)
    if backup is not None and os.fstat(backup.fileno()).st_size <= len(old):
        for overlap in range(min(len(old), len(sent)), 0, -1):
            if old[:overlap] == sent[-overlap:]:
                return old[overlap:], 0
    # nothing sent is in it: more than one rotation since (what came between is lost);
    # all of it is new, and it starts with a whole line
    return old, 0


def read_new(path: Path, cursor: LogCursor) -> bytes:
    """What was written to a followed log since ``cursor`` (which moves on), across
    rotations: the unsent end of ``X.log.1`` first, then ``X.log`` from where it goes on."""
    current = _open(path)
    if current is None:
        return b""
    backup = _open(backup_of(path))
    try:
        identity = _identity(backup)
        size = os.fstat(current.fileno()).st_size
        out = b""
        start = cursor.offset
        if identity != cursor.backup or size < cursor.offset:
            out, start = _resume(current, size, backup, cursor)
        cursor.backup = identity
        if size > start:
            out += b"".join(_chunks(current, start, size))
        cursor.offset = max(size, start)
        cursor.advance(out)
        return out
    finally:
        current.close()
        if backup is not None:
            backup.close()


async def _stream_logs(
    store: Store,
    kind: str,
    name: str,
    log_files: Callable[[str, str], list[Path]],
    follow: bool,
    tail_lines: int,
) -> AsyncIterator[bytes]:
    """Every log file of the object (prefixed when several), then new lines while following.

    With ``tail_lines`` >= 0 only the end of each file is read (backwards, in blocks),
    taking what the current file lacks from its rotated copy ``X.log.1``; without it the
    rotated copy is sent, then the current file, block by block.
    """
    files = log_files(kind, name)
    prefix = len(files) > 1
    cursors: dict[Path, LogCursor] = {}
    for path in files:
        lines, stream, cursors[path] = read_log(
            path, tail_lines, f"[{path.stem}] ".encode() if prefix else b""
        )
        if lines:
            yield b"".join(lines)
        for chunk in stream:
            yield chunk
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
            cursor = cursors.setdefault(path, LogCursor(backup=_identity(None)))
            new = read_new(path, cursor)
            if new:
                several = len(cursors) > 1
                mark = f"[{path.stem}] ".encode() if several else b""
                yield b"".join(mark + line for line in _lines(new))


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
