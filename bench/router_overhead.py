"""What the embedded router costs: the same replicas direct, through pilothouse's
router, and through nginx.

    .venv/bin/python bench/router_overhead.py [--duration 10] [--quick] [--no-batch-off]

In one run, on this machine:

1. trains the fraud-detection example model, starts a real control plane
   (``pilothouse up`` in a temporary ``PILOTHOUSE_HOME``), registers the model
   (``pilothouse models register fraud DIR``) and applies a ModelDeployment with
   ``replicas: 2``; waits until it is Ready and reads ``status.url`` and
   ``status.replicaStatuses[].endpoint`` from ``pilothouse get md NAME -o json``;
2. runs ``wrk`` (one thread, one fixed single-row POST, 8 and 64 connections) against

   * ``direct-1``  -- one of the two replicas, straight to its port (the reference);
   * ``router``    -- the deployment's ``status.url`` (both replicas behind it);
   * ``nginx``     -- nginx in front of the same two replicas (``worker_processes 1``,
     upstream ``keepalive 32``, HTTP/1.1 upstream, no access log);

3. the same again for a second deployment with batching off (``maxBatchSize: 1``),
   unless ``--no-batch-off``;
4. prints a table and the ratios, and writes JSON to
   ``bench/results/router_overhead-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ControlPlane, deployment, fmt, print_ratios, train_fraud, write_result
from model_server import (
    BODY,
    INFER_PATH,
    MODEL_NAME,
    REPO,
    RUN_TAG_VAR,
    BenchError,
    WrkResult,
    _busy_ticks,
    _cpu_ticks,
    _raise_interrupt,
    free_port,
    parse_wrk,
    run_wrk,
    source_fingerprint,
    write_lua,
    wrk_version,
)

CONNECTIONS = (8, 64)
WARMUP_SECONDS = 2
TARGET_ROUTER_VS_NGINX = 0.6
TARGET_ADDED_P50_MS = 1.0
ISSUE_NGINX_VS_DIRECT = "1.3-1.5x (issue)"

NGINX_CONF = """\
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream replicas {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground, in its own session, with a generated config."""

    def __init__(self, workdir: Path, endpoints: list[str], tag: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tag = tag
        user = "user root;" if os.geteuid() == 0 else ""
        servers = "\n".join(f"        server {ep};" for ep in endpoints)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(user=user, dir=self.dir, servers=servers, port=self.port),
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.dir / "stdout.log").open("wb")
        argv = ["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log")]
        argv += ["-c", str(self.conf), "-g", "daemon off;"]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, RUN_TAG_VAR: self.tag},
        )
        log.close()
        wait_answer(self.url + INFER_PATH, 20.0, self.proc)

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"warning: nginx (pid {self.proc.pid}) did not exit")
        self.proc = None

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return ""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return []
    return [int(x) for x in text.split()]


def wait_answer(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{url}: the server exited with {proc.returncode}")
        request = urllib.request.Request(
            url, data=BODY.encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise BenchError(f"{url} did not answer 200 within {timeout:.0f}s ({last})")


class Meter:
    """CPU cores used by named groups of processes (and the whole machine) while measuring."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before = {k: sum(_cpu_ticks(p) for p in v) for k, v in groups.items()}
        self.busy = _busy_ticks()
        self.times = os.times()
        self.wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        tick = float(os.sysconf("SC_CLK_TCK"))
        out = {
            k: round((sum(_cpu_ticks(p) for p in v) - self.before[k]) / tick / wall, 2)
            for k, v in self.groups.items()
        }
        times = os.times()
        wrk = times.children_user + times.children_system
        wrk -= self.times.children_user + self.times.children_system
        out["wrk"] = round(wrk / wall, 2)
        total = (_busy_ticks() - self.busy) / tick / wall
        out["other"] = round(max(0.0, total - sum(out.values())), 2)
        return out


def measure_target(
    label: str,
    url: str,
    lua: Path,
    seconds: float,
    groups: dict[str, list[int]],
) -> list[dict[str, Any]]:
    target = url.rstrip("/") + INFER_PATH
    wait_answer(target, 30.0)
    run_wrk(target, lua, CONNECTIONS[0], WARMUP_SECONDS)
    rows = []
    for connections in CONNECTIONS:
        print(f"  {label:<18} {connections:>3} connections, {seconds:g}s ...", end=" ", flush=True)
        meter = Meter(groups)
        result: WrkResult = parse_wrk(
            run_wrk(target, lua, connections, seconds), label, connections
        )
        cpu = meter.stop()
        row = {**asdict(result), "cpu": cpu}
        rows.append(row)
        errors = sum(result.socket_errors.values())
        print(
            f"{result.requests_per_s:,.0f} req/s, p50 {fmt(result.p50_ms)} ms, p99 "
            f"{fmt(result.p99_ms)} ms, non-2xx {result.non_2xx}, sock err {errors}; cpu {cpu}",
            flush=True,
        )
    return rows


def run_set(
    plane: ControlPlane,
    name: str,
    batch: int | None,
    suffix: str,
    lua: Path,
    seconds: float,
    workdir: Path,
    tag: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc = deployment(name, f"{MODEL_NAME}:latest", 2, batch=batch)
    plane.apply(doc)
    took = plane.wait_ready(name, timeout=120)
    md = plane.get_md(name)
    status = md["status"]
    url = status["url"]
    replicas = [r for r in status["replicaStatuses"] if r.get("ready")]
    endpoints = [r["endpoint"] for r in replicas]
    pids = [int(r["pid"]) for r in replicas]
    print(
        f"{name}: Ready in {took:.1f}s; router {url}; replicas {endpoints} (pids {pids})",
        flush=True,
    )
    if len(endpoints) != 2:
        raise BenchError(f"{name}: expected 2 ready replicas, got {status['replicaStatuses']}")
    info: dict[str, Any] = {"deployment": doc, "url": url, "endpoints": endpoints, "pids": pids}
    rows: list[dict[str, Any]] = []
    daemon = [plane.daemon_pid] if plane.daemon_pid else []
    groups = {"daemon": daemon, "replicas": pids}
    host, port = endpoints[0].rsplit(":", 1)
    rows += measure_target(f"direct-1{suffix}", f"http://{host}:{port}", lua, seconds, groups)
    rows += measure_target(f"router{suffix}", url, lua, seconds, groups)
    nginx = Nginx(workdir / f"nginx{suffix or '-batch'}", endpoints, tag)
    try:
        nginx.start()
        rows += measure_target(
            f"nginx{suffix}", nginx.url, lua, seconds, {**groups, "nginx": nginx.pids()}
        )
    finally:
        info["nginx_error_log"] = nginx.error_log()
        nginx.stop()
    info["status_after"] = plane.status_of(name)
    plane.delete_md(name)
    return rows, info


def compute_ratios(rows: list[dict[str, Any]], suffixes: list[str]) -> list[dict[str, Any]]:
    by = {(r["server"], r["connections"]): r for r in rows}
    ratios: list[dict[str, Any]] = []

    def get(server: str, c: int, key: str) -> float | None:
        row = by.get((server, c))
        return None if row is None else row[key]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for suffix in suffixes:
        for c in CONNECTIONS:
            value = ratio(
                get(f"router{suffix}", c, "requests_per_s"),
                get(f"nginx{suffix}", c, "requests_per_s"),
            )
            ratios.append(
                {
                    "name": f"router/nginx throughput{suffix} @{c}",
                    "value": value,
                    "target": f">= {TARGET_ROUTER_VS_NGINX}",
                    "met": None if value is None else value >= TARGET_ROUTER_VS_NGINX,
                }
            )
        for c in CONNECTIONS:
            ratios.append(
                {
                    "name": f"nginx/direct-1 throughput{suffix} @{c}",
                    "value": ratio(
                        get(f"nginx{suffix}", c, "requests_per_s"),
                        get(f"direct-1{suffix}", c, "requests_per_s"),
                    ),
                    "target": ISSUE_NGINX_VS_DIRECT,
                    "met": None,
                }
            )
        for c in CONNECTIONS:
            ratios.append(
                {
                    "name": f"router/direct-1 throughput{suffix} @{c}",
                    "value": ratio(
                        get(f"router{suffix}", c, "requests_per_s"),
                        get(f"direct-1{suffix}", c, "requests_per_s"),
                    ),
                    "target": None,
                    "met": None,
                }
            )
        c = CONNECTIONS[0]
        direct = get(f"direct-1{suffix}", c, "p50_ms")
        for proxy in ("router", "nginx"):
            p50 = get(f"{proxy}{suffix}", c, "p50_ms")
            added = None if p50 is None or direct is None else p50 - direct
            entry: dict[str, Any] = {
                "name": f"added p50 ms, {proxy} vs direct-1{suffix} @{c}",
                "value": added,
                "detail": f"{fmt(p50)} vs {fmt(direct)} ms",
                "target": f"< {TARGET_ADDED_P50_MS}" if proxy == "router" else None,
                "met": None,
            }
            if proxy == "router" and added is not None:
                entry["met"] = added < TARGET_ADDED_P50_MS
            ratios.append(entry)
    # a ratio over a row with errors compares failures, not work: say so, never "met"
    failed = {
        f"{r['server']} @{r['connections']}"
        for r in rows
        if r["non_2xx"] or sum(r["socket_errors"].values())
    }
    for entry in ratios:
        c = entry["name"].rsplit("@", 1)[-1]
        suffix = "-nobatch" if "-nobatch" in entry["name"] else ""
        bad = [
            f"{s}{suffix} @{c}"
            for s in ("router", "nginx", "direct-1")
            if f"{s}{suffix} @{c}" in failed
        ]
        if bad:
            entry["met"] = None
            entry["detail"] = (
                (entry.get("detail") or "") + f" errors in: {', '.join(bad)}"
            ).strip()
    return ratios


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'target':<20} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'sock err':>8} {'daemon':>7} {'replicas':>8} {'nginx':>6} {'wrk':>5} {'other':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        cpu = r["cpu"]
        print(
            f"{r['server']:<20} {r['connections']:>5} {r['requests_per_s']:>10,.1f} "
            f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8} {r['non_2xx']:>8} "
            f"{sum(r['socket_errors'].values()):>8} {fmt(cpu.get('daemon')):>7} "
            f"{fmt(cpu.get('replicas')):>8} {fmt(cpu.get('nginx')):>6} {fmt(cpu.get('wrk')):>5} "
            f"{fmt(cpu.get('other')):>6}"
        )
    print(
        "(cpu columns: cores busy during the measurement; 'daemon' holds the router, "
        "'replicas' both replicas)"
    )
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Router overhead: direct vs router vs nginx.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    parser.add_argument(
        "--no-batch-off", action="store_true", help="skip the batching-off deployment"
    )
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the control plane and so its replicas (default: inherit)",
    )
    args = parser.parse_args(argv)
    seconds: float = 3.0 if args.quick else args.duration
    if not 1 <= seconds <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    for tool, hint in (("wrk", "wrk"), ("nginx", "nginx-light (or nginx)")):
        if shutil.which(tool) is None:
            print(
                f"error: {tool} not found on PATH (Debian/Ubuntu: apt-get install -y {hint})",
                file=sys.stderr,
            )
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    sets: dict[str, Any] = {}
    problems: list[str] = []
    suffixes = [""] if args.no_batch_off else ["", "-nobatch"]
    try:
        with tempfile.TemporaryDirectory(prefix="pilothouse-bench-router-") as tmp:
            workdir = Path(tmp)
            model_dir = train_fraud(workdir)
            lua = write_lua(workdir)
            extra_env = (
                {} if args.omp_threads is None else {"OMP_NUM_THREADS": str(args.omp_threads)}
            )
            plane = ControlPlane(workdir / "home", tag, extra_env)
            try:
                plane.up()
                print(plane.register(MODEL_NAME, model_dir, framework="sklearn"))
                measured, sets["batch-64"] = run_set(
                    plane, "fraud-router", None, "", lua, seconds, workdir, tag
                )
                rows += measured
                if not args.no_batch_off:
                    measured, sets["batch-off"] = run_set(
                        plane, "fraud-router-nobatch", 1, "-nobatch", lua, seconds, workdir, tag
                    )
                    rows += measured
            finally:
                problems = plane.log_problems()
                sets["daemon_log_tail"] = plane.log_tail(40)
                sets["replica_log_problems"] = plane.replica_logs_problems()
                plane.close()
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    ratios = compute_ratios(rows, suffixes)
    print_table(rows)
    print_ratios(ratios)
    if problems:
        print(f"\ndaemon log warnings/errors ({len(problems)}):")
        for line in problems[-10:]:
            print(f"  {line}")
    out = write_result(
        "router_overhead",
        started_at,
        {
            "benchmark": "router_overhead",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "duration_s": seconds,
                "connections": list(CONNECTIONS),
                "warmup_s": WARMUP_SECONDS,
                "wrk_threads": 1,
                "path": INFER_PATH,
                "body": BODY,
                "cpus": os.cpu_count(),
                "omp_threads": args.omp_threads,
                "inherited_OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            },
            "environment": {"wrk": wrk_version(), "source_sha256": source_fingerprint()},
            "results": rows,
            "ratios": ratios,
            "sets": sets,
            "daemon_log_problems": problems,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
