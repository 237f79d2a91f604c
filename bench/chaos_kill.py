"""Chaos: kill -9 a replica every few seconds under constant load; count what clients see.

    .venv/bin/python bench/chaos_kill.py [--quick] [--rate 200] [--seconds 60] [--interval 5]
    .venv/bin/python bench/chaos_kill.py --replicas 2 --interval 2 --seconds 20  # issue 12's case

In one run, on this machine:

1. trains the fraud-detection example model, starts a real control plane
   (``pilothouse up`` in a temporary ``PILOTHOUSE_HOME``), registers the model and
   applies a ModelDeployment with ``replicas: 3`` (``--replicas``; defaults otherwise);
2. sends a constant open-loop load (``--rate`` requests/s, evenly spaced, through the
   router at ``status.url``) for a calm ``--before`` seconds, then for ``--seconds``
   more during which, every ``--interval`` seconds, a random *ready* replica (its pid
   from ``status.replicaStatuses``) is sent SIGKILL;
3. polls the deployment's status every second, and reports client-visible failures
   (non-2xx answers and connection errors/timeouts; target: zero), p50/p99 before and
   during the kills, the kills made, the replacements observed and how long the
   deployment took to be back at 3 ready replicas after each kill;
4. writes JSON to ``bench/results/chaos_kill-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import (
    ControlPlane,
    Shot,
    deployment,
    fmt,
    open_loop,
    per_second,
    print_ratios,
    summarize,
    train_fraud,
    write_result,
)
from model_server import (
    BODY,
    INFER_PATH,
    MODEL_NAME,
    REPO,
    BenchError,
    _has_tag,
    _raise_interrupt,
    source_fingerprint,
)

DEPLOYMENT = "fraud-chaos"
REPLICAS = 3


def set_replicas(count: int) -> None:
    global REPLICAS
    REPLICAS = count


async def chaos(
    plane: ControlPlane,
    url: str,
    rate: float,
    before: float,
    during: float,
    interval: float,
    seed: int,
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    timeline: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    done = asyncio.Event()

    def now() -> float:
        return loop.time() - t0

    def on_start(run: Any) -> None:
        nonlocal t0
        t0 = run.started

    async def poller() -> None:
        tick = 0
        while not done.is_set():
            try:
                st = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
            except Exception as exc:  # the API may be slow; note it and go on
                timeline.append({"t": round(now(), 2), "error": f"{type(exc).__name__}: {exc}"})
            else:
                ids = [r["id"] for r in st.get("replicaStatuses") or []]
                seen_ids.update(ids)
                timeline.append(
                    {
                        "t": round(now(), 2),
                        "ready": st.get("readyReplicas"),
                        "replicas": st.get("replicas"),
                        "desired": st.get("desiredReplicas"),
                        "ids": ids,
                    }
                )
            tick += 1
            await asyncio.sleep(max(0.0, tick - now()))

    async def killer() -> None:
        at = before
        while at < before + during and not done.is_set():
            await asyncio.sleep(max(0.0, at - now()))
            st = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
            ready = [r for r in st.get("replicaStatuses") or [] if r.get("ready") and r.get("pid")]
            if not ready:
                kills.append({"t": round(now(), 2), "skipped": "no ready replica"})
            else:
                victim = rng.choice(ready)
                pid = int(victim["pid"])
                if not _has_tag(pid, plane.tag):
                    kills.append({"t": round(now(), 2), "skipped": f"pid {pid} not ours"})
                else:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        kills.append(
                            {
                                "t": round(now(), 2),
                                "id": victim["id"],
                                "pid": pid,
                                "ready_before": len(ready),
                            }
                        )
                    except ProcessLookupError:
                        kills.append({"t": round(now(), 2), "skipped": f"pid {pid} gone"})
            at += interval

    initial = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
    initial_ids = {r["id"] for r in initial.get("replicaStatuses") or []}
    seen_ids.update(initial_ids)
    poll_task = asyncio.create_task(poller())
    kill_task = asyncio.create_task(killer())
    try:
        run = await open_loop(host, port, [(before + during, rate)], on_start=on_start)
    finally:
        done.set()
        kill_task.cancel()
        await asyncio.gather(poll_task, kill_task, return_exceptions=True)
    return {
        "shots": run.shots,
        "unfinished": run.unfinished,
        "max_connections_used": run.max_connections_used,
        "timeline": timeline,
        "kills": kills,
        "initial_ids": sorted(initial_ids),
        "seen_ids": sorted(seen_ids),
    }


def recoveries(kills: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> list[float | None]:
    """Per kill: seconds until a poll saw the killed replica gone and REPLICAS ready
    (None: not within the run)."""
    out: list[float | None] = []
    for kill in kills:
        if "pid" not in kill:
            continue
        found = None
        for point in timeline:
            if point["t"] < kill["t"] or "ready" not in point:
                continue
            if kill["id"] not in point["ids"] and (point["ready"] or 0) >= REPLICAS:
                found = round(point["t"] - kill["t"], 2)
                break
        out.append(found)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Kill replicas under load; count failures.")
    parser.add_argument("--quick", action="store_true", help="5 s calm + 20 s of kills")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument("--before", type=float, default=None, help="calm seconds (default 10)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of kills (60)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replicas", type=int, default=REPLICAS, help="replicas (default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= 16:
        parser.error("--replicas 1..16")
    set_replicas(args.replicas)
    before = args.before if args.before is not None else (5.0 if args.quick else 10.0)
    during = args.seconds if args.seconds is not None else (20.0 if args.quick else 60.0)
    if not (1 <= args.rate <= 2000 and 0 <= before <= 300 and 1 <= during <= 600):
        parser.error("--rate 1..2000, --before 0..300, --seconds 1..600")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-chaos-") as tmp:
            workdir = Path(tmp)
            model_dir = train_fraud(workdir)
            plane = ControlPlane(workdir / "home", tag)
            try:
                plane.up()
                print(plane.register(MODEL_NAME, model_dir, framework="sklearn"))
                doc = deployment(DEPLOYMENT, f"{MODEL_NAME}:latest", REPLICAS)
                plane.apply(doc)
                took = plane.wait_ready(DEPLOYMENT, timeout=120)
                md = plane.get_md(DEPLOYMENT)
                url = md["status"]["url"]
                print(f"{DEPLOYMENT}: Ready in {took:.1f}s at {url}", flush=True)
                print(
                    f"load: {args.rate:g} requests/s for {before:g}s calm + {during:g}s with a "
                    f"SIGKILL every {args.interval:g}s ...",
                    flush=True,
                )
                started = time.monotonic()
                info = asyncio.run(
                    chaos(plane, url, args.rate, before, during, args.interval, args.seed)
                )
                print(f"  done in {time.monotonic() - started:.1f}s", flush=True)
                info["deployment"] = doc
                info["status_after"] = plane.status_of(DEPLOYMENT)
                info["events"] = plane.client().events("modeldeployments", DEPLOYMENT)
            finally:
                info["daemon_log_problems"] = plane.log_problems(200)
                info["replica_log_problems"] = plane.replica_logs_problems()
                plane.close()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    shots: list[Shot] = info.pop("shots")
    calm = summarize([s for s in shots if s.scheduled < before])
    storm = summarize([s for s in shots if s.scheduled >= before])
    total = summarize(shots)
    seconds = round(before + during)
    rows = per_second(shots, seconds + 1)
    kills = info["kills"]
    made = [k for k in kills if "pid" in k]
    replacements = sorted(set(info["seen_ids"]) - set(info["initial_ids"]))
    recovered = recoveries(kills, info["timeline"])
    ready_at = {int(p["t"]): p.get("ready") for p in info["timeline"] if "t" in p}
    kill_at = {int(k["t"]) for k in made}

    print()
    print(
        f"{'sec':>4} {'sent':>5} {'ok':>5} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'ready':>5}"
    )
    for row in rows:
        if row["sent"] == 0 and row["t"] >= seconds:
            continue
        mark = "  <- kill" if row["t"] in kill_at else ""
        print(
            f"{row['t']:>4} {row['sent']:>5} {row['ok']:>5} {row['failed']:>6} "
            f"{fmt(row['p50_ms']):>8} {fmt(row['p99_ms']):>8} "
            f"{fmt(ready_at.get(row['t']), 0):>5}{mark}"
        )
    print()
    header = f"{'phase':<14} {'requests':>8} {'ok':>7} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors"
    print(header)
    print("-" * len(header))
    for label, s in (("calm", calm), ("kills", storm), ("all", total)):
        print(
            f"{label:<14} {s['requests']:>8} {s['ok']:>7} {s['failed']:>7} {fmt(s['p50_ms']):>8} "
            f"{fmt(s['p99_ms']):>8} {fmt(s['max_ms']):>8}  {s['errors'] or '-'}"
        )
    print()
    rec = [r for r in recovered if r is not None]
    print(
        f"kills: {len(made)} made ({len(kills) - len(made)} skipped); replacement replicas "
        f"observed: {len(replacements)}; back to {REPLICAS} ready after each kill: "
        f"{[fmt(r, 1) for r in recovered]} s (max {fmt(max(rec) if rec else None, 1)} s); "
        f"unfinished at the end: {info['unfinished']}"
    )
    ratios = [
        {
            "name": "client-visible failures during kills",
            "value": float(storm["failed"]),
            "target": "0",
            "met": storm["failed"] == 0,
        },
        {
            "name": "p99 during kills / p99 calm",
            "value": (storm["p99_ms"] / calm["p99_ms"])
            if storm["p99_ms"] and calm["p99_ms"]
            else None,
            "detail": f"{fmt(storm['p99_ms'])} vs {fmt(calm['p99_ms'])} ms",
            "target": None,
            "met": None,
        },
        {
            "name": "replacements observed / kills",
            "value": (len(replacements) / len(made)) if made else None,
            "target": "1.0",
            "met": (len(replacements) >= len(made)) if made else None,
        },
    ]
    print_ratios(ratios)
    problems = info["daemon_log_problems"]
    if problems:
        print(f"\ndaemon log warnings/errors: {len(problems)} line(s); the last 8:")
        for line in problems[-8:]:
            print(f"  {line}")
    out = write_result(
        "chaos_kill",
        started_at,
        {
            "benchmark": "chaos_kill",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "rate": args.rate,
                "before_s": before,
                "during_s": during,
                "interval_s": args.interval,
                "seed": args.seed,
                "replicas": REPLICAS,
                "path": INFER_PATH,
                "body": BODY,
                "cpus": os.cpu_count(),
            },
            "environment": {"source_sha256": source_fingerprint()},
            "calm": calm,
            "kills_phase": storm,
            "all": total,
            "per_second": rows,
            "kills": kills,
            "recovery_s": recovered,
            "replacements": replacements,
            "ratios": ratios,
            "failures": [
                {"t": round(s.scheduled, 3), "status": s.status, "error": s.error}
                for s in shots
                if not 200 <= s.status < 300
            ][:500],
            **info,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
