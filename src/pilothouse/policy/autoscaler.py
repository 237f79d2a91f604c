"""How many replicas a revision needs from its recent load, by the rules of Knative's KPA.

Why two windows: a long *stable* window (60 s) smooths noise, so replicas are not
started and stopped on every blip, but it notices a burst only after tens of
seconds. A short *panic* window (6 s) notices it within seconds. When the load in
the panic window needs at least ``panic_threshold`` times the ready replicas, the
autoscaler panics: it follows the larger of the two windows up and refuses to
scale down until the panic window has stayed under the threshold for a whole
stable window, so a burst that comes in waves does not make replicas flap.

Why rate limits: one decision may multiply the ready replicas by at most
``max_scale_up_rate`` and divide them by at most ``max_scale_down_rate``, so a
bad sample cannot start a thousand replicas or drain a busy revision at once.
From zero ready replicas there is nothing to multiply: the revision goes straight
to the count its load needs (at least ``activation_scale``).

Why a grace before zero: the last replica stays until the metric has been zero
for ``scale_to_zero_grace`` seconds (and the stable window shows no traffic), so
a lull between requests does not cost the next request a cold start.

The decision is a pure function of (spec, samples, ready replicas, state, now).
The caller stores the returned ``AutoscalerState`` and passes it back next time;
nothing here reads a clock. A sample is ``(timestamp, value)``: the metric's total
over the revision (requests in flight, requests per second, or CPU cores in use)
stamped with the same clock as ``now``. A window's average is the plain mean of
the samples inside it, so samples should arrive at a regular interval (the
scrape period). Samples in the future (after ``now``) are not used yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, TypeVar

# Kubernetes stores replica counts as int32; no decision asks for more.
REPLICA_LIMIT = 2**31 - 1

# Ratios are rounded to this many decimals before ceil/floor, so that
# 1.1 / 0.1 == 11.000000000000002 needs 11 replicas, not 12.
_DIGITS = 9


class Metric(StrEnum):
    """What a sample's value measures, summed over the revision's replicas."""

    CONCURRENCY = "concurrency"  # requests in flight
    RPS = "rps"  # requests per second
    CPU = "cpu"  # CPU cores in use


class Sample(NamedTuple):
    """One observation of the metric; a plain ``(at, value)`` tuple works as well."""

    at: float
    value: float


@dataclass(frozen=True, kw_only=True)
class AutoscalerSpec:
    """Per-revision autoscaling settings; windows and grace are in seconds.

    ``target`` is the metric's value one replica should carry. The panic window
    is given in seconds (Knative expresses it as a percentage of the stable
    window, 1 % to 100 %; its 10 % default is the 6 s here) and must not be
    longer than the stable window. Equal to it, both windows average the same
    samples, so panicking follows no faster signal; what remains of panic mode
    is its hold: once the load needs ``panic_threshold`` times the ready
    replicas, no scale-down until a whole stable window has passed without
    that. Rates are factors per decision and must exceed 1.
    """

    target: float
    min_replicas: int
    max_replicas: int
    metric: Metric = Metric.CONCURRENCY
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace: float = 30.0
    activation_scale: int = 1

    def __post_init__(self) -> None:
        try:
            metric = Metric(self.metric)
        except ValueError:
            choices = ", ".join(m.value for m in Metric)
            raise ValueError(f"metric must be one of {choices}, got {self.metric!r}") from None
        object.__setattr__(self, "metric", metric)
        _check(_finite(self.target) and self.target > 0, "target", "> 0", self.target)
        _check(self.min_replicas >= 0, "min_replicas", ">= 0", self.min_replicas)
        _check(
            1 <= self.max_replicas <= REPLICA_LIMIT,
            "max_replicas",
            f">= 1 and <= {REPLICA_LIMIT}",
            self.max_replicas,
        )
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas must be <= max_replicas ({self.max_replicas}), "
                f"got {self.min_replicas}"
            )
        _check(
            _finite(self.stable_window) and self.stable_window > 0,
            "stable_window",
            "> 0",
            self.stable_window,
        )
        _check(
            _finite(self.panic_window) and 0 < self.panic_window <= self.stable_window,
            "panic_window",
            f"> 0 and <= stable_window ({self.stable_window:g})",
            self.panic_window,
        )
        _check(
            _finite(self.panic_threshold) and self.panic_threshold > 1,
            "panic_threshold",
            "> 1.0",
            self.panic_threshold,
        )
        _check(
            _finite(self.max_scale_up_rate) and self.max_scale_up_rate > 1,
            "max_scale_up_rate",
            "> 1.0",
            self.max_scale_up_rate,
        )
        _check(
            _finite(self.max_scale_down_rate) and self.max_scale_down_rate > 1,
            "max_scale_down_rate",
            "> 1.0",
            self.max_scale_down_rate,
        )
        _check(
            _finite(self.scale_to_zero_grace) and self.scale_to_zero_grace >= 0,
            "scale_to_zero_grace",
            ">= 0",
            self.scale_to_zero_grace,
        )
        _check(
            1 <= self.activation_scale <= self.max_replicas,
            "activation_scale",
            f">= 1 and <= max_replicas ({self.max_replicas})",
            self.activation_scale,
        )


@dataclass(frozen=True)
class AutoscalerState:
    """Persisted by the caller between decisions (in the revision's status).

    ``panic_started_at`` is set while in panic mode; ``last_over_threshold_at``
    is the latest decision whose panic window was over the threshold (panic ends
    a stable window after it); ``max_panic_replicas`` is the most replicas
    decided during this panic; ``last_active_at`` is when the metric was last
    non-zero (``None`` until the first decision, which starts the clock).
    """

    panic_started_at: float | None = None
    last_over_threshold_at: float | None = None
    max_panic_replicas: int = 0
    last_active_at: float | None = None

    @property
    def in_panic(self) -> bool:
        return self.panic_started_at is not None


@dataclass(frozen=True)
class Decision:
    """The replica count to converge on, the state to persist, and why.

    ``stable_desired`` and ``panic_desired`` are each window's need before the
    rate limits and clamps, ``ceil(average / target)``; a window without samples
    has average 0 and ``*_samples == 0``.
    """

    desired_replicas: int
    state: AutoscalerState
    reason: str
    in_panic: bool
    stable_average: float
    panic_average: float
    stable_desired: int
    panic_desired: int
    stable_samples: int
    panic_samples: int


_S = TypeVar("_S", bound=tuple[float, float])


def prune(samples: Iterable[_S], now: float, window: float) -> list[_S]:
    """The samples a decision at ``now`` or later may still use: those newer than ``now - window``.

    Pass ``spec.stable_window`` to keep a bounded buffer; a decision on the pruned
    buffer equals one on the full history.
    """
    if not (_finite(window) and window >= 0):
        raise ValueError(f"window must be a finite number >= 0, got {window!r}")
    cutoff = now - window
    return [s for s in samples if s[0] > cutoff]


def decide_scale(
    spec: AutoscalerSpec,
    samples: Sequence[tuple[float, float]],
    ready: int,
    state: AutoscalerState,
    now: float,
) -> Decision:
    """Decide the replica count for a revision with ``ready`` ready replicas at ``now``.

    Only samples with ``now - stable_window < at <= now`` count; a non-finite
    sample is skipped and a negative value counts as 0.
    """
    if ready < 0:
        raise ValueError(f"ready must be >= 0, got {ready}")
    if not _finite(now):
        raise ValueError(f"now must be a finite number, got {now!r}")

    stable_values: list[float] = []
    panic_values: list[float] = []
    last_seen_active: float | None = None
    for at, raw in samples:
        if not (_finite(at) and _finite(raw)) or not now - spec.stable_window < at <= now:
            continue
        value = max(0.0, float(raw))
        stable_values.append(value)
        if at > now - spec.panic_window:
            panic_values.append(value)
        if value > 0 and (last_seen_active is None or at > last_seen_active):
            last_seen_active = float(at)
    traffic = last_seen_active is not None
    known = [t for t in (state.last_active_at, last_seen_active) if t is not None]
    last_active_at = max(known) if known else now

    stable_avg = _mean(stable_values)
    panic_avg = _mean(panic_values)
    stable_want = _replicas_for(stable_avg, spec.target)
    panic_want = _replicas_for(panic_avg, spec.target)

    # Panic mode: entered (or extended) whenever the panic window needs
    # panic_threshold times the ready replicas (counting 0 ready as 1); left once
    # a whole stable window has passed without that. No samples, no panic.
    base = max(ready, 1)
    over = bool(panic_values) and panic_want / base >= spec.panic_threshold
    panic_started_at = state.panic_started_at
    last_over = state.last_over_threshold_at
    max_panic = state.max_panic_replicas
    if over:
        if panic_started_at is None:
            panic_started_at, max_panic = now, 0
        last_over = now
    elif panic_started_at is not None and (
        last_over is None or now - last_over >= spec.stable_window
    ):
        panic_started_at, last_over, max_panic = None, None, 0
    in_panic = panic_started_at is not None

    metric = spec.metric.value
    if in_panic:
        want = max(stable_want, panic_want)
        window = f"{spec.panic_window:g}s avg {metric} {panic_avg:.1f}"
        if over:
            reason = (
                f"panic: {window} needs {panic_want} replicas"
                f" >= {float(spec.panic_threshold)}x {ready} ready -> {want}"
            )
        else:
            under = now - (last_over if last_over is not None else now)
            reason = (
                f"panic: {window}, under threshold for {under:.0f}s"
                f" of {spec.stable_window:g}s -> {want}"
            )
    else:
        want = stable_want
        if stable_values:
            reason = (
                f"stable: avg {metric} {stable_avg:.1f} over {spec.stable_window:g}s"
                f" / target {spec.target:g} -> {want}"
            )
        else:
            reason = f"stable: no {metric} samples in the last {spec.stable_window:g}s -> 0"

    # Rate limits, relative to the ready replicas. From zero there is no limit up.
    if ready > 0:
        up_limit = min(REPLICA_LIMIT, _ceil(spec.max_scale_up_rate * ready))
        down_limit = _floor(ready / spec.max_scale_down_rate)
    else:
        up_limit, down_limit = REPLICA_LIMIT, 0
    desired = want
    if desired > up_limit:
        desired = up_limit
        reason = (
            f"scale-up limited by maxScaleUpRate {float(spec.max_scale_up_rate)}:"
            f" {ready} -> {desired}"
        )
    elif desired < down_limit:
        desired = down_limit
        reason = (
            f"scale-down limited by maxScaleDownRate {float(spec.max_scale_down_rate)}:"
            f" {ready} -> {desired}"
        )

    if in_panic and desired < max_panic:
        reason = f"held at {max_panic} during panic (load wants {desired})"
        desired = max_panic

    if traffic and desired < spec.activation_scale:
        desired = spec.activation_scale
        reason = f"raised to activationScale {spec.activation_scale} while there is traffic"

    if desired == 0 and spec.min_replicas == 0 and ready > 0:
        quiet = now - last_active_at
        if quiet < spec.scale_to_zero_grace:
            desired = 1
            reason = (
                f"keeping 1 replica: {quiet:.0f}s without traffic,"
                f" scale-to-zero grace {spec.scale_to_zero_grace:g}s"
            )
        else:
            reason = f"scale to zero after {spec.scale_to_zero_grace:g}s without traffic"

    if desired < spec.min_replicas:
        reason = f"raised to minReplicas {spec.min_replicas} (load wants {desired})"
        desired = spec.min_replicas
    elif desired > spec.max_replicas:
        reason = f"capped at maxReplicas {spec.max_replicas} (load wants {desired})"
        desired = spec.max_replicas

    return Decision(
        desired_replicas=desired,
        state=AutoscalerState(
            panic_started_at=panic_started_at,
            last_over_threshold_at=last_over,
            max_panic_replicas=desired if in_panic else 0,
            last_active_at=last_active_at,
        ),
        reason=reason,
        in_panic=in_panic,
        stable_average=stable_avg,
        panic_average=panic_avg,
        stable_desired=stable_want,
        panic_desired=panic_want,
        stable_samples=len(stable_values),
        panic_samples=len(panic_values),
    )


def _replicas_for(total: float, target: float) -> int:
    return min(REPLICA_LIMIT, _ceil(total / target))


def _mean(values: Sequence[float]) -> float:
    # fsum is exactly rounded, so the order of the samples cannot change the result.
    return math.fsum(values) / len(values) if values else 0.0


def _ceil(x: float) -> int:
    return math.ceil(round(x, _DIGITS)) if x < REPLICA_LIMIT else REPLICA_LIMIT


def _floor(x: float) -> int:
    return math.floor(round(x, _DIGITS)) if x < REPLICA_LIMIT else REPLICA_LIMIT


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except TypeError:  # not a number at all
        return False


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {got!r}")
