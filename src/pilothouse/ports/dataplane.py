"""The data-plane port: who gets a deployment's traffic, and what it measured.

Embedded it is the in-process router; on Kubernetes it will be the router pods, which
watch the revisions' endpoints themselves: a controller never names a replica here, only
revisions and their shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Traffic:
    """How a deployment's endpoint spreads and limits traffic."""

    #: revision -> share (any positive numbers); empty: every ready replica equally
    weights: dict[str, float] = field(default_factory=dict)
    #: copy this share (0..100 %) of requests to ``mirror_revision``; responses are recorded
    mirror_revision: str | None = None
    mirror_percent: float = 0.0
    #: requests one replica may have in flight (0: unlimited)
    max_concurrency: int = 0
    #: requests that may wait for a replica; more are shed with 503
    queue_limit: int = 256
    #: how long a request may wait (for capacity, or for a replica to become ready)
    queue_timeout: float = 10.0
    #: scaled to zero: hold requests and ask for a replica instead of answering 503
    hold_when_empty: bool = False
    #: at most this share of one revision's replicas may be ejected at once (never the last)
    max_ejection_percent: float = 50.0


@dataclass(frozen=True)
class LoadSample:
    """One second of one revision's traffic, as the data plane measured it."""

    time: float
    seconds: float
    concurrency: float
    requests: int
    errors: int
    cpu: float | None = None
    #: latency histogram of the second: upper bounds (seconds) and requests per bound
    latency_bounds: tuple[float, ...] = ()
    latency_counts: tuple[int, ...] = ()
    #: of ``requests`` and ``concurrency``: mirrored copies, which the analysis judges
    #: but which are not demand (the autoscaler leaves them out)
    mirrored_requests: int = 0
    mirrored_concurrency: float = 0.0


@dataclass(frozen=True)
class DeploymentLoad:
    revisions: dict[str, list[LoadSample]]
    #: requests waiting for a replica (scale from zero, or every replica busy)
    queued: int = 0


@dataclass(frozen=True)
class ResponseSample:
    """A recent successful live response of one revision (for prediction analysis)."""

    time: float
    revision: str
    body: bytes


@dataclass(frozen=True)
class MirrorPair:
    """One mirrored request: the serving revision's answer and the mirror's, same input."""

    time: float
    primary_revision: str
    primary_status: int
    primary_body: bytes
    mirror_revision: str
    mirror_status: int
    mirror_body: bytes


@dataclass(frozen=True)
class Responses:
    samples: list[ResponseSample] = field(default_factory=list)
    mirrors: list[MirrorPair] = field(default_factory=list)


class DataPlane(Protocol):
    async def set_traffic(self, deployment: str, traffic: Traffic) -> str:
        """Route the deployment's endpoint this way; returns the endpoint's URL."""
        ...

    async def remove(self, deployment: str) -> None: ...

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        """Per-revision load samples newer than ``since`` (wall-clock seconds)."""
        ...

    async def responses(self, deployment: str, since: float) -> Responses:
        """Recent live responses and mirrored pairs newer than ``since``."""
        ...

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        """The Prometheus text of each ready replica of a revision (unreadable ones left out)."""
        ...
