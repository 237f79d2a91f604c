"""The node endpoints: ``GET /api/v1/nodes[/{name}]`` and
``POST /api/v1/nodes/{name}/{cordon|uncordon|drain|fail}``.

The API holds no node state: the daemon passes ``node_view`` (what the nodes are and
what runs on them) and ``node_action`` (which acts and says what it did). A control
plane without nodes answers with an empty list and 409 to actions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse.api.errors import ApiError
from pilothouse.api.limits import parse_json_object, read_body

NODE_ACTIONS = ("cordon", "uncordon", "drain", "fail")
_NO_OPTIONS = "an empty body or {} (node actions take no options)"


@dataclass(frozen=True)
class NodeEndpoints:
    #: ``{"items": [{"name": ..., "items": [what runs there]}, ...], "pending": [...]}``
    node_view: Callable[[], dict[str, Any]] | None = None
    #: (node name, action) -> message; KeyError for an unknown node, ValueError to refuse
    node_action: Callable[[str, str], Awaitable[str]] | None = None

    async def list_nodes(self, _: Request) -> Response:
        view = self.node_view() if self.node_view is not None else {"items": [], "pending": []}
        return JSONResponse(view)

    async def get_node(self, request: Request) -> Response:
        return JSONResponse(self._node(request.path_params["name"]))

    async def act_on_node(self, request: Request) -> Response:
        """Cordon, uncordon, drain or fail a node; drain and fail answer with what ran
        there (``evicted``)."""
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in NODE_ACTIONS:
            raise ApiError(
                404,
                "NotFound",
                f"unknown node action '{action}'; expected cordon, uncordon, drain or fail",
            )
        await _check_no_options(request)
        before = self._node(name)
        message = await self._act(name, action)
        evicted = before["items"] if action in ("drain", "fail") else []
        return JSONResponse({"node": self._node(name), "message": message, "evicted": evicted})

    def _node(self, name: str) -> dict[str, Any]:
        view = self.node_view() if self.node_view is not None else {"items": []}
        for node in view["items"]:
            if node["name"] == name:
                return dict(node)
        known = ", ".join(n["name"] for n in view["items"]) or "none"
        raise ApiError(404, "NotFound", f"node '{name}' not found; nodes: {known}")

    async def _act(self, name: str, action: str) -> str:
        if self.node_action is None:
            raise ApiError(409, "Conflict", "this control plane has no nodes to act on")
        try:
            return await self.node_action(name, action)
        except KeyError as exc:
            raise ApiError(404, "NotFound", str(exc.args[0] if exc.args else exc)) from exc
        except ValueError as exc:
            raise ApiError(409, "Conflict", str(exc)) from exc


async def _check_no_options(request: Request) -> None:
    """Node actions take no options: the body must be empty or ``{}``."""
    body = await read_body(request)
    if not body.strip():
        return
    options = parse_json_object(body, _NO_OPTIONS)
    if options:
        raise ApiError(
            400,
            "BadRequest",
            f"unknown field(s) {', '.join(sorted(options))}; expected {_NO_OPTIONS}",
        )
