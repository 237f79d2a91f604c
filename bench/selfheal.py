"""Self-healing of a served model: kill -9, a hung replica (SIGSTOP), a lost node.

    .venv/bin/python bench/selfheal.py [--quick] [--runs 5] [--rate 50]

In one run, on this machine:

1. starts a real control plane (``pilothouse up --nodes nodes.yaml``: three virtual
   nodes, ``node-0`` .. ``node-2``) in a temporary ``PILOTHOUSE_HOME`` under
   ``/tmp/bench-heal-*``, registers the fraud model v1 of
   ``tests/integration/rollout_models.py`` (a small logistic regression) and applies a
   ModelDeployment with ``replicas: 3`` (default probes: readiness every 2 s, liveness
   ``GET /v2/health/live`` every 2 s, 3 failures), which the scheduler spreads one per
   node;
2. sends a light open-loop load (``--rate`` requests/s, OIP v2, evenly spaced, no
   retries, 10 s timeout) through the deployment's URL for the whole run;
3. ``--runs`` times each, one at a time, waiting for 3/3 ready replicas and a quiet
   second between runs:

   * ``kill9``: SIGKILL to a random ready replica's process;
   * ``sigstop``: SIGSTOP to one (a hung process: it still accepts connections but
     never answers); the platform has to notice by its probes, kill it and replace
     it. After the run the stopped process must be gone (if not, it is SIGKILLed and
     reported);
   * ``nodefail``: ``node fail`` of the node of one replica (the same API call as
     ``pilothouse node fail NODE -y``; the CLI's start-up is left out of the timing),
     then ``node uncordon`` to bring it back for the next run;

   polling the deployment status (``status.replicaStatuses``, through the API client,
   as ``pilothouse get md NAME -o json`` shows it) every ``--poll`` seconds, and timing
   from the signal (or the node call) until the victim left the ready set, until it
   was reported killed / gone, and until 3 replicas other than the victim were ready
   again; counts the requests that failed between the fault and 1 s after recovery;
4. prints a table (median and max per scenario), the ratios against Kubernetes'
   documented defaults (not measured here: see ``K8S_REFERENCE``) and writes JSON to
   ``bench/results/selfheal-<timestamp>.json``.

A measurement, never a CI gate: exits 0 whether or not targets are met (non-zero only
when the benchmark itself could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
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
from urllib.parse import urlsplit

from common import ControlPlane, Shot, _Conn, _exchange, fmt, make_request, write_result
from model_server import REPO, BenchError, _has_tag, _raise_interrupt, source_fingerprint

sys.path.insert(0, str(REPO))  # tests/integration/rollout_models.py: the model version
from tests.integration import rollout_models as rm
from tests.integration.servers import sample_rows

DEPLOYMENT = "fraud-heal"
REPLICAS = 3
NODES = 3
INFER_PATH = f"/v2/models/{rm.MODEL}/infer"
SCENARIOS = ("kill9", "sigstop", "nodefail")
#: a run of the load generator never sends more than this many requests in all
MAX_REQUESTS = 500_000

NODES_YAML = """nodes:
  - name: node
    count: {count}
    cpu: "2"
    memory: 4Gi
