"""Reading a world's objects in tests: status fields, conditions, revisions."""

from __future__ import annotations

from typing import Any

from tests.contract.harness import World


def status(world: World, kind: str, name: str) -> dict[str, Any]:
    found = world.get(kind, name)
    return dict(found["status"] or {}) if found is not None else {}


def deployment(world: World, name: str) -> dict[str, Any]:
    return status(world, "ModelDeployment", name)


def job(world: World, name: str) -> dict[str, Any]:
    return status(world, "TrainingJob", name)


def condition(current: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in current.get("conditions") or [] if c.get("type") == type_), None)


def is_true(current: dict[str, Any], type_: str) -> bool:
    found = condition(current, type_)
    return found is not None and found.get("status") == "True"


def revision(current: dict[str, Any], name: str) -> dict[str, Any]:
    return next((r for r in current.get("revisions") or [] if r.get("revision") == name), {})


def rollout(current: dict[str, Any]) -> dict[str, Any]:
    return dict(current.get("rollout") or {})
