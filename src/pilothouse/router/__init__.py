"""The embedded data plane: one HTTP endpoint per deployment in front of its replicas."""

from pilothouse.router.proxy import MirrorRecord, Route, Router, TrafficPolicy
from pilothouse.router.upstream import Backend

__all__ = ["Backend", "MirrorRecord", "Route", "Router", "TrafficPolicy"]
