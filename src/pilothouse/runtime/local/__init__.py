"""The embedded runtime: local processes, HTTP probes and the embedded router."""

from pilothouse.runtime.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]