"""

# Kubernetes' documented defaults (NOT measured here), and what each scenario costs there.
K8S_REFERENCE: dict[str, dict[str, Any]] = {
    "kill9": {
        "replaced_ready_s": 10.0,
        "detected_s": 1.0,
        "how": (
            "kubelet restarts the container at once (the CrashLoopBackOff back-off of "
            "10 s, 20 s, ... applies from the second restart; PLEG relist period 1 s); the "
            "readiness probe's first try right after the start fails while the model loads "
            "and the next comes periodSeconds=10 s later: ~10 s until Ready (plus the same "
            "model load time as here)"
        ),
        "docs": [
            "Pod Lifecycle: Container restart policy (back-off 10s, 20s, 40s, ... capped at 5 min)",
            "Configure Liveness, Readiness and Startup Probes: periodSeconds default 10, "
            "failureThreshold default 3, timeoutSeconds default 1",
        ],
    },
    "sigstop": {
        "detected_s": 30.0,
        "replaced_ready_s": 70.0,
        "how": (
            "liveness probe periodSeconds 10 x failureThreshold 3 = 30 s to detect a hang "
            "(readiness: the same 30 s to leave the Service's endpoints); the kill then sends "
            "SIGTERM, which a stopped process does not act on, so SIGKILL comes after "
            "terminationGracePeriodSeconds 30 s; restart + readiness period 10 s: ~70 s"
        ),
        "docs": [
            "Configure Liveness, Readiness and Startup Probes (periodSeconds 10, "
            "failureThreshold 3, timeoutSeconds 1)",
            "Pod Lifecycle: Termination of Pods (terminationGracePeriodSeconds default 30 s)",
        ],
    },
    "nodefail": {
        "detected_s": 40.0,
        "replaced_ready_s": 340.0,
        "how": (
            "the node is marked NotReady/Unknown after node-monitor-grace-period 40 s (50 s "
            "since 1.32); its pods tolerate node.kubernetes.io/not-ready and /unreachable for "
            "tolerationSeconds 300 s (added by the DefaultTolerationSeconds admission plugin) "
            "before taint-based eviction, and only then does the ReplicaSet create a "
            "replacement: 40 + 300 = 340 s = 5 min 40 s (350 s on 1.32+), plus scheduling, "
            "start and readiness"
        ),
        "docs": [
            "kube-controller-manager reference: --node-monitor-grace-period (40s; 50s in 1.32+)",
            "Taints and Tolerations: Taint based Evictions (tolerationSeconds=300 for "
            "not-ready/unreachable, DefaultTolerationSeconds)",
            "Nodes: Node heartbeats / Node controller",
        ],
    },
}


# --------------------------------------------------------------------------- load


class Load:
    """A continuous open-loop load (evenly spaced requests, no retries) until stopped.

    Like ``common.open_loop`` but open-ended: it runs until :meth:`stop` (or
    ``max_seconds`` / :data:`MAX_REQUESTS`), and every request keeps its wall-clock
    send time so failures can be attributed to the fault windows."""

    def __init__(
        self,
        host: str,
        port: int,
        body: bytes,
        rate: float,
        max_seconds: float,
        timeout: float = 10.0,
        max_connections: int = 128,
    ) -> None:
        self.host, self.port, self.rate = host, port, rate
        self.request = make_request(host, port, INFER_PATH, body.decode())
        self.max_seconds, self.timeout = max_seconds, timeout
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[_Conn] = []
        self.shots: list[Shot] = []
        self.started_wall = 0.0
        self.started = 0.0
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _one(self, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        async with self.slots:
            try:
                left = self.timeout - (loop.time() - self.started - scheduled)
                async with asyncio.timeout(max(0.01, left)):
                    if self.idle:
                        conn = self.idle.pop()
                    else:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                        conn = _Conn(reader, writer)
                    status, keep = await _exchange(conn, self.request)
                self.shots.append(Shot(scheduled, loop.time() - self.started - scheduled, status))
                if keep:
                    self.idle.append(conn)
                else:
                    conn.close()
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                if conn is not None:
                    conn.close()
                self.shots.append(
                    Shot(scheduled, loop.time() - self.started - scheduled, 0, type(exc).__name__)
                )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.started, self.started_wall = loop.time(), time.time()
        n = 0
        while not self._stop.is_set() and n < MAX_REQUESTS:
            scheduled = n / self.rate
            if scheduled > self.max_seconds:
                break
            delay = self.started + scheduled - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            task = asyncio.create_task(self._one(scheduled))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=self.timeout + 1)
            for task in pending:
                task.cancel()
        for conn in self.idle:
            conn.close()

    def stop(self) -> None:
        self._stop.set()

    def window(self, start_wall: float, end_wall: float) -> dict[str, Any]:
        """Requests *sent* between two wall-clock times: sent, failed, errors."""
        a, b = start_wall - self.started_wall, end_wall - self.started_wall
        inside = [s for s in self.shots if a <= s.scheduled < b]
        failed = [s for s in inside if not 200 <= s.status < 300]
        errors: dict[str, int] = {}
        for s in failed:
            key = s.error or str(s.status)
            errors[key] = errors.get(key, 0) + 1
        ok = sorted(s.latency * 1000 for s in inside if 200 <= s.status < 300)
        return {
            "sent": len(inside),
            "failed": len(failed),
            "errors": errors,
            "max_ok_ms": round(ok[-1], 1) if ok else None,
            "ok_over_1s": sum(1 for v in ok if v > 1000.0),
        }


# ---------------------------------------------------------------------- scenarios


def _ready(st: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in st.get("replicaStatuses") or [] if r.get("ready")]


async def settle(plane: ControlPlane, limit: float) -> dict[str, Any]:
    """Wait until exactly REPLICAS replicas are listed and all ready, twice in a row 1 s
    apart; the last status."""
    deadline = time.monotonic() + limit
    good = 0
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
        listed = st.get("replicaStatuses") or []
        if len(listed) == REPLICAS and len(_ready(st)) == REPLICAS:
            good += 1
            if good >= 2:
                return st
        else:
            good = 0
        await asyncio.sleep(1.0)
    raise BenchError(f"{DEPLOYMENT} did not settle at {REPLICAS}/{REPLICAS} in {limit:.0f}s: {st}")


async def one_run(
    plane: ControlPlane,
    scenario: str,
    index: int,
    rng: random.Random,
    poll: float,
    limit: float,
) -> dict[str, Any]:
    st = await settle(plane, limit)
    await asyncio.sleep(1.0)  # a quiet second of load before the fault
    st = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
    ready = [r for r in _ready(st) if r.get("pid")]
    before_ids = {r["id"] for r in st.get("replicaStatuses") or []}
    if scenario == "nodefail":
        per_node: dict[str, int] = {}
        for r in st.get("replicaStatuses") or []:
            per_node[r.get("node")] = per_node.get(r.get("node"), 0) + 1
        alone = [r for r in ready if per_node.get(r.get("node")) == 1]
        ready = alone or ready  # prefer a node that holds exactly one replica
    if not ready:
        raise BenchError(f"no ready replica to hit: {st}")
    victim = rng.choice(ready)
    pid, vid, node = int(victim["pid"]), victim["id"], victim.get("node")
    if not _has_tag(pid, plane.tag):
        raise BenchError(f"replica {vid} pid {pid} does not carry this run's tag")
    on_node = [r["id"] for r in st.get("replicaStatuses") or [] if r.get("node") == node]
    result: dict[str, Any] = {
        "scenario": scenario,
        "run": index,
        "victim": vid,
        "pid": pid,
        "node": node,
        "replicas_on_node": len(on_node),
    }
    fault_wall = time.time()
    t0 = time.monotonic()
    if scenario == "kill9":
        os.kill(pid, signal.SIGKILL)
    elif scenario == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        body = await asyncio.to_thread(plane.client().node_action, node, "fail")
        result["node_call_s"] = round(time.monotonic() - t0, 3)
        result["node_message"] = body.get("message")
    lost = set(on_node) if scenario == "nodefail" else {vid}
    unready = detected = gone = recovered = None
    new_ids: list[str] = []
    timeline: list[dict[str, Any]] = []
    while time.monotonic() - t0 < limit:
        try:
            st = await asyncio.to_thread(plane.status_of, DEPLOYMENT)
        except Exception as exc:  # a slow API: note it and go on
            timeline.append({"t": round(time.monotonic() - t0, 2), "error": repr(exc)[:200]})
            await asyncio.sleep(poll)
            continue
        t = round(time.monotonic() - t0, 3)
        listed = {r["id"]: r for r in st.get("replicaStatuses") or []}
        ready_ids = [r["id"] for r in _ready(st)]
        point = {"t": t, "ready": ready_ids, "listed": sorted(listed)}
        v = listed.get(vid)
        if v is not None:
            point["victim_message"] = v.get("message")
        if not timeline or {k: point.get(k) for k in ("ready", "listed", "victim_message")} != {
            k: timeline[-1].get(k) for k in ("ready", "listed", "victim_message")
        }:
            timeline.append(point)
        if unready is None and vid not in ready_ids:
            unready = t
        if detected is None and (
            v is None
            or "liveness" in (v.get("message") or "")
            or "lost" in (v.get("message") or "")
            or (v.get("message") or "").startswith("exited")
        ):
            detected = t
        if gone is None and not lost & set(listed):
            gone = t
        others_ready = [i for i in ready_ids if i not in lost]
        if recovered is None and len(others_ready) >= REPLICAS:
            recovered = t
            new_ids = sorted(set(others_ready) - before_ids)
            new_nodes = sorted({listed[i].get("node") for i in new_ids if i in listed})
            result["replacement_nodes"] = new_nodes
        if recovered is not None and gone is not None:
            break
        await asyncio.sleep(poll)
    result.update(
        {
            "left_ready_s": unready,
            "detected_s": detected,
            "victim_gone_s": gone,
            "replaced_ready_s": recovered,
            "replacements": new_ids,
            "timeline": timeline,
        }
    )
    if scenario == "sigstop":
        await asyncio.sleep(0.5)
        alive = _has_tag(pid, plane.tag)  # False once the process is gone
        result["stopped_process_alive_after"] = alive
        if alive:  # a platform bug: it must be gone; clean up what we stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
    if scenario == "nodefail":
        if node is not None and recovered is not None:
            result["replaced_off_node"] = node not in result.get("replacement_nodes", [node])
        body = await asyncio.to_thread(plane.client().node_action, node, "uncordon")
        result["uncordon_message"] = body.get("message")
    end = (recovered if recovered is not None else limit) + 1.0
    result["fault_wall"] = fault_wall
    result["window_s"] = round(end, 3)
    return result


async def drive(
    plane: ControlPlane,
    url: str,
    scenarios: list[str],
    runs: int,
    rate: float,
    poll: float,
    limit: float,
    seed: int,
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = rm.v2_body(sample_rows(1)[0])
    bound = len(scenarios) * runs * (limit + 40) + 60
    load = Load(host, port, body, rate, max_seconds=bound) if rate > 0 else None
    load_task = asyncio.create_task(load.run()) if load else None
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(2.0)
        for scenario in scenarios:
            for i in range(runs):
                r = await one_run(plane, scenario, i + 1, rng, poll, limit)
                if load is not None:
                    await asyncio.sleep(1.0)  # the window's last second
                    r["requests"] = load.window(r["fault_wall"], r["fault_wall"] + r["window_s"])
                results.append(r)
                req = r.get("requests") or {}
                print(
                    f"  {scenario:<8} run {i + 1}/{runs}: {r['victim']} on {r['node']} -> "
                    f"left ready {fmt(r['left_ready_s'])}s, detected {fmt(r['detected_s'])}s, "
                    f"replacement ready {fmt(r['replaced_ready_s'])}s"
                    + (f" on {','.join(r.get('replacement_nodes') or [])}")
                    + (
                        f"; failed requests {req.get('failed')}/{req.get('sent')}, "
                        f"{req.get('ok_over_1s')} ok but > 1 s (max {fmt(req.get('max_ok_ms'), 0)} ms)"
                        if req
                        else ""
                    ),
                    flush=True,
                )
    finally:
        if load is not None and load_task is not None:
            load.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load_task, 15)
    total = None
    if load is not None:
        total = {
            "sent": len(load.shots),
            "failed": sum(1 for s in load.shots if not 200 <= s.status < 300),
        }
    return {"runs": results, "load_total": total}


# ---------------------------------------------------------------------------- output


def stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {
        "n": len(values),
        "missing": len(values) - len(got),
        "median": round(statistics.median(got), 3) if got else None,
        "max": round(max(got), 3) if got else None,
        "min": round(min(got), 3) if got else None,
        "values": values,
    }


def summarize(runs: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sc in scenarios:
        mine = [r for r in runs if r["scenario"] == sc]
        out[sc] = {
            "left_ready_s": stats([r["left_ready_s"] for r in mine]),
            "detected_s": stats([r["detected_s"] for r in mine]),
            "replaced_ready_s": stats([r["replaced_ready_s"] for r in mine]),
            "failed_requests": stats(
                [float((r.get("requests") or {}).get("failed", 0)) for r in mine]
                if any("requests" in r for r in mine)
                else []
            ),
            "max_ok_ms": stats(
                [(r.get("requests") or {}).get("max_ok_ms") for r in mine]
                if any("requests" in r for r in mine)
                else []
            ),
            "sent_requests": sum((r.get("requests") or {}).get("sent", 0) for r in mine),
        }
    return out


def print_table(summary: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    print()
    print("MEASURED here (seconds after the fault; median / max over the runs):")
    head = (
        f"{'scenario':<9} {'runs':>4} {'left ready':>13} {'detected':>13} "
        f"{'replaced ready':>15} {'failed req':>12} {'max ok ms':>15}"
    )
    print(head)
    print("-" * len(head))

    def mm(s: dict[str, Any]) -> str:
        text = f"{fmt(s['median'], 1)} / {fmt(s['max'], 1)}"
        return text + (f" ({s['missing']} x -)" if s["missing"] else "")

    for sc, s in summary.items():
        fr = s["failed_requests"]
        failed = f"{fmt(fr['median'], 0)} / {fmt(fr['max'], 0)}" if fr["n"] else "-"
        lat = s["max_ok_ms"]
        slow = f"{fmt(lat['median'], 0)} / {fmt(lat['max'], 0)}" if lat["n"] else "-"
        print(
            f"{sc:<9} {s['replaced_ready_s']['n']:>4} {mm(s['left_ready_s']):>13} "
            f"{mm(s['detected_s']):>13} {mm(s['replaced_ready_s']):>15} {failed:>12} {slow:>15}"
        )
    if rate > 0:
        print(
            f"(failed req / max ok ms: per run, the requests sent from the fault to 1 s after "
            "recovery that failed, and the slowest successful one, "
            f"at {rate:g} requests/s through the router)"
        )
    print()
    print("KUBERNETES DOCUMENTED DEFAULTS (not measured here; estimates from the docs):")
    ratios = []
    for sc, s in summary.items():
        ref = K8S_REFERENCE[sc]
        print(
            f"  {sc:<9} detect ~{ref['detected_s']:g}s, replacement ready ~"
            f"{ref['replaced_ready_s']:g}s: {ref['how']}"
        )
        for doc in ref["docs"]:
            print(f"  {'':<9}   [k8s docs: {doc}]")
        for key in ("detected_s", "replaced_ready_s"):
            ours = s[key]["median"]
            worst = s[key]["max"]
            value = ours / ref[key] if ours is not None else None
            ratios.append(
                {
                    "name": f"{sc}: {key} median, pilothouse / k8s default",
                    "value": value,
                    "worst_value": worst / ref[key] if worst is not None else None,
                    "pilothouse_median_s": ours,
                    "pilothouse_max_s": worst,
                    "k8s_reference_s": ref[key],
                    "target": "< 1",
                    "met": None if value is None else value < 1,
                }
            )
    if "nodefail" in summary:
        print(
            "  note: `node fail` tells pilothouse the node is lost (a simulated, announced "
            "loss); Kubernetes has to infer a silent loss from missed heartbeats, so the "
            "nodefail detection ratio compares an announcement with an inference"
        )
    print()
    print("ratios, pilothouse (measured) / Kubernetes (documented defaults); target < 1:")
    for r in ratios:
        met = {True: "met", False: "MISSED", None: "-"}[r["met"]]
        print(
            f"  {r['name']:<52} {fmt(r['value'], 3):>7} (max {fmt(r['worst_value'], 3)})  "
            f"[{fmt(r['pilothouse_median_s'], 1)}s vs {r['k8s_reference_s']:g}s]  {met}"
        )
    return ratios


# ------------------------------------------------------------------------------ main


def up_with_nodes(plane: ControlPlane, nodes_file: Path) -> None:
    plane.home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plane.cli("up", "--nodes", str(nodes_file), timeout=60)

    info = json.loads((plane.home / "daemon.json").read_text(encoding="utf-8"))
    plane.daemon_pid = int(info["pid"])
    print(
        f"control plane up at {info.get('url')} (pid {plane.daemon_pid}) in "
        f"{time.monotonic() - started:.1f}s; home {plane.home}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Self-healing times of a served model.")
    parser.add_argument("--quick", action="store_true", help="2 runs per scenario")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 5)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s (0: no load)")
    parser.add_argument("--poll", type=float, default=0.2, help="status poll period, s")
    parser.add_argument("--timeout", type=float, default=90.0, help="per run, s (default 90)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated: kill9,sigstop,nodefail"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not (1 <= runs <= 50 and 0 <= args.rate <= 1000 and 0.05 <= args.poll <= 5):
        parser.error("--runs 1..50, --rate 0..1000, --poll 0.05..5")
    if not (10 <= args.timeout <= 600) or not scenarios or set(scenarios) - set(SCENARIOS):
        parser.error(f"--timeout 10..600; --scenarios from {','.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tag = uuid.uuid4().hex
    started_at = datetime.now(UTC)
    info: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-heal-", dir="/tmp") as tmp:
            workdir = Path(tmp)
            plane = ControlPlane(workdir / "home", tag)
            try:
                nodes_file = workdir / "nodes.yaml"
                nodes_file.write_text(NODES_YAML.format(count=NODES), encoding="utf-8")
                up_with_nodes(plane, nodes_file)
                version = rm.register_v1(plane.home / "models")
                print(f"registered {version.ref}", flush=True)
                doc = {
                    "apiVersion": "pilothouse.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": DEPLOYMENT},
                    "spec": {
                        "model": f"{rm.MODEL}:{version.version}",
                        "replicas": REPLICAS,
                        "resources": {"cpu": "250m", "memory": "256Mi"},
                    },
                }
                plane.apply(doc)
                took = plane.wait_ready(DEPLOYMENT, timeout=120)
                md = plane.get_md(DEPLOYMENT)
                url = md["status"]["url"]
                placed = sorted(r.get("node") for r in md["status"].get("replicaStatuses") or [])
                print(f"{DEPLOYMENT}: Ready in {took:.1f}s at {url}; replicas on {placed}")
                print(
                    f"{runs} run(s) each of {', '.join(scenarios)}; load {args.rate:g} "
                    f"requests/s; status polled every {args.poll:g}s",
                    flush=True,
                )
                info = asyncio.run(
                    drive(
                        plane,
                        url,
                        scenarios,
                        runs,
                        args.rate,
                        args.poll,
                        args.timeout,
                        args.seed,
                    )
                )
                info["deployment"] = doc
                info["status_after"] = plane.status_of(DEPLOYMENT)
                info["events"] = plane.client().events("modeldeployments", DEPLOYMENT)
                info["nodes_after"] = plane.client().nodes()
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

    summary = summarize(info["runs"], scenarios)
    ratios = print_table(summary, args.rate)
    leftovers = [r for r in info["runs"] if r.get("stopped_process_alive_after")]
    if leftovers:
        print(f"\nWARNING: {len(leftovers)} SIGSTOPped replica(s) still alive after recovery")
    stayed = [r for r in info["runs"] if r.get("replaced_off_node") is False]
    if stayed:
        print(f"\nWARNING: {len(stayed)} replacement(s) placed on the failed node")
    if info.get("load_total"):
        lt = info["load_total"]
        print(f"\nload: {lt['failed']} of {lt['sent']} requests failed over the whole run")
    problems = info["daemon_log_problems"]
    if problems:
        print(f"\ndaemon log warnings/errors: {len(problems)} line(s); the last 8:")
        for line in problems[-8:]:
            print(f"  {line}")
    out = write_result(
        "selfheal",
        started_at,
        {
            "benchmark": "selfheal",
            "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wall_s": round(time.monotonic() - started, 1),
            "config": {
                "runs": runs,
                "scenarios": scenarios,
                "rate": args.rate,
                "poll_s": args.poll,
                "timeout_s": args.timeout,
                "seed": args.seed,
                "replicas": REPLICAS,
                "nodes": NODES,
                "path": INFER_PATH,
                "cpus": os.cpu_count(),
            },
            "environment": {"source_sha256": source_fingerprint()},
            "measured": summary,
            "k8s_documented_defaults_not_measured": K8S_REFERENCE,
            "ratios": ratios,
            **info,
        },
    )
    print(f"\nwrote {out.relative_to(REPO)} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
