"""Kubernetes-style quantities and durations.

Users write ``500m`` CPUs, ``2Gi`` of memory and ``30s`` timeouts in every
Kubernetes manifest; the same spec must run embedded and on a cluster, so we
parse them exactly the way the API server does (suffixes, decimal exponents)
and print them back canonically so a stored spec round-trips.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY_RE = re.compile(
    r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?:(?P<exp>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)


class QuantityError(ValueError):
    """A quantity or duration that cannot be parsed; the message says what was expected."""


#: Kubernetes quantities are bounded by int64; nothing sane is larger.
_LIMIT = Decimal(2**63 - 1)


def _bounded(amount: Decimal, value: object) -> Decimal:
    if not amount.is_finite() or abs(amount) > _LIMIT:
        raise QuantityError(f"expected a finite quantity below 2^63, got {value!r}")
    return amount


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``2Gi``, ``1e3``, ``4``) into a Decimal."""
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity such as '500m', '2Gi' or 4, got {value!r}")
    if isinstance(value, int | float):
        try:
            return _bounded(Decimal(str(value)), value)
        except InvalidOperation as exc:
            raise QuantityError(f"expected a finite number, got {value!r}") from exc
    text = value.strip()
    match = _QUANTITY_RE.match(text)
    if not match:
        raise QuantityError(
            f"expected a quantity such as '500m', '2Gi', '1.5' or '1e3', got {value!r}"
        )
    number = Decimal(match["num"])
    if match["exp"]:
        exponent = int(match["exp"][1:])
        if abs(exponent) > 30:
            raise QuantityError(f"expected a finite quantity below 2^63, got {value!r}")
        return _bounded(number * (Decimal(10) ** exponent), value)
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return _bounded(number * _BINARY[suffix], value)
    return _bounded(number * _DECIMAL[suffix], value)


def parse_cpu_millis(value: str | int | float) -> int:
    """CPU as integer millicores; ``0.5`` and ``500m`` are both 500. Rounds up like Kubernetes."""
    millis = parse_quantity(value) * 1000
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def format_cpu_millis(millis: int) -> str:
    """Canonical CPU text: whole cores as ``2``, otherwise millicores as ``1500m``."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def parse_bytes(value: str | int | float) -> int:
    """Memory as integer bytes; ``2Gi``, ``512M`` and ``1e9`` are all accepted."""
    amount = parse_quantity(value)
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(amount: int) -> str:
    """Canonical memory text: the largest binary suffix that divides exactly, else bytes."""
    if amount == 0:
        return "0"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


#: Ten years: longer durations are typos, and keep every later computation finite.
_MAX_DURATION = 10 * 365 * 24 * 3600.0

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: str | int | float) -> float:
    """Parse a Go/Kubernetes duration (``30s``, ``5m``, ``1h30m``, ``250ms``) into seconds.

    A bare number is taken as seconds, the way many Kubernetes fields accept it.
    """
    if isinstance(value, bool):
        raise QuantityError(f"expected a duration such as '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value > _MAX_DURATION:
            raise QuantityError(
                f"expected a non-negative duration of at most {_MAX_DURATION:.0f}s, got {value!r}"
            )
        return float(value)
    text = value.strip()
    if text in ("0", "0s"):
        return 0.0
    if re.fullmatch(r"\d+\.?\d*", text):
        return parse_duration(float(text))
    pos = 0
    total = Decimal(0)
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise QuantityError(
            f"expected a duration such as '30s', '5m', '1h30m' or '250ms', got {value!r}"
        )
    return parse_duration(float(total))


def format_duration(seconds: float) -> str:
    """Canonical duration text: ``1h30m``, ``45s``, ``250ms``; inverse of parse_duration."""
    if seconds == 0:
        return "0s"
    micros = round(Decimal(str(seconds)) * 1_000_000)
    if micros % 1000:
        return f"{micros}us"
    millis = micros // 1000
    if millis == 0:
        return "0s"
    if millis % 1000:
        if millis < 1000:
            return f"{millis}ms"
        return f"{Decimal(millis) / 1000}s"
    whole = int(millis // 1000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs:
        out += f"{secs}s"
    return out
