"""Gather one analysis interval's measurements of the new revision against the stable one
(router buckets, mirrored response pairs, sampled live responses, model server metrics)
and hand them to the pure analysis policy."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pilothouse.controllers.base import Context
from pilothouse.controllers.internal import AnalysisRun
from pilothouse.policy.analysis import (
    AnalysisState,
    Observation,
    RevisionTraffic,
    Rows,
    Verdict,
    evaluate,
    predictions_from_body,
)
from pilothouse.ports.dataplane import LoadSample
from pilothouse.spec.resources import SERVER_METRIC_PREFIX, Analysis

#: live responses parsed per revision and interval (bounds the controller's CPU)
SCORED_RESPONSES = 500
COUNTER_SUFFIXES = ("_total", "_count", "_sum")


def _traffic(samples: list[LoadSample]) -> RevisionTraffic:
    bounds: tuple[float, ...] = ()
    counts: list[int] = []
    for sample in samples:
        if sample.latency_bounds and not bounds:
            bounds = sample.latency_bounds
            counts = [0] * len(bounds)
        if sample.latency_bounds == bounds:
            for i, n in enumerate(sample.latency_counts):
                counts[i] += n
    return RevisionTraffic(
        requests=sum(s.requests for s in samples),
        errors=sum(s.errors for s in samples),
        latency_bounds=bounds,
        latency_counts=tuple(counts),
    )


def _scores(rows: Rows) -> list[float]:
    return [row[-1] for row in rows if row]


def _server_value(texts: list[str], metric: str) -> float | None:
    total, found = 0.0, False
    for text in texts:
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == metric:
                        total += float(sample.value)
                        found = True
        except ValueError:
            return None
    return total if found else None


async def _server_values(
    ctx: Context, name: str, analysis: Analysis, canary: str
) -> dict[str, float | None]:
    wanted = [c.metric for c in analysis.checks if c.metric.startswith(SERVER_METRIC_PREFIX)]
    if not wanted:
        return {}
    texts = await ctx.dataplane.scrape(name, canary)
    return {
        metric: _server_value(texts, metric[len(SERVER_METRIC_PREFIX) :]) if texts else None
        for metric in wanted
    }


async def baseline_server_metrics(
    ctx: Context, name: str, analysis: Analysis, canary: str, now: float, run: AnalysisRun
) -> None:
    """Read the counters once when the analysis window opens, so the first measurement
    already has an increase to report."""
    values = await _server_values(ctx, name, analysis, canary)
    run.server = {
        metric[len(SERVER_METRIC_PREFIX) :]: (value, now)
        for metric, value in values.items()
        if value is not None
    }


async def run_analysis(
    ctx: Context,
    name: str,
    analysis: Analysis,
    state: AnalysisState,
    stable: str,
    canary: str,
    since: float,
    now: float,
    run: AnalysisRun,
) -> tuple[AnalysisState, Verdict]:
    load = await ctx.dataplane.load(name, since=since)
    responses = await ctx.dataplane.responses(name, since=since)
    pairs: list[tuple[Rows, Rows]] = []
    pair_errors = 0
    for m in responses.mirrors[-SCORED_RESPONSES:]:
        if {m.primary_revision, m.mirror_revision} != {stable, canary}:
            continue
        if not (200 <= m.primary_status < 300 and 200 <= m.mirror_status < 300):
            continue  # errors are measured by errorRate; pairs compare predictions
        primary = predictions_from_body(m.primary_body)
        mirror = predictions_from_body(m.mirror_body)
        if primary is None or mirror is None:
            pair_errors += 1
            continue
        pairs.append((primary, mirror) if m.primary_revision == stable else (mirror, primary))
    scores: dict[str, list[float]] = {stable: [], canary: []}
    parsed: dict[str, int] = {stable: 0, canary: 0}
    for sample in reversed(responses.samples):
        if sample.revision not in scores or parsed[sample.revision] >= SCORED_RESPONSES:
            continue
        parsed[sample.revision] += 1
        rows = predictions_from_body(sample.body)
        if rows is not None:
            scores[sample.revision].extend(_scores(rows))
    server: dict[str, float | None] = {}
    read = await _server_values(ctx, name, analysis, canary)
    if read:
        baselines = dict(run.server)
        for check_metric, value in read.items():
            metric = check_metric[len(SERVER_METRIC_PREFIX) :]
            if value is not None and metric.endswith(COUNTER_SUFFIXES):
                # counters: their increase per second over the interval
                previous = baselines.get(metric)
                baselines[metric] = (value, now)
                if previous is None or now <= previous[1] or value < previous[0]:
                    value = None
                else:
                    value = (value - previous[0]) / (now - previous[1])
            server[check_metric] = value
        run.server = baselines
    observation = Observation(
        canary=_traffic(load.revisions.get(canary, [])),
        stable=_traffic(load.revisions.get(stable, [])),
        pairs=tuple(pairs),
        pair_errors=pair_errors,
        canary_scores=tuple(scores[canary]),
        stable_scores=tuple(scores[stable]),
        server=server,
    )
    return evaluate(analysis, state, observation, now)
