"""How long a killed replica takes to be replaced: SIGKILL -> the deployment is back at
full strength (every replica ready), measured on this machine.

    .venv/bin/python bench/replacement_time.py [--kills 8] [--replicas 2] [--seed 7]

In one run:

1. trains the fraud-detection example model, starts a real control plane
   (``pilothouse up`` in a temporary ``PILOTHOUSE_HOME``), registers the model and
   applies a ModelDeployment with ``--replicas`` replicas (pilothouse's defaults
   otherwise), and waits until it is Ready;
2. ``--kills`` times: picks a random *ready* replica (its pid from
   ``status.replicaStatuses``), sends it SIGKILL, and polls the deployment's status
   (through the API, every ``--poll`` seconds) until the killed replica is gone from it
   and ``--replicas`` replicas are ready again: that is the replacement time. Then it
   waits ``--settle`` seconds before the next kill;
3. splits each replacement into phases, from the kill:

   * ``noticed``  -- the control plane saw the process end (daemon log: ``replica X
     exited``; older versions do not log it: ``-``);
   * ``spawned``  -- it started the replacement's process (daemon log: ``started
     replica Y``);
   * ``process``  -- the kernel's start time of the replacement's process (/proc);
   * ``loaded``   -- the model server loaded the model (its log: ``loaded ...``);
   * ``ready``    -- the control plane saw its readiness probe pass (daemon log:
     ``replica Y ready``; older versions: ``-``);
   * ``status``   -- the status showed every replica ready again (what is timed);

4. prints per-kill times, min/median/max of each, and writes JSON to
   ``bench/results/replacement_time-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not the 2 s target is met.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ControlPlane, deployment, fmt, print_ratios, train_fraud, write_result
from model_server import (
    MODEL_NAME,
    REPO,
    BenchError,
    _has_tag,
    _raise_interrupt,
    source_fingerprint,
)

DEPLOYMENT = "fraud-replace"
TARGET_MEDIAN_S = 2.0
PHASES = ("noticed", "spawned", "process", "loaded", "ready", "status")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_start(pid: int, killed_at: float, killed_boot: float) -> float | None:
    """Wall-clock start of ``pid``: the kernel's start time (clock ticks since boot, 10 ms)
    against the kill's CLOCK_BOOTTIME (btime in /proc/stat is whole seconds only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    return killed_at + ticks / _CLK_TCK - killed_boot


