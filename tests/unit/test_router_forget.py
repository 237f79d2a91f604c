"""The router forgets the meters and samples of revisions that left, once their history
window has passed (every rollout adds a revision; a long-lived deployment must not grow)."""

from __future__ import annotations

from collections import deque

from pilothouse.router.metrics import REGISTRY, RevisionMeter
from pilothouse.router.proxy import Backend, Route, TrafficPolicy


def _series(revision: str) -> int:
    return sum(
        1
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("deployment") == "forget" and sample.labels.get("revision") == revision
    )


def test_gone_revisions_are_forgotten_after_their_history_window() -> None:
    route = Route("forget")
    route.set_backends([Backend("a", "127.0.0.1", 1, "new", "/ready")])
    route.set_policy(TrafficPolicy(weights={"new": 100.0}))
    for revision in ("old", "new"):
        meter = route.meter(revision)
        meter.start(1000.0)
        meter.end(1000.01, 200, 0.01)
        route.samples[revision] = deque([(1000.0, b"{}")])
    assert _series("old") > 0
    route.close_buckets(1001.0)  # "old" has no replica, weight or mirror: it left now
    assert "old" in route.meters  # its history still feeds the autoscaler's window
    route.close_buckets(1001.0 + RevisionMeter.HISTORY - 1)
    assert "old" in route.meters
    route.close_buckets(1001.0 + RevisionMeter.HISTORY + 1)
    assert "old" not in route.meters
    assert "old" not in route.samples
    assert _series("old") == 0
    assert "new" in route.meters
    assert "new" in route.samples
    assert _series("new") > 0
    # a revision that comes back (mirrored) is live again
    route.set_policy(TrafficPolicy(weights={"new": 100.0}, mirror_revision="old", mirror_percent=5))
    route.meter("old")
    route.close_buckets(5000.0)
    assert "old" in route.meters


def test_a_closed_route_drops_its_deployment_counters() -> None:
    import asyncio

    from pilothouse.router.metrics import SHED

    async def scenario() -> None:
        route = Route("recreated")
        SHED.labels("recreated").inc(3)
        await route.close()

    asyncio.run(scenario())
    values = [
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == "pilothouse_router_shed_total" and s.labels.get("deployment") == "recreated"
    ]
    assert values == []  # a deployment created again under this name starts from zero
