"""The JSON forms the operator and the router pods exchange (runtime/kube/wire.py): every
value comes back as it went, through strict JSON; anything unknown or wrong is refused by
name; what several router pods measured merges into one load."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pilothouse.ports.dataplane import (
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    Responses,
    ResponseSample,
    Traffic,
)
from pilothouse.router.metrics import LATENCY_BOUNDS
from pilothouse.runtime.kube.wire import (
    decode_load,
    decode_responses,
    decode_traffic,
    encode_load,
    encode_responses,
    encode_traffic,
    merge_loads,
)


def _through_json(data: dict[str, Any]) -> Any:
    """As the other side reads it: strict JSON (no NaN or Infinity) both ways."""
    return json.loads(json.dumps(data, allow_nan=False))


def _sample(
    time: float,
    requests: int,
    errors: int = 0,
    concurrency: float = 1.0,
    cpu: float | None = None,
    counts: tuple[int, ...] | None = None,
    bounds: tuple[float, ...] = LATENCY_BOUNDS,
    seconds: float = 1.0,
) -> LoadSample:
    if counts is None:
        counts = (requests,) + (0,) * (len(bounds) - 1) if bounds else ()
    return LoadSample(time, seconds, concurrency, requests, errors, cpu, bounds, counts)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "traffic",
    [
        Traffic(),
        Traffic(
            weights={"1-aaaaaa": 80.0, "2-bbbbbb": 20.0},
            mirror_revision="2-bbbbbb",
            mirror_percent=12.5,
            max_concurrency=4,
            queue_limit=10,
            queue_timeout=2.5,
            hold_when_empty=True,
            max_ejection_percent=30.0,
        ),
        Traffic(weights={"only": 1.0, "drained": 0.0}),
    ],
)
def test_traffic_round_trips(traffic: Traffic) -> None:
    assert decode_traffic(_through_json(encode_traffic(traffic))) == traffic


def test_traffic_left_out_fields_take_their_defaults() -> None:
    assert decode_traffic({}) == Traffic()
    assert decode_traffic({"weights": {"r": 1}, "mirror_revision": None}) == Traffic(
        weights={"r": 1.0}
    )


def test_load_round_trips_with_an_infinite_latency_bound() -> None:
    load = DeploymentLoad(
        revisions={
            "1-a": [_sample(1000.0, 7, errors=1, cpu=0.25), _sample(1001.0, 0, concurrency=0.0)],
            "2-b": [_sample(1000.5, 3, counts=(0,) * (len(LATENCY_BOUNDS) - 1) + (3,))],
            "3-c": [LoadSample(1000.0, 0.98, 0.0, 0, 0)],
        },
        queued=4,
    )
    encoded = encode_load(load)
    assert encoded["revisions"]["1-a"][0]["latency_bounds"][-1] == "+Inf"
    decoded = decode_load(_through_json(encoded))
    assert decoded == load
    assert decoded.revisions["1-a"][0].latency_bounds[-1] == math.inf


def test_responses_round_trip_with_binary_bodies() -> None:
    responses = Responses(
        samples=[ResponseSample(1000.0, "1-a", b'{"predictions": [0.5]}')],
        mirrors=[MirrorPair(1000.2, "1-a", 200, b"\x00\xffbinary", "2-b", 502, b"")],
    )
    encoded = _through_json(encode_responses(responses))
    assert isinstance(encoded["mirrors"][0]["primary_body"], str)
    assert decode_responses(encoded) == responses
    assert decode_responses({}) == Responses()


# -- strict decoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"weight": {"r": 1}}, "traffic.weight"),
        ({"weights": {"r": -1}}, "traffic.weights.r"),
        ({"weights": {"r": "80"}}, "traffic.weights.r"),
        ({"weights": {"r": True}}, "traffic.weights.r"),
        ({"weights": ["r"]}, "traffic.weights"),
        ({"weights": {"": 1}}, "traffic.weights"),
        ({"mirror_revision": 3}, "traffic.mirror_revision"),
        ({"mirror_percent": 101}, "traffic.mirror_percent"),
        ({"max_concurrency": 1.5}, "traffic.max_concurrency"),
        ({"queue_limit": -1}, "traffic.queue_limit"),
        ({"queue_timeout": float("nan")}, "traffic.queue_timeout"),
        ({"hold_when_empty": "yes"}, "traffic.hold_when_empty"),
        ({"max_ejection_percent": None}, "traffic.max_ejection_percent"),
    ],
)
def test_traffic_decoding_names_the_bad_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field.replace('.', '[.]')}:"):
        decode_traffic(data)


def test_traffic_must_be_an_object() -> None:
    with pytest.raises(ValueError, match=r"^traffic: expected an object"):
        decode_traffic([])


def _encoded_sample(**changes: Any) -> dict[str, Any]:
    sample: dict[str, Any] = encode_load(DeploymentLoad({"r": [_sample(1000.0, 2)]}))["revisions"][
        "r"
    ][0]
    sample.update(changes)
    return {"revisions": {"r": [sample]}, "queued": 0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"revisions": {}, "queue": 1}, "load.queue"),
        ({"revisions": [], "queued": 0}, "load.revisions"),
        ({"revisions": {"r": {}}, "queued": 0}, "load.revisions.r"),
        ({"revisions": {}, "queued": -2}, "load.queued"),
        (_encoded_sample(rps=3), "load.revisions.r[0].rps"),
        (_encoded_sample(requests=2.5), "load.revisions.r[0].requests"),
        (_encoded_sample(time="now"), "load.revisions.r[0].time"),
        (_encoded_sample(seconds=-1), "load.revisions.r[0].seconds"),
        (_encoded_sample(cpu="1"), "load.revisions.r[0].cpu"),
        (_encoded_sample(latency_counts=[1]), "load.revisions.r[0].latency_counts"),
        (_encoded_sample(latency_bounds=[0.2, 0.1], latency_counts=[1, 1]), "load.revisions.r[0].latency_bounds"),
        (_encoded_sample(latency_bounds=["-Inf"], latency_counts=[1]), "load.revisions.r[0].latency_bounds[0]"),
    ],
)  # fmt: skip
def test_load_decoding_names_the_bad_field(data: dict[str, Any], field: str) -> None:
    pattern = field.replace(".", "[.]").replace("[0]", r"\[0\]")
    with pytest.raises(ValueError, match=rf"^{pattern}:"):
        decode_load(data)


def test_a_load_sample_missing_a_field_is_refused() -> None:
    data = _encoded_sample()
    del data["revisions"]["r"][0]["errors"]
    with pytest.raises(ValueError, match=r"^load\.revisions\.r\[0\]\.errors: missing"):
        decode_load(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"sample": []}, "responses.sample"),
        ({"samples": [{"time": 1.0, "revision": "r", "body": "not base64!"}]}, "responses.samples[0].body"),
        ({"samples": [{"time": 1.0, "revision": "r"}]}, "responses.samples[0].body"),
        ({"mirrors": [{"time": 1.0}]}, "responses.mirrors[0].primary_revision"),
        ({"mirrors": [{"time": 1.0, "primary_revision": "a", "primary_status": 2000, "primary_body": "", "mirror_revision": "b", "mirror_status": 200, "mirror_body": ""}]}, "responses.mirrors[0].primary_status"),
    ],
)  # fmt: skip
def test_responses_decoding_names_the_bad_field(data: dict[str, Any], field: str) -> None:
    pattern = field.replace(".", "[.]").replace("[0]", r"\[0\]")
    with pytest.raises(ValueError, match=rf"^{pattern}:"):
        decode_responses(data)


# -- merging ----------------------------------------------------------------------------------


def test_merge_sums_each_revision_per_second_across_router_pods() -> None:
    # two router pods close their buckets at their own phase in each second
    a = DeploymentLoad(
        {
            "1-a": [_sample(1000.2, 10, errors=1, concurrency=2.0, cpu=0.5), _sample(1001.2, 4)],
            "2-b": [_sample(1000.2, 1)],
        },
        queued=2,
    )
    b = DeploymentLoad(
        {"1-a": [_sample(1000.7, 6, concurrency=1.5, seconds=1.01), _sample(1002.7, 5)]},
        queued=3,
    )
    merged = merge_loads([a, b])
    assert merged.queued == 5
    assert set(merged.revisions) == {"1-a", "2-b"}
    first, second, third = merged.revisions["1-a"]
    assert (first.time, first.seconds, first.requests, first.errors) == (1000.7, 1.01, 16, 1)
    assert first.concurrency == pytest.approx(3.5)
    assert first.cpu == 0.5  # summed over the pods that measured it
    assert first.latency_bounds == LATENCY_BOUNDS
    assert first.latency_counts == (16,) + (0,) * (len(LATENCY_BOUNDS) - 1)
    assert (second.time, second.requests, second.cpu) == (1001.2, 4, None)
    assert (third.time, third.requests) == (1002.7, 5)
    assert merged.revisions["2-b"] == [_sample(1000.2, 1)]
    # the same requests, whichever order the pods answered in
    assert merge_loads([b, a]) == merged


def test_merge_leaves_a_histogram_with_other_bounds_out_of_the_sum() -> None:
    coarse = (0.1, math.inf)
    merged = merge_loads(
        [
            DeploymentLoad({"r": [_sample(1000.1, 10)]}),
            DeploymentLoad({"r": [_sample(1000.3, 2, bounds=coarse, counts=(1, 1))]}),
            DeploymentLoad({"r": [_sample(1000.4, 5, bounds=(), counts=())]}),
        ]
    )
    (sample,) = merged.revisions["r"]
    assert sample.requests == 17
    assert sample.latency_bounds == LATENCY_BOUNDS
    assert sum(sample.latency_counts) == 10


def test_merge_of_one_pod_whose_clock_stepped_keeps_every_request() -> None:
    stepped = DeploymentLoad(
        {"r": [_sample(1000.1, 4, concurrency=1.0), _sample(1000.9, 6, concurrency=3.0)]}
    )
    (sample,) = merge_loads([stepped]).revisions["r"]
    assert (sample.requests, sample.seconds) == (10, 2.0)
    assert sample.concurrency == pytest.approx(2.0)


def test_merge_of_nothing_is_empty() -> None:
    assert merge_loads([]) == DeploymentLoad({}, 0)
    assert merge_loads([DeploymentLoad({"r": []}, 1)]) == DeploymentLoad({"r": []}, 1)
