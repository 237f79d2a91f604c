"""The resource endpoints: list, get, apply (``PUT`` one, ``POST .../apply`` a batch),
delete, and the events of one object.

Resources are addressed Kubernetes-style by their plural (``queues``, ``trainingjobs``,
``modeldeployments``...); ``kind_for`` turns the plural into the resource class and is
shared with the rollout and log endpoints. What happens to an applied object is
``api.apply``'s; this module only maps HTTP onto it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse.api.apply import Applier, validate_documents
from pilothouse.api.auth import request_user
from pilothouse.api.errors import ApiError
from pilothouse.api.limits import read_json
from pilothouse.spec.resources import (
    API_VERSION,
    KINDS,
    Queue,
    Resource,
    TrainingJob,
    kind_for_plural,
)
from pilothouse.store.sqlite import Store


def kind_for(plural: str) -> type[Resource]:
    """The resource class of a path's ``{plural}``; 404 naming the known ones."""
    cls = kind_for_plural(plural)
    if cls is None:
        known = ", ".join(sorted(c.PLURAL for c in KINDS.values()))
        raise ApiError(
            404, "NotFound", f"unknown resource type '{plural}'; expected one of: {known}"
        )
    return cls


@dataclass(frozen=True)
class ObjectEndpoints:
    store: Store
    applier: Applier
    on_change: Callable[[str, str], None]

    async def list_objects(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        items = self.store.list_objects(cls.KIND)
        return JSONResponse({"apiVersion": API_VERSION, "kind": f"{cls.KIND}List", "items": items})

    async def get_object(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        return JSONResponse(self.store.get(cls.KIND, name))

    async def put_object(self, request: Request) -> Response:
        """Apply one object at its own path: 201 when created, else 200; the result
        (created, configured, unchanged) in ``X-Apply-Result``."""
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        body = await read_json(request, f"a {cls.KIND} object (apiVersion, kind, metadata, spec)")
        body.setdefault("kind", cls.KIND)
        body.setdefault("apiVersion", API_VERSION)
        [resource] = validate_documents([body], "request")
        if resource.KIND != cls.KIND or resource.metadata.name != name:
            raise ApiError(
                400,
                "BadRequest",
                f"body is {resource.KIND} '{resource.metadata.name}' but the path names "
                f"{cls.KIND} '{name}'",
            )
        [result] = self.applier.apply([resource], request_user(request))
        code = 201 if result["result"] == "created" else 200
        return JSONResponse(
            self.store.get(cls.KIND, name), code, headers={"X-Apply-Result": result["result"]}
        )

    async def apply_batch(self, request: Request) -> Response:
        """Apply ``{"items": [...]}`` atomically (what ``pilothouse apply -f`` sends)."""
        body = await read_json(request, '{"items": [resource, ...]}')
        if not isinstance(body.get("items"), list) or not body["items"]:
            raise ApiError(
                400, "BadRequest", 'expected {"items": [resource, ...]} with at least one item'
            )
        resources = validate_documents(body["items"], "request")
        return JSONResponse({"results": self.applier.apply(resources, request_user(request))})

    async def delete_object(self, request: Request) -> Response:
        """Mark an object deleted (202; its controller finishes the deletion). A queue
        still used by unfinished training jobs is refused with 409."""
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        if cls is Queue:
            self._check_queue_unused(name)
        obj = self.store.mark_deleted(cls.KIND, name)
        self.on_change(cls.KIND, name)
        return JSONResponse(obj, 202)

    def _check_queue_unused(self, name: str) -> None:
        users = [
            j["metadata"]["name"]
            for j in self.store.list_objects(TrainingJob.KIND)
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

    async def events(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        self.store.get(cls.KIND, name)
        return JSONResponse({"items": [e.as_dict() for e in self.store.events(cls.KIND, name)]})
