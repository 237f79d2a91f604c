"""The three ports in memory, for the controller contract suite (``tests/contract``).

Deterministic and driven by an injected clock: no threads, no sleeps, no processes.
:class:`MemoryWorkload` behaves like a small Kubernetes (scheduling, ReplicaSets with
crash-loop back-off, gang admission and preemption), :class:`MemoryDataPlane` records
traffic and measures the load the test makes up, :class:`MemoryState` is the API
server's objects, status, events and users' requests, with a :class:`MemoryRegistry`.
"""

from pilothouse.runtime.memory.dataplane import Load, MemoryDataPlane
from pilothouse.runtime.memory.state import Event, MemoryRegistry, MemoryState, ModelVersion
from pilothouse.runtime.memory.workload import MemoryWorkload, ReplicaBehaviour

__all__ = [
    "Event",
    "Load",
    "MemoryDataPlane",
    "MemoryRegistry",
    "MemoryState",
    "MemoryWorkload",
    "ModelVersion",
    "ReplicaBehaviour",
]
