"""The data-plane port in memory: traffic weights recorded, load made up by the test.

Load is measured per whole second of the injected clock, as the router measures it:
each :meth:`MemoryDataPlane.step` (and each read) turns the seconds that passed into one
:class:`~pilothouse.ports.dataplane.LoadSample` per revision that served. The test says
what arrives:

- :meth:`offer`: requests per second at the deployment's endpoint, split by the current
  weights among revisions with a ready replica (held and counted as ``queued`` while none
  is ready and the traffic says ``hold_when_empty``; refused otherwise);
- :meth:`set_load`: requests per second served by one revision, whatever the weights;
- :meth:`set_error_rate`: the share of a revision's requests that fail (5xx).

Responses, mirrored pairs and the replicas' Prometheus text are set directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pilothouse.ports.dataplane import (
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    Responses,
    ResponseSample,
    Traffic,
)

#: latency histogram bounds (seconds), the router's (``router.metrics.LATENCY_BOUNDS``)
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, math.inf,
)  # fmt: skip
#: seconds of samples kept
KEEP_SECONDS = 3600.0


@dataclass(frozen=True)
class Load:
    rps: float
    errors: float = 0.0  # failed requests per second (of ``rps``)
    latency: float = 0.01
    concurrency: float | None = None  # None: rps x latency (Little's law)
    cpu: float | None = None


@dataclass
class _Deployment:
    traffic: Traffic | None = None
    url: str = ""
    offered: Load | None = None
    loads: dict[str, Load] = field(default_factory=dict)
    error_rates: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[LoadSample]] = field(default_factory=dict)
    queued: int = 0
    #: fractional requests carried to the next second, per revision
    carry: dict[str, float] = field(default_factory=dict)
    responses: list[ResponseSample] = field(default_factory=list)
    mirrors: list[MirrorPair] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)


class MemoryDataPlane:
    """Implements :class:`pilothouse.ports.dataplane.DataPlane` in memory."""

    def __init__(
        self,
        clock: Callable[[], float],
        ready: Callable[[str], dict[str, int]] | None = None,
        base_url: str = "http://memory",
        error_rate: Callable[[str, str], float] | None = None,
    ) -> None:
        """``ready(deployment)``: ready replicas per revision (the endpoints the router
        sees); None: every weighted revision serves. ``error_rate(deployment, revision)``:
        the share of a revision's requests that fail when :meth:`set_error_rate` did not
        say (e.g. by the model version it serves)."""
        self.clock = clock
        self.ready = ready
        self.error_rate = error_rate
        self.base_url = base_url
        self._deployments: dict[str, _Deployment] = {}
        self._measured_until: float | None = None

    # --- what the test does -----------------------------------------------------------

    def offer(self, deployment: str, rps: float, latency: float = 0.01) -> None:
        """``rps`` requests per second arrive at the deployment's endpoint from now on."""
        self.step()
        self._deployment(deployment).offered = Load(rps, latency=latency) if rps > 0 else None

    def set_load(
        self,
        deployment: str,
        revision: str,
        rps: float,
        errors: float = 0.0,
        latency: float = 0.01,
        concurrency: float | None = None,
        cpu: float | None = None,
    ) -> None:
        """From now on ``revision`` serves ``rps`` requests per second of which ``errors``
        fail (0 rps: it serves nothing of its own)."""
        self.step()
        loads = self._deployment(deployment).loads
        if rps > 0:
            loads[revision] = Load(rps, min(errors, rps), latency, concurrency, cpu)
        else:
            loads.pop(revision, None)

    def set_error_rate(self, deployment: str, revision: str, rate: float) -> None:
        """This share (0..1) of whatever ``revision`` serves fails."""
        self.step()
        self._deployment(deployment).error_rates[revision] = max(0.0, min(1.0, rate))

    def add_response(self, deployment: str, revision: str, body: bytes) -> None:
        self._deployment(deployment).responses.append(ResponseSample(self.clock(), revision, body))

    def add_mirror(self, deployment: str, pair: MirrorPair) -> None:
        self._deployment(deployment).mirrors.append(pair)

    def set_metrics(self, deployment: str, revision: str, text: str) -> None:
        """The Prometheus text each ready replica of ``revision`` exports."""
        self._deployment(deployment).metrics[revision] = text

    def traffic(self, deployment: str) -> Traffic | None:
        found = self._deployments.get(deployment)
        return None if found is None else found.traffic

    def shares(self, deployment: str) -> dict[str, float]:
        """Where live requests go now: revision -> percent (revisions with a ready
        replica; without weights every ready replica alike)."""
        found = self._deployments.get(deployment)
        if found is None:
            return {}
        ready = self.ready(deployment) if self.ready is not None else None
        shares = self._shares(found, ready)
        total = sum(shares.values())
        return {rev: 100.0 * w / total for rev, w in shares.items()} if total else {}

    # --- the port ---------------------------------------------------------------------

    async def set_traffic(self, deployment: str, traffic: Traffic) -> str:
        self.step()
        dep = self._deployment(deployment)
        dep.traffic = traffic
        if not dep.url:
            dep.url = f"{self.base_url}/{deployment}"
        return dep.url

    async def remove(self, deployment: str) -> None:
        self.step()
        self._deployments.pop(deployment, None)

    async def load(self, deployment: str, since: float) -> DeploymentLoad:
        self.step()
        dep = self._deployments.get(deployment)
        if dep is None:
            return DeploymentLoad(revisions={})
        return DeploymentLoad(
            revisions={
                rev: [s for s in samples if s.time > since]
                for rev, samples in dep.samples.items()
                if any(s.time > since for s in samples)
            },
            queued=dep.queued,
        )

    async def responses(self, deployment: str, since: float) -> Responses:
        dep = self._deployments.get(deployment)
        if dep is None:
            return Responses()
        return Responses(
            samples=[s for s in dep.responses if s.time > since],
            mirrors=[m for m in dep.mirrors if m.time > since],
        )

    async def scrape(self, deployment: str, revision: str) -> list[str]:
        dep = self._deployments.get(deployment)
        if dep is None or revision not in dep.metrics:
            return []
        ready = self.ready(deployment).get(revision, 0) if self.ready is not None else 1
        return [dep.metrics[revision]] * ready

    # --- measuring --------------------------------------------------------------------

    def step(self) -> None:
        """Measure every whole second that passed since the last call."""
        now = self.clock()
        if self._measured_until is None:
            self._measured_until = math.floor(now)
            return
        second = self._measured_until + 1.0
        while second <= now:
            for name, dep in self._deployments.items():
                self._measure(name, dep, second)
            self._measured_until = second
            second += 1.0

    def _measure(self, name: str, dep: _Deployment, second: float) -> None:
        ready = self.ready(name) if self.ready is not None else None
        served: dict[str, Load] = dict(dep.loads)
        dep.queued = 0
        if dep.offered is not None:
            serving = self._shares(dep, ready)
            total = sum(serving.values())
            if not serving:
                held = dep.traffic is not None and dep.traffic.hold_when_empty
                dep.queued = math.ceil(dep.offered.rps) if held else 0
            for rev, weight in serving.items():
                rps = dep.offered.rps * weight / total
                own = served.get(rev)
                served[rev] = Load(
                    rps + (own.rps if own else 0.0),
                    own.errors if own else 0.0,
                    dep.offered.latency,
                )
        for rev, load in served.items():
            whole = load.rps + dep.carry.get(rev, 0.0)
            requests = int(whole)
            dep.carry[rev] = whole - requests
            rate = dep.error_rates.get(rev)
            if rate is None:
                rate = self.error_rate(name, rev) if self.error_rate is not None else 0.0
            errors = min(requests, round(load.errors + rate * requests))
            bucket = next(i for i, b in enumerate(LATENCY_BOUNDS) if load.latency <= b)
            counts = [0] * len(LATENCY_BOUNDS)
            counts[bucket] = requests
            concurrency = (
                load.concurrency if load.concurrency is not None else load.rps * load.latency
            )
            samples = dep.samples.setdefault(rev, [])
            samples.append(
                LoadSample(
                    time=second,
                    seconds=1.0,
                    concurrency=concurrency,
                    requests=requests,
                    errors=errors,
                    cpu=load.cpu,
                    latency_bounds=LATENCY_BOUNDS,
                    latency_counts=tuple(counts),
                )
            )
            while samples and samples[0].time <= second - KEEP_SECONDS:
                samples.pop(0)

    @staticmethod
    def _shares(dep: _Deployment, ready: dict[str, int] | None) -> dict[str, float]:
        weights = dict(dep.traffic.weights) if dep.traffic is not None else {}
        if not weights:
            # no split: every ready replica alike
            return {rev: float(n) for rev, n in (ready or {}).items() if n > 0}
        return {rev: w for rev, w in weights.items() if w > 0 and (ready is None or ready.get(rev))}

    def _deployment(self, name: str) -> _Deployment:
        return self._deployments.setdefault(name, _Deployment())
