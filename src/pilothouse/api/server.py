"""The control API: Kubernetes-shaped resource paths over the embedded store.

``/apis/pilothouse.dev/v1alpha1/{plural}[/{name}]`` lists, reads, applies
(PUT) and deletes; ``POST /apis/pilothouse.dev/v1alpha1/apply`` applies a
batch atomically (what ``pilothouse apply -f`` uses). Every request but
``/healthz`` needs the bearer token. Bad requests get a 4xx ``Status`` body
naming what was wrong; nothing is half-applied.

This module is the composition root: ``create_app`` wires the route table, the
middleware and the error handlers. The endpoints live by concern:

- ``api.auth``: the bearer token, the user a request names
- ``api.paths``: names in request paths, checked before routing
- ``api.limits``: request body size and JSON shape
- ``api.objects``: list, get, apply, delete and events of resources
- ``api.apply``: validation and apply-time checks (placement, quotas, models)
- ``api.rollouts``: promote, abort, pause, resume, retry and undo of a rollout
- ``api.logs`` and ``api.logtail``: the log endpoint, and reading rotated log files
- ``api.pods``: the processes of one object
- ``api.nodes``: nodes and node actions
- ``api.info``: health, version, OpenAPI, status, metrics
- ``api.errors``: domain errors as ``Status`` bodies
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pilothouse.api.apply import Applier, resource_doc
from pilothouse.api.auth import USER_HEADER, TokenAuth
from pilothouse.api.errors import (
    ApiError,
    handle_api_error,
    handle_method,
    handle_not_found,
    handle_store_error,
)
from pilothouse.api.info import daemon_info, healthz, openapi, prometheus, status_endpoint, version
from pilothouse.api.limits import (
    MAX_BODY,
    MAX_JSON_DEPTH,
    MAX_JSON_NUMBER,
    json_problem,
    parse_json_object,
)
from pilothouse.api.logs import LogEndpoints
from pilothouse.api.logtail import (
    MAX_RESUME_BYTES,
    MAX_TAIL_BYTES,
    SIGNATURE_BYTES,
    TAIL_BLOCK,
    LogCursor,
    backup_of,
    read_log,
    read_new,
    tail_lines,
)
from pilothouse.api.nodes import NodeEndpoints
from pilothouse.api.objects import ObjectEndpoints
from pilothouse.api.paths import NODES, PREFIX, ValidPathNames, path_problem
from pilothouse.api.pods import PodEndpoints
from pilothouse.api.rollouts import ROLLOUT_ACTIONS, RolloutEndpoints
from pilothouse.registry.local import BaseRegistry
from pilothouse.runtime.local.pods import NodeStatus
from pilothouse.store.sqlite import Conflict, NotFound, Store

#: ``create_app`` and ``daemon_info`` are this module's own; the rest lived here before the
#: API was split by concern and stay importable from here (new code imports them from
#: their own modules)
__all__ = [
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "MAX_JSON_NUMBER",
    "MAX_RESUME_BYTES",
    "MAX_TAIL_BYTES",
    "PREFIX",
    "ROLLOUT_ACTIONS",
    "SIGNATURE_BYTES",
    "TAIL_BLOCK",
    "USER_HEADER",
    "LogCursor",
    "TokenAuth",
    "ValidPathNames",
    "backup_of",
    "create_app",
    "daemon_info",
    "json_problem",
    "parse_json_object",
    "path_problem",
    "read_log",
    "read_new",
    "resource_doc",
    "tail_lines",
]


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
    pods: Callable[[str, str], list[dict[str, Any]]] | None = None,
) -> Starlette:
    """The control API over ``store``.

    ``on_change(kind, name)`` wakes the controller of an object that changed;
    ``log_files`` names an object's log files; ``info`` is the body of ``/status``.
    Without ``registry`` the models of deployments are not checked at apply, without
    ``nodes`` nor is placement; without ``node_view``/``node_action`` there are no
    nodes to show or act on.
    """
    applier = Applier(store, on_change, registry=registry, nodes=nodes)
    objects = ObjectEndpoints(store, applier, on_change)
    rollouts = RolloutEndpoints(store, applier, on_change)
    logs = LogEndpoints(store, log_files)
    node_endpoints = NodeEndpoints(node_view, node_action)
    pod_endpoints = PodEndpoints(store, pods)
    # the order matters where paths overlap: POST {PREFIX}/apply before {PREFIX}/{plural}
    routes = [
        Route("/healthz", healthz),
        Route(NODES, node_endpoints.list_nodes),
        Route(f"{NODES}/{{name}}", node_endpoints.get_node),
        Route(f"{NODES}/{{name}}/{{action}}", node_endpoints.act_on_node, methods=["POST"]),
        Route("/version", version),
        Route("/openapi.json", openapi),
        Route("/status", status_endpoint(info)),
        Route("/metrics", prometheus),
        Route(f"{PREFIX}/apply", objects.apply_batch, methods=["POST"]),
        Route(f"{PREFIX}/{{plural}}", objects.list_objects),
        Route(f"{PREFIX}/{{plural}}/{{name}}", objects.get_object, methods=["GET"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}", objects.put_object, methods=["PUT"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}", objects.delete_object, methods=["DELETE"]),
        Route(f"{PREFIX}/{{plural}}/{{name}}/events", objects.events),
        Route(f"{PREFIX}/{{plural}}/{{name}}/log", logs.logs),
        Route(f"{PREFIX}/{{plural}}/{{name}}/pods", pod_endpoints.list_pods),
        Route(f"{PREFIX}/{{plural}}/{{name}}/rollout", rollouts.rollout_action, methods=["POST"]),
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
