"""Restart backoff, the shape kubelet uses: initial delay, multiplied per failure, capped.

A run that stayed up for ``reset_after`` seconds resets the count, so a replica
that crashes once a day does not wait the maximum delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffParams:
    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    reset_after: float = 120.0


def restart_delay(failures: int, params: BackoffParams) -> float:
    """Seconds to wait before restart number ``failures`` (1 = first restart)."""
    if failures <= 0:
        return 0.0
    try:
        delay = params.initial * params.multiplier ** (failures - 1)
    except OverflowError:  # a very long crash loop: the cap applies
        return float(params.maximum)
    return float(min(delay, params.maximum))


def failures_after_exit(previous: int, ran_for: float, params: BackoffParams) -> int:
    """Consecutive failures after a run that lasted ``ran_for`` seconds ended in failure."""
    return 1 if ran_for >= params.reset_after else previous + 1
