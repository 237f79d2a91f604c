"""What training code running under pilothouse imports: small, stdlib-only, fast to import.

Nothing here imports the rest of pilothouse (no pydantic, starlette or httpx), so a
worker pays milliseconds, not seconds, for ``from pilothouse.sdk import Checkpointer``.
"""

from pilothouse.sdk.checkpoint import PREEMPTED_EXIT_CODE, Checkpointer, CheckpointError

__all__ = ["PREEMPTED_EXIT_CODE", "CheckpointError", "Checkpointer"]
