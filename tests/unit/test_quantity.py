"""Kubernetes quantities and durations: exact parsing, canonical printing, round trips."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilothouse.spec.quantity import (
    QuantityError,
    format_bytes,
    format_cpu_millis,
    format_duration,
    parse_bytes,
    parse_cpu_millis,
    parse_duration,
    parse_quantity,
)

# --------------------------------------------------------------------------- parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", Decimal(4)),
        (4, Decimal(4)),
        (0.5, Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+5", Decimal(5)),
        ("500m", Decimal("0.5")),
        ("250u", Decimal("0.00025")),
        ("3n", Decimal("3e-9")),
        ("1k", Decimal(1000)),
        ("2M", Decimal(2_000_000)),
        ("3G", Decimal(3 * 10**9)),
        ("1T", Decimal(10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),
        ("1Ki", Decimal(1024)),
        ("512Mi", Decimal(512 * 2**20)),
        ("2Gi", Decimal(2 * 2**30)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("1Ti", Decimal(2**40)),
        ("1Pi", Decimal(2**50)),
        ("1Ei", Decimal(2**60)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("2e-3", Decimal("0.002")),
        ("1.5e+2", Decimal(150)),
        ("  2Gi  ", Decimal(2 * 2**30)),
    ],
)
def test_parse_quantity_exact(text: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


BAD_QUANTITIES: list[Any] = [
    "5x",
    "",
    "   ",
    "Gi",
    "1.2.3",
    "-",
    "10 s",
    "abc",
    "5mm",
    "5gi",
    "5 Gi",
    "1e",
    "e3",
    "0x10",
    "1,5",
    True,
    False,
]


@pytest.mark.parametrize("value", BAD_QUANTITIES, ids=repr)
def test_parse_quantity_rejects(value: Any) -> None:
    with pytest.raises(QuantityError, match="expected"):
        parse_quantity(value)


@pytest.mark.parametrize("value", BAD_QUANTITIES, ids=repr)
def test_cpu_and_bytes_reject_what_quantity_rejects(value: Any) -> None:
    with pytest.raises(QuantityError, match="expected"):
        parse_cpu_millis(value)
    with pytest.raises(QuantityError, match="expected"):
        parse_bytes(value)


def test_quantity_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into validation errors
    assert issubclass(QuantityError, ValueError)


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("2", 2000),
        (2, 2000),
        (0.5, 500),
        ("0.5", 500),
        ("1.5", 1500),
        ("1500m", 1500),
        ("100m", 100),
        ("1m", 1),
        ("0.1m", 1),  # rounds up like Kubernetes
        ("1.0001", 1001),  # rounds up like Kubernetes
        ("1e3", 1_000_000),
        ("1k", 1_000_000),
        ("64", 64_000),
        ("0", 0),
    ],
)
def test_parse_cpu_millis(value: str | int | float, millis: int) -> None:
    result = parse_cpu_millis(value)
    assert result == millis
    assert type(result) is int


@pytest.mark.parametrize(
    ("millis", "text"),
    [(500, "500m"), (1000, "1"), (2000, "2"), (1500, "1500m"), (1, "1m"), (64000, "64")],
)
def test_format_cpu_millis(millis: int, text: str) -> None:
    assert format_cpu_millis(millis) == text


@given(st.integers(min_value=1, max_value=10**7))
def test_cpu_round_trip(millis: int) -> None:
    assert parse_cpu_millis(format_cpu_millis(millis)) == millis


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        ("2Gi", 2147483648),
        ("512Mi", 536870912),
        ("1Ki", 1024),
        ("512M", 512_000_000),
        ("1e9", 1_000_000_000),
        ("1e3", 1000),
        ("1k", 1000),
        ("1.5Ki", 1536),
        (4096, 4096),
        ("4096", 4096),
        (1.5, 2),  # fractional bytes round up
        ("0", 0),
    ],
)
def test_parse_bytes(value: str | int | float, amount: int) -> None:
    result = parse_bytes(value)
    assert result == amount
    assert type(result) is int


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (1024, "1Ki"),
        (1536, "1536"),
        (512 * 2**20, "512Mi"),
        (2 * 2**30, "2Gi"),
        (1536 * 2**20, "1536Mi"),
        (2**40, "1Ti"),
        (2**50, "1Pi"),
        (3 * 2**60, "3Ei"),
    ],
)
def test_format_bytes(amount: int, text: str) -> None:
    assert format_bytes(amount) == text


@given(st.integers(min_value=1, max_value=2**50))
def test_bytes_round_trip(amount: int) -> None:
    assert parse_bytes(format_bytes(amount)) == amount


@given(st.integers(min_value=1, max_value=2**20), st.sampled_from([2**10, 2**20, 2**30]))
def test_bytes_round_trip_binary_multiples(count: int, unit: int) -> None:
    text = format_bytes(count * unit)
    assert text[-2:] in ("Ki", "Mi", "Gi", "Ti", "Pi")
    assert parse_bytes(text) == count * unit


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1m30.5s", 90.5),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0.5h", 1800.0),
        ("100us", 0.0001),
        ("100µs", 0.0001),
        ("10ns", 1e-8),
        ("0", 0.0),
        ("0s", 0.0),
        ("45", 45.0),
        ("1.5", 1.5),
        ("  30s ", 30.0),
        (45, 45.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(seconds, rel=1e-12, abs=0)
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "",
        "s",
        "5x",
        "10 s",
        "-5s",
        "1e3",
        "5mm",
        "1h-30m",
        "30s5",
        "abc",
        ".",
        -1,
        -0.5,
        True,
        False,
    ],
    ids=repr,
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(QuantityError, match="expected"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (45, "45s"),
        (60, "1m"),
        (300, "5m"),
        (5400, "1h30m"),
        (5415, "1h30m15s"),
        (3601, "1h1s"),
        (86400, "24h"),
        (1.5, "1.5s"),
        (90.5, "90.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_round_trip_whole_milliseconds(millis: int) -> None:
    seconds = millis / 1000
    text = format_duration(seconds)
    back = parse_duration(text)
    # Both sides are the float nearest to the rational millis/1000, so they are identical.
    assert back == seconds
    assert back == pytest.approx(seconds, rel=0, abs=1e-9)


@given(st.integers(min_value=0, max_value=10**6))
def test_duration_whole_seconds_print_without_fraction(secs: int) -> None:
    text = format_duration(float(secs))
    assert "." not in text
    assert parse_duration(text) == float(secs)


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("func", "value"),
    [
        (parse_quantity, float("nan")),
        (parse_quantity, float("inf")),
        (parse_quantity, float("-inf")),
        (parse_cpu_millis, float("inf")),
        (parse_cpu_millis, float("nan")),
        (parse_bytes, float("inf")),
        (parse_bytes, "9Ei"),
        (parse_bytes, 2**63),
        (parse_duration, float("inf")),
        (parse_duration, float("nan")),
        (parse_duration, 10**10),
        (parse_duration, "100000000h"),
        (parse_duration, "1" * 400),
        (parse_quantity, "1e9999999"),
        (parse_cpu_millis, "1e999999"),
        (parse_cpu_millis, "1e5000"),
        (parse_bytes, "1e-9999999"),
    ],
    ids=lambda v: getattr(v, "__name__", repr(v)[:20]),
)
def test_non_finite_or_overflowing_is_a_quantity_error(func: Any, value: Any) -> None:
    with pytest.raises(QuantityError, match="expected"):
        func(value)


def test_large_but_bounded_values_parse() -> None:
    assert parse_bytes("7Ei") == 7 * 2**60
    assert parse_bytes(2**63 - 1) == 2**63 - 1
    assert parse_quantity("1e18") == Decimal(10**18)
    assert parse_duration("87600h") == 87600 * 3600.0  # ten years
