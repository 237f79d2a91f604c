"""Unit tests for the restart backoff (pure functions, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilothouse.policy.backoff import BackoffParams, failures_after_exit, restart_delay

DEFAULT = BackoffParams()


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0)],
)
def test_default_delay_doubles_and_is_capped_at_maximum(failures: int, expected: float) -> None:
    assert restart_delay(failures, DEFAULT) == expected


def test_delay_uses_initial_multiplier_and_maximum() -> None:
    params = BackoffParams(initial=0.5, maximum=10.0, multiplier=3.0)
    assert [restart_delay(n, params) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


@pytest.mark.parametrize("failures", [0, -1, -100])
def test_no_failures_means_no_delay(failures: int) -> None:
    assert restart_delay(failures, DEFAULT) == 0.0


def test_delay_is_a_float() -> None:
    assert isinstance(restart_delay(3, BackoffParams(initial=1, maximum=60, multiplier=2)), float)


@pytest.mark.parametrize("ran_for", [120.0, 121.0, 86_400.0])
def test_failures_reset_to_one_after_a_long_run(ran_for: float) -> None:
    assert failures_after_exit(7, ran_for, DEFAULT) == 1


@pytest.mark.parametrize(("previous", "ran_for"), [(0, 0.0), (1, 5.0), (6, 119.9)])
def test_failures_count_up_after_a_short_run(previous: int, ran_for: float) -> None:
    assert failures_after_exit(previous, ran_for, DEFAULT) == previous + 1


def test_reset_after_is_configurable() -> None:
    params = BackoffParams(reset_after=10.0)
    assert failures_after_exit(4, 10.0, params) == 1
    assert failures_after_exit(4, 9.0, params) == 5


params_strategy = st.builds(
    lambda initial, factor, multiplier: BackoffParams(
        initial=initial, maximum=initial * factor, multiplier=multiplier
    ),
    st.floats(min_value=0.01, max_value=10.0),
    st.floats(min_value=1.0, max_value=100.0),
    st.floats(min_value=1.0, max_value=4.0),
)


@given(params=params_strategy, failures=st.integers(min_value=-5, max_value=200))
def test_delay_is_monotonic_and_bounded(params: BackoffParams, failures: int) -> None:
    delay = restart_delay(failures, params)
    following = restart_delay(failures + 1, params)
    assert 0.0 <= delay <= params.maximum
    assert following >= delay
    assert following <= params.maximum


def test_very_many_failures_still_give_the_maximum() -> None:
    assert restart_delay(2000, DEFAULT) == DEFAULT.maximum
