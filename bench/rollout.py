"""Progressive rollouts under load: how fast a bad or silently wrong model is rolled back,
and how many bad answers clients got meanwhile.

    .venv/bin/python bench/rollout.py [--rate 200] [--duration 60] [--interval 2]
                                      [--scenarios good,bad,wrong] [--error-share 0.2]

In one run, on this machine:

1. starts a real control plane (``pilothouse up`` in a temporary ``PILOTHOUSE_HOME``) and
   registers four versions of the model ``fraud`` (``tests/integration/rollout_models.py``):
   v1, a logistic regression on synthetic transactions; ``good``, v1's recipe retrained
   with more data; ``bad``, v1's predictions from a ``custom`` model whose calls fail for
   ``--error-share`` of the requests (500); ``wrong``, a ``custom`` model answering 200
   with ``1 - p`` of v1;
2. per scenario, deploys v1 (``replicas: 2``) under its own name with a canary rollout
   (steps 20 % / pause 5 s / 50 % / pause 5 s / 100 %; analysis every ``--interval``
   seconds, ``minSamples: 20``, ``mirrorPercent: 50``; checks errorRate <= 0.05,
   latencyP99 <= 0.5 s, agreement >= 0.9, ks <= 0.3), waits until Ready, then runs an
   open-loop load of ``--rate`` OIP v2 requests/s (rows of a fixed pool in turn, evenly
   spaced, never retried, 10 s timeout) for at most ``--duration`` seconds; after
   ``--lead`` seconds it applies the scenario's version through the control API and
   polls the deployment's status every 0.25 s. When the rollout ends (phase Degraded:
   rolled back; Healthy on the new version: completed) the load goes on for ``--tail``
   seconds and stops;
3. reports per scenario: whether the rollout completed or rolled back, the time from the
   apply to the new revision's first ready replica and to the rollback/promotion (also
   in analysis intervals), non-2xx answers, answers from the new revision (the v2 body's
   ``model_version``), answers whose score differs from v1's for the same row by more
   than 0.25 (the router adds no header: "wrong" answers are found by prediction), and
   the bad answers served (non-2xx for ``bad``, wrong-by-prediction for ``wrong``);
4. prints ratios against Flagger's documented analysis defaults -- ``interval: 1m``
   ("schedule interval (default 60s)") and ``threshold: 5`` failed checks before
   rollback, i.e. 5 minutes from the first failing check to the rollback -- and writes
   JSON to ``bench/results/rollout-<timestamp>.json``.

Every process started is stopped at the end (``pilothouse down``, then SIGKILL to
whatever carries the run's tag), also on error and Ctrl-C. A measurement, never a CI
gate: exits 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ControlPlane, fmt, percentile, print_ratios, write_result
from model_server import REPO, BenchError, _raise_interrupt, source_fingerprint

sys.path.insert(0, str(REPO))  # tests/integration/rollout_models.py: the model versions
from tests.integration import rollout_models as rm

FLAGGER_INTERVAL_S = 60.0  # Flagger: analysis.interval, "schedule interval (default 60s)"
FLAGGER_THRESHOLD = 5  # Flagger: analysis.threshold, "max number of failed checks before rollback"
FLAGGER_ROLLBACK_S = FLAGGER_INTERVAL_S * FLAGGER_THRESHOLD
FIRST_WEIGHT = 20
STEPS = [
    {"setWeight": FIRST_WEIGHT},
    {"pause": {"duration": "5s"}},
    {"setWeight": 50},
    {"pause": {"duration": "5s"}},
    {"setWeight": 100},
]
CHECKS = [
    {"name": "errors", "metric": "errorRate", "max": 0.05},
    {"name": "latency", "metric": "latencyP99", "max": 0.5},
    {"name": "agreement", "metric": "agreement", "min": 0.9},
    {"name": "drift", "metric": "ks", "max": 0.3},
]
POLL_S = 0.25


def rollout_spec(strategy: str, interval: float, min_samples: int, mirror: float) -> dict[str, Any]:
    analysis: dict[str, Any] = {
        "interval": f"{interval:g}s",
        "minSamples": min_samples,
        "checks": CHECKS,
    }
    if strategy == "blueGreen":
        return {
            "strategy": "blueGreen",
            "blueGreen": {
                "previewMirrorPercent": mirror,
                "autoPromotionDelay": "10s",
                "scaleDownDelay": "10s",
            },
            "analysis": analysis,
        }
    analysis["mirrorPercent"] = mirror
    if strategy == "rolling":
        return {
            "strategy": "rolling",
            "rolling": {"maxSurge": 1, "maxUnavailable": 0},
            "analysis": analysis,
        }
    return {"strategy": "canary", "canary": {"steps": STEPS}, "analysis": analysis}


def document(name: str, version: int, replicas: int, rollout: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "pilothouse.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": f"{rm.MODEL}:{version}",
            "replicas": replicas,
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "probes": {"readiness": {"path": "/v2/health/ready", "period": "1s"}},
            "rollout": rollout,
        },
    }


def _version_of(revision: str | None) -> int | None:
    """A revision is ``MODELVERSION-digest``."""
    return int(revision.split("-", 1)[0]) if revision else None


async def run_scenario(
    plane: ControlPlane,
    name: str,
    url: str,
    rows: rm.Rows,
    doc: dict[str, Any],
    new_version: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Load for at most ``args.duration`` s; apply ``doc`` after ``args.lead`` s; follow the
    rollout; stop ``args.tail`` s after it ended. Times are seconds since the load's t=0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    t0 = loop.time()
    marks: dict[str, float | None] = {
        "apply": None,
        "canary_ready": None,
        "canary_traffic": None,
        "end": None,
    }
    timeline: list[dict[str, Any]] = []
    outcome = {"result": "not finished", "status": None}

    def now() -> float:
        return loop.time() - t0

    def on_start(result: rm.LoadResult) -> None:
        nonlocal t0
        t0 = result.started

    async def driver() -> None:
        await asyncio.sleep(max(0.0, args.lead - now()))  # the bench's schedule
        await asyncio.to_thread(plane.client().apply, [doc])
        marks["apply"] = now()
        ended_at: float | None = None
        while now() < args.duration and not stop.is_set():
            asked = now()
            try:
                st = await asyncio.to_thread(plane.status_of, name)
            except Exception as exc:  # a slow API is noted, not fatal
                timeline.append({"t": round(now(), 2), "error": f"{type(exc).__name__}: {exc}"})
                st = None
            if st is not None:
                r = st.get("rollout") or {}
                canary = r.get("canaryRevision")
                ready = ((r.get("replicas") or {}).get(canary) or {}).get("ready", 0)
                timeline.append(
                    {
                        "t": round(now(), 2),
                        "poll_ms": round((now() - asked) * 1000, 1),
                        "phase": r.get("phase"),
                        "weight": r.get("weight"),
                        "mirror": r.get("mirrorPercent"),
                        "stable": r.get("stableRevision"),
                        "canary": canary,
                        "canaryReady": ready,
                        "verdict": (r.get("analysis") or {}).get("verdict"),
                        "message": r.get("message"),
                    }
                )
                if canary and ready and marks["canary_ready"] is None:
                    marks["canary_ready"] = now()
                if (
                    canary
                    and (r.get("weight") or 0) > 0
                    and ready
                    and marks["canary_traffic"] is None
                ):
                    marks["canary_traffic"] = now()
                if ended_at is None and r.get("phase") == "Degraded":
                    ended_at = marks["end"] = now()
                    outcome.update(result="rolled back", status=st)
                elif (
                    ended_at is None
                    and r.get("phase") == "Healthy"
                    and _version_of(r.get("stableRevision")) == new_version
                    and not canary
                ):
                    ended_at = marks["end"] = now()
                    outcome.update(result="completed", status=st)
            if ended_at is not None and now() >= ended_at + args.tail:
                break
            await asyncio.sleep(POLL_S)  # the poller's period, not a synchronisation
        stop.set()

    task = asyncio.create_task(driver())
    try:
        load = await rm.open_loop(
            url,
            rows,
            args.rate,
            args.duration,
            max_requests=int(args.rate * args.duration) + 1,
            request_timeout=10.0,
            stop=stop,
            on_start=on_start,
        )
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
    if outcome["status"] is None:
        outcome["status"] = await asyncio.to_thread(plane.status_of, name)
    return {"load": load, "marks": marks, "timeline": timeline, **outcome}


def analyse(
    scenario: str,
    run: dict[str, Any],
    rows: rm.Rows,
    new_version: int,
    interval: float,
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    load: rm.LoadResult = run["load"]
    marks = run["marks"]
    answers = load.answers
    apply_t = marks["apply"] if marks["apply"] is not None else float("inf")
    end_t = marks["end"]
    new = str(new_version)
    non2xx = [a for a in answers if a.status != 200]
    wrong = [
        a
        for a in answers
        if a.status == 200 and a.score is not None and rows.is_wrong(a.row, a.score)
    ]
    from_new = [a for a in answers if a.version == new]
    after_end = [a for a in answers if end_t is not None and a.scheduled >= end_t + 0.5]
    bad_served = {"good": len(non2xx), "bad": len(non2xx), "wrong": len(wrong)}[scenario]
    status = run["status"] or {}
    rollout = status.get("rollout") or {}
    analysis = rollout.get("analysis") or {}
    rolled_back = run["result"] == "rolled back"
    event = next((e for e in events if e.get("reason") == "RolledBack"), None)
    to_end = (end_t - apply_t) if end_t is not None and marks["apply"] is not None else None
    ready_t = marks["canary_ready"]
    ready_to_end = (end_t - ready_t) if end_t is not None and ready_t is not None else None
    ok_lat = [a.latency * 1000 for a in answers if a.status == 200]
    # live traffic of the new revision, from the answers themselves (200s by model_version,
    # and the 500s that only the bad revision gives): when it started and when it stopped
    new_live = sorted(a.scheduled for a in answers if a.version == new or a.status >= 500)
    first_new = (new_live[0] - apply_t) if new_live and marks["apply"] is not None else None
    last_new = (new_live[-1] - apply_t) if new_live and marks["apply"] is not None else None
    return {
        "scenario": scenario,
        "outcome": run["result"],
        "apply_s": _r(marks["apply"]),
        "apply_to_canary_ready_s": _r(ready_t - apply_t) if ready_t is not None else None,
        "apply_to_end_s": _r(to_end),
        "apply_to_end_intervals": _r(to_end / interval) if to_end is not None else None,
        "canary_ready_to_end_s": _r(ready_to_end),
        "canary_ready_to_end_intervals": _r(ready_to_end / interval)
        if ready_to_end is not None
        else None,
        "apply_to_first_new_answer_s": _r(first_new),
        "apply_to_last_new_answer_s": _r(last_new) if rolled_back else None,
        "requests": len(answers),
        "sent": load.sent,
        "unfinished": load.unfinished,
        "non_2xx": len(non2xx),
        "non_2xx_statuses": _count(str(a.status) for a in non2xx),
        "non_2xx_after_end": sum(1 for a in after_end if a.status != 200),
        "from_new_revision": len(from_new),
        "wrong_vs_v1": len(wrong),
        "wrong_not_from_new": sum(1 for a in wrong if a.version != new),
        "bad_served": bad_served,
        "after_end_versions": _count(a.version or str(a.status) for a in after_end),
        # answers of the new revision to requests sent after the end was seen (a rollback
        # should leave none): (scheduled - end, latency) in seconds
        "new_after_end": [
            (round(a.scheduled - end_t, 3), round(a.latency, 3))
            for a in answers
            if end_t is not None and a.scheduled >= end_t and (a.version == new or a.status >= 500)
        ][:200]
        if rolled_back
        else [],
        "p50_ms": _r(percentile(ok_lat, 50)),
        "p99_ms": _r(percentile(ok_lat, 99)),
        "rolled_back": rolled_back,
        "verdict": analysis.get("verdict"),
        "verdict_message": analysis.get("message"),
        "checks": analysis.get("checks"),
        "rollout_message": rollout.get("message"),
        "rolled_back_event": event.get("message") if event else None,
        "history": [
            {k: e.get(k) for k in ("number", "revision", "model", "outcome")}
            for e in status.get("history") or []
        ],
    }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Canary rollouts of a good, a failing and a silently wrong model under load."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="most seconds of load per scenario (60)"
    )
    parser.add_argument(
        "--lead", type=float, default=3.0, help="seconds of v1 traffic before the apply (3)"
    )
    parser.add_argument(
        "--tail", type=float, default=3.0, help="seconds of traffic after the rollout ended (3)"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="analysis interval, s (2)")
    parser.add_argument("--min-samples", type=int, default=20)
    parser.add_argument(
        "--mirror", type=float, default=None, help="mirrorPercent (50; blueGreen: 100)"
    )
    parser.add_argument(
        "--strategy",
        choices=("canary", "blueGreen", "rolling"),
        default="canary",
        help="canary (default, the steps above); blueGreen (previewMirrorPercent --mirror, "
        "autoPromotionDelay 10s, scaleDownDelay 10s); rolling (maxSurge 1, maxUnavailable 0)",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--error-share", type=float, default=0.2, help="the bad model's 500 share")
    parser.add_argument("--scenarios", default=",".join(rm.SCENARIOS), help="good,bad,wrong")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.mirror is None:
        args.mirror = 100.0 if args.strategy == "blueGreen" else 50.0
    if not scenarios or any(s not in rm.SCENARIOS for s in scenarios):
        parser.error(f"--scenarios: a comma-separated subset of {','.join(rm.SCENARIOS)}")
    if not (
        1 <= args.rate <= 2000
        and 5 <= args.duration <= 600
        and 0 <= args.lead < args.duration
        and 0 <= args.tail <= 60
        and 1 <= args.interval <= 60
        and 1 <= args.replicas <= 8
        and 0 <= args.error_share <= 1
        and 0 < args.mirror <= 100
    ):
        parser.error(
            "--rate 1..2000, --duration 5..600, --lead < duration, --tail 0..60, "
            "--interval 1..60, --replicas 1..8, --error-share 0..1, --mirror 0..100"
        )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    spec = rollout_spec(args.strategy, args.interval, args.min_samples, args.mirror)
    results: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-rollout-") as tmp:
            plane = ControlPlane(Path(tmp) / "home", tag)
            try:
                plane.up()
                root = plane.home / "models"
                v1 = rm.register_v1(root)
                versions = {}
                for scenario in scenarios:
                    versions[scenario] = rm.register_scenario(root, scenario, v1, args.error_share)
                print(
                    "registered "
                    + ", ".join(
                        [f"v1={v1.ref}"]
                        + [f"{s}={v.ref} ({v.framework})" for s, v in versions.items()]
                    ),
                    flush=True,
                )
                rows = rm.Rows.for_version(v1)
                for scenario in scenarios:
                    name = f"fraud-{scenario}"
                    new_version = versions[scenario].version
                    plane.apply(document(name, v1.version, args.replicas, spec))
                    took = plane.wait_ready(name, timeout=120)
                    url = plane.status_of(name)["url"]
                    print(
                        f"\n[{scenario}] v1 Ready in {took:.1f}s at {url}; {args.rate:g} requests/s, "
                        f"applying {rm.MODEL}:{new_version} at t={args.lead:g}s (at most "
                        f"{args.duration:g}s of load) ...",
                        flush=True,
                    )
                    run = asyncio.run(
                        run_scenario(
                            plane,
                            name,
                            url,
                            rows,
                            document(name, new_version, args.replicas, spec),
                            new_version,
                            args,
                        )
                    )
                    events = plane.client().events("modeldeployments", name)
                    row = analyse(scenario, run, rows, new_version, args.interval, events)
                    results.append(row)
                    raw[scenario] = {
                        "timeline": run["timeline"],
                        "events": events,
                        "failures": [
                            {"t": round(a.scheduled, 3), "status": a.status, "error": a.error[:120]}
                            for a in run["load"].answers
                            if a.status != 200
                        ][:300],
                        "status": run["status"],
                    }
                    print(
                        f"  {row['outcome']}: apply -> end {fmt(row['apply_to_end_s'])}s, "
                        f"non-2xx {row['non_2xx']}, from new revision {row['from_new_revision']}, "
                        f"wrong vs v1 {row['wrong_vs_v1']}",
                        flush=True,
                    )
                    if row["rolled_back_event"]:
                        print(f"  RolledBack: {row['rolled_back_event']}", flush=True)
                    plane.delete_md(name)
            finally:
                raw["daemon_log_problems"] = plane.log_problems(200)
                raw["replica_log_problems"] = plane.replica_logs_problems()
                plane.close()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print()
    header = (
        f"{'scenario':<8} {'outcome':<13} {'->ready':>7} {'->live':>6} {'->end':>6} "
        f"{'intervals':>9} {'->last':>6} {'requests':>8} {'non-2xx':>7} {'new rev':>7} "
        f"{'wrong':>6} {'bad served':>10} {'p99 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['scenario']:<8} {row['outcome']:<13} "
            f"{fmt(row['apply_to_canary_ready_s'], 1):>7} "
            f"{fmt(row['apply_to_first_new_answer_s'], 1):>6} "
            f"{fmt(row['apply_to_end_s'], 1):>6} {fmt(row['apply_to_end_intervals'], 1):>9} "
            f"{fmt(row['apply_to_last_new_answer_s'], 1):>6} {row['requests']:>8} "
            f"{row['non_2xx']:>7} {row['from_new_revision']:>7} {row['wrong_vs_v1']:>6} "
            f"{row['bad_served']:>10} {fmt(row['p99_ms'], 1):>7}"
        )
    print(
        "seconds after the apply: ->ready, the new revision's first ready replica; ->live, its "
        "first live answer; ->end, the rollback or promotion seen in the status (polled every "
        f"{POLL_S:g}s; intervals: ->end / {args.interval:g}s); ->last, its last live answer "
        "(rollbacks). wrong: 200s whose score is > 0.25 from v1's for the row. bad served: "
        "non-2xx for good and bad, wrong answers for wrong."
    )
    ratios: list[dict[str, Any]] = []
    by = {r["scenario"]: r for r in results}
    if "good" in by:
        g = by["good"]
        ratios.append(
            {
                "name": "good: non-2xx during the rollout",
                "value": float(g["non_2xx"]),
                "target": "0",
                "met": g["non_2xx"] == 0 and g["outcome"] == "completed",
                "detail": g["outcome"],
            }
        )
    for scenario in ("bad", "wrong"):
        if scenario not in by:
            continue
        r = by[scenario]
        t = r["apply_to_end_s"] if r["rolled_back"] else None
        ratios.append(
            {
                "name": f"{scenario}: time to rollback / Flagger's 5 min",
                "value": (t / FLAGGER_ROLLBACK_S) if t is not None else None,
                "target": "< 1",
                "met": (t < FLAGGER_ROLLBACK_S) if t is not None else False,
                "detail": f"{fmt(t, 1)} s vs {FLAGGER_INTERVAL_S:g} s x {FLAGGER_THRESHOLD}"
                if t is not None
                else r["outcome"],
            }
        )
    if "bad" in by:
        r = by["bad"]
        flagger = args.rate * FIRST_WEIGHT / 100 * args.error_share * FLAGGER_ROLLBACK_S
        ratios.append(
            {
                "name": "bad: 500s served / Flagger estimate",
                "value": r["bad_served"] / flagger,
                "target": "< 1",
                "met": r["bad_served"] < flagger,
                "detail": f"{r['bad_served']} vs {flagger:.0f} (rate x {FIRST_WEIGHT}% x "
                f"{args.error_share:g} x {FLAGGER_ROLLBACK_S:g} s)",
            }
        )
    if "wrong" in by:
        r = by["wrong"]
        ratios.append(
            {
                "name": "wrong: errorRate passing while rolled back",
                "value": None,
                "target": "rolled back",
                "met": r["rolled_back"] and r["non_2xx"] == 0,
                "detail": f"{r['wrong_vs_v1']} wrong answers served; Flagger's default checks "
                "(success rate, latency) never fail a model that answers 200",
            }
        )
    print()
    print_ratios(ratios)
    problems = raw.get("daemon_log_problems") or []
    if problems:
        print(f"\ndaemon log warnings/errors: {len(problems)} line(s); the last 8:")
        for line in problems[-8:]:
            print(f"  {line}")
    out = write_result(
        "rollout",
        started_at,
        {
            "benchmark": "rollout",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "rate": args.rate,
                "duration_s": args.duration,
                "lead_s": args.lead,
                "tail_s": args.tail,
                "interval_s": args.interval,
                "min_samples": args.min_samples,
                "mirror_percent": args.mirror,
                "replicas": args.replicas,
                "error_share": args.error_share,
                "strategy": args.strategy,
                "rollout": spec,
                "cpus": os.cpu_count(),
                "flagger_reference_s": FLAGGER_ROLLBACK_S,
            },
            "environment": {"source_sha256": source_fingerprint()},
            "results": results,
            "ratios": ratios,
            **raw,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f}s)", file=sys.stderr)
    sys.exit(code)
