"""Durable state of the embedded control plane (SQLite)."""

from pilothouse.store.sqlite import (
    ApplyOutcome,
    Conflict,
    MigrationFailed,
    NotFound,
    SchemaError,
    SchemaTooNew,
    Store,
)

__all__ = [
    "ApplyOutcome",
    "Conflict",
    "MigrationFailed",
    "NotFound",
    "SchemaError",
    "SchemaTooNew",
    "Store",
]
