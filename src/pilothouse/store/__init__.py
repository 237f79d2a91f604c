"""Durable state of the embedded control plane (SQLite)."""

from pilothouse.store.sqlite import ApplyOutcome, Conflict, NotFound, Store

__all__ = ["ApplyOutcome", "Conflict", "NotFound", "Store"]
