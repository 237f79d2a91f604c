"""Rollout requests on a model deployment: ``POST .../modeldeployments/{name}/rollout``
with ``{"action": "promote|abort|pause|resume|retry|undo", ...}``.

Except for undo, the API does not move a rollout itself: it records the request on the
object (``store.set_requests``, each with a nonce so a repeat is a new request) and wakes
the deployment's controller, which acts on it. Undo re-applies the template of an
earlier revision from the deployment's history, through ``api.apply`` like any apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pilothouse.api.apply import Applier, validate_documents
from pilothouse.api.auth import request_user
from pilothouse.api.errors import ApiError
from pilothouse.api.limits import read_json
from pilothouse.api.objects import kind_for
from pilothouse.policy.rollout import NothingToAct, request_values
from pilothouse.spec.resources import API_VERSION, TEMPLATE_FIELDS, ModelDeployment
from pilothouse.store.sqlite import Store

ROLLOUT_ACTIONS = ("promote", "abort", "pause", "resume", "retry", "undo")


@dataclass(frozen=True)
class RolloutEndpoints:
    store: Store
    applier: Applier
    on_change: Callable[[str, str], None]

    async def rollout_action(self, request: Request) -> Response:
        cls = kind_for(request.path_params["plural"])
        name = request.path_params["name"]
        if cls is not ModelDeployment:
            raise ApiError(404, "NotFound", f"{cls.PLURAL} have no rollouts")
        body = await _action_body(request)
        action = str(body["action"])
        obj = self.store.get(cls.KIND, name)
        if action == "undo":
            return JSONResponse(self.undo(obj, body.get("toRevision"), request_user(request)))
        rollout = (obj.get("status") or {}).get("rollout") or {}
        self.store.set_requests(cls.KIND, name, _requests_for(action, name, body, rollout))
        self.on_change(cls.KIND, name)
        return JSONResponse(self.store.get(cls.KIND, name))

    def undo(self, obj: dict[str, Any], to_revision: Any, user: str) -> dict[str, Any]:
        """Go back to the latest earlier revision that did not fail, or to revision
        ``to_revision``: apply its template, record a ``RolloutUndone`` event."""
        name = obj["metadata"]["name"]
        history = list((obj.get("status") or {}).get("history") or [])
        if to_revision is not None and (
            not isinstance(to_revision, int) or isinstance(to_revision, bool)
        ):
            raise ApiError(
                400, "BadRequest", f"toRevision: expected a revision number, got {to_revision!r}"
            )
        current = (obj.get("status") or {}).get("rollout", {}).get("desiredRevision")
        target = _undo_target(name, history, current, to_revision)
        if target.get("revision") == current:
            raise ApiError(
                409,
                "Conflict",
                f"revision {target.get('number')} ({target.get('model')}) is what "
                f"modeldeployment '{name}' already runs; nothing to undo",
            )
        [resource] = validate_documents([_with_template(obj, target)], "undo")
        self.applier.apply([resource], f"{user} (undo to revision {target.get('number')})")
        self.store.record_event(
            ModelDeployment.KIND,
            name,
            "Normal",
            "RolloutUndone",
            f"{user} went back to revision {target.get('number')} ({target.get('model')})",
        )
        return self.store.get(ModelDeployment.KIND, name)


async def _action_body(request: Request) -> dict[str, Any]:
    """The request body, with an ``action`` that is one of ``ROLLOUT_ACTIONS``."""
    body = await read_json(request, '{"action": "' + "|".join(ROLLOUT_ACTIONS) + '", ...}')
    if body.get("action") not in ROLLOUT_ACTIONS:
        raise ApiError(
            400,
            "BadRequest",
            f"action: expected one of {', '.join(ROLLOUT_ACTIONS)}, got {body.get('action')!r}",
        )
    return body


def _requests_for(
    action: str, name: str, body: dict[str, Any], rollout: dict[str, Any]
) -> dict[str, str]:
    """The requests recorded for the controller for ``action`` (any but undo)."""
    full = body.get("full", False) if action == "promote" else False
    if not isinstance(full, bool):
        raise ApiError(400, "BadRequest", f"full: expected true or false, got {full!r}")
    try:
        return request_values(
            action,
            rollout.get("canaryRevision"),
            rollout.get("abortedRevision"),
            str(time.time_ns()),
            full=full,
        )
    except NothingToAct as exc:
        raise ApiError(409, "Conflict", f"modeldeployment '{name}' has {exc}") from None


def _undo_target(
    name: str, history: list[dict[str, Any]], current: Any, to_revision: int | None
) -> dict[str, Any]:
    """The history entry to go back to: revision ``to_revision``, or the latest other
    than the current one that was not rolled back or aborted."""
    if to_revision is None:
        earlier = [
            h
            for h in history
            if h.get("revision") != current and h.get("outcome") not in ("RolledBack", "Aborted")
        ]
        if not earlier:
            raise ApiError(
                409, "Conflict", f"modeldeployment '{name}' has no earlier revision to undo to"
            )
        return earlier[-1]
    found = [h for h in history if h.get("number") == to_revision]
    if not found:
        known = ", ".join(str(h.get("number")) for h in history) or "none"
        raise ApiError(
            409,
            "Conflict",
            f"toRevision: modeldeployment '{name}' has no revision {to_revision} (known: {known})",
        )
    return found[0]


def _with_template(obj: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The deployment's document with the template fields of ``target`` in its spec."""
    spec = dict(obj["spec"])
    for key in TEMPLATE_FIELDS:
        spec.pop(key, None)
    spec.update(target.get("template") or {})
    return {
        "apiVersion": API_VERSION,
        "kind": ModelDeployment.KIND,
        "metadata": {
            "name": obj["metadata"]["name"],
            "labels": obj["metadata"].get("labels") or {},
            "annotations": obj["metadata"].get("annotations") or {},
        },
        "spec": spec,
    }
