"""Analysis of a progressive rollout: is the new revision as good as the stable one?

Every ``analysis.interval`` the caller gathers an ``Observation`` and calls
``evaluate``. Each check becomes one ``Measurement``: Successful or Failed against
its band, Inconclusive with too little data (fewer than ``min_samples``), Error
when it could not be taken. The counting rules are Argo Rollouts' AnalysisRun:

- Failures count over the whole analysis, not in a row: a canary that fails every
  third interval is still a bad canary. More than ``failure_limit`` fail it.
- Errors count only in a row (anything else resets them): one scrape that timed
  out says nothing about the model, but more than ``consecutive_error_limit`` in
  a row fail the rollout, because a canary that cannot be judged must not ship.
- Inconclusive measurements count in a row too (a Successful or Failed one resets
  them); more than ``inconclusive_limit`` pause the rollout for a human instead
  of promoting on no evidence.

Why model checks: a model can answer 200 OK, fast, and be wrong (an inverted
label, a stale feature map). ``agreement`` and ``scoreDifference`` compare both
revisions on the *same* mirrored inputs; ``psi`` and ``ks`` compare their score
distributions, which also catches drift that a 0.5 threshold hides.

Pure: the caller persists ``AnalysisState`` as JSON via ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any, Literal, cast

import numpy as np

from pilothouse.spec.resources import SERVER_METRIC_PREFIX, Analysis, AnalysisCheck

Rows = tuple[tuple[float, ...], ...]
Phase = Literal["Successful", "Failed", "Inconclusive", "Error"]
VerdictPhase = Literal["Passing", "Pending", "Inconclusive", "Failed"]
_PHASES: tuple[Phase, ...] = ("Successful", "Failed", "Inconclusive", "Error")
HISTORY = 10  # measurements kept per check
PSI_FLOOR = 1e-4  # an empty bin would make ln(c / r) infinite
_DISTRIBUTION_METRICS = frozenset({"psi", "ks"})


@dataclass(frozen=True)
class RevisionTraffic:
    """One revision's traffic over the last interval, as the router measured it.

    ``latency_bounds`` are histogram upper bounds in seconds, ascending (the last
    may be ``math.inf``); ``latency_counts`` the non-cumulative count per bound.
    """

    requests: int = 0
    errors: int = 0  # 5xx answers
    latency_bounds: tuple[float, ...] = ()
    latency_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Observation:
    """Everything measured for the new revision (canary) vs the stable one in one interval.

    ``pairs`` are mirrored requests, ``(stable's predictions, canary's predictions)``
    on the same input, both 2xx; ``pair_errors`` counts mirrored requests whose body
    could not be parsed. ``*_scores`` are flattened scores of sampled live 2xx
    responses. ``server`` maps ``"server:METRIC"`` to the canary replicas' value
    (``None``: could not be read).
    """

    canary: RevisionTraffic
    stable: RevisionTraffic
    pairs: tuple[tuple[Rows, Rows], ...] = ()
    pair_errors: int = 0
    canary_scores: tuple[float, ...] = ()
    stable_scores: tuple[float, ...] = ()
    server: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """One check's reading for one interval; ``value`` is None unless Successful or Failed."""

    phase: Phase
    value: float | None
    samples: int
    message: str


@dataclass(frozen=True)
class Record:
    """A measurement as kept in the state, stamped with the caller's ``now``."""

    at: float
    phase: Phase
    value: float | None
    samples: int
    message: str


@dataclass(frozen=True)
class CheckState:
    """Counters of one check. ``failed`` and ``successful`` are totals; the others run in a row."""

    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    consecutive_errors: int = 0
    history: tuple[Record, ...] = ()  # the last HISTORY measurements, oldest first


