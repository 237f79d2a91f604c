"""Domain errors -> HTTP statuses, in one place, as Kubernetes ``Status`` objects."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from pilothouse.store.sqlite import NotFound


class ApiError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        self.code, self.reason, self.message, self.details = code, reason, message, details
        super().__init__(message)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return body


async def handle_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(status_body(exc.code, exc.reason, exc.message, exc.details), exc.code)


async def handle_not_found(request: Request, _: Exception) -> JSONResponse:
    return JSONResponse(status_body(404, "NotFound", f"no route for {request.url.path}"), 404)


async def handle_method(request: Request, _: Exception) -> JSONResponse:
    message = f"method {request.method} not allowed on {request.url.path}"
    return JSONResponse(status_body(405, "MethodNotAllowed", message), 405)


async def handle_store_error(_: Request, exc: Exception) -> JSONResponse:
    """Store errors: a missing object is 404, a write against its state is 409."""
    if isinstance(exc, NotFound):
        message = str(exc.args[0]) if exc.args else "not found"
        return JSONResponse(status_body(404, "NotFound", message), 404)
    return JSONResponse(status_body(409, "Conflict", str(exc)), 409)
