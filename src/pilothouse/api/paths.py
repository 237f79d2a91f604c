"""Names in request paths, checked before routing.

Objects live at ``PREFIX/{plural}/{name}`` and nodes at ``/api/v1/nodes/{name}``. A name
in a path must be a valid object or node name, and no segment may decode to '/', '.',
'..' or control characters: checked on the raw (still percent-encoded) path, because an
encoded '/' in a name could otherwise move the request onto another object's path.
``ValidPathNames`` refuses such a request with 400 before any handler sees it.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pilothouse.api.errors import status_body
from pilothouse.spec.resources import API_VERSION
from pilothouse.spec.types import name_problem

#: where resources live: ``PREFIX/{plural}[/{name}[/events|/log|/rollout]]``, ``PREFIX/apply``
PREFIX = f"/apis/{API_VERSION}"
#: where nodes live: ``/api/v1/nodes[/{name}[/{action}]]``
NODES = "/api/v1/nodes"


def path_problem(raw_path: str) -> str | None:
    """Why a request path cannot be served (a segment that decodes to '/', '.' or '..',
    or an object or node name that is not a valid name), or None.

    Checked on the raw (still percent-encoded) path, before routing: an encoded '/' in
    a name could otherwise move the request onto another object's path.
    """
    segments = raw_path.split("?", 1)[0].split("/")
    problem = _name_problem(segments)
    if problem is not None:
        return problem
    for segment in segments:
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def _name_problem(segments: list[str]) -> str | None:
    """What is wrong with the object or node name the path holds, if it holds one."""
    prefix = PREFIX.split("/")
    if segments[: len(prefix)] == prefix:
        rest = segments[len(prefix) :]
        if len(rest) >= 2 and rest[0] != "apply" and (rest[1] or len(rest) > 2):
            return _name_segment_problem(rest[1], "metadata.name")
    elif segments[:4] == NODES.split("/") and (
        len(segments) > 5 or (len(segments) == 5 and segments[4])
    ):
        return _name_segment_problem(segments[4], "node name")
    return None


def _name_segment_problem(raw: str, what: str) -> str | None:
    problem = name_problem(unquote(raw))
    return f"{what}: {problem}" if problem else None


def _segment_problem(segment: str) -> str | None:
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