@dataclass(frozen=True)
class AnalysisState:
    """Per-check state, keyed by check name; persist with ``to_dict`` / ``from_dict``."""

    checks: Mapping[str, CheckState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (camelCase keys) that survives ``json.dumps`` / ``json.loads``."""
        checks = {
            name: {key: getattr(c, attr) for attr, key in _COUNTERS.items()}
            | {"history": [asdict(r) for r in c.history]}
            for name, c in self.checks.items()
        }
        return {"checks": checks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisState:
        """Inverse of ``to_dict``; a missing counter is 0, anything malformed raises ValueError.

        A corrupt state raises rather than silently restarting the counts, which
        would forget failures the canary already had.
        """
        try:
            checks = {str(name): _check_state(c) for name, c in data.get("checks", {}).items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed analysis state: {exc!r}") from None
        return cls(checks=checks)


_COUNTERS = {
    "successful": "successful",
    "failed": "failed",
    "inconclusive": "inconclusive",
    "consecutive_errors": "consecutiveErrors",
}


def _check_state(c: Mapping[str, Any]) -> CheckState:
    history = []
    for r in c.get("history", []):
        if r["phase"] not in _PHASES:
            raise ValueError(f"unknown phase {r['phase']!r}")
        value = None if r["value"] is None else float(r["value"])
        history.append(
            Record(float(r["at"]), r["phase"], value, int(r["samples"]), str(r["message"]))
        )
    n = {attr: int(c.get(key, 0)) for attr, key in _COUNTERS.items()}
    return CheckState(
        n["successful"],
        n["failed"],
        n["inconclusive"],
        n["consecutive_errors"],
        tuple(history[-HISTORY:]),
    )


@dataclass(frozen=True)
class Verdict:
    """What the rollout should do now; ``values`` is the last value of each check."""

    phase: VerdictPhase
    message: str
    failed_check: str | None = None
    values: Mapping[str, float | None] = field(default_factory=dict)


# --- parsing model server responses -------------------------------------------------


def _number(x: object) -> float | None:
    if not isinstance(x, int | float):
        return None
    try:
        value = float(x)  # bool and int become floats; a huge int overflows
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _flat(data: object, shape: Sequence[int]) -> list[float] | None:
    """``data`` (flat, or nested along ``shape``) as a flat list, if it fits ``shape``."""
    if not isinstance(data, list):
        return None
    numbers = [_number(x) for x in data]
    if all(n is not None for n in numbers):
        return cast(list[float], numbers) if len(numbers) == math.prod(shape) else None
    if not shape or len(data) != shape[0]:
        return None
    out: list[float] = []
    for item in data:
        sub = _flat(item, shape[1:])
        if sub is None:
            return None
        out.extend(sub)
    return out


def _v2_rows(outputs: object) -> Rows | None:
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    shape = outputs[0].get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 2)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        return None
    values = _flat(outputs[0].get("data"), shape)
    if values is None:
        return None
    width = 1 if len(shape) == 1 else shape[1]
    if width == 0:
        return () if shape[0] == 0 else None
    return tuple(tuple(values[i : i + width]) for i in range(0, len(values), width))


def _v1_rows(predictions: object) -> Rows | None:
    if not isinstance(predictions, list):
        return None
    rows = []
    for p in predictions:
        row = [_number(x) for x in p] if isinstance(p, list) else [_number(p)]
        if not row or any(v is None for v in row):
            return None
        rows.append(tuple(cast(list[float], row)))
    if len({len(r) for r in rows}) > 1:
        return None
    return tuple(rows)


def predictions_from_body(body: bytes) -> Rows | None:
    """One prediction per input row from an OIP v2 or v1 JSON response; None if not one.

    v2 uses the first output (``data`` flat in row-major order or nested, shape
    ``[n]`` or ``[n, k]``); v1 reads ``predictions``, a list of numbers or of
    equal-length lists. Never raises: a body we cannot read is a ``pair_error``.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8 / not JSON / absurdly nested
        return None
    if not isinstance(doc, dict):
        return None
    if "outputs" in doc:
        return _v2_rows(doc["outputs"])
    if "predictions" in doc:
        return _v1_rows(doc["predictions"])
    return None


# --- measurements -------------------------------------------------------------------


def _label(row: tuple[float, ...]) -> int:
    return int(row[0] >= 0.5) if len(row) == 1 else int(np.argmax(row))


def _same_shape(a: Rows, b: Rows) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) > 0 for x, y in zip(a, b, strict=True))


