"""Unit tests for the KPA-style autoscaler (pure: spec, samples, ready, state, now)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilothouse.policy.autoscaler import (
    AutoscalerSpec,
    AutoscalerState,
    Decision,
    Metric,
    Sample,
    decide_scale,
    prune,
)

FRESH = AutoscalerState()
SPEC = AutoscalerSpec(target=10.0, min_replicas=1, max_replicas=100)


def load(value: float, first: int, last: int) -> list[Sample]:
    """One sample a second, at ``first`` .. ``last`` inclusive."""
    return [Sample(float(t), value) for t in range(first, last + 1)]


def simulate(
    spec: AutoscalerSpec,
    value_at: Callable[[int], float],
    ready: int,
    times: range,
    state: AutoscalerState = FRESH,
) -> dict[int, Decision]:
    """Decide at each of ``times``; replicas become ready at once; samples every second."""
    decisions: dict[int, Decision] = {}
    samples: list[Sample] = []
    seen = times.start - int(spec.stable_window)
    for now in times:
        samples.extend(Sample(float(t), value_at(t)) for t in range(seen + 1, now + 1))
        seen = now
        samples = prune(samples, now, spec.stable_window)
        decision = decide_scale(spec, samples, ready, state, float(now))
        decisions[now] = decision
        state, ready = decision.state, decision.desired_replicas
    return decisions


# --- stable mode -------------------------------------------------------------


def test_steady_load_gives_the_stable_desired_count() -> None:
    d = decide_scale(SPEC, load(50.0, 1, 60), 5, FRESH, now=60.0)
    assert d.desired_replicas == 5
    assert not d.in_panic
    assert d.stable_average == 50.0
    assert d.stable_desired == 5
    assert d.panic_desired == 5
    assert (d.stable_samples, d.panic_samples) == (60, 6)
    assert d.reason == "stable: avg concurrency 50.0 over 60s / target 10 -> 5"


def test_stable_desired_rounds_up() -> None:
    d = decide_scale(SPEC, load(41.0, 1, 60), 5, FRESH, now=60.0)
    assert d.desired_replicas == 5


def test_float_noise_does_not_add_a_replica() -> None:
    spec = AutoscalerSpec(target=0.1, min_replicas=0, max_replicas=100)
    d = decide_scale(spec, load(1.1, 1, 60), 11, FRESH, now=60.0)
    assert d.desired_replicas == 11


def test_samples_older_than_the_stable_window_or_in_the_future_are_ignored() -> None:
    samples = [*load(10_000.0, -100, 0), *load(50.0, 1, 60), *load(10_000.0, 61, 70)]
    d = decide_scale(SPEC, samples, 5, FRESH, now=60.0)
    assert d.desired_replicas == 5
    assert d.stable_samples == 60


def test_plain_tuples_are_accepted_as_samples() -> None:
    samples = [(float(t), 50.0) for t in range(1, 61)]
    assert decide_scale(SPEC, samples, 5, FRESH, now=60.0).desired_replicas == 5


def test_no_samples_means_zero_load_and_no_panic() -> None:
    d = decide_scale(SPEC, [], 4, FRESH, now=60.0)
    assert d.stable_average == 0.0
    assert d.panic_average == 0.0
    assert (d.stable_samples, d.panic_samples) == (0, 0)
    assert not d.in_panic
    assert d.desired_replicas == 2  # halved by max_scale_down_rate, not dropped


def test_a_panic_window_without_samples_does_not_panic() -> None:
    # Old high load still fills the stable window, but nothing arrived in the last 6 s.
    d = decide_scale(SPEC, load(500.0, 1, 50), 1, FRESH, now=60.0)
    assert d.panic_samples == 0
    assert not d.in_panic
    assert d.stable_desired == 50


# --- panic mode --------------------------------------------------------------


def test_a_tripled_load_panics_in_a_single_decision() -> None:
    samples = [*load(50.0, 1, 54), *load(150.0, 55, 60)]
    d = decide_scale(SPEC, samples, 5, FRESH, now=60.0)
    assert d.in_panic
    assert d.stable_desired == 6  # the stable window alone would barely move
    assert d.panic_desired == 15
    assert d.desired_replicas == 15
    assert d.state.panic_started_at == 60.0
    assert d.state.max_panic_replicas == 15
    assert d.reason == "panic: 6s avg concurrency 150.0 needs 15 replicas >= 2.0x 5 ready -> 15"


def test_a_burst_is_met_within_the_panic_window() -> None:
    # 50 in flight, tripled from t=61 on; decisions every 2 s.
    decisions = simulate(SPEC, lambda t: 150.0 if t >= 61 else 50.0, 5, range(60, 80, 2))
    assert decisions[60].desired_replicas == 5
    first_panic = min(t for t, d in decisions.items() if d.in_panic)
    assert first_panic <= 64  # two decisions after the burst began
    assert decisions[66].desired_replicas == 15  # 6 s (one panic window) after it began
    assert decisions[66].stable_desired < 15


def test_panic_never_scales_down() -> None:
    # A 10 s burst; afterwards the panic window wants far fewer replicas.
    decisions = simulate(SPEC, lambda t: 150.0 if 61 <= t <= 70 else 50.0, 5, range(60, 124, 2))
    in_panic = [d for d in decisions.values() if d.in_panic]
    counts = [d.desired_replicas for d in in_panic]
    assert counts == sorted(counts)
    assert decisions[90].in_panic
    assert decisions[90].panic_desired == 5
    assert decisions[90].desired_replicas == 15
    assert decisions[90].reason.startswith("held at 15 during panic")


def test_panic_ends_a_stable_window_after_the_last_overload() -> None:
    decisions = simulate(SPEC, lambda t: 150.0 if 61 <= t <= 70 else 50.0, 5, range(60, 130, 2))
    last_over = decisions[70].state.last_over_threshold_at
    assert last_over == 64.0
    assert decisions[122].in_panic
    after = decisions[124]
    assert not after.in_panic
    assert after.state == AutoscalerState(last_active_at=124.0)
    # Leaving panic the stable window wants 6; the drop from 15 is rate limited.
    assert after.stable_desired == 6
    assert after.desired_replicas == 7
    assert after.reason == "scale-down limited by maxScaleDownRate 2.0: 15 -> 7"
    assert decisions[126].desired_replicas == 6


def test_panic_is_extended_while_the_panic_window_stays_over_the_threshold() -> None:
    state = AutoscalerState(
        panic_started_at=0.0, last_over_threshold_at=0.0, max_panic_replicas=4, last_active_at=0.0
    )
    d = decide_scale(SPEC, load(200.0, 1, 100), 4, state, now=100.0)
    assert d.in_panic
    assert d.state.panic_started_at == 0.0
    assert d.state.last_over_threshold_at == 100.0
    assert d.desired_replicas == 20


def test_rate_limits_apply_in_panic() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=1, max_replicas=100, max_scale_up_rate=2.0)
    d = decide_scale(spec, load(500.0, 1, 60), 2, FRESH, now=60.0)
    assert d.in_panic
    assert d.desired_replicas == 4
    assert d.reason == "scale-up limited by maxScaleUpRate 2.0: 2 -> 4"


# --- a panic window as long as the stable window -------------------------------

# Knative's panic-window-percentage goes up to 100 %: both windows then average the
# same samples, and panic mode keeps only its hold against scaling down.
EQUAL = AutoscalerSpec(
    target=10.0, min_replicas=1, max_replicas=100, stable_window=10.0, panic_window=10.0
)


def test_a_panic_window_equal_to_the_stable_window_is_accepted() -> None:
    assert (EQUAL.stable_window, EQUAL.panic_window) == (10.0, 10.0)


def test_equal_windows_average_the_same_samples() -> None:
    # The sample at now - 10 is outside both windows; the 10 after it are in both.
    d = decide_scale(EQUAL, [Sample(0.0, 1000.0), *load(50.0, 1, 10)], 5, FRESH, now=10.0)
    assert (d.stable_samples, d.panic_samples) == (10, 10)
    assert d.stable_average == d.panic_average == 50.0
    assert d.stable_desired == d.panic_desired == 5
    assert not d.in_panic
    assert d.desired_replicas == 5


def test_equal_windows_panic_when_the_load_needs_the_threshold_times_ready() -> None:
    at_threshold = decide_scale(EQUAL, load(99.0, 1, 10), 5, FRESH, now=10.0)
    assert at_threshold.stable_desired == 10  # 2.0 x 5 ready: the threshold itself
    assert at_threshold.in_panic
    below = decide_scale(EQUAL, load(90.0, 1, 10), 5, FRESH, now=10.0)
    assert below.stable_desired == 9
    assert not below.in_panic
    d = decide_scale(EQUAL, load(150.0, 1, 10), 5, FRESH, now=10.0)
    assert d.in_panic
    assert d.desired_replicas == 15
    assert d.reason == "panic: 10s avg concurrency 150.0 needs 15 replicas >= 2.0x 5 ready -> 15"


def test_equal_windows_hold_the_panic_count_for_a_stable_window() -> None:
    decisions = simulate(EQUAL, lambda t: 150.0 if t <= 10 else 50.0, 5, range(10, 23))
    assert decisions[10].in_panic
    assert decisions[10].desired_replicas == 15
    # The load falls at once, but nothing scales down while panic lasts ...
    for now in range(11, 20):
        assert decisions[now].in_panic, now
        assert decisions[now].desired_replicas == 15, now
    assert decisions[15].stable_desired == 10
    assert decisions[19].stable_desired == 6
    # (6, or 7 after the scale-down rate limit from 15)
    assert decisions[19].reason == "held at 15 during panic (load wants 7)"
    # ... and a stable window after the last overload panic ends, rate limited down.
    after = decisions[20]
    assert not after.in_panic
    assert after.stable_desired == 5
    assert after.desired_replicas == 7
    assert decisions[21].desired_replicas == 5


def test_without_panic_equal_windows_would_scale_down_at_once() -> None:
    # The same load with a threshold never reached: the hold above is panic's doing.
    calm = AutoscalerSpec(
        target=10.0,
        min_replicas=1,
        max_replicas=100,
        stable_window=10.0,
        panic_window=10.0,
        panic_threshold=100.0,
    )
    decisions = simulate(calm, lambda t: 150.0 if t <= 10 else 50.0, 15, range(10, 16))
    assert not any(d.in_panic for d in decisions.values())
    assert decisions[15].desired_replicas == 10


# --- rate limits and clamps ---------------------------------------------------


def test_calm_scale_down_is_limited_by_max_scale_down_rate() -> None:
    decisions = simulate(SPEC, lambda t: 10.0, 8, range(60, 67, 2))
    assert [d.desired_replicas for d in decisions.values()] == [4, 2, 1, 1]
    assert decisions[60].reason == "scale-down limited by maxScaleDownRate 2.0: 8 -> 4"
    assert decisions[64].reason == "stable: avg concurrency 10.0 over 60s / target 10 -> 1"


def test_a_larger_scale_down_rate_drops_faster() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=1, max_replicas=100, max_scale_down_rate=4.0)
    assert decide_scale(spec, load(10.0, 1, 60), 8, FRESH, now=60.0).desired_replicas == 2


def test_stable_scale_up_is_limited_by_max_scale_up_rate() -> None:
    spec = AutoscalerSpec(
        target=10.0, min_replicas=1, max_replicas=100, max_scale_up_rate=1.5, panic_threshold=10.0
    )
    d = decide_scale(spec, load(100.0, 1, 60), 3, FRESH, now=60.0)
    assert not d.in_panic
    assert d.desired_replicas == 5  # ceil(1.5 * 3)
    assert d.reason == "scale-up limited by maxScaleUpRate 1.5: 3 -> 5"


def test_min_replicas_is_a_floor() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=3, max_replicas=10)
    d = decide_scale(spec, load(0.0, 1, 60), 3, FRESH, now=60.0)
    assert d.desired_replicas == 3
    assert d.reason == "raised to minReplicas 3 (load wants 1)"


def test_max_replicas_is_a_ceiling() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=1, max_replicas=10, panic_threshold=100.0)
    d = decide_scale(spec, load(1000.0, 1, 60), 8, FRESH, now=60.0)
    assert d.desired_replicas == 10
    assert d.stable_desired == 100
    assert d.reason == "capped at maxReplicas 10 (load wants 100)"


# --- scale to and from zero ---------------------------------------------------

SHORT = AutoscalerSpec(
    target=10.0, min_replicas=0, max_replicas=10, stable_window=10.0, panic_window=1.0
)


def test_scale_to_zero_waits_for_the_grace_without_traffic() -> None:
    active = decide_scale(SHORT, load(5.0, 91, 100), 1, FRESH, now=100.0)
    assert active.state.last_active_at == 100.0
    quiet = load(0.0, 101, 140)
    holding = decide_scale(SHORT, quiet, 1, active.state, now=115.0)
    assert holding.stable_desired == 0
    assert holding.desired_replicas == 1
    assert holding.reason == "keeping 1 replica: 15s without traffic, scale-to-zero grace 30s"
    gone = decide_scale(SHORT, quiet, 1, holding.state, now=130.0)
    assert gone.desired_replicas == 0
    assert gone.reason == "scale to zero after 30s without traffic"


def test_the_stable_window_must_also_be_empty_before_zero() -> None:
    # Default windows: traffic 31 s ago is still in the 60 s stable window.
    spec = AutoscalerSpec(target=10.0, min_replicas=0, max_replicas=10)
    samples = [*load(5.0, 41, 100), *load(0.0, 101, 200)]
    state = AutoscalerState(last_active_at=100.0)
    assert decide_scale(spec, samples, 1, state, now=131.0).desired_replicas == 1
    assert decide_scale(spec, samples, 1, state, now=160.0).desired_replicas == 0


def test_no_scale_to_zero_when_min_replicas_is_positive() -> None:
    spec = AutoscalerSpec(
        target=10.0, min_replicas=1, max_replicas=10, stable_window=10.0, panic_window=1.0
    )
    state = AutoscalerState(last_active_at=0.0)
    d = decide_scale(spec, load(0.0, 991, 1000), 1, state, now=1000.0)
    assert d.desired_replicas == 1


def test_no_scale_to_zero_while_there_is_any_traffic() -> None:
    state = AutoscalerState(last_active_at=0.0)
    d = decide_scale(SHORT, [*load(0.0, 991, 999), Sample(1000.0, 0.01)], 1, state, now=1000.0)
    assert d.desired_replicas == 1
    assert d.state.last_active_at == 1000.0


def test_a_fresh_state_starts_the_grace_clock() -> None:
    d = decide_scale(SHORT, load(0.0, 991, 1000), 1, FRESH, now=1000.0)
    assert d.desired_replicas == 1
    assert d.state.last_active_at == 1000.0


def test_zero_without_traffic_stays_at_zero() -> None:
    d = decide_scale(SHORT, load(0.0, 991, 1000), 0, FRESH, now=1000.0)
    assert d.desired_replicas == 0


@pytest.mark.parametrize("value", [0.01, 3.0, 10.0])
def test_traffic_at_zero_starts_at_least_one_replica(value: float) -> None:
    d = decide_scale(SHORT, [Sample(1000.0, value)], 0, AutoscalerState(last_active_at=0.0), 1000.0)
    assert d.desired_replicas == 1


def test_traffic_at_zero_starts_activation_scale_replicas() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=0, max_replicas=10, activation_scale=3)
    d = decide_scale(spec, [Sample(60.0, 1.0)], 0, FRESH, now=60.0)
    assert d.desired_replicas == 3
    assert d.reason == "raised to activationScale 3 while there is traffic"


def test_from_zero_goes_straight_to_the_needed_count() -> None:
    spec = AutoscalerSpec(target=10.0, min_replicas=0, max_replicas=100, max_scale_up_rate=2.0)
    d = decide_scale(spec, load(500.0, 1, 60), 0, FRESH, now=60.0)
    assert d.desired_replicas == 50


# --- metrics ------------------------------------------------------------------


def test_rps_metric() -> None:
    spec = AutoscalerSpec(metric=Metric.RPS, target=20.0, min_replicas=0, max_replicas=10)
    d = decide_scale(spec, load(100.0, 1, 60), 5, FRESH, now=60.0)
    assert d.desired_replicas == 5
    assert d.reason == "stable: avg rps 100.0 over 60s / target 20 -> 5"


def test_cpu_metric() -> None:
    spec = AutoscalerSpec(metric=Metric.CPU, target=0.8, min_replicas=0, max_replicas=10)
    d = decide_scale(spec, load(3.0, 1, 60), 4, FRESH, now=60.0)
    assert d.desired_replicas == 4  # ceil(3.0 / 0.8)
    assert d.reason == "stable: avg cpu 3.0 over 60s / target 0.8 -> 4"


def test_metric_may_be_given_as_a_string() -> None:
    spec = AutoscalerSpec(metric="rps", target=1.0, min_replicas=0, max_replicas=1)  # type: ignore[arg-type]
    assert spec.metric is Metric.RPS


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("target", {"target": 0.0}),
        ("target", {"target": -1.0}),
        ("target", {"target": math.nan}),
        ("min_replicas", {"min_replicas": -1}),
        ("max_replicas", {"max_replicas": 0}),
        ("min_replicas", {"min_replicas": 5, "max_replicas": 3}),
        ("stable_window", {"stable_window": 0.0}),
        ("stable_window", {"stable_window": -60.0}),
        ("panic_window", {"panic_window": 0.0}),
        ("panic_window", {"panic_window": -6.0}),
        ("panic_window", {"panic_window": 60.001}),
        ("panic_window", {"panic_window": 90.0}),
        ("panic_window", {"panic_window": math.inf}),
        ("panic_threshold", {"panic_threshold": 1.0}),
        ("max_scale_up_rate", {"max_scale_up_rate": 1.0}),
        ("max_scale_down_rate", {"max_scale_down_rate": 0.5}),
        ("scale_to_zero_grace", {"scale_to_zero_grace": -1.0}),
        ("activation_scale", {"activation_scale": 0}),
        ("activation_scale", {"activation_scale": 11}),
        ("metric", {"metric": "qps"}),
    ],
)
def test_invalid_specs_name_the_field(field: str, overrides: dict[str, Any]) -> None:
    params: dict[str, Any] = {"target": 10.0, "min_replicas": 0, "max_replicas": 10}
    params.update(overrides)
    with pytest.raises(ValueError, match=f"^{field} must be"):
        AutoscalerSpec(**params)


def test_a_panic_window_longer_than_the_stable_window_is_refused_with_both() -> None:
    expected = "panic_window must be > 0 and <= stable_window (60), got 60.5"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        AutoscalerSpec(target=10.0, min_replicas=0, max_replicas=10, panic_window=60.5)


def test_negative_ready_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^ready"):
        decide_scale(SPEC, [], -1, FRESH, now=0.0)


def test_prune_rejects_a_negative_window() -> None:
    with pytest.raises(ValueError, match=r"^window"):
        prune([], 0.0, -1.0)


def test_prune_drops_samples_outside_the_window() -> None:
    samples = load(1.0, 0, 100)
    kept = prune(samples, 100.0, 60.0)
    assert [s.at for s in kept] == [float(t) for t in range(41, 101)]
    assert prune(samples, 100.0, 0.0) == []


# --- properties ---------------------------------------------------------------

NOW = 1000.0


@st.composite
def specs(draw: st.DrawFn) -> AutoscalerSpec:
    max_replicas = draw(st.integers(1, 50))
    stable = draw(st.floats(2.0, 120.0))
    return AutoscalerSpec(
        metric=draw(st.sampled_from(Metric)),
        target=draw(st.floats(0.05, 100.0)),
        min_replicas=draw(st.integers(0, max_replicas)),
        max_replicas=max_replicas,
        stable_window=stable,
        panic_window=stable * draw(st.floats(0.01, 1.0)),
        panic_threshold=draw(st.floats(1.01, 5.0)),
        max_scale_up_rate=draw(st.floats(1.01, 1000.0)),
        max_scale_down_rate=draw(st.floats(1.01, 10.0)),
        scale_to_zero_grace=draw(st.floats(0.0, 120.0)),
        activation_scale=draw(st.integers(1, max_replicas)),
    )


sample_lists = st.lists(
    st.tuples(
        st.floats(NOW - 200.0, NOW + 10.0),
        st.one_of(st.just(0.0), st.floats(0.0, 2000.0)),
    ),
    max_size=40,
)


@st.composite
def states(draw: st.DrawFn) -> AutoscalerState:
    last_active = draw(st.none() | st.floats(NOW - 300.0, NOW))
    if not draw(st.booleans()):
        return AutoscalerState(last_active_at=last_active)
    started = draw(st.floats(NOW - 300.0, NOW))
    return AutoscalerState(
        panic_started_at=started,
        last_over_threshold_at=draw(st.floats(started, NOW)),
        max_panic_replicas=draw(st.integers(0, 60)),
        last_active_at=last_active,
    )


readies = st.integers(0, 60)


def _traffic(spec: AutoscalerSpec, samples: list[tuple[float, float]]) -> bool:
    return any(NOW - spec.stable_window < t <= NOW and v > 0 for t, v in samples)


@given(specs(), sample_lists, readies, states())
def test_desired_is_always_within_min_and_max(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    d = decide_scale(spec, samples, ready, state, NOW)
    assert spec.min_replicas <= d.desired_replicas <= spec.max_replicas


@given(specs(), sample_lists, st.integers(1, 60), states())
def test_scale_up_is_bounded_by_the_rate_from_ready_replicas(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    d = decide_scale(spec, samples, ready, state, NOW)
    by_rate = math.ceil(spec.max_scale_up_rate * ready + 1e-6)
    held = state.max_panic_replicas if state.in_panic else 0
    assert d.desired_replicas <= max(spec.min_replicas, spec.activation_scale, by_rate, held)


@given(specs(), sample_lists, readies, states())
def test_scale_down_is_bounded_by_the_rate(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    d = decide_scale(spec, samples, ready, state, NOW)
    by_rate = math.floor(ready / spec.max_scale_down_rate - 1e-6)
    assert d.desired_replicas >= min(spec.max_replicas, by_rate)


@given(specs(), sample_lists, readies, states())
def test_traffic_keeps_at_least_the_activation_scale(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    d = decide_scale(spec, samples, ready, state, NOW)
    if _traffic(spec, samples):
        assert d.desired_replicas >= spec.activation_scale >= 1


@given(specs(), sample_lists, readies, states())
def test_zero_only_with_min_zero_and_a_quiet_grace(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    d = decide_scale(spec, samples, ready, state, NOW)
    if d.desired_replicas == 0:
        assert spec.min_replicas == 0
        assert not _traffic(spec, samples)
        last_active = d.state.last_active_at
        assert last_active is not None
        assert ready == 0 or NOW - last_active >= spec.scale_to_zero_grace


@given(specs(), sample_lists, readies)
def test_no_panic_without_panic_window_samples(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int
) -> None:
    d = decide_scale(spec, samples, ready, FRESH, NOW)
    if d.panic_samples == 0:
        assert not d.in_panic


@given(specs(), sample_lists, readies, states())
def test_decision_is_a_pure_function(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    before = list(samples)
    first = decide_scale(spec, samples, ready, state, NOW)
    assert samples == before  # the input is not touched
    assert decide_scale(spec, samples, ready, state, NOW) == first
    assert decide_scale(spec, list(reversed(samples)), ready, state, NOW) == first


@given(specs(), sample_lists, readies, states())
def test_pruning_to_the_stable_window_changes_nothing(
    spec: AutoscalerSpec, samples: list[tuple[float, float]], ready: int, state: AutoscalerState
) -> None:
    pruned = prune(samples, NOW, spec.stable_window)
    assert all(t > NOW - spec.stable_window for t, _ in pruned)
    assert decide_scale(spec, pruned, ready, state, NOW) == decide_scale(
        spec, samples, ready, state, NOW
    )


@given(
    specs(),
    st.lists(
        st.tuples(st.floats(0.5, 10.0), st.floats(0.0, 2000.0), st.integers(0, 60)),
        min_size=2,
        max_size=25,
    ),
)
def test_panic_never_lowers_the_desired_count(
    spec: AutoscalerSpec, steps: list[tuple[float, float, int]]
) -> None:
    # Each step: time passes, one sample arrives, and some number of replicas is ready.
    now, state = 0.0, FRESH
    samples: list[tuple[float, float]] = []
    previous: Decision | None = None
    for dt, value, ready in steps:
        now += dt
        samples.append((now, value))
        d = decide_scale(spec, samples, ready, state, now)
        if previous is not None and previous.in_panic and d.in_panic:
            assert d.desired_replicas >= previous.desired_replicas
        previous, state = d, d.state
