"""The world the controller contract suite runs the real controllers in.

A :class:`World` is a place where the platform's controllers run against some backend
(the in-memory ports today, real processes embedded next, a cluster later). A test
changes it the way a user or the platform would (apply, delete, a user's rollout
request), breaks it the way the world does (a replica dies, a worker exits, traffic
arrives, a model version fails), lets time pass while the controllers reconcile, and
observes the *state* it ends in: the objects' status, what runs (through the workload
port's read side), where traffic goes. The assertions live in the tests; fault
injection and observation live here, so every backend implements the same protocol.

Times in this protocol are seconds of the world's own clock: a memory world jumps ahead,
an embedded world waits for real.

Every world has the same cluster: one schedulable node, ``node-a``, with ``NODE_CPU``
cores and ``NODE_MEMORY`` of memory and no GPU; only the ``default`` queue exists until a
test applies another (without a quota it admits whatever fits).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import yaml

from pilothouse.policy.rollout import request_values
from pilothouse.ports.workload import GangState, RevisionState

Condition = Callable[[], bool | Awaitable[bool]]

NODE_NAME = "node-a"
NODE_CPU = 32
NODE_MEMORY = 128 * 2**30


class World(Protocol):
    #: which backend: "memory", "embedded", …
    name: str

    def now(self) -> float: ...

    # --- what users do ----------------------------------------------------------------

    async def apply(self, document: str | dict[str, Any]) -> None:
        """Apply one document (YAML text or a dict), as ``pilothouse apply`` would."""
        ...

    async def delete(self, kind: str, name: str) -> None: ...

    async def request(self, kind: str, name: str, action: str, *, full: bool = False) -> None:
        """A user's rollout request: ``promote`` (``full``: to 100 % at once), ``abort``,
        ``pause``, ``resume``."""
        ...

    async def add_model(
        self,
        name: str,
        *,
        framework: str = "sklearn",
        stage: str | None = None,
        broken: bool = False,
        error_rate: float = 0.0,
    ) -> str:
        """Register the next version of ``name``; returns its reference (``name:N``).
        ``broken``: its replicas exit before they are ever ready; ``error_rate``: that
        share of the requests it serves fail (5xx)."""
        ...

    # --- time -------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass while the controllers reconcile."""
        ...

    async def until(self, condition: Condition, within: float, what: str) -> None:
        """Reconcile until ``condition`` holds; AssertionError (with what the world looks
        like) if it does not within ``within`` seconds."""
        ...

    def seconds(self, hold: float) -> float:
        """How long to watch something that should merely stay as it is (a pause that waits
        for a user, a status that must not move): ``hold`` where time is cheap, less where
        it passes for real (still longer than the timers the suite's specs set). Never for
        a duration a spec or the platform defines (a back-off, a grace period)."""
        ...

    # --- what the world does (faults, load) -------------------------------------------

    async def crash_replicas(self, deployment: str, revision: str, n: int = 1) -> None:
        """Kill ``n`` ready replicas of a revision (as an OOM kill or a lost process)."""
        ...

    async def finish_worker(self, job: str, rank: int, code: int = 0) -> None:
        """Worker ``rank`` of the job's current attempt exits with ``code``."""
        ...

    async def break_output(self, job: str) -> None:
        """The job's output cannot be registered when it succeeds (an empty folder)."""
        ...

    async def offer_load(self, deployment: str, rps: float) -> None:
        """From now on ``rps`` requests per second arrive at the deployment's endpoint."""
        ...

    # --- observation ------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object (``spec``, ``status``, ``deleting``) or None once it is gone."""
        ...

    def events(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the object's events, oldest first."""
        ...

    async def revisions(self, deployment: str) -> list[RevisionState]:
        """What runs of each revision (the workload port's view)."""
        ...

    async def gang(self, job: str) -> GangState | None:
        """The job's current attempt as it runs (the workload port's view)."""
        ...

    def weights(self, deployment: str) -> dict[str, float]:
        """Where the data plane sends live requests now: revision -> percent, over the
        revisions with a ready replica (empty when none serves)."""
        ...

    def describe(self) -> str:
        """Everything a failing test should print about the world."""
        ...

    async def close(self) -> None: ...


# --- helpers every world and test shares --------------------------------------------


def document(text_or_dict: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(text_or_dict, dict):
        return text_or_dict
    loaded = yaml.safe_load(text_or_dict)
    if not isinstance(loaded, dict):
        raise ValueError("expected one YAML document (a mapping)")
    return loaded


async def holds(condition: Condition) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def rollout_requests(
    action: str, rollout: dict[str, Any], nonce: str, *, full: bool = False
) -> dict[str, str]:
    """The requests the control API records for a rollout action (the same encoding)."""
    return request_values(
        action,
        rollout.get("canaryRevision"),
        rollout.get("abortedRevision"),
        nonce,
        full=full,
    )
