"""What the control plane says about itself: ``/healthz``, ``/version``,
``/openapi.json``, ``/status`` (``daemon_info`` builds it) and ``/metrics``
(Prometheus text of the router's metrics).

Only ``/healthz`` is served without the token (see ``api.auth``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse import __version__
from pilothouse.api.openapi import openapi_document
from pilothouse.spec.resources import API_VERSION, KINDS
from pilothouse.store.sqlite import Store


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def version(_: Request) -> Response:
    return JSONResponse({"version": __version__, "apiVersion": API_VERSION})


async def openapi(_: Request) -> Response:
    return JSONResponse(openapi_document())


def status_endpoint(info: Callable[[], dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
    """``/status``: whatever ``info`` returns (the daemon passes ``daemon_info``)."""

    async def status(_: Request) -> Response:
        return JSONResponse(info())

    return status


async def prometheus(_: Request) -> Response:
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    from pilothouse.router.metrics import REGISTRY

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def daemon_info(
    started: float, url: str, store: Store, processes: Callable[[], int]
) -> dict[str, Any]:
    """The body of ``/status``: version, pid, URL, uptime, objects of each kind, and how
    many processes the daemon supervises."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "url": url,
        "uptimeSeconds": round(time.time() - started, 1),
        "resources": {cls.PLURAL: len(store.list_objects(cls.KIND)) for cls in KINDS.values()},
        "processes": processes(),
    }
