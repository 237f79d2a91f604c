"""What every controller shares: its context, its result, conditions and events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pilothouse.ports.dataplane import DataPlane
from pilothouse.ports.state import State
from pilothouse.ports.workload import Workload
from pilothouse.spec.status import Condition


@dataclass(frozen=True)
class Result:
    """``requeue_after`` seconds until the next reconcile of this key; None: only on change."""

    requeue_after: float | None = None


class TerminalError(Exception):
    """Retrying will not help (the spec must change); recorded, not retried."""


@dataclass
class Context:
    """The three ports a controller sees the world through, and the clock."""

    state: State
    workload: Workload
    dataplane: DataPlane
    clock: Callable[[], float]
    #: wake another key now (set by the manager)
    trigger: Callable[[str, str], None] | None = None

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.state.event(kind, name, type_, reason, message)


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: float,
) -> list[Condition]:
    """Kubernetes-style condition update: lastTransitionTime moves only when status flips."""
    text: Literal["True", "False"] = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    since = (
        previous.last_transition_time
        if previous is not None and previous.status == text
        else timestamp(now)
    )
    out = [c for c in conditions if c.type != type_]
    out.append(
        Condition(
            type=type_, status=text, reason=reason, message=message, last_transition_time=since
        )
    )
    return sorted(out, key=lambda c: c.type)


def drop_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]
