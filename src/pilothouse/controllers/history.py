"""A deployment's revision history (``status.history``): what ran, from what change, and
how it ended. Like a Deployment's ReplicaSets: each entry keeps the spec fields it was
made from, so any revision can be applied again (``rollout undo``); the replica template
each revision starts from is kept in the internal status (any revision can be scaled up
again on a rollback)."""

from __future__ import annotations

from typing import Any

from pilothouse.controllers.base import timestamp
from pilothouse.spec.resources import TEMPLATE_FIELDS
from pilothouse.spec.status import HistoryEntry


class History:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = [dict(e) for e in entries]

    def models(self) -> list[HistoryEntry]:
        return [HistoryEntry.model_validate(e) for e in self.entries]

    def find(self, revision: str | None) -> dict[str, Any] | None:
        return next((e for e in self.entries if e.get("revision") == revision), None)

    def number(self, revision: str | None) -> int | None:
        entry = self.find(revision)
        return int(entry["number"]) if entry is not None else None

    def model(self, revision: str) -> str:
        entry = self.find(revision)
        return str(entry.get("model", "?")) if entry is not None else "?"

    def record(
        self,
        revision: str,
        *,
        model: str,
        spec: dict[str, Any],
        applied_by: str,
        now: float,
    ) -> None:
        """Make ``revision`` the newest entry (a revision deployed again moves to the top
        with a new number, as `kubectl rollout undo` does)."""
        entry = self.find(revision)
        if entry is not None and entry is self.entries[-1]:
            return
        template = {k: spec[k] for k in TEMPLATE_FIELDS if k in spec}
        template["model"] = model  # pinned: undo returns to this exact version
        previous = self.entries[-1] if self.entries else None
        number = max((int(e["number"]) for e in self.entries), default=0) + 1
        if entry is not None:
            self.entries.remove(entry)
            entry = {**entry, "number": number, "deployedAt": timestamp(now)}
            entry["appliedBy"] = applied_by
            entry["cause"] = f"back to the template of {entry.get('model')}"
        else:
            entry = {
                "number": number,
                "revision": revision,
                "model": model,
                "template": template,
                "createdAt": timestamp(now),
                "deployedAt": timestamp(now),
                "appliedBy": applied_by,
                "cause": _cause(previous, template),
                "outcome": "Progressing",
            }
        self.entries.append(entry)

    def set_outcome(self, revision: str, outcome: str) -> None:
        entry = self.find(revision)
        if entry is not None:
            entry["outcome"] = outcome

    def trim(self, limit: int, keep: set[str]) -> None:
        while len(self.entries) > limit:
            victim = next((e for e in self.entries if e.get("revision") not in keep), None)
            if victim is None:
                return
            self.entries.remove(victim)


def _cause(previous: dict[str, Any] | None, template: dict[str, Any]) -> str:
    if previous is None:
        return f"created with {template.get('model')}"
    before = previous.get("template") or {}
    changes = []
    for key in TEMPLATE_FIELDS:
        if before.get(key) != template.get(key):
            if key == "model":
                changes.append(f"model {before.get(key)} -> {template.get(key)}")
            else:
                changes.append(f"{key} changed")
    return "; ".join(changes) or "model files changed"
