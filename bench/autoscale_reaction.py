"""How fast the autoscaler meets a step in load: pilothouse against Ray Serve.

    .venv/bin/python bench/autoscale_reaction.py [--quick] [--no-ray]

In one run, on this machine:

1. registers a ``custom`` model whose ``predict`` sleeps ``--delay`` (20 ms) and
   returns the first feature (calls are serialised, so one replica serves at most
   about 1/delay requests/s), starts a real control plane (``pilothouse up`` in a
   temporary ``PILOTHOUSE_HOME``);
2. finds one replica's capacity: ``wrk`` (closed loop, 4 connections) against a
   deployment pinned to one replica with batching off;
3. applies a deployment with ``replicas: {min: 1, max: 6}``, batching off and
   ``autoscaling: {metric: concurrency, target: 2, stableWindow: 60s, panicWindow: 6s}``,
   and sends an open-loop load (evenly spaced requests, no retries, latency counted
   from the scheduled send time) of 1x capacity for ``--base`` s, then 3x for
   ``--step`` s, polling the deployment's status every second (readyReplicas,
   desiredReplicas: what ``pilothouse get md NAME -o json`` shows, read through
   the API client so that polling costs no CLI start-up);
4. does the same against Ray Serve (``bench/autoscale_ray_server.py``: the same
   sleeping model, ``autoscaling_config={"min_replicas": 1, "max_replicas": 6}``,
   Ray's defaults otherwise) unless ``--no-ray`` or ``bench/.venv-ray`` is missing;
5. reports, per system: seconds from the step until desired >= 3, until 3 replicas
   are ready (3x load needs 3), until the per-second p99 is back under the objective
   (2x the p99 measured at 1x load, and staying under it for 5 s), and the errors;
   prints both timelines side by side and the ratios; writes JSON to
   ``bench/results/autoscale_reaction-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
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
    percentile,
    print_ratios,
    summarize,
    write_result,
    write_slow_model,
)
from model_server import (
    BODY,
    INFER_PATH,
    RAY_PYTHON,
    RAY_VENV,
    REPO,
    BenchError,
    Server,
    ServerSpec,
    _raise_interrupt,
    free_port,
    parse_wrk,
    run_wrk,
    source_fingerprint,
    write_lua,
)

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "slow"
CAP_CONNECTIONS = 4
TARGET = 2.0
MIN_REPLICAS, MAX_REPLICAS = 1, 6
STEP_FACTOR = 3.0
NEEDED = 3  # replicas 3x the capacity of one needs
OBJECTIVE_FACTOR = 2.0
HOLD_SECONDS = 5
RAY_READY_TIMEOUT = 180.0
RAY_STOP_TIMEOUT = 60.0


# ------------------------------------------------------------------------- analysis


def first_at_or_after(
    points: list[dict[str, Any]], start: float, key: str, at_least: int
) -> float | None:
    for p in points:
        if p["t"] >= start and (p.get(key) or 0) >= at_least:
            return round(p["t"] - start, 1)
    return None


def p99_recovery(rows: list[dict[str, Any]], step_at: int, objective: float) -> float | None:
    """Seconds from the step to the first second that starts HOLD_SECONDS in a row with
    a per-second p99 under the objective and no failures."""
    ok = [
        r["p99_ms"] is not None and r["p99_ms"] <= objective and r["failed"] == 0
        for r in rows[step_at:]
    ]
    for i in range(len(ok) - HOLD_SECONDS + 1):
        if all(ok[i : i + HOLD_SECONDS]):
            return float(i)
    return None


def analyse(
    name: str,
    shots: list[Shot],
    timeline: list[dict[str, Any]],
    base: float,
    step: float,
) -> dict[str, Any]:
    seconds = math.ceil(base + step)
    rows = per_second(shots, seconds)
    # the 1x reference: the base phase without its first 2 s
    reference = [s.latency * 1000 for s in shots if 2 <= s.scheduled < base and s.status == 200]
    base_p99 = percentile(reference, 99)
    objective = None if base_p99 is None else OBJECTIVE_FACTOR * base_p99
    at_step = [p for p in timeline if p["t"] <= base]
    return {
        "name": name,
        "base": summarize([s for s in shots if s.scheduled < base]),
        "step": summarize([s for s in shots if s.scheduled >= base]),
        "base_p99_ms": None if base_p99 is None else round(base_p99, 2),
        "objective_p99_ms": None if objective is None else round(objective, 2),
        "at_step": at_step[-1] if at_step else None,
        "to_desired_3_s": first_at_or_after(timeline, base, "desired", NEEDED),
        "to_ready_3_s": first_at_or_after(timeline, base, "ready", NEEDED),
        "to_p99_ok_s": None if objective is None else p99_recovery(rows, int(base), objective),
        "max_desired": max((p.get("desired") or 0 for p in timeline), default=None),
        "max_ready": max((p.get("ready") or 0 for p in timeline), default=None),
        "per_second": rows,
        "timeline": timeline,
    }


# ----------------------------------------------------------------------- pilothouse


def measure_capacity(plane: ControlPlane, lua: Path, seconds: float) -> float:
    name = "slow-capacity"
    plane.apply(deployment(name, f"{MODEL}:latest", 1, batch=1))
    plane.wait_ready(name, timeout=120)
    url = plane.get_md(name)["status"]["url"] + INFER_PATH.replace("fraud", MODEL)
    run_wrk(url, lua, CAP_CONNECTIONS, 1)
    result = parse_wrk(run_wrk(url, lua, CAP_CONNECTIONS, seconds), "capacity", CAP_CONNECTIONS)
    plane.delete_md(name)
    errors = result.non_2xx + sum(result.socket_errors.values())
    print(
        f"capacity of one replica: {result.requests_per_s:.1f} requests/s "
        f"(wrk, {CAP_CONNECTIONS} connections, {seconds:g}s, p50 {fmt(result.p50_ms)} ms, "
        f"errors {errors})",
        flush=True,
    )
    if errors or result.requests_per_s <= 0:
        raise BenchError(f"capacity measurement failed: {result}")
    return result.requests_per_s


async def drive(
    host: str,
    port: int,
    path: str,
    phases: list[tuple[float, float]],
    poll: Any,
) -> tuple[list[Shot], list[dict[str, Any]], int]:
    """Run the load; call ``poll()`` (in a thread) once a second; (shots, timeline)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    timeline: list[dict[str, Any]] = []
    done = asyncio.Event()

    def on_start(run: Any) -> None:
        nonlocal t0
        t0 = run.started

    async def poller() -> None:
        tick = 0
        while not done.is_set():
            t = loop.time() - t0
            try:
                point = await asyncio.to_thread(poll)
            except Exception as exc:
                point = {"error": f"{type(exc).__name__}: {exc}"}
            if point is not None:
                timeline.append({"t": round(t, 2), **point})
            tick += 1
            await asyncio.sleep(max(0.0, tick - (loop.time() - t0)))

    task = asyncio.create_task(poller())
    try:
        run = await open_loop(host, port, phases, path=path, max_connections=512, on_start=on_start)
    finally:
        done.set()
        await asyncio.gather(task, return_exceptions=True)
    return run.shots, timeline, run.unfinished


