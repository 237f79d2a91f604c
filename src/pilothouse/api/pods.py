"""The process view of one object: ``GET .../{plural}/{name}/pods``.

What runs of a deployment or a job on this machine, one entry per replica or worker
(node, phase, pid, endpoint, exit code): what ``kubectl get pods -o wide`` shows on a
cluster. It is the embedded backend's view, for people and tests on this machine; the
object's status (written by its controller) stays free of processes, ports and paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse.api.objects import kind_for
from pilothouse.store.sqlite import Store


@dataclass(frozen=True)
class PodEndpoints:
    store: Store
    #: (kind, name) -> the object's processes
    pods: Callable[[str, str], list[dict[str, Any]]] | None = None

    async def list_pods(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        self.store.get(cls.KIND, name)  # 404 for an unknown object
        items = self.pods(cls.KIND, name) if self.pods is not None else []
        return JSONResponse({"kind": cls.KIND, "name": name, "items": items})