def _log_time(path: Path, needle: str) -> float | None:
    """The time stamp (``%(asctime)s``, local time) of the first line containing ``needle``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if needle in line:
            found = _STAMP.match(line)
            if found:
                moment = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
                return moment.timestamp() + int(found.group(2)) / 1000.0
    return None


def _daemon_logs(home: Path) -> list[Path]:
    return [p for p in (home / "daemon.log.1", home / "daemon.log") if p.exists()]


def _first_in_logs(paths: list[Path], needle: str) -> float | None:
    times = [t for p in paths if (t := _log_time(p, needle)) is not None]
    return min(times) if times else None


def _ready(status: dict[str, Any], replicas: int, killed: str) -> list[dict[str, Any]] | None:
    current = status.get("replicaStatuses") or []
    ready = [r for r in current if r.get("ready")]
    if killed in {r["id"] for r in current}:
        return None
    return ready if len(ready) >= replicas and len(current) == replicas else None


def one_kill(
    plane: ControlPlane, replicas: int, rng: random.Random, poll: float, timeout: float
) -> dict[str, Any]:
    status = plane.status_of(DEPLOYMENT)
    ready = [r for r in status.get("replicaStatuses") or [] if r.get("ready") and r.get("pid")]
    if not ready:
        return {"skipped": "no ready replica"}
    victim = rng.choice(ready)
    pid = int(victim["pid"])
    if not _has_tag(pid, plane.tag):
        return {"skipped": f"pid {pid} is not this run's"}
    before = {r["id"] for r in status.get("replicaStatuses") or []}
    killed_at, killed_boot = time.time(), time.clock_gettime(time.CLOCK_BOOTTIME)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    gone_at: float | None = None
    while time.monotonic() < deadline:
        status = plane.status_of(DEPLOYMENT)
        now = time.time()
        current = status.get("replicaStatuses") or []
        if gone_at is None and not any(r["id"] == victim["id"] and r.get("ready") for r in current):
            gone_at = now
        back = _ready(status, replicas, victim["id"])
        if back is not None:
            break
        time.sleep(poll)
    else:
        return {"id": victim["id"], "pid": pid, "timeout": timeout}
    new = [r for r in back if r["id"] not in before]
    result: dict[str, Any] = {
        "id": victim["id"],
        "pid": pid,
        "total": round(now - killed_at, 3),
        "status_noticed": round(gone_at - killed_at, 3) if gone_at else None,
    }
    if len(new) != 1:
        result["note"] = f"{len(new)} new replica(s)"
        return result
    replacement = new[0]
    logs = _daemon_logs(plane.home)
    replica_log = plane.home / "logs" / "modeldeployments" / DEPLOYMENT / f"{replacement['id']}.log"
    moments = {
        "noticed": _first_in_logs(logs, f"replica {victim['id']} exited"),
        "spawned": _first_in_logs(logs, f"started replica {replacement['id']}"),
        "process": _process_start(int(replacement["pid"]), killed_at, killed_boot)
        if replacement.get("pid")
        else None,
        "loaded": _log_time(replica_log, "loaded "),
        "ready": _first_in_logs(logs, f"replica {replacement['id']} ready"),
        "status": now,
    }
    result["replacement"] = replacement["id"]
    result["phases"] = {
        k: (round(v - killed_at, 3) if v is not None else None) for k, v in moments.items()
    }
    return result


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return min(values), statistics.median(values), max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the replacement of a killed replica.")
    parser.add_argument("--kills", type=int, default=8, help="kills (default 8)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--poll", type=float, default=0.05, help="status poll period (s)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between kills")
    parser.add_argument("--timeout", type=float, default=60.0, help="per kill (s)")
    args = parser.parse_args(argv)
    if not (1 <= args.kills <= 100 and 1 <= args.replicas <= 8 and 0.01 <= args.poll <= 1):
        parser.error("--kills 1..100, --replicas 1..8, --poll 0.01..1")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    rng = random.Random(args.seed)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-replace-") as tmp:
            workdir = Path(tmp)
            model_dir = train_fraud(workdir)
            plane = ControlPlane(workdir / "home", tag)
            try:
                plane.up()
                print(plane.register(MODEL_NAME, model_dir, framework="sklearn"))
                doc = deployment(DEPLOYMENT, f"{MODEL_NAME}:latest", args.replicas)
                plane.apply(doc)
                took = plane.wait_ready(DEPLOYMENT, timeout=120)
                print(f"{DEPLOYMENT}: Ready in {took:.1f}s", flush=True)
                for n in range(args.kills):
                    wait = time.monotonic() + 30.0
                    while plane.status_of(DEPLOYMENT).get("readyReplicas", 0) < args.replicas:
                        if time.monotonic() > wait:
                            raise BenchError("the deployment did not get back to full strength")
                        time.sleep(0.1)
                    result = one_kill(plane, args.replicas, rng, args.poll, args.timeout)
                    results.append(result)
                    phases = result.get("phases") or {}
                    print(
                        f"kill {n + 1}: {result.get('id', '-')} -> "
                        f"{result.get('replacement', '-')}: "
                        f"{fmt(result.get('total'))} s  "
                        + "  ".join(f"{p} {fmt(phases.get(p))}" for p in PHASES)
                        + (f"  [{result['skipped']}]" if "skipped" in result else "")
                        + (
                            f"  [timed out after {result['timeout']:g}s]"
                            if "timeout" in result
                            else ""
                        ),
                        flush=True,
                    )
                    time.sleep(args.settle)
                info["events"] = plane.client().events("modeldeployments", DEPLOYMENT)
            finally:
                info["daemon_log_problems"] = plane.log_problems(100)
                plane.close()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    totals = [r["total"] for r in results if "total" in r]
    print()
    print(f"{'from the kill (s)':<18} {'min':>7} {'median':>7} {'max':>7}  n")
    summary: dict[str, Any] = {}
    for phase in ("status_noticed", *PHASES):
        values = [
            v
            for r in results
            if (
                v := (
                    r.get(phase)
                    if phase == "status_noticed"
                    else (r.get("phases") or {}).get(phase)
                )
            )
            is not None
        ]
        low, mid, high = _stats(values)
        summary[phase] = {"min": low, "median": mid, "max": high, "n": len(values)}
        print(f"{phase:<18} {fmt(low):>7} {fmt(mid):>7} {fmt(high):>7}  {len(values)}")
    low, mid, high = _stats(totals)
    summary["total"] = {"min": low, "median": mid, "max": high, "n": len(totals)}
    print(
        f"\nkill -> {args.replicas} ready again: "
        f"{' '.join(fmt(t) for t in totals)} s; min {fmt(low)} median {fmt(mid)} max {fmt(high)}"
    )
    ratios = [
        {
            "name": "median replacement time (s)",
            "value": mid,
            "target": f"<= {TARGET_MEDIAN_S:g}",
            "met": (mid <= TARGET_MEDIAN_S) if mid is not None else None,
        }
    ]
    print_ratios(ratios)
    out = write_result(
        "replacement_time",
        started_at,
        {
            "benchmark": "replacement_time",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {**vars(args), "cpus": os.cpu_count()},
            "environment": {"source_sha256": source_fingerprint()},
            "kills": results,
            "summary": summary,
            "ratios": ratios,
            **info,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
