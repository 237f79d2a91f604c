"""Unit tests for the rollout analysis engine (pure: spec, observation, state, now).

Expected values are worked out by hand in each test, not by calling the code under test.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilothouse.policy.analysis import (
    AnalysisState,
    CheckState,
    Measurement,
    Observation,
    RevisionTraffic,
    Rows,
    Verdict,
    evaluate,
    ks_statistic,
    measure,
    population_stability_index,
    predictions_from_body,
    verdict_of,
)
from pilothouse.spec.resources import Analysis, AnalysisCheck

NO_TRAFFIC = RevisionTraffic()


def check(metric: str, **kw: Any) -> AnalysisCheck:
    return AnalysisCheck(name=kw.pop("name", "c"), metric=metric, **kw)


def obs(**kw: Any) -> Observation:
    kw.setdefault("canary", NO_TRAFFIC)
    kw.setdefault("stable", NO_TRAFFIC)
    return Observation(**kw)


def traffic(requests: int, errors: int = 0) -> Observation:
    return obs(canary=RevisionTraffic(requests=requests, errors=errors))


def scores(canary: list[float], stable: list[float]) -> Observation:
    return obs(canary_scores=tuple(canary), stable_scores=tuple(stable))


def one_col(values: list[float]) -> Rows:
    return tuple((v,) for v in values)


# --- errorRate ----------------------------------------------------------------------


def test_error_rate_at_the_bound_passes() -> None:
    m = measure(check("errorRate", max=0.05), traffic(100, 5), min_samples=20)
    assert m == Measurement("Successful", 0.05, 100, "errorRate 0.05 <= max 0.05 (100 requests)")


def test_error_rate_over_the_bound_fails_with_a_message_naming_everything() -> None:
    m = measure(check("errorRate", max=0.05), traffic(412, 88), min_samples=20)
    assert m.phase == "Failed"
    assert m.value == pytest.approx(88 / 412)
    assert m.samples == 412
    assert m.message == "errorRate 0.214 > max 0.05 (412 requests)"


def test_error_rate_with_too_few_requests_is_inconclusive() -> None:
    m = measure(check("errorRate", max=0.05), traffic(19, 1), min_samples=20)
    assert m == Measurement("Inconclusive", None, 19, "errorRate: 19 requests, need 20")
    assert measure(check("errorRate", max=0.05), traffic(20, 0), 20).phase == "Successful"
    assert measure(check("errorRate", max=0.05), traffic(0), 1).phase == "Inconclusive"


def test_error_rate_with_more_errors_than_requests_is_an_error() -> None:
    m = measure(check("errorRate", max=0.05), traffic(3, 5), min_samples=1)
    assert m.phase == "Error"
    assert "errorRate" in m.message


# --- latency ------------------------------------------------------------------------

BOUNDS = (0.1, 0.5, 1.0, math.inf)


def latency(counts: tuple[int, ...], bounds: tuple[float, ...] = BOUNDS) -> Observation:
    return obs(canary=RevisionTraffic(latency_bounds=bounds, latency_counts=counts))


@pytest.mark.parametrize(
    ("metric", "counts", "expected"),
    [
        # rank 50: 40 below the (0.5, 1.0] bucket, 10 of its 50 -> 0.5 + 0.5 * 10/50
        ("latencyP50", (10, 30, 50, 10), 0.6),
        # rank 99 lands in the +Inf bucket: the highest finite bound
        ("latencyP99", (10, 30, 50, 10), 1.0),
        # rank 99 of 100 in (0.5, 1.0]: 0.5 + 0.5 * 0.99
        ("latencyP99", (0, 0, 100, 0), 0.995),
        # first bucket's lower edge is 0: 0 + 0.1 * 50/100
        ("latencyP50", (100, 0, 0, 0), 0.05),
        # rank exactly on a bucket boundary gives that bucket's upper bound
        ("latencyP50", (50, 50, 0, 0), 0.1),
    ],
)
def test_latency_quantile_interpolates_like_histogram_quantile(
    metric: str, counts: tuple[int, ...], expected: float
) -> None:
    m = measure(check(metric, max=10.0), latency(counts), min_samples=20)
    assert m.phase == "Successful"
    assert m.value == pytest.approx(expected)
    assert m.samples == sum(counts)


def test_latency_without_inf_bucket_and_failing_bound() -> None:
    m = measure(check("latencyP50", max=0.5), latency((0, 4), (1.0, 2.0)), min_samples=4)
    assert m.value == pytest.approx(1.5)  # rank 2 of the 4 in (1, 2]
    assert m.message == "latencyP50 1.5 > max 0.5 (4 requests)"


def test_latency_empty_or_malformed_histogram() -> None:
    assert measure(check("latencyP99", max=1.0), latency((0, 0, 0, 0)), 1).phase == "Inconclusive"
    assert measure(check("latencyP99", max=1.0), latency((1, 2)), 1).phase == "Error"
    unsorted = latency((1, 1), (2.0, 1.0))
    assert measure(check("latencyP99", max=1.0), unsorted, 1).phase == "Error"
    only_inf = latency((5,), (math.inf,))
    assert measure(check("latencyP99", max=1.0), only_inf, 1).phase == "Error"


# --- agreement and scoreDifference --------------------------------------------------

PAIRS: tuple[tuple[Rows, Rows], ...] = (
    (((0.2,), (0.7,)), ((0.4,), (0.6,))),  # 2 rows, both agree; |diff| 0.2, 0.1
    (((0.1, 0.9),), ((0.8, 0.2),)),  # argmax 1 vs 0: disagree; |diff| 0.7, 0.7
    (((0.3,),), ((0.3,), (0.4,))),  # row counts differ: 2 rows disagree; skipped for diff
    (((0.9,),), ((0.1, 0.9),)),  # widths differ: 1 row disagrees; skipped for diff
)


def test_agreement_counts_rows_and_mismatches_disagree() -> None:
    m = measure(check("agreement", min=0.5), obs(pairs=PAIRS), min_samples=6)
    assert m.samples == 6  # 2 + 1 + 2 + 1
    assert m.value == pytest.approx(2 / 6)
    assert m.phase == "Failed"
    assert m.message == "agreement 0.333 < min 0.5 (6 mirrored rows)"


def test_agreement_threshold_is_inclusive_at_half() -> None:
    pairs = ((one_col([0.5, 0.49]), one_col([0.99, 0.0])),)
    assert measure(check("agreement", min=0.9), obs(pairs=pairs), 2).value == 1.0


def test_score_difference_skips_mismatched_pairs() -> None:
    m = measure(check("scoreDifference", max=0.5), obs(pairs=PAIRS), min_samples=3)
    assert m.samples == 3  # rows in the two comparable pairs
    assert m.value == pytest.approx((0.2 + 0.1 + 0.7 + 0.7) / 4)
    assert m.phase == "Successful"
    assert m.message == "scoreDifference 0.425 <= max 0.5 (3 mirrored rows)"


def test_score_difference_all_mismatched_is_an_error() -> None:
    m = measure(check("scoreDifference", max=0.5), obs(pairs=PAIRS[2:]), min_samples=1)
    assert m.phase == "Error"
    assert "different shapes" in m.message


@pytest.mark.parametrize("metric", ["agreement", "scoreDifference", "psi", "ks"])
def test_pair_metric_without_usable_pairs(metric: str) -> None:
    c = check(metric, min=0.0, max=1.0)
    m = measure(c, obs(pair_errors=3), min_samples=1)
    assert m.phase == "Error"
    assert "3 mirrored responses could not be parsed" in m.message
    m = measure(c, obs(), min_samples=1)
    assert m.phase == "Inconclusive"
    assert m.value is None


def test_pair_errors_do_not_matter_when_pairs_are_usable() -> None:
    m = measure(check("agreement", min=0.5), obs(pairs=PAIRS[:1], pair_errors=9), 2)
    assert (m.phase, m.value) == ("Successful", 1.0)


def test_too_few_mirrored_rows_is_inconclusive() -> None:
    m = measure(check("agreement", min=0.9), obs(pairs=PAIRS[:1]), min_samples=20)
    assert m == Measurement("Inconclusive", None, 2, "agreement: 2 mirrored rows, need 20")


# --- psi and ks ---------------------------------------------------------------------


def test_psi_two_bins_by_hand() -> None:
    # A constant reference has one distinct decile, so two bins: <= 0.5 and > 0.5.
    # Reference proportions (1, 0 -> floor 1e-4), candidate (0.5, 0.5).
    expected = (0.5 - 1) * math.log(0.5 / 1) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    m = measure(check("psi", max=0.2), scores([0.5] * 10 + [0.9] * 10, [0.5] * 20), 20)
    assert m.value == pytest.approx(expected)
    assert m.phase == "Failed"
    assert m.samples == 20
    assert m.message == "psi 4.6 > max 0.2 (20 scores)"


def test_psi_ten_bins_by_hand() -> None:
    # Reference 0..99: deciles 9.9, 19.8, ..., 89.1 -> ten bins of 10 values each.
    # Candidate: all 100 values in the lowest bin -> (1, 1e-4 x 9) vs 0.1 each.
    ref = [float(i) for i in range(100)]
    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert population_stability_index(ref, [0.0] * 100) == pytest.approx(expected)
    assert population_stability_index(ref, ref) == 0.0


@pytest.mark.parametrize(
    ("ref", "cand", "expected"),
    [
        ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),  # at x=2: 2/4 vs 0
        ([1, 2], [3, 4], 1.0),
        ([1, 1, 2], [1, 2, 2], 1 / 3),  # ties: at x=1 ECDFs are 2/3 and 1/3
        ([1, 2, 3], [1, 2, 3], 0.0),
        ([0.0], [0.0, 1.0, 2.0, 3.0], 0.75),
    ],
)
def test_ks_by_hand(ref: list[float], cand: list[float], expected: float) -> None:
    assert ks_statistic(ref, cand) == pytest.approx(expected)


def test_ks_measures_pairs_last_column_and_live_scores() -> None:
    # stable: 0.2 (pair, last column of 2) + 0.1 (live); canary: 0.9 + 0.8 -> KS 1
    pairs: tuple[tuple[Rows, Rows], ...] = ((((0.8, 0.2),), ((0.1, 0.9),)),)
    o = obs(pairs=pairs, stable_scores=(0.1,), canary_scores=(0.8, 0.7))
    m = measure(check("ks", max=0.3), o, min_samples=2)
    assert (m.phase, m.value, m.samples) == ("Failed", 1.0, 2)  # min(2, 3)
    assert m.message == "ks 1 > max 0.3 (2 scores)"


def test_non_finite_scores_are_an_error() -> None:
    m = measure(check("ks", max=0.3), scores([math.nan, 0.1], [0.1, 0.2]), 1)
    assert m.phase == "Error"


# --- server metrics -----------------------------------------------------------------

INFLIGHT = "server:pilothouse_model_inflight_requests"


def test_server_metric_ignores_min_samples() -> None:
    m = measure(check(INFLIGHT, max=8), obs(server={INFLIGHT: 3.0}), min_samples=20)
    assert m == Measurement("Successful", 3.0, 1, f"{INFLIGHT} 3 <= max 8 (1 sample)")
    m = measure(check(INFLIGHT, max=8), obs(server={INFLIGHT: 9.0}), min_samples=20)
    assert m.phase == "Failed"


@pytest.mark.parametrize("server", [{}, {INFLIGHT: None}])
def test_unreadable_server_metric_is_an_error(server: dict[str, float | None]) -> None:
    m = measure(check(INFLIGHT, max=8), obs(server=server), min_samples=1)
    assert m.phase == "Error"
    assert m.value is None
    assert "could not read pilothouse_model_inflight_requests from the model server" in m.message


def test_band_with_min_and_max() -> None:
    c = check(INFLIGHT, min=1, max=8)
    assert (
        measure(c, obs(server={INFLIGHT: 0.5}), 1).message == f"{INFLIGHT} 0.5 < min 1 (1 sample)"
    )
    ok = measure(c, obs(server={INFLIGHT: 1.0}), 1)
    assert ok.message == f"{INFLIGHT} 1 >= min 1 and <= max 8 (1 sample)"


# --- the inverted model and the identical model -------------------------------------

STABLE = [0.03 + 0.01 * i for i in range(40)]  # a fraud model: mostly low scores


def mirrored(canary: list[float]) -> Observation:
    return obs(pairs=tuple((((s,),), ((c,),)) for s, c in zip(STABLE, canary, strict=True)))


def run_all(o: Observation) -> dict[str, float | None]:
    metrics = ["agreement", "scoreDifference", "psi", "ks"]
    return {m: measure(check(m, min=0.0, max=100.0), o, 20).value for m in metrics}


def test_inverted_model_is_caught() -> None:
    v = run_all(mirrored([1 - s for s in STABLE]))
    assert v["agreement"] == 0.0  # every stable score is < 0.5, every canary score > 0.5
    # mean |1 - 2s| over s = 0.03 .. 0.42: 1 - 2 * 0.225 = 0.55
    assert v["scoreDifference"] == pytest.approx(sum(1 - 2 * s for s in STABLE) / 40)
    assert v["ks"] == 1.0
    psi = v["psi"]
    assert psi is not None
    assert psi > 1.0


def test_identical_model_passes() -> None:
    v = run_all(mirrored(list(STABLE)))
    assert v == {"agreement": 1.0, "scoreDifference": 0.0, "psi": pytest.approx(0), "ks": 0.0}


# --- evaluation across intervals ----------------------------------------------------

BAD = traffic(100, 21)
GOOD = traffic(100, 1)
THIN = traffic(3)
BROKEN = traffic(1, 2)


def analysis(**limits: Any) -> Analysis:
    return Analysis(min_samples=20, checks=[check("errorRate", name="errors", max=0.05, **limits)])


def run(a: Analysis, observations: list[Observation]) -> tuple[AnalysisState, Verdict]:
    state, verdict = AnalysisState(), verdict_of(a, AnalysisState())
    for t, o in enumerate(observations):
        state, verdict = evaluate(a, state, o, now=float(t * 10))
    return state, verdict


def test_failures_over_the_limit_fail_the_rollout() -> None:
    a = analysis(failure_limit=1)
    assert run(a, [BAD])[1].phase == "Pending"
    state, verdict = run(a, [BAD, GOOD, BAD])  # failures count in total, not in a row
    assert verdict.phase == "Failed"
    assert verdict.failed_check == "errors"
    assert (
        verdict.message
        == "check errors failed: errorRate 0.21 > max 0.05 (2 of 1 allowed failures)"
    )
    assert verdict.values == {"errors": 0.21}
    assert state.checks["errors"].failed == 2
    assert state.checks["errors"].successful == 1


def test_zero_failure_limit_fails_on_the_first_failure() -> None:
    assert run(analysis(failure_limit=0), [BAD])[1].phase == "Failed"


def test_consecutive_errors() -> None:
    a = analysis(consecutive_error_limit=2)
    assert run(a, [BROKEN, BROKEN])[1].phase == "Pending"
    verdict = run(a, [BROKEN] * 3)[1]
    assert verdict.phase == "Failed"
    assert "3 measurements in a row could not be taken (2 allowed)" in verdict.message
    # any other measurement resets the run; an inconclusive one too
    assert run(a, [BROKEN, BROKEN, GOOD, BROKEN, BROKEN])[1].phase == "Pending"
    assert run(a, [BROKEN, BROKEN, THIN, BROKEN, BROKEN])[1].phase == "Pending"
    assert run(analysis(consecutive_error_limit=0), [BROKEN])[1].phase == "Failed"


def test_consecutive_inconclusive() -> None:
    a = analysis(inconclusive_limit=1)
    assert run(a, [THIN])[1].phase == "Pending"
    verdict = run(a, [THIN, THIN])[1]
    assert verdict.phase == "Inconclusive"
    assert verdict.failed_check == "errors"
    assert "2 measurements in a row without enough data (1 allowed)" in verdict.message
    assert "errorRate: 3 requests, need 20" in verdict.message
    assert run(a, [THIN, GOOD, THIN])[1].phase == "Pending"  # reset by a Successful one
    assert run(a, [THIN, BROKEN, THIN])[1].phase == "Inconclusive"  # an Error does not reset
    assert run(analysis(inconclusive_limit=0), [THIN])[1].phase == "Inconclusive"


def test_failed_beats_inconclusive_and_passing_needs_every_check() -> None:
    a = Analysis(
        min_samples=20,
        checks=[
            check("errorRate", name="errors", max=0.05),
            check("agreement", name="agree", min=0.9, inconclusive_limit=0),
        ],
    )
    assert run(a, [BAD])[1].phase == "Failed"  # agreement is inconclusive too
    assert run(a, [GOOD])[1].phase == "Inconclusive"
    pairs = tuple((one_col([0.1]), one_col([0.2])) for _ in range(20))
    both = obs(canary=RevisionTraffic(requests=100, errors=1), pairs=pairs)
    verdict = run(a, [both])[1]
    assert verdict == Verdict(
        "Passing", "all 2 checks passing", None, {"errors": 0.01, "agree": 1.0}
    )


def test_pending_until_the_latest_measurement_is_successful() -> None:
    a = analysis(failure_limit=5)
    assert run(a, [GOOD, BAD])[1].phase == "Pending"
    assert run(a, [BAD, GOOD])[1].phase == "Passing"
    first = verdict_of(a, AnalysisState())
    assert first.phase == "Pending"
    assert "no measurement yet" in first.message


def test_no_checks_pass() -> None:
    state, verdict = evaluate(Analysis(), AnalysisState(), GOOD, now=0.0)
    assert verdict == Verdict("Passing", "no analysis checks")
    assert state.checks == {}


def test_state_round_trips_through_json_and_keeps_ten_measurements() -> None:
    a = Analysis(
        min_samples=20,
        checks=[
            check("errorRate", name="errors", max=0.05, failure_limit=100),
            check(INFLIGHT, name="inflight", max=8, consecutive_error_limit=100),
        ],
    )
    state, _ = run(a, [BAD, GOOD, THIN, BROKEN] * 4)
    errors = state.checks["errors"]
    assert len(errors.history) == 10
    assert [r.at for r in errors.history] == [float(t * 10) for t in range(6, 16)]
    assert (errors.successful, errors.failed, errors.inconclusive, errors.consecutive_errors) == (
        4,
        4,
        1,
        1,
    )
    assert state.checks["inflight"].consecutive_errors == 16
    assert AnalysisState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_removed_checks_are_dropped_and_new_ones_start_fresh() -> None:
    old = AnalysisState(checks={"gone": CheckState(failed=7), "errors": CheckState(failed=1)})
    state, verdict = evaluate(analysis(failure_limit=1), old, GOOD, now=1.0)
    assert set(state.checks) == {"errors"}
    assert state.checks["errors"].failed == 1
    assert verdict.phase == "Passing"


@pytest.mark.parametrize(
    "data",
    [
        {"checks": []},
        {"checks": {"a": {"history": [{"at": 1.0, "phase": "Bogus"}]}}},
        {"checks": {"a": {"failed": "many"}}},
        {"checks": {"a": {"history": [{"phase": "Failed"}]}}},
    ],
)
def test_malformed_state_raises_value_error(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed analysis state"):
        AnalysisState.from_dict(data)


# --- predictions_from_body ----------------------------------------------------------


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def v2(shape: list[int], data: object, datatype: str = "FP32") -> bytes:
    return body({"outputs": [{"name": "out", "shape": shape, "datatype": datatype, "data": data}]})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (v2([3], [0.1, 0.5, 0.9]), ((0.1,), (0.5,), (0.9,))),
        (v2([2, 2], [0.1, 0.9, 0.8, 0.2]), ((0.1, 0.9), (0.8, 0.2))),
        (v2([2, 2], [[0.1, 0.9], [0.8, 0.2]]), ((0.1, 0.9), (0.8, 0.2))),
        (v2([2, 1], [[1], [0]], "INT64"), ((1.0,), (0.0,))),
        (v2([2], [True, False], "BOOL"), ((1.0,), (0.0,))),
        (v2([0], []), ()),
        (
            body(
                {
                    "model_name": "m",
                    "outputs": [
                        {"name": "p", "shape": [1, 2], "datatype": "FP64", "data": [0.3, 0.7]},
                        {"name": "label", "shape": [1], "datatype": "INT64", "data": [1]},
                    ],
                }
            ),
            ((0.3, 0.7),),
        ),
        (body({"predictions": [0.1, 2, True]}), ((0.1,), (2.0,), (1.0,))),
        (body({"predictions": [[0.1, 0.9], [0.6, 0.4]]}), ((0.1, 0.9), (0.6, 0.4))),
        (body({"predictions": []}), ()),
    ],
)
def test_predictions_from_body_reads_v2_and_v1(raw: bytes, expected: Rows) -> None:
    assert predictions_from_body(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[0.1, 0.2]",
        b"null",
        body({"outputs": []}),
        body({"outputs": [{"name": "o", "shape": [2]}]}),  # binary extension: no data
        body({"outputs": [{"name": "o", "shape": [2], "parameters": {"binary_data_size": 8}}]})
        + b"\x00" * 8,
        v2([2], ["a", "b"], "BYTES"),
        v2([3], [0.1, 0.2]),  # data does not fill the shape
        v2([2, 2], [[0.1, 0.9, 0.3], [0.8]]),  # nested, ragged
        v2([2, 2, 1], [1, 2, 3, 4]),  # rank 3
        v2([-1], []),
        v2([True], [1.0]),
        v2([2, 0], []),
        b'{"outputs": [{"shape": [1], "data": [NaN]}]}',
        b'{"predictions": [Infinity]}',
        body({"predictions": [10**400]}),
        body({"predictions": [[0.1, 0.9], [0.5]]}),  # ragged rows
        body({"predictions": [[]]}),
        body({"predictions": [{"label": 1}]}),
        body({"predictions": "0.5"}),
        body({"something": "else"}),
        b"[" * 100_000,
    ],
)
def test_predictions_from_body_rejects_what_it_cannot_read(raw: bytes) -> None:
    assert predictions_from_body(raw) is None


def _is_rows(result: object) -> bool:
    return isinstance(result, tuple) and all(
        isinstance(row, tuple)
        and row
        and all(isinstance(v, float) and math.isfinite(v) for v in row)
        for row in result
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_predictions_from_body_never_raises_on_bytes(raw: bytes) -> None:
    result = predictions_from_body(raw)
    assert result is None or _is_rows(result)


@settings(max_examples=300)
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries({"predictions": JSON}),
        st.fixed_dictionaries(
            {
                "outputs": st.lists(
                    st.fixed_dictionaries(
                        {"shape": st.lists(st.integers(-1, 3), max_size=3) | JSON, "data": JSON}
                    ),
                    max_size=2,
                )
            }
        ),
    )
)
def test_predictions_from_body_never_raises_on_json(doc: object) -> None:
    result = predictions_from_body(json.dumps(doc).encode())
    assert result is None or _is_rows(result)


def test_error_rate_fails_early_when_the_errors_alone_exceed_the_limit() -> None:
    """A revision failing everything is ejected by the router and gets few requests: 13
    errors out of 13 already exceed 5 % of the 25 needed, whatever the rest would be."""
    check = AnalysisCheck(name="errors", metric="errorRate", max=0.05)
    failing = Observation(canary=RevisionTraffic(requests=13, errors=13), stable=RevisionTraffic())
    m = measure(check, failing, min_samples=25)
    assert m.phase == "Failed"
    assert m.value == 1.0
    assert "13 errors" in m.message
    # one error among few requests is not conclusive yet (1/25 = 0.04 <= 0.05)
    one = Observation(canary=RevisionTraffic(requests=3, errors=1), stable=RevisionTraffic())
    assert measure(check, one, min_samples=25).phase == "Inconclusive"