def _histogram_quantile(
    q: float, bounds: tuple[float, ...], counts: tuple[int, ...]
) -> tuple[float | None, int] | str:
    """Prometheus' histogram_quantile on one interval's non-cumulative buckets."""
    if len(bounds) != len(counts) or any(c < 0 for c in counts):
        return "malformed latency histogram"
    if any(math.isnan(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
        return "latency histogram bounds are not ascending"
    total = sum(counts)
    if total == 0:
        return None, 0
    rank, below = q * total, 0
    for i, (upper, count) in enumerate(zip(bounds, counts, strict=True)):
        if below + count >= rank:
            if math.isinf(upper):  # no upper edge to interpolate to
                return (bounds[i - 1], total) if i > 0 else "latency histogram has no finite bucket"
            if i == 0 and upper <= 0:
                return upper, total
            lower = 0.0 if i == 0 else bounds[i - 1]
            return lower + (upper - lower) * (rank - below) / count, total
        below += count
    return bounds[-1], total  # unreachable: the last bucket holds the rank


def _scores(obs: Observation) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(reference, candidate): the last column of each side's pair rows plus live scores."""
    ref = [r[-1] for s, _ in obs.pairs for r in s if r] + list(obs.stable_scores)
    cand = [r[-1] for _, c in obs.pairs for r in c if r] + list(obs.canary_scores)
    return np.asarray(ref, dtype=float), np.asarray(cand, dtype=float)


def population_stability_index(ref: Sequence[float], cand: Sequence[float]) -> float:
    """PSI over 10 bins cut at the reference's deciles (fewer when deciles coincide)."""
    r_arr, c_arr = np.asarray(ref, dtype=float), np.asarray(cand, dtype=float)
    edges = np.unique(np.quantile(r_arr, np.linspace(0.1, 0.9, 9)))
    bins = len(edges) + 1  # a constant reference gives 2 bins: <= it, above it
    r = np.bincount(np.searchsorted(edges, r_arr), minlength=bins) / len(r_arr)
    c = np.bincount(np.searchsorted(edges, c_arr), minlength=bins) / len(c_arr)
    r, c = np.maximum(r, PSI_FLOOR), np.maximum(c, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(ref: Sequence[float], cand: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(np.asarray(ref, dtype=float)), np.sort(np.asarray(cand, dtype=float))
    at = np.concatenate([a, b])
    gap = np.searchsorted(a, at, side="right") / len(a) - np.searchsorted(
        b, at, side="right"
    ) / len(b)
    return float(np.max(np.abs(gap)))


_Raw = tuple[float | None, int, str]  # value (None: no data), samples, sample unit


def _compute(metric: str, obs: Observation) -> _Raw | str:
    """The metric's raw value, or why it could not be taken."""
    canary = obs.canary
    if metric.startswith(SERVER_METRIC_PREFIX):
        reading = obs.server.get(metric)
        if reading is None:
            name = metric[len(SERVER_METRIC_PREFIX) :]
            return f"could not read {name} from the model server"
        return float(reading), 1, "sample"
    if metric == "errorRate":
        if canary.requests < 0 or not 0 <= canary.errors <= max(canary.requests, 0):
            return f"router reported {canary.errors} errors out of {canary.requests} requests"
        rate = canary.errors / canary.requests if canary.requests else None
        return rate, canary.requests, "request"
    if metric in ("latencyP50", "latencyP99"):
        q = 0.5 if metric == "latencyP50" else 0.99
        got = _histogram_quantile(q, canary.latency_bounds, canary.latency_counts)
        return got if isinstance(got, str) else (*got, "request")
    unparsed = f"{obs.pair_errors} mirrored responses could not be parsed into predictions"
    if metric == "agreement":
        rows = agree = 0
        for stable, new in obs.pairs:
            if len(stable) != len(new):
                rows += max(len(stable), len(new))  # every row of the pair disagrees
                continue
            for s, c in zip(stable, new, strict=True):
                rows += 1
                agree += len(s) == len(c) > 0 and _label(s) == _label(c)
        if rows == 0 and obs.pair_errors:
            return unparsed
        return (agree / rows if rows else None), rows, "mirrored row"
    if metric == "scoreDifference":
        total, values, rows = 0.0, 0, 0
        usable = [(s, c) for s, c in obs.pairs if _same_shape(s, c)]
        if obs.pairs and not usable and any(s or c for s, c in obs.pairs):
            return f"all {len(obs.pairs)} mirrored pairs have predictions of different shapes"
        for stable, new in usable:
            rows += len(stable)
            for s, c in zip(stable, new, strict=True):
                total += sum(abs(x - y) for x, y in zip(s, c, strict=True))
                values += len(s)
        if rows == 0 and obs.pair_errors:
            return unparsed
        return (total / values if values else None), rows, "mirrored row"
    if metric in _DISTRIBUTION_METRICS:
        ref, cand = _scores(obs)
        samples = min(len(ref), len(cand))
        if samples == 0:
            return unparsed if obs.pair_errors else (None, 0, "score")
        if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
            return "scores include NaN or infinity"
        fn = population_stability_index if metric == "psi" else ks_statistic
        return fn(ref.tolist(), cand.tolist()), samples, "score"
    return f"unknown metric {metric!r}"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _violation(check: AnalysisCheck, value: float) -> str | None:
    """'metric V > max B' when the value is outside the check's band, else None."""
    if check.min is not None and value < check.min:
        return f"{check.metric} {value:.3g} < min {check.min:g}"
    if check.max is not None and value > check.max:
        return f"{check.metric} {value:.3g} > max {check.max:g}"
    return None


def measure(check: AnalysisCheck, obs: Observation, min_samples: int) -> Measurement:
    """Take one measurement of ``check`` from ``obs``.

    ``server:`` metrics are single readings and skip the ``min_samples`` rule;
    every other metric with fewer samples (or none) is Inconclusive.
    """
    metric = check.metric
    raw = _compute(metric, obs)
    if isinstance(raw, str):
        return Measurement("Error", None, 0, f"{metric}: {raw}")
    value, samples, unit = raw
    need = 1 if metric.startswith(SERVER_METRIC_PREFIX) else max(min_samples, 1)
    count = _plural(samples, unit)
    if (
        metric == "errorRate"
        and value is not None
        and samples < need
        and check.max is not None
        and obs.canary.errors / need > check.max
    ):
        # Conclusive early: these errors alone exceed the limit even if every request
        # still missing from min_samples succeeded (a revision failing everything is
        # ejected by the router and gets few requests).
        bound = obs.canary.errors / need
        return Measurement(
            "Failed",
            value,
            samples,
            f"errorRate {value:.3g} > max {check.max:g} ({obs.canary.errors} errors in "
            f"{count}; at least {bound:.3g} of {need})",
        )
    if value is None or samples < need:
        return Measurement("Inconclusive", None, samples, f"{metric}: {count}, need {need}")
    if not math.isfinite(value):
        return Measurement("Error", None, samples, f"{metric}: value {value} is not finite")
    bad = _violation(check, value)
    if bad is not None:
        return Measurement("Failed", value, samples, f"{bad} ({count})")
    bounds = ((">= min", check.min), ("<= max", check.max))
    band = " and ".join(f"{op} {b:g}" for op, b in bounds if b is not None)
    return Measurement("Successful", value, samples, f"{metric} {value:.3g} {band} ({count})")


# --- evaluation across intervals ----------------------------------------------------


def _record(state: CheckState, m: Measurement, now: float) -> CheckState:
    history = (*state.history, Record(now, m.phase, m.value, m.samples, m.message))[-HISTORY:]
    if m.phase == "Error":
        return replace(state, consecutive_errors=state.consecutive_errors + 1, history=history)
    if m.phase == "Inconclusive":
        return replace(
            state, inconclusive=state.inconclusive + 1, consecutive_errors=0, history=history
        )
    won = m.phase == "Successful"  # a Successful or Failed one resets both runs
    return CheckState(state.successful + won, state.failed + (not won), history=history)


def evaluate(
    analysis: Analysis, state: AnalysisState, obs: Observation, now: float
) -> tuple[AnalysisState, Verdict]:
    """Measure every check on ``obs``, fold the results into ``state``, and judge.

    State of checks no longer in ``analysis`` is dropped; a new check starts fresh.
    """
    checks: dict[str, CheckState] = {}
    for c in analysis.checks:
        m = measure(c, obs, analysis.min_samples)
        checks[c.name] = _record(state.checks.get(c.name, CheckState()), m, now)
    new = AnalysisState(checks)
    return new, verdict_of(analysis, new)


def verdict_of(analysis: Analysis, state: AnalysisState) -> Verdict:
    """The verdict ``state`` stands at: Failed, else Inconclusive, else Passing or Pending."""
    if not analysis.checks:
        return Verdict("Passing", "no analysis checks")
    states = [(c, state.checks.get(c.name, CheckState())) for c in analysis.checks]
    values = {c.name: (s.history[-1].value if s.history else None) for c, s in states}
    for check, s in states:
        if s.failed > check.failure_limit:
            last = next((r for r in reversed(s.history) if r.phase == "Failed"), None)
            bad = _violation(check, last.value) if last and last.value is not None else None
            what = f"{bad} " if bad else ""
            message = (
                f"check {check.name} failed: {what}"
                f"({s.failed} of {check.failure_limit} allowed failures)"
            )
            return Verdict("Failed", message, check.name, values)
        if s.consecutive_errors > check.consecutive_error_limit:
            message = (
                f"check {check.name} failed: {s.consecutive_errors} measurements in a row "
                f"could not be taken ({check.consecutive_error_limit} allowed): "
                f"{_latest(s)}"
            )
            return Verdict("Failed", message, check.name, values)
    for check, s in states:
        if s.inconclusive > check.inconclusive_limit:
            message = (
                f"check {check.name} inconclusive: {s.inconclusive} measurements in a row "
                f"without enough data ({check.inconclusive_limit} allowed): "
                f"{_latest(s)}"
            )
            return Verdict("Inconclusive", message, check.name, values)
    waiting = [(c, s) for c, s in states if not s.history or s.history[-1].phase != "Successful"]
    if not waiting:
        return Verdict("Passing", f"all {len(states)} checks passing", None, values)
    check, s = waiting[0]
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    return Verdict("Pending", f"waiting for check {check.name}: {_latest(s)}{more}", None, values)


def _latest(s: CheckState) -> str:
    return s.history[-1].message if s.history else "no measurement yet"