def run_pilothouse(
    plane: ControlPlane, phases: list[tuple[float, float]], base: float, step: float
) -> dict[str, Any]:
    name = "slow-auto"
    doc = deployment(
        name,
        f"{MODEL}:latest",
        {"min": MIN_REPLICAS, "max": MAX_REPLICAS},
        batch=1,
        autoscaling={
            "metric": "concurrency",
            "target": TARGET,
            "stableWindow": "60s",
            "panicWindow": "6s",
        },
    )
    plane.apply(doc)
    plane.wait_ready(name, timeout=120)
    status = plane.get_md(name)["status"]
    parts = urlsplit(status["url"])
    print(f"pilothouse: {name} Ready at {status['url']}; load {phases} ...", flush=True)

    def poll() -> dict[str, Any]:
        st = plane.status_of(name)
        auto = st.get("autoscaler") or {}
        return {
            "ready": st.get("readyReplicas"),
            "desired": st.get("desiredReplicas"),
            "replicas": st.get("replicas"),
            "panic": auto.get("inPanic"),
            "panic_avg": auto.get("panicAverage"),
            "stable_avg": auto.get("stableAverage"),
        }

    shots, timeline, unfinished = asyncio.run(
        drive(
            parts.hostname or "127.0.0.1",
            parts.port or 80,
            INFER_PATH.replace("fraud", MODEL),
            phases,
            poll,
        )
    )
    result = analyse("pilothouse", shots, timeline, base, step)
    result["unfinished"] = unfinished
    result["deployment"] = doc
    st = plane.status_of(name)
    result["autoscaler_after"] = st.get("autoscaler")
    result["events"] = plane.client().events("modeldeployments", name)
    return result


# ------------------------------------------------------------------------------ ray


