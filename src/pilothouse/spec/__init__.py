"""Typed resources, validation and JSON Schema: the bottom layer, imported by all others."""

from pilothouse.spec.resources import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    ModelDeployment,
    Queue,
    Resource,
    TrainingJob,
    kind_for,
    kind_for_plural,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "ModelDeployment",
    "Queue",
    "Resource",
    "TrainingJob",
    "kind_for",
    "kind_for_plural",
]
