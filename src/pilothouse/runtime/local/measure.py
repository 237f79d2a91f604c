"""What the data plane's measurements are made of: router buckets, CPU time, ``/metrics``.

The data-plane port asks the runtime for a deployment's load (requests, errors,
concurrency and latency per revision, from the router's buckets, with the CPU its
replicas used in each), for sampled responses and mirrored pairs, and for the replicas'
own ``/metrics``. CPU is read from ``/proc`` once a second by :class:`CpuSampler`. None of
this starts or stops anything, so it lives apart from the process engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx

from pilothouse.ports.dataplane import (
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    Responses,
    ResponseSample,
)
from pilothouse.router.metrics import LATENCY_BOUNDS
from pilothouse.router.proxy import Route
from pilothouse.runtime.local.items import Item

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: one CPU sample: when, and the cores each revision's replicas used in the second before
CpuSample = tuple[float, dict[str, float]]


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


class CpuSampler:
    """Cores used by each revision's replicas, sampled once a second (the last 3 minutes
    of each deployment are kept). ``replicas(deployment or None)``: the running ones."""

    def __init__(self, replicas: Callable[[str | None], list[Item]]) -> None:
        self._replicas = replicas
        self._seen: dict[str, tuple[int, float]] = {}
        self._history: dict[str, deque[CpuSample]] = {}

    def history(self, deployment: str) -> list[CpuSample]:
        return list(self._history.get(deployment, ()))

    def forget(self, item_id: str) -> None:
        """The item is gone: drop its last reading."""
        self._seen.pop(item_id, None)

    async def run(self) -> None:
        """Once a second: cores used by each revision's replicas during that second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for deployment in {i.owner_name for i in self._replicas(None)}:
                history = self._history.setdefault(deployment, deque(maxlen=180))
                history.append((now, self._cpu_by_revision(deployment)))

    def _cpu_by_revision(self, deployment: str) -> dict[str, float]:
        """Cores each revision's replicas used since the previous call (from /proc)."""
        now = time.monotonic()
        totals: dict[str, float] = {}
        for item in self._replicas(deployment):
            assert item.child is not None
            assert item.replica is not None
            ticks = _cpu_ticks(item.child.pid)
            if ticks is None:
                continue
            previous = self._seen.get(item.id)
            self._seen[item.id] = (ticks, now)
            if previous is None or now <= previous[1]:
                continue
            cores = (ticks - previous[0]) / _CLOCK_TICKS / (now - previous[1])
            revision = item.replica.revision
            totals[revision] = totals.get(revision, 0.0) + cores
        return totals


def deployment_load(route: Route, history: list[CpuSample], since: float) -> DeploymentLoad:
    """The route's buckets since ``since``, per revision, each with the CPU sampled at its
    end."""

    def cpu_at(when: float, revision: str) -> float | None:
        """The CPU sample taken closest to a bucket's end (each covers its own second)."""
        best = min(history, key=lambda h: abs(h[0] - when), default=None)
        if best is None or abs(best[0] - when) > 1.5:
            return None
        return best[1].get(revision, 0.0)

    revisions = {
        revision: [
            LoadSample(
                b.end,
                b.seconds,
                b.concurrency,
                b.requests,
                b.errors,
                cpu_at(b.end, revision),
                LATENCY_BOUNDS,
                b.latency_counts,
                b.mirror_requests,
                b.mirror_concurrency,
            )
            for b in buckets
        ]
        for revision, buckets in route.buckets(since).items()
    }
    return DeploymentLoad(revisions, queued=route.queued)


def route_responses(route: Route, since: float) -> Responses:
    """The responses the route sampled, and the mirrored pairs it kept, since ``since``."""
    samples = [
        ResponseSample(when, revision, body)
        for revision, kept in route.samples.items()
        for when, body in kept
        if when > since
    ]
    mirrors = [
        MirrorPair(
            m.time,
            m.primary_revision,
            m.primary_status,
            m.primary_body,
            m.mirror_revision,
            m.mirror_status,
            m.mirror_body,
        )
        for m in route.mirrors
        if m.time > since
    ]
    return Responses(samples, mirrors)


async def scrape_metrics(targets: list[tuple[str, int]]) -> list[str]:
    """The ``/metrics`` text of each replica (host, port) that answers with 200."""
    if not targets:
        return []
    texts: list[str] = []
    async with httpx.AsyncClient(timeout=2.0) as http:
        for host, port in targets:
            try:
                response = await http.get(f"http://{host}:{port}/metrics")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                texts.append(response.text)
    return texts
