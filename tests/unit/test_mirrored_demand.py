"""Mirrored copies are measured (the analysis judges the new revision on them) but are not
demand: the autoscaler's signal leaves them out, embedded and on Kubernetes alike."""

from __future__ import annotations

import pytest

from pilothouse.controllers.scaling import demand
from pilothouse.ports.dataplane import DeploymentLoad, LoadSample
from pilothouse.router.metrics import RevisionMeter
from pilothouse.runtime.kube import wire


def test_the_meter_counts_mirrored_copies_apart() -> None:
    meter = RevisionMeter("mirror-demand", "canary", 100.0)
    meter.start(100.0)  # live, in flight the whole second
    meter.start(100.0, mirror=True)  # mirrored, in flight for half of it
    meter.end(100.5, 200, 0.5, mirror=True)
    meter.start(100.5, mirror=True)
    meter.end(100.75, 200, 0.25, mirror=True)
    meter.end(101.0, 200, 1.0)
    bucket = meter.close_bucket(101.0)
    assert bucket.requests == 3
    assert bucket.mirror_requests == 2
    assert bucket.concurrency == pytest.approx(1.75)
    assert bucket.mirror_concurrency == pytest.approx(0.75)
    assert meter.mirror_inflight == 0
    # the next second starts afresh
    assert meter.close_bucket(102.0).mirror_requests == 0


def sample(requests: int, mirrored: int, concurrency: float, mirrored_conc: float) -> LoadSample:
    return LoadSample(
        time=1000.0,
        seconds=1.0,
        concurrency=concurrency,
        requests=requests,
        errors=0,
        mirrored_requests=mirrored,
        mirrored_concurrency=mirrored_conc,
    )


def test_the_autoscaler_signal_leaves_mirrored_copies_out() -> None:
    s = sample(requests=30, mirrored=20, concurrency=3.0, mirrored_conc=2.0)
    assert demand(s, "rps") == pytest.approx(10.0)
    assert demand(s, "concurrency") == pytest.approx(1.0)
    # a revision that only receives copies (blue-green before the switch) has no demand
    only_copies = sample(requests=20, mirrored=20, concurrency=2.0, mirrored_conc=2.0)
    assert demand(only_copies, "rps") == 0.0
    assert demand(only_copies, "concurrency") == 0.0


def test_router_pods_report_mirrored_copies_and_the_operator_adds_them_up() -> None:
    a = DeploymentLoad({"canary": [sample(10, 4, 1.0, 0.5)]})
    b = DeploymentLoad({"canary": [sample(6, 2, 0.5, 0.25)]})
    decoded = [wire.decode_load(wire.encode_load(x)) for x in (a, b)]
    [merged] = wire.merge_loads(decoded).revisions["canary"]
    assert merged.requests == 16
    assert merged.mirrored_requests == 6
    assert merged.mirrored_concurrency == pytest.approx(0.75)
    assert demand(merged, "rps") == pytest.approx(10.0)
