"""What every controller shares: its context, its result, conditions and events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pilothouse.registry.local import BaseRegistry
from pilothouse.runtime.port import Runtime
from pilothouse.store.sqlite import Store


@dataclass(frozen=True)
class Result:
    """``requeue_after`` seconds until the next reconcile of this key; None: only on change."""

    requeue_after: float | None = None


class TerminalError(Exception):
    """Retrying will not help (the spec must change); recorded, not retried."""


@dataclass
class Context:
    store: Store
    runtime: Runtime
    registry: BaseRegistry
    clock: Callable[[], float]
    #: wake another key now (set by the manager)
    trigger: Callable[[str, str], None] | None = None

    def event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.store.record_event(kind, name, type_, reason, message)


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: float,
) -> list[dict[str, Any]]:
    """Kubernetes-style condition update: lastTransitionTime moves only when status flips."""
    text = "True" if status else "False"
    out = [c for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = (
        previous["lastTransitionTime"]
        if previous is not None and previous.get("status") == text
        else timestamp(now)
    )
    out.append(
        {
            "type": type_,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
    )
    return sorted(out, key=lambda c: str(c["type"]))


def tail(path_text: str, lines: int = 5) -> str:
    """Last lines of a log file, for events that explain a failure."""
    from pathlib import Path

    try:
        with Path(path_text).open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line for line in data.splitlines()[-lines:] if line.strip())
