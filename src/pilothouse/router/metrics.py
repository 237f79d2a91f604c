"""What the router measures per revision: in-flight requests (time-averaged), requests/s,
errors and latency. Buckets of one second feed the autoscaler and rollout analysis;
Prometheus collectors export the same numbers.

Concurrency is integrated over time (in-flight x seconds), so a one-second bucket holds
the true average, not a sample that happened to fall between two requests.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: the daemon exports this registry on the control API's /metrics
REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "pilothouse_router_requests",
    "Requests answered by the router, by deployment, revision and HTTP status",
    ["deployment", "revision", "code"],
    registry=REGISTRY,
)
#: latency histogram bounds (seconds), shared by Prometheus and the per-second buckets
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, math.inf,
)  # fmt: skip
LATENCY = Histogram(
    "pilothouse_router_request_duration_seconds",
    "Time from request to response through the router",
    ["deployment", "revision"],
    buckets=LATENCY_BOUNDS,
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "pilothouse_router_inflight_requests",
    "Requests in flight to replicas, by deployment and revision",
    ["deployment", "revision"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "pilothouse_router_retries",
    "Requests retried on another replica",
    ["deployment"],
    registry=REGISTRY,
)
EJECTIONS = Counter(
    "pilothouse_router_ejections",
    "Replicas ejected after consecutive failures",
    ["deployment"],
    registry=REGISTRY,
)
EXCUSED = Counter(
    "pilothouse_router_excused_failures",
    "Failed attempts not counted against their revision: the same request failed on "
    "another revision too (the request's fault)",
    ["deployment"],
    registry=REGISTRY,
)
SHED = Counter(
    "pilothouse_router_shed",
    "Requests refused with 503 because every replica was at capacity and the queue was full",
    ["deployment"],
    registry=REGISTRY,
)
QUEUED = Gauge(
    "pilothouse_router_queued_requests",
    "Requests waiting for a replica (capacity or scale from zero)",
    ["deployment"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Bucket:
    """One closed second of one revision's traffic."""

    end: float
    seconds: float
    concurrency: float
    requests: int
    #: failed attempts held against this revision (5xx or no answer, when the request
    #: did not fail on another revision as well)
    errors: int
    #: requests per latency bound (LATENCY_BOUNDS), not cumulative
    latency_counts: tuple[int, ...] = ()
    #: failed attempts not held against it (the request failed on another revision too)
    excused: int = 0
    #: of ``requests`` and ``concurrency``: mirrored copies (measured for the analysis, but
    #: not demand: the autoscaler leaves them out)
    mirror_requests: int = 0
    mirror_concurrency: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class RevisionMeter:
    """In-flight integral and per-second buckets for one revision of one deployment."""

    HISTORY = 180

    def __init__(self, deployment: str, revision: str, now: float) -> None:
        self.deployment, self.revision = deployment, revision
        self.inflight = 0
        self._integral = 0.0
        self.mirror_inflight = 0
        self._mirror_integral = 0.0
        self._bucket_mirror_integral = 0.0
        self._mirror_requests = 0
        self._last = now
        self._bucket_start = now
        self._bucket_integral = 0.0
        self._requests = 0
        self._errors = 0
        self._excused = 0
        self._latency_counts = [0] * len(LATENCY_BOUNDS)
        self.buckets: deque[Bucket] = deque(maxlen=self.HISTORY)
        self._gauge = INFLIGHT.labels(deployment, revision)
        self._latency = LATENCY.labels(deployment, revision)
        self._codes: dict[int, Counter] = {}

    def _advance(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._integral += self.inflight * elapsed
        self._mirror_integral += self.mirror_inflight * elapsed
        self._last = now

    def start(self, now: float, mirror: bool = False) -> None:
        self._advance(now)
        self.inflight += 1
        if mirror:
            self.mirror_inflight += 1
        self._gauge.inc()

    def end(self, now: float, status: int, seconds: float, mirror: bool = False) -> None:
        self._advance(now)
        self.inflight -= 1
        if mirror:
            self.mirror_inflight -= 1
            self._mirror_requests += 1
        self._gauge.dec()
        self._requests += 1
        self._latency.observe(seconds)
        self._latency_counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        counter = self._codes.get(status)
        if counter is None:
            counter = self._codes[status] = REQUESTS.labels(
                self.deployment, self.revision, str(status)
            )
        counter.inc()

    def error(self) -> None:
        """A failed attempt that counts against this revision (decided by the router once
        the request is over: see proxy)."""
        self._errors += 1

    def excused(self) -> None:
        """A failed attempt the same request also met on another revision."""
        self._excused += 1

    def close_bucket(self, now: float) -> Bucket:
        self._advance(now)
        seconds = now - self._bucket_start
        concurrency = (self._integral - self._bucket_integral) / seconds if seconds > 0 else 0.0
        mirrored = (
            (self._mirror_integral - self._bucket_mirror_integral) / seconds if seconds > 0 else 0.0
        )
        bucket = Bucket(
            now,
            seconds,
            concurrency,
            self._requests,
            self._errors,
            tuple(self._latency_counts),
            self._excused,
            self._mirror_requests,
            mirrored,
        )
        self.buckets.append(bucket)
        self._bucket_start, self._bucket_integral = now, self._integral
        self._bucket_mirror_integral = self._mirror_integral
        self._requests = self._errors = self._excused = self._mirror_requests = 0
        self._latency_counts = [0] * len(LATENCY_BOUNDS)
        return bucket

    def forget(self) -> None:
        """Drop this revision's series from Prometheus (the revision is gone)."""
        for registry_metric in (INFLIGHT, LATENCY):
            with contextlib.suppress(KeyError):
                registry_metric.remove(self.deployment, self.revision)
        for code in self._codes:
            with contextlib.suppress(KeyError):
                REQUESTS.remove(self.deployment, self.revision, str(code))
        self._codes.clear()
