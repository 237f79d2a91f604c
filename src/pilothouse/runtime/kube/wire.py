"""The JSON forms of the data-plane port's values, as the operator and the router pods
exchange them: ``Traffic`` in the router's ConfigMap (``data["traffic.json"]``), and what
a router pod measured (``DeploymentLoad``, ``Responses``) on its control port.

One encoder and one decoder per value, used by both sides, so the two can never drift
apart. Field names are the dataclasses' own. Decoding is strict: a field that is unknown,
of the wrong type or out of range is a ``ValueError`` naming it (``traffic.weights.r1``,
``load.revisions.r1[3].requests``), never a value quietly taken for another. Encoded forms
hold only what strict JSON can say: an infinite latency bound is ``"+Inf"`` (as in
Prometheus), bodies are base64.

``merge_loads`` sums what several router pods of one deployment measured. Everything here
is pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from pilothouse.ports.dataplane import (
    DeploymentLoad,
    LoadSample,
    MirrorPair,
    Responses,
    ResponseSample,
    Traffic,
)

__all__ = [
    "decode_load",
    "decode_responses",
    "decode_traffic",
    "encode_load",
    "encode_responses",
    "encode_traffic",
    "merge_loads",
]

T = TypeVar("T")
_INF = "+Inf"


# -- checked reads ---------------------------------------------------------------------------


def _object(value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown field")
    return value


def _number(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where}: must be finite")
    if low is not None and number < low:
        raise ValueError(f"{where}: must be at least {low:g}, got {number:g}")
    if high is not None and number > high:
        raise ValueError(f"{where}: must be at most {high:g}, got {number:g}")
    return number


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{where}: must not be negative, got {value}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _bytes(value: Any, where: str) -> bytes:
    text = _string(value, where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{where}: not base64 ({exc})") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _items(value: Any, where: str, read: Callable[[Any, str], T]) -> list[T]:
    return [read(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where))]


# -- Traffic ---------------------------------------------------------------------------------


def encode_traffic(traffic: Traffic) -> dict[str, Any]:
    """The JSON form of ``traffic`` (every field, defaults included)."""
    return {
        "weights": {str(k): float(v) for k, v in traffic.weights.items()},
        "mirror_revision": traffic.mirror_revision,
        "mirror_percent": float(traffic.mirror_percent),
        "max_concurrency": int(traffic.max_concurrency),
        "queue_limit": int(traffic.queue_limit),
        "queue_timeout": float(traffic.queue_timeout),
        "hold_when_empty": bool(traffic.hold_when_empty),
        "max_ejection_percent": float(traffic.max_ejection_percent),
    }


def decode_traffic(data: Any) -> Traffic:
    """``Traffic`` from its JSON form; fields left out take their defaults."""
    where = "traffic"
    obj = _object(data, where, _names(Traffic))
    kwargs: dict[str, Any] = {}
    if "weights" in obj:
        weights = obj["weights"]
        if not isinstance(weights, dict):
            raise ValueError(f"{where}.weights: expected an object, got {type(weights).__name__}")
        kwargs["weights"] = {
            str(rev): _number(share, f"{where}.weights.{rev}", low=0.0)
            for rev, share in weights.items()
        }
        for rev in weights:
            if not rev:
                raise ValueError(f"{where}.weights: a revision name is empty")
    if "mirror_revision" in obj and obj["mirror_revision"] is not None:
        kwargs["mirror_revision"] = _string(obj["mirror_revision"], f"{where}.mirror_revision")
    if "mirror_percent" in obj:
        kwargs["mirror_percent"] = _number(
            obj["mirror_percent"], f"{where}.mirror_percent", 0.0, 100.0
        )
    if "max_concurrency" in obj:
        kwargs["max_concurrency"] = _count(obj["max_concurrency"], f"{where}.max_concurrency")
    if "queue_limit" in obj:
        kwargs["queue_limit"] = _count(obj["queue_limit"], f"{where}.queue_limit")
    if "queue_timeout" in obj:
        kwargs["queue_timeout"] = _number(obj["queue_timeout"], f"{where}.queue_timeout", 0.0)
    if "hold_when_empty" in obj:
        hold = obj["hold_when_empty"]
        if not isinstance(hold, bool):
            raise ValueError(
                f"{where}.hold_when_empty: expected true or false, got {type(hold).__name__}"
            )
        kwargs["hold_when_empty"] = hold
    if "max_ejection_percent" in obj:
        kwargs["max_ejection_percent"] = _number(
            obj["max_ejection_percent"], f"{where}.max_ejection_percent", 0.0, 100.0
        )
    return Traffic(**kwargs)


# -- DeploymentLoad --------------------------------------------------------------------------


def _encode_bound(bound: float) -> float | str:
    return _INF if bound == math.inf else float(bound)


def _decode_bound(value: Any, where: str) -> float:
    if value == _INF:
        return math.inf
    return _number(value, where, low=0.0)


def _encode_sample(sample: LoadSample) -> dict[str, Any]:
    return {
        "time": float(sample.time),
        "seconds": float(sample.seconds),
        "concurrency": float(sample.concurrency),
        "requests": int(sample.requests),
        "errors": int(sample.errors),
        "cpu": None if sample.cpu is None else float(sample.cpu),
        "latency_bounds": [_encode_bound(b) for b in sample.latency_bounds],
        "latency_counts": [int(c) for c in sample.latency_counts],
        "mirrored_requests": int(sample.mirrored_requests),
        "mirrored_concurrency": float(sample.mirrored_concurrency),
    }


def _decode_sample(data: Any, where: str) -> LoadSample:
    obj = _object(data, where, _names(LoadSample))
    for required in ("time", "seconds", "concurrency", "requests", "errors"):
        if required not in obj:
            raise ValueError(f"{where}.{required}: missing")
    cpu = obj.get("cpu")
    bounds = tuple(_items(obj.get("latency_bounds", []), f"{where}.latency_bounds", _decode_bound))
    counts = tuple(_items(obj.get("latency_counts", []), f"{where}.latency_counts", _count))
    if len(bounds) != len(counts):
        raise ValueError(
            f"{where}.latency_counts: {len(counts)} counts for {len(bounds)} latency bounds"
        )
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        raise ValueError(f"{where}.latency_bounds: must be ascending")
    return LoadSample(
        time=_number(obj["time"], f"{where}.time"),
        seconds=_number(obj["seconds"], f"{where}.seconds", low=0.0),
        concurrency=_number(obj["concurrency"], f"{where}.concurrency", low=0.0),
        requests=_count(obj["requests"], f"{where}.requests"),
        errors=_count(obj["errors"], f"{where}.errors"),
        cpu=None if cpu is None else _number(cpu, f"{where}.cpu", low=0.0),
        latency_bounds=bounds,
        latency_counts=counts,
        mirrored_requests=_count(obj.get("mirrored_requests", 0), f"{where}.mirrored_requests"),
        mirrored_concurrency=_number(
            obj.get("mirrored_concurrency", 0.0), f"{where}.mirrored_concurrency", low=0.0
        ),
    )


def encode_load(load: DeploymentLoad) -> dict[str, Any]:
    """``{"revisions": {REV: [LoadSample...]}, "queued": N}``."""
    return {
        "revisions": {
            str(rev): [_encode_sample(s) for s in samples]
            for rev, samples in load.revisions.items()
        },
        "queued": int(load.queued),
    }


def decode_load(data: Any) -> DeploymentLoad:
    where = "load"
    obj = _object(data, where, ("revisions", "queued"))
    revisions = obj.get("revisions", {})
    if not isinstance(revisions, dict):
        raise ValueError(f"{where}.revisions: expected an object, got {type(revisions).__name__}")
    return DeploymentLoad(
        revisions={
            str(rev): _items(samples, f"{where}.revisions.{rev}", _decode_sample)
            for rev, samples in revisions.items()
        },
        queued=_count(obj.get("queued", 0), f"{where}.queued"),
    )


# -- Responses -------------------------------------------------------------------------------


def encode_responses(responses: Responses) -> dict[str, Any]:
    """``{"samples": [ResponseSample...], "mirrors": [MirrorPair...]}``, bodies base64."""
    return {
        "samples": [
            {"time": float(s.time), "revision": s.revision, "body": _b64(s.body)}
            for s in responses.samples
        ],
        "mirrors": [
            {
                "time": float(m.time),
                "primary_revision": m.primary_revision,
                "primary_status": int(m.primary_status),
                "primary_body": _b64(m.primary_body),
                "mirror_revision": m.mirror_revision,
                "mirror_status": int(m.mirror_status),
                "mirror_body": _b64(m.mirror_body),
            }
            for m in responses.mirrors
        ],
    }


def _required(obj: Mapping[str, Any], where: str, names: tuple[str, ...]) -> None:
    for name in names:
        if name not in obj:
            raise ValueError(f"{where}.{name}: missing")


def _decode_response_sample(data: Any, where: str) -> ResponseSample:
    names = _names(ResponseSample)
    obj = _object(data, where, names)
    _required(obj, where, names)
    return ResponseSample(
        time=_number(obj["time"], f"{where}.time"),
        revision=_string(obj["revision"], f"{where}.revision"),
        body=_bytes(obj["body"], f"{where}.body"),
    )


def _status(value: Any, where: str) -> int:
    status = _count(value, where)
    if status > 999:
        raise ValueError(f"{where}: not an HTTP status: {status}")
    return status


def _decode_mirror(data: Any, where: str) -> MirrorPair:
    names = _names(MirrorPair)
    obj = _object(data, where, names)
    _required(obj, where, names)
    return MirrorPair(
        time=_number(obj["time"], f"{where}.time"),
        primary_revision=_string(obj["primary_revision"], f"{where}.primary_revision"),
        primary_status=_status(obj["primary_status"], f"{where}.primary_status"),
        primary_body=_bytes(obj["primary_body"], f"{where}.primary_body"),
        mirror_revision=_string(obj["mirror_revision"], f"{where}.mirror_revision"),
        mirror_status=_status(obj["mirror_status"], f"{where}.mirror_status"),
        mirror_body=_bytes(obj["mirror_body"], f"{where}.mirror_body"),
    )


def decode_responses(data: Any) -> Responses:
    where = "responses"
    obj = _object(data, where, ("samples", "mirrors"))
    return Responses(
        samples=_items(obj.get("samples", []), f"{where}.samples", _decode_response_sample),
        mirrors=_items(obj.get("mirrors", []), f"{where}.mirrors", _decode_mirror),
    )


# -- merging what several router pods measured -------------------------------------------------


def _merge_second(parts: list[LoadSample]) -> LoadSample:
    """One second of one revision as several router pods measured it in parallel: their
    requests, errors and concurrency add up; the second is as long as the longest of
    theirs; latency histograms with the same bounds add up bucket-wise (the bounds that
    counted the most requests win; a histogram with other bounds is left out of it)."""
    by_bounds: dict[tuple[float, ...], list[int]] = {}
    for part in parts:
        if not part.latency_bounds:
            continue
        summed = by_bounds.setdefault(part.latency_bounds, [0] * len(part.latency_bounds))
        for i, count in enumerate(part.latency_counts):
            summed[i] += count
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    if by_bounds:
        bounds, best = max(by_bounds.items(), key=lambda kv: sum(kv[1]))
        counts = tuple(best)
    cpus = [p.cpu for p in parts if p.cpu is not None]
    return LoadSample(
        time=max(p.time for p in parts),
        seconds=max(p.seconds for p in parts),
        concurrency=sum(p.concurrency for p in parts),
        requests=sum(p.requests for p in parts),
        errors=sum(p.errors for p in parts),
        cpu=sum(cpus) if cpus else None,
        latency_bounds=bounds,
        latency_counts=counts,
        mirrored_requests=sum(p.mirrored_requests for p in parts),
        mirrored_concurrency=sum(p.mirrored_concurrency for p in parts),
    )


def _in_series(a: LoadSample, b: LoadSample, name: str) -> float:
    """An average over two stretches one after the other, weighted by their lengths."""
    total = a.seconds + b.seconds
    value = float(getattr(a, name)) * a.seconds + float(getattr(b, name)) * b.seconds
    return value / total if total > 0 else 0.0


def _own_seconds(samples: list[LoadSample]) -> dict[int, LoadSample]:
    """One pod's samples by the wall-clock second they end in. A pod closes its buckets a
    second or more apart, so two land in one second only when its clock stepped: those
    are one longer stretch, so their seconds add up too."""
    out: dict[int, LoadSample] = {}
    for sample in samples:
        second = math.floor(sample.time)
        seen = out.get(second)
        if seen is None:
            out[second] = sample
            continue
        merged = _merge_second([seen, sample])
        # in series, not in parallel: average concurrency over the summed time
        total = seen.seconds + sample.seconds

        out[second] = replace(
            merged,
            seconds=total,
            concurrency=_in_series(seen, sample, "concurrency"),
            mirrored_concurrency=_in_series(seen, sample, "mirrored_concurrency"),
        )
    return out


def merge_loads(loads: list[DeploymentLoad]) -> DeploymentLoad:
    """What several router pods of one deployment measured, as one.

    Samples are aligned on the wall-clock second their ``time`` falls in (router pods
    close their buckets once a second each, at their own phase); per revision and second
    the pods' requests, errors, concurrency and CPU (when present) add up, latency
    histograms add up bucket-wise when their bounds match, and the merged sample's time
    is the latest of theirs. ``queued`` is the sum. Samples come out in time order.
    """
    per_revision: dict[str, dict[int, list[LoadSample]]] = {}
    for load in loads:
        for revision, samples in load.revisions.items():
            seconds = per_revision.setdefault(revision, {})
            for second, sample in _own_seconds(samples).items():
                seconds.setdefault(second, []).append(sample)
    return DeploymentLoad(
        revisions={
            revision: [_merge_second(seconds[s]) for s in sorted(seconds)]
            for revision, seconds in per_revision.items()
        },
        queued=sum(load.queued for load in loads),
    )
