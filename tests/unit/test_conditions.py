"""Unit tests for Kubernetes-style condition updates."""

from __future__ import annotations

import copy
from typing import Any

from pilothouse.controllers.base import set_condition, timestamp
from pilothouse.spec.status import Condition

T0 = 1_700_000_000.0
T1 = T0 + 3600.0


def sc(conditions: list[dict[str, Any]], *args: Any) -> list[dict[str, Any]]:
    """set_condition on the status' JSON form (as stored), back to JSON."""
    out = set_condition([Condition.model_validate(c) for c in conditions], *args)
    return [c.model_dump(by_alias=True) for c in out]


def test_adds_a_condition_to_an_empty_list() -> None:
    out = sc([], "Ready", True, "AllReady", "2/2 ready", T0)
    assert out == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "AllReady",
            "message": "2/2 ready",
            "lastTransitionTime": timestamp(T0),
        }
    ]


def test_false_status_is_the_string_false() -> None:
    out = sc([], "Ready", False, "NotReady", "0/2 ready", T0)
    assert out[0]["status"] == "False"


def test_keeps_transition_time_when_status_does_not_flip() -> None:
    first = sc([], "Ready", True, "AllReady", "2/2 ready", T0)
    second = sc(first, "Ready", True, "AllReady", "3/3 ready", T1)
    assert len(second) == 1
    assert second[0]["lastTransitionTime"] == timestamp(T0)
    assert second[0]["message"] == "3/3 ready"


def test_moves_transition_time_when_status_flips() -> None:
    first = sc([], "Ready", True, "AllReady", "2/2 ready", T0)
    second = sc(first, "Ready", False, "ReplicaExited", "1/2 ready", T1)
    assert len(second) == 1
    assert second[0]["status"] == "False"
    assert second[0]["reason"] == "ReplicaExited"
    assert second[0]["lastTransitionTime"] == timestamp(T1)
    assert timestamp(T0) != timestamp(T1)


def test_other_conditions_are_kept_and_sorted_by_type() -> None:
    conditions = sc([], "Ready", True, "r", "m", T0)
    conditions = sc(conditions, "Available", True, "r", "m", T0)
    conditions = sc(conditions, "Progressing", False, "r", "m", T0)
    conditions = sc(conditions, "Degraded", False, "r", "m", T1)
    assert [c["type"] for c in conditions] == ["Available", "Degraded", "Progressing", "Ready"]
    conditions = sc(conditions, "Progressing", True, "r2", "m2", T1)
    assert [c["type"] for c in conditions] == ["Available", "Degraded", "Progressing", "Ready"]
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Progressing"]["lastTransitionTime"] == timestamp(T1)
    assert by_type["Ready"]["lastTransitionTime"] == timestamp(T0)


def test_does_not_mutate_the_input_list() -> None:
    conditions: list[dict[str, Any]] = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "AllReady",
            "message": "ok",
            "lastTransitionTime": timestamp(T0),
        },
        {
            "type": "Available",
            "status": "False",
            "reason": "x",
            "message": "y",
            "lastTransitionTime": timestamp(T0),
        },
    ]
    before = copy.deepcopy(conditions)
    out = sc(conditions, "Ready", False, "Down", "0/1", T1)
    assert conditions == before
    assert out is not conditions
    assert [c["type"] for c in out] == ["Available", "Ready"]
