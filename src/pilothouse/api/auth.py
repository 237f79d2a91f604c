"""Who may call the control API, and who they say they are.

Every request but ``/healthz`` needs the bearer token from ``$PILOTHOUSE_HOME/token``;
``TokenAuth`` checks it before anything else runs. ``request_user`` reads the name a
client gives for itself (recorded with what it applies), which is informational only:
the token is the authority.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse.api.errors import status_body

#: the header a client names its user in (``api.client.Client`` sends one)
USER_HEADER = "x-pilothouse-user"


class TokenAuth(BaseHTTPMiddleware):
    """401, with ``WWW-Authenticate: Bearer``, for a missing or wrong bearer token."""

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


def request_user(request: Request) -> str:
    """The user a request names in ``USER_HEADER`` (printable, at most 120 characters),
    else ``api``."""
    user = request.headers.get(USER_HEADER, "").strip()
    return user[:120] if user and user.isprintable() else "api"
