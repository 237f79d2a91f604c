"""Training that survives kill -9: work lost, time lost, and the weights at the end.

    .venv/bin/python bench/training_resume.py [--quick] [--runs 3] [--interval 3]

In one run, on this machine:

1. starts a real control plane (``pilothouse up`` in a temporary ``PILOTHOUSE_HOME``
   under ``/tmp/bench-heal-*``) and applies the recommendation example's TrainingJob
   (``examples/recommendation/trainingjob.yaml``: BPR matrix factorisation in numpy,
   ``pilothouse.sdk.Checkpointer``) with smaller flags (``--train-args``) and
   ``checkpoint: {interval: --interval}``, under a fresh name per run (so each run
   has its own checkpoint folder);
2. runs it once uninterrupted: the job time (apply -> phase ``Succeeded``), the
   training time (worker running -> ``Succeeded``), the registered model version's
   metrics and a checksum of its weights (sha256 over the arrays of ``weights.npz``
   in the registry, ``$PILOTHOUSE_HOME/models/recommender/VERSION/``; the npz file's
   own bytes carry zip timestamps, so the arrays are hashed, not the file);
3. ``--runs`` times: the same job, and at a random point (seeded; between 20 % and
   80 % of the uninterrupted training time after the worker started) SIGKILL to the
   worker (pid from ``status.workers``). The job restarts the gang (``restartPolicy``
   backoff 1 s) and the worker resumes from the newest checkpoint. Per run:

   * **wasted work** = the training time redone: the kill's wall time minus the
     ``saved_at`` (manifest) of the checkpoint the new attempt resumed from (the
     ``[resume] resumed from checkpoint step N`` line of its log), in seconds and in
     checkpoint intervals (target <= 1); and the same in SGD steps (estimated from the
     uninterrupted run's steps per second);
   * **overhead** = job time minus the uninterrupted job time (restart back-off,
     process and data start-up, redone work);
   * whether the final weights and metrics are bit-identical to the uninterrupted
     run's (target: yes);
4. prints a table and writes JSON to ``bench/results/training-resume-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met (non-zero only
when the benchmark itself could not run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shlex
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

import numpy as np
import yaml
from common import ControlPlane, fmt, write_result
from model_server import (
    REPO,
    RUN_TAG_VAR,
    BenchError,
    _has_tag,
    _raise_interrupt,
    source_fingerprint,
)

EXAMPLE = REPO / "examples" / "recommendation"
JOB_FILE = EXAMPLE / "trainingjob.yaml"
#: about 20-30 s of training on a small machine (the example's default is 100 epochs of
#: 2000 users x 500 items)
DEFAULT_ARGS = "--users 2000 --items 500 --factors 32 --epochs 70 --seed 7"
QUICK_ARGS = "--users 1000 --items 300 --factors 16 --epochs 80 --seed 7"
RESUME_RE = re.compile(r"\[resume\] resumed from checkpoint step (\d+)")
ATTEMPT_RE = re.compile(r"^--- pilothouse: attempt (\d+) ")
TERMINAL = ("Succeeded", "Failed")


# -------------------------------------------------------------------------- a job


def job_doc(name: str, train_args: list[str], interval: float) -> dict[str, Any]:
    """The example's TrainingJob under another name, with these flags and interval."""
    doc: dict[str, Any] = yaml.safe_load(JOB_FILE.read_text(encoding="utf-8"))
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["args"] = train_args
    spec["workingDir"] = str(EXAMPLE)  # `pilothouse apply` resolves "." against the file
    spec["checkpoint"] = {**(spec.get("checkpoint") or {}), "interval": f"{interval:g}s"}
    return doc


def weights_digest(npz: Path) -> str:
    """sha256 over the arrays (name, dtype, shape, bytes) of an .npz, in name order."""
    h = hashlib.sha256()
    with np.load(npz) as data:
        for key in sorted(data.files):
            arr = np.ascontiguousarray(data[key])
            h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def newest_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest committed checkpoint of a folder: step and its manifest's saved_at."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith("step-"))
    except FileNotFoundError:
        return None
    for name in reversed(names):
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads((folder / name / "manifest.json").read_text(encoding="utf-8"))
            return {"step": int(manifest["step"]), "saved_at": float(manifest["saved_at"])}
    return None


