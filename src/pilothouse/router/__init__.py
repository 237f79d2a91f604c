"""The embedded data plane: one HTTP endpoint per deployment in front of its replicas."""

from pilothouse.router.proxy import Backend, Router

__all__ = ["Backend", "Router"]