def ray_available() -> str | None:
    """None when the Ray venv can ``import ray``; else why not."""
    if not RAY_PYTHON.exists():
        return f"{RAY_VENV.relative_to(REPO)} not found; see bench/README.md"
    done = subprocess.run(
        [str(RAY_PYTHON), "-c", "import ray, ray.serve; print(ray.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return f"cannot import ray in {RAY_VENV.relative_to(REPO)}: {done.stderr.strip()[-300:]}"
    return None


def run_ray(
    workdir: Path,
    delay: float,
    phases: list[tuple[float, float]],
    base: float,
    step: float,
    tag: str,
) -> dict[str, Any]:
    port = free_port()
    states = workdir / "ray-states.jsonl"
    argv = [str(RAY_PYTHON), str(BENCH_DIR / "autoscale_ray_server.py"), "--port", str(port)]
    argv += ["--delay", str(delay), "--states-file", str(states)]
    argv += ["--min", str(MIN_REPLICAS), "--max", str(MAX_REPLICAS)]
    spec = ServerSpec(
        "ray",
        "Ray Serve autoscaling, defaults",
        argv,
        RAY_READY_TIMEOUT,
        RAY_STOP_TIMEOUT,
    )
    server = Server(spec, workdir / "ray.log", tag)
    path = INFER_PATH.replace("fraud", MODEL)
    result: dict[str, Any]
    try:
        server.start()
        print("ray: starting ...", flush=True)
        took = server.wait_ready(f"http://127.0.0.1:{port}{path}")
        print(f"ray: ready after {took:.1f}s; load {phases} ...", flush=True)
        # let the status file show one replica running before the load starts
        time.sleep(2.0)
        offset = states.stat().st_size if states.exists() else 0
        wall0: list[float] = []

        def poll() -> None:
            if not wall0:
                wall0.append(time.time())
            return None

        shots, _timeline, unfinished = asyncio.run(drive("127.0.0.1", port, path, phases, poll))
        start_wall = wall0[0] if wall0 else time.time()
        timeline = []
        with states.open(encoding="utf-8") as handle:
            handle.seek(offset)
            for line in handle:
                record = json.loads(line)
                if "states" not in record:
                    continue
                counts = record["states"]
                running = counts.get("RUNNING", 0)
                alive = sum(v for k, v in counts.items() if k not in ("STOPPING", "STOPPED"))
                timeline.append(
                    {
                        "t": round(record["time"] - start_wall, 2),
                        "ready": running,
                        "desired": alive,
                        "states": counts,
                    }
                )
        result = analyse("ray", shots, timeline, base, step)
        result["unfinished"] = unfinished
        result["ready_s"] = round(took, 1)
    finally:
        server.stop()
    result["log_tail"] = server.log_tail(20)
    return result


# ---------------------------------------------------------------------------- output


def print_timelines(results: list[dict[str, Any]], base: float) -> None:
    names = [r["name"] for r in results]
    head = f"{'sec':>4} {'load':>5}"
    for n in names:
        head += f" | {n[:10]:>10} {'ok':>4} {'fail':>4} {'p99 ms':>8} {'rdy/des':>7}"
    print()
    print(head)
    print("-" * len(head))
    seconds = len(results[0]["per_second"])
    by_sec = []
    for r in results:
        points: dict[int, dict[str, Any]] = {}
        for p in r["timeline"]:
            points[int(p["t"])] = p
        by_sec.append(points)
    for t in range(seconds):
        sent = results[0]["per_second"][t]["sent"]
        line = f"{t:>4} {sent:>5}"
        for r, points in zip(results, by_sec, strict=True):
            row = r["per_second"][t]
            p = points.get(t) or {}
            rd = f"{p.get('ready', '-')}/{p.get('desired', '-')}"
            line += (
                f" | {'':>10} {row['ok']:>4} {row['failed']:>4} {fmt(row['p99_ms'], 0):>8} {rd:>7}"
            )
        if t == int(base):
            line += "  <- step"
        print(line)


def print_summary(results: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'system':<11} {'1x p99':>8} {'objective':>9} {'→des>=3':>8} {'→rdy>=3':>8} "
        f"{'→p99 ok':>8} {'max rdy':>7} {'err 1x':>6} {'err 3x':>6} {'3x p50':>8} {'3x p99':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['name']:<11} {fmt(r['base_p99_ms'], 1):>8} {fmt(r['objective_p99_ms'], 1):>9} "
            f"{fmt(r['to_desired_3_s'], 1):>8} {fmt(r['to_ready_3_s'], 1):>8} "
            f"{fmt(r['to_p99_ok_s'], 0):>8} {fmt(r['max_ready'], 0):>7} {r['base']['failed']:>6} "
            f"{r['step']['failed']:>6} {fmt(r['step']['p50_ms'], 1):>8} "
            f"{fmt(r['step']['p99_ms'], 1):>9}"
        )
    print(
        "(→: seconds after the step; '-' = not within the run; p99 ok = under the objective "
        f"with no failures for {HOLD_SECONDS} s in a row)"
    )
    print()


def compute_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["name"]: r for r in results}
    ph, ray = by.get("pilothouse"), by.get("ray")
    if ph is None or ray is None:
        return []
    ratios = []
    for key, label in (
        ("to_desired_3_s", "time to desired>=3"),
        ("to_ready_3_s", "time to 3 ready"),
        ("to_p99_ok_s", "time to p99 under objective"),
    ):
        a, b = ph[key], ray[key]
        value = None if a is None or b is None or b == 0 else a / b
        ratios.append(
            {
                "name": f"pilothouse/ray {label}",
                "value": value,
                "detail": f"{fmt(a, 1)} vs {fmt(b, 1)} s",
                "target": "< 1",
                "met": None if value is None else value < 1,
            }
        )
    ratios.append(
        {
            "name": "errors during 3x (pilothouse, ray)",
            "value": float(ph["step"]["failed"]),
            "detail": f"{ph['step']['failed']} vs {ray['step']['failed']}",
            "target": "0",
            "met": ph["step"]["failed"] == 0,
        }
    )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Autoscaler reaction to a 3x step in load.")
    parser.add_argument("--quick", action="store_true", help="10 s at 1x, 30 s at 3x")
    parser.add_argument("--base", type=float, default=None, help="seconds at 1x (default 20)")
    parser.add_argument("--step", type=float, default=None, help="seconds at 3x (default 60)")
    parser.add_argument("--delay", type=float, default=0.02, help="model sleep, s (0.02)")
    parser.add_argument("--base-factor", type=float, default=1.0, help="base load / capacity")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve")
    args = parser.parse_args(argv)
    base = args.base if args.base is not None else (10.0 if args.quick else 20.0)
    step = args.step if args.step is not None else (30.0 if args.quick else 60.0)
    cap_seconds = 3.0 if args.quick else 5.0
    if not (5 <= base <= 300 and 10 <= step <= 600 and 0.001 <= args.delay <= 1):
        parser.error("--base 5..300, --step 10..600, --delay 0.001..1")
    if shutil.which("wrk") is None:
        print("error: wrk not found on PATH (apt-get install -y wrk)", file=sys.stderr)
        return 2
    why_no_ray = "--no-ray" if args.no_ray else ray_available()
    if why_no_ray:
        print(f"ray: skipped ({why_no_ray})")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-autoscale-") as tmp:
            workdir = Path(tmp)
            model_dir = write_slow_model(workdir / "slow-model", args.delay)
            lua = write_lua(workdir)
            plane = ControlPlane(workdir / "home", tag)
            try:
                plane.up()
                print(plane.register(MODEL, model_dir, framework="custom"))
                capacity = measure_capacity(plane, lua, cap_seconds)
                rate = capacity * args.base_factor
                phases = [(base, rate), (step, rate * STEP_FACTOR)]
                info["capacity_rps"] = round(capacity, 1)
                info["phases"] = phases
                results.append(run_pilothouse(plane, phases, base, step))
            finally:
                info["daemon_log_problems"] = plane.log_problems(200)
                info["replica_log_problems"] = plane.replica_logs_problems()
                plane.close()
            if not why_no_ray:
                try:
                    results.append(run_ray(workdir, args.delay, phases, base, step, tag))
                except BenchError as exc:
                    print(f"ray: failed, continuing without it: {exc}")
                    info["ray_error"] = str(exc)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(
        f"\nload: {phases[0][1]:.1f} requests/s (1x = one replica's capacity "
        f"{info['capacity_rps']}) for {base:g}s, then {phases[1][1]:.1f} requests/s (3x) "
        f"for {step:g}s"
    )
    print_timelines(results, base)
    print_summary(results)
    ratios = compute_ratios(results)
    if ratios:
        print_ratios(ratios)
    problems = info["daemon_log_problems"]
    if problems:
        print(f"\ndaemon log warnings/errors: {len(problems)} line(s); the last 8:")
        for line in problems[-8:]:
            print(f"  {line}")
    out = write_result(
        "autoscale_reaction",
        started_at,
        {
            "benchmark": "autoscale_reaction",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "base_s": base,
                "step_s": step,
                "delay_s": args.delay,
                "base_factor": args.base_factor,
                "step_factor": STEP_FACTOR,
                "target_concurrency": TARGET,
                "replicas": [MIN_REPLICAS, MAX_REPLICAS],
                "objective": f"{OBJECTIVE_FACTOR}x the p99 at 1x, held {HOLD_SECONDS}s",
                "body": BODY,
                "cpus": os.cpu_count(),
                "ray": why_no_ray or "included",
            },
            "environment": {"source_sha256": source_fingerprint()},
            "results": results,
            "ratios": ratios,
            **info,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