def manifest_of(folder: Path, step: int) -> dict[str, Any] | None:
    path = folder / f"step-{step:012d}" / "manifest.json"
    with contextlib.suppress(OSError, ValueError):
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return result
    return None


def train_processes(tag: str) -> list[dict[str, Any]]:
    """Live processes of this run that run train.py: pid and PILOTHOUSE_ATTEMPT."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{RUN_TAG_VAR}={tag}".encode() not in environ:
            continue
        if not any(part.endswith(b"train.py") for part in cmdline):
            continue
        attempt = next(
            (e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PILOTHOUSE_ATTEMPT=")),
            None,
        )
        found.append({"pid": int(entry.name), "attempt": attempt})
    return found


class Job:
    """One TrainingJob run: apply, watch the status every ``poll`` s, maybe kill once."""

    def __init__(self, plane: ControlPlane, name: str, doc: dict[str, Any], poll: float) -> None:
        self.plane, self.name, self.doc, self.poll = plane, name, doc, poll
        self.status: dict[str, Any] = {}
        self.t_apply = 0.0
        self.attempt_running: dict[int, float] = {}  # attempt -> first seen running (s)
        self.kill: dict[str, Any] | None = None
        self.progress_at = 0.0

    def get(self) -> dict[str, Any]:
        status: dict[str, Any] = (
            self.plane.client().get("trainingjobs", self.name).get("status") or {}
        )
        return status

    def checkpoint_dir(self) -> Path | None:
        found = sorted((self.plane.home / "checkpoints").glob(f"{self.name}-*"))
        return found[0] if found else None

    def run(self, limit: float, kill_after: float | None = None) -> float:
        """Apply and wait for a terminal phase; SIGKILL the worker ``kill_after`` s after
        the first attempt's worker was seen running. The job time (apply -> terminal)."""
        self.plane.apply(self.doc)
        self.t_apply = time.monotonic()
        while time.monotonic() - self.t_apply < limit:
            try:
                st = self.get()
            except Exception as exc:  # a slow API: go on
                print(f"    (status: {type(exc).__name__}: {exc})", flush=True)
                time.sleep(self.poll)
                continue
            self.status = st
            now = time.monotonic() - self.t_apply
            for w in st.get("workers") or []:
                if w.get("running") and w.get("pid"):
                    self.attempt_running.setdefault(int(w["attempt"]), now)
            if st.get("phase") in TERMINAL:
                return now
            first = self.attempt_running.get(1)
            due = first is not None and kill_after is not None and now >= first + kill_after
            if due and self.kill is None:
                self._kill(st, now)
            k = self.kill
            if k is not None and "procs_1s_after" not in k and now >= k["t"] + 1.0:
                # the killed worker must be gone (no stray attempt writing checkpoints)
                k["procs_1s_after"] = train_processes(self.plane.tag)
            if now - self.progress_at >= 5.0:
                self.progress_at = now
                ck = self.checkpoint_dir()
                newest = newest_checkpoint(ck) if ck else None
                print(
                    f"    {now:5.1f}s {st.get('phase')} attempt {st.get('attempt')}"
                    f" restarts {st.get('restarts')}; newest checkpoint step "
                    f"{newest['step'] if newest else '-'}",
                    flush=True,
                )
            time.sleep(self.poll)
        raise BenchError(f"{self.name}: not finished within {limit:.0f}s: {self.status}")

    def _kill(self, st: dict[str, Any], now: float) -> None:
        workers = [w for w in st.get("workers") or [] if w.get("running") and w.get("pid")]
        if not workers:
            return
        pid = int(workers[0]["pid"])
        if not _has_tag(pid, self.plane.tag):
            raise BenchError(f"worker pid {pid} does not carry this run's tag")
        ck = self.checkpoint_dir()
        before = newest_checkpoint(ck) if ck else None
        wall = time.time()
        os.kill(pid, signal.SIGKILL)
        self.kill = {
            "t": round(now, 3),
            "t_after_worker_start": round(now - self.attempt_running[1], 3),
            "wall": wall,
            "pid": pid,
            "attempt": st.get("attempt"),
            "newest_checkpoint_before": before,
        }
        print(
            f"    {now:5.1f}s SIGKILL worker pid {pid} (newest checkpoint step "
            f"{before['step'] if before else '-'})",
            flush=True,
        )

    def log_text(self) -> str:
        path = self.plane.home / "logs" / "trainingjobs" / self.name / "worker-0.log"
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def resumed_steps(self) -> dict[int, int | None]:
        """attempt -> the checkpoint step it resumed from (None: from scratch)."""
        out: dict[int, int | None] = {}
        attempt = 0
        for line in self.log_text().splitlines():
            m = ATTEMPT_RE.match(line)
            if m:
                attempt = int(m.group(1))
                out[attempt] = None
                continue
            m = RESUME_RE.search(line)
            if m and attempt:
                out[attempt] = int(m.group(1))
        return out

    def output(self) -> dict[str, Any]:
        out = self.status.get("outputModel") or {}
        version = out.get("version")
        result: dict[str, Any] = {"ref": out.get("ref"), "metrics": out.get("metrics")}
        if version is not None:
            folder = self.plane.home / "models" / str(out.get("name")) / str(version)
            npz = folder / "weights.npz"
            if npz.exists():
                result["weights_sha256"] = weights_digest(npz)
                result["weights_file_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
        ck = self.checkpoint_dir()
        final = newest_checkpoint(ck) if ck else None
        result["final_step"] = final["step"] if final else None
        return result


# ------------------------------------------------------------------------------ main


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def maximum(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(max(got), 3) if got else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kill -9 a training worker; measure the loss.")
    parser.add_argument("--quick", action="store_true", help="1 kill run, a smaller model")
    parser.add_argument("--runs", type=int, default=None, help="kill runs (default 3)")
    parser.add_argument("--interval", type=float, default=3.0, help="checkpoint interval, s")
    parser.add_argument(
        "--train-args", default=None, help=f"train.py flags (default {DEFAULT_ARGS!r})"
    )
    parser.add_argument("--poll", type=float, default=0.2, help="status poll period, s")
    parser.add_argument("--timeout", type=float, default=300.0, help="per job, s (default 300)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill points")
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    train_args = shlex.split(
        args.train_args or (QUICK_ARGS if args.quick else DEFAULT_ARGS), posix=True
    )
    if not (1 <= runs <= 20 and 0.5 <= args.interval <= 60 and 0.05 <= args.poll <= 5):
        parser.error("--runs 1..20, --interval 0.5..60, --poll 0.05..5")
    if not 10 <= args.timeout <= 1800:
        parser.error("--timeout 10..1800")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    started = time.monotonic()
    rng = random.Random(args.seed)
    base: dict[str, Any] = {}
    killed: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-heal-train-", dir="/tmp") as tmp:
            plane = ControlPlane(Path(tmp) / "home", tag)
            try:
                plane.up()
                print(
                    f"TrainingJob {JOB_FILE.relative_to(REPO)} with args {train_args}, "
                    f"checkpoint interval {args.interval:g}s",
                    flush=True,
                )
                print("uninterrupted run ...", flush=True)
                job = Job(plane, "rec-base", job_doc("rec-base", train_args, args.interval), 0.2)
                job_time = job.run(args.timeout)
                if job.status.get("phase") != "Succeeded":
                    raise BenchError(
                        f"the uninterrupted run failed: {job.status}\n{job.log_text()}"
                    )
                running_at = job.attempt_running.get(1, 0.0)
                base = {
                    "job": job.name,
                    "job_s": round(job_time, 3),
                    "worker_start_s": round(running_at, 3),
                    "training_s": round(job_time - running_at, 3),
                    "status": job.status,
                    **job.output(),
                }
                steps_per_s = (
                    base["final_step"] / base["training_s"]
                    if base.get("final_step") and base["training_s"] > 0
                    else None
                )
                base["steps_per_s"] = steps_per_s
                print(
                    f"  done: job {base['job_s']:.1f}s (training {base['training_s']:.1f}s, "
                    f"{base.get('final_step')} steps); {base.get('ref')} "
                    f"{base.get('metrics')}; weights {str(base.get('weights_sha256'))[:16]}",
                    flush=True,
                )
                for i in range(runs):
                    frac = rng.uniform(0.2, 0.8)
                    kill_after = frac * base["training_s"]
                    name = f"rec-kill-{i + 1}"
                    print(
                        f"run {i + 1}/{runs}: SIGKILL the worker at {frac:.0%} "
                        f"({kill_after:.1f}s after it started) ...",
                        flush=True,
                    )
                    job = Job(plane, name, job_doc(name, train_args, args.interval), args.poll)
                    job_time = job.run(args.timeout, kill_after=kill_after)
                    killed.append(analyse(job, job_time, frac, base, args.interval))
                    r = killed[-1]
                    print(
                        f"  done: {r['phase']}, attempts {r['attempts']}; resumed from step "
                        f"{r['resumed_step']} (newest before the kill: "
                        f"{r['newest_step_before_kill']}); wasted {fmt(r['wasted_s'])}s = "
                        f"{fmt(r['wasted_intervals'])} intervals; overhead "
                        f"{fmt(r['overhead_s'])}s; weights identical: {r['weights_identical']}",
                        flush=True,
                    )
                info["events"] = {
                    j: plane.client().events("trainingjobs", j)
                    for j in ["rec-base", *[r["job"] for r in killed]]
                }
            finally:
                info["daemon_log_problems"] = plane.log_problems(200)
                plane.close()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    summary = {
        "runs": len(killed),
        "wasted_s": {
            "median": median([r["wasted_s"] for r in killed]),
            "max": maximum([r["wasted_s"] for r in killed]),
        },
        "wasted_intervals": {
            "median": median([r["wasted_intervals"] for r in killed]),
            "max": maximum([r["wasted_intervals"] for r in killed]),
        },
        "wasted_steps_est": {
            "median": median([r["wasted_steps_est"] for r in killed]),
            "max": maximum([r["wasted_steps_est"] for r in killed]),
        },
        "overhead_s": {
            "median": median([r["overhead_s"] for r in killed]),
            "max": maximum([r["overhead_s"] for r in killed]),
        },
        "restart_s": {
            "median": median([r["restart_s"] for r in killed]),
            "max": maximum([r["restart_s"] for r in killed]),
        },
        "all_weights_identical": all(r["weights_identical"] for r in killed),
        "all_metrics_identical": all(r["metrics_identical"] for r in killed),
    }
    print_table(base, killed, summary, args.interval)
    ratios = [
        {
            "name": "wasted work, in checkpoint intervals (max)",
            "value": summary["wasted_intervals"]["max"],
            "target": "<= 1",
            "met": None
            if summary["wasted_intervals"]["max"] is None
            else summary["wasted_intervals"]["max"] <= 1.0,
        },
        {
            "name": "job time killed / uninterrupted (median)",
            "value": None
            if not killed
            else statistics.median(r["job_s"] for r in killed) / base["job_s"],
            "target": None,
            "met": None,
        },
        {
            "name": "final weights bit-identical to the uninterrupted run",
            "value": float(sum(r["weights_identical"] for r in killed)) / max(1, len(killed)),
            "target": "1.0 (all)",
            "met": summary["all_weights_identical"],
        },
    ]
    print("ratios (targets are tracked, never enforced):")
    for r in ratios:
        met = {True: "met", False: "MISSED", None: "-"}[r["met"]]
        print(f"  {r['name']:<55} {fmt(r['value'], 3):>7}  target {r['target'] or '-':<10} {met}")
    problems = info.get("daemon_log_problems") or []
    if problems:
        print(f"\ndaemon log warnings/errors: {len(problems)} line(s); the last 8:")
        for line in problems[-8:]:
            print(f"  {line}")
    out = write_result(
        "training-resume",
        started_at,
        {
            "benchmark": "training_resume",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wall_s": round(time.monotonic() - started, 1),
            "config": {
                "runs": runs,
                "interval_s": args.interval,
                "train_args": train_args,
                "poll_s": args.poll,
                "seed": args.seed,
                "job_file": str(JOB_FILE.relative_to(REPO)),
                "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
            },
            "environment": {"source_sha256": source_fingerprint()},
            "uninterrupted": base,
            "killed": killed,
            "summary": summary,
            "ratios": ratios,
            **info,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)} ({time.monotonic() - started:.0f}s)")
    return 0


def analyse(
    job: Job, job_time: float, frac: float, base: dict[str, Any], interval: float
) -> dict[str, Any]:
    st = job.status
    out = job.output()
    kill = job.kill or {}
    resumed = job.resumed_steps()
    attempts = sorted(resumed)
    second = resumed.get(2)  # the attempt after the kill
    ck = job.checkpoint_dir()
    wasted_s = None
    saved_at = None
    if kill and ck is not None and second is not None:
        manifest = manifest_of(ck, second)  # may be pruned by the end: keep 3
        saved_at = manifest.get("saved_at") if manifest else None
    if kill and saved_at is None and second is not None:
        before = kill.get("newest_checkpoint_before") or {}
        if before.get("step") == second:
            saved_at = before.get("saved_at")
    if kill and saved_at is not None:
        wasted_s = kill["wall"] - float(saved_at)
    elif kill and second is None and 2 in resumed:
        # resumed from scratch: everything done before the kill is redone
        wasted_s = kill["t_after_worker_start"]
    restart = None
    if kill and 2 in job.attempt_running:
        restart = job.attempt_running[2] - kill["t"]
    steps_per_s = base.get("steps_per_s")
    before = kill.get("newest_checkpoint_before") or {}
    return {
        "job": job.name,
        "kill_fraction": round(frac, 3),
        "kill": kill,
        "phase": st.get("phase"),
        "attempts": attempts,
        "status_attempt": st.get("attempt"),
        "restarts": st.get("restarts"),
        "disruptions": st.get("disruptions"),
        "newest_step_before_kill": before.get("step"),
        "stray_killed_worker": any(
            p["pid"] == kill.get("pid") for p in kill.get("procs_1s_after") or []
        ),
        "train_procs_1s_after_kill": kill.get("procs_1s_after"),
        "resumed_step": second,
        "checkpoint_saved_at": saved_at,
        "wasted_s": None if wasted_s is None else round(wasted_s, 3),
        "wasted_intervals": None if wasted_s is None else round(wasted_s / interval, 3),
        "wasted_steps_est": None
        if wasted_s is None or not steps_per_s
        else round(wasted_s * steps_per_s, 1),
        "restart_s": None if restart is None else round(restart, 3),
        "job_s": round(job_time, 3),
        "overhead_s": round(job_time - base["job_s"], 3),
        "overhead_ratio": round(job_time / base["job_s"], 3) if base["job_s"] else None,
        "output": out,
        "weights_identical": bool(out.get("weights_sha256"))
        and out.get("weights_sha256") == base.get("weights_sha256"),
        "metrics_identical": out.get("metrics") == base.get("metrics"),
        "status": st,
        "log_tail": job.log_text().splitlines()[-40:],
    }


def print_table(
    base: dict[str, Any], killed: list[dict[str, Any]], summary: dict[str, Any], interval: float
) -> None:
    print()
    print(
        f"uninterrupted: job {fmt(base.get('job_s'), 1)}s, training {fmt(base.get('training_s'), 1)}s, "
        f"{base.get('final_step')} steps ({fmt(base.get('steps_per_s'), 0)} steps/s), "
        f"checkpoint interval {interval:g}s"
    )
    head = (
        f"{'run':<11} {'kill at':>8} {'ckpt step':>15} {'wasted s':>9} {'intervals':>9} "
        f"{'~steps':>7} {'restart s':>9} {'job s':>7} {'overhead':>9} {'identical':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in killed:
        kill = r.get("kill") or {}
        ck = f"{r['newest_step_before_kill']}->{r['resumed_step']}"
        print(
            f"{r['job']:<11} {fmt(kill.get('t_after_worker_start'), 1):>7}s {ck:>15} "
            f"{fmt(r['wasted_s']):>9} {fmt(r['wasted_intervals']):>9} "
            f"{fmt(r['wasted_steps_est'], 0):>7} {fmt(r['restart_s']):>9} {fmt(r['job_s'], 1):>7} "
            f"{fmt(r['overhead_s'], 1):>8}s {('yes' if r['weights_identical'] else 'NO'):>9}"
        )
    print(
        f"median / max: wasted {fmt(summary['wasted_s']['median'])} / "
        f"{fmt(summary['wasted_s']['max'])} s = {fmt(summary['wasted_intervals']['median'])} / "
        f"{fmt(summary['wasted_intervals']['max'])} checkpoint intervals; overhead "
        f"{fmt(summary['overhead_s']['median'], 1)} / {fmt(summary['overhead_s']['max'], 1)} s"
    )
    print(
        "(ckpt step: newest committed checkpoint seen just before the kill -> the step the "
        "next attempt resumed from; wasted: kill time - that checkpoint's saved_at; ~steps: "
        "wasted x the uninterrupted run's steps/s; restart: kill -> next worker running)"
    )
    print()


if __name__ == "__main__":
    sys.exit(main())
